"""``dpokit plot RUN_DIR [RUN_DIR ...] [--output FILE]``: a run judged at a glance, as one PNG.

Six panels over optimizer steps: the loss with the eval loss; rewards chosen / rejected and
their margin; accuracies; the learning rate; the gradient norm; the distribution of per-pair
margins (quantile bands 5-95 and 25-75 and the median, from ``logs/margins/margins_log.jsonl``).
It reads a run still in progress (the last line of a file being written may be half there and is
left out). Several run directories overlay: one colour per run.

Headless: matplotlib's Agg canvas, no display, no pyplot state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpokit.errors import DpokitError


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a JSONL file another process may be appending to: a last line that does
    not parse (half written) is left out, and so is any other line that does not."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
    return rows


@dataclass
class RunLogs:
    name: str
    train: list[dict[str, Any]] = field(default_factory=list)  # rows with "loss"
    evals: list[dict[str, Any]] = field(default_factory=list)  # rows with "eval_loss"
    margins: list[dict[str, Any]] = field(default_factory=list)  # margins_log.jsonl
    finished: bool = False
    last_step: int = 0


def load_run(run_dir: str | Path) -> RunLogs:
    """The logs of one output directory; a `DpokitError` when it has no metrics yet."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        where = "no such directory" if not run_dir.is_dir() else "no metrics.jsonl there"
        raise DpokitError(f"{run_dir}: {where}\n  fix: pass the output directory of a `dpokit train` run "
                          "(its --output), which holds metrics.jsonl")
    rows = read_rows(metrics)
    if not rows:
        raise DpokitError(f"{metrics}: no metrics rows yet\n  fix: wait for the run's first logged step "
                          "(--logging-steps), then plot again")
    margins = run_dir / "logs" / "margins" / "margins_log.jsonl"
    return RunLogs(run_dir.resolve().name, [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r],
                   read_rows(margins) if margins.is_file() else [], (run_dir / "final").is_dir(),
                   max(int(r["step"]) for r in rows))


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key``; a missing or non-finite value is NaN, a gap in the line."""
    steps = [float(r["step"]) for r in rows if key in r]
    values = [float(r[key]) if isinstance(r[key], (int, float)) and math.isfinite(r[key]) else math.nan
              for r in rows if key in r]
    return steps, values


RUN_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan")
LINESTYLES = ("-", "--", ":", "-.")


def _draw(ax: Any, runs: list[RunLogs], lines: list[tuple[str, str, str, str]]) -> bool:
    """Draw ``lines`` (`PANELS`) of every run on ``ax``; True if any had data."""
    drew = False
    for r, run in enumerate(runs):
        for m, (label, key, kind, own_colour) in enumerate(lines):
            steps, values = _series(run.train if kind == "train" else run.evals, key)
            if not any(math.isfinite(v) for v in values):
                continue
            # One run: a colour per metric. Several: a colour per run, a line style per metric.
            colour = own_colour if len(runs) == 1 else RUN_COLOURS[r % len(RUN_COLOURS)]
            style = "-" if len(runs) == 1 else LINESTYLES[m % len(LINESTYLES)]
            name = label if len(runs) == 1 else f"{run.name}: {label}"
            if kind == "eval":
                ax.plot(steps, values, linestyle="--" if len(runs) == 1 else style, marker="o", markersize=4,
                        color=colour, label=name)
            else:
                ax.plot(steps, values, linestyle=style, linewidth=1.5, color=colour, label=name)
            drew = True
    return drew


def _margin_bands(ax: Any, runs: list[RunLogs]) -> bool:
    drew = False
    for r, run in enumerate(runs):
        rows = [m for m in run.margins if m.get("q50") is not None]
        if not rows:
            continue
        colour = RUN_COLOURS[r % len(RUN_COLOURS)]
        steps = [m["step"] for m in rows]
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        ax.fill_between(steps, [m["q05"] for m in rows], [m["q95"] for m in rows], color=colour, alpha=0.15,
                        linewidth=0, label=f"{prefix}5-95%")
        ax.fill_between(steps, [m["q25"] for m in rows], [m["q75"] for m in rows], color=colour, alpha=0.35,
                        linewidth=0, label=f"{prefix}25-75%")
        ax.plot(steps, [m["q50"] for m in rows], color=colour, linewidth=1.5, label=f"{prefix}median")
        drew = True
    if drew:
        ax.axhline(0.0, color="black", linewidth=0.8, linestyle=":")
    return drew


PANELS = (  # (title, y label, lines: (label, key, "train" | "eval", colour when one run is drawn))
    ("Loss", "loss", [("train loss", "loss", "train", "tab:blue"), ("eval loss", "eval_loss", "eval", "tab:orange")]),
    ("Rewards", "implicit reward", [("chosen", "rewards/chosen", "train", "tab:green"),
                                    ("rejected", "rewards/rejected", "train", "tab:red"),
                                    ("margin", "rewards/margins", "train", "tab:blue"),
                                    ("eval margin", "eval_rewards/margins", "eval", "tab:purple")]),
    ("Reward accuracy", "fraction of pairs", [("train", "rewards/accuracies", "train", "tab:blue"),
                                              ("eval", "eval_rewards/accuracies", "eval", "tab:orange")]),
    ("Learning rate", "learning rate", [("learning rate", "learning_rate", "train", "tab:blue")]),
    ("Gradient norm (before clipping)", "grad norm", [("grad norm", "grad_norm", "train", "tab:blue")]),
)


def plot_runs(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Draw the runs in ``run_dirs`` into the PNG ``output`` (written atomically); returns its path."""
    from matplotlib.figure import Figure

    runs = [load_run(d) for d in run_dirs]
    fig = Figure(figsize=(16, 9), dpi=100, layout="constrained")
    axes = fig.subplots(2, 3).reshape(-1)
    for ax, (title, ylabel, lines) in zip(axes, PANELS):
        ax.set_title(title)
        _finish(ax, ylabel, _draw(ax, runs, lines))
    axes[2].set_ylim(-0.02, 1.02)
    axes[3].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[5].set_title("Per-pair reward margins")
    _finish(axes[5], "margin (chosen - rejected)", _margin_bands(axes[5], runs),
            empty="no margin logs (logs/margins/)")
    states = [f"{r.name} (step {r.last_step}{'' if r.finished else ', in progress'})" for r in runs]
    fig.suptitle("dpokit: " + ", ".join(states), fontsize=14)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, output)  # a viewer reloading the file never sees half a picture
    return output


def _finish(ax: Any, ylabel: str, drew: bool, empty: str = "no data yet") -> None:
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="gray")


def cmd_plot(args: argparse.Namespace) -> int:
    runs = [Path(d) for d in args.run_dirs]
    output = Path(args.output) if args.output else (runs[0] / "plot.png" if len(runs) == 1 else Path("comparison.png"))
    print(f"wrote {plot_runs(runs, output)}")
    return 0


def add_parser(sub: Any) -> None:
    """The ``plot`` subcommand, on the ``dpokit`` command's subparsers."""
    plot = sub.add_parser("plot", help="draw a run's curves as one PNG (several runs overlay)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output directories of training runs")
    plot.add_argument("--output", help="PNG to write (default: RUN_DIR/plot.png; comparison.png for several runs)")
    plot.set_defaults(func=cmd_plot, parser=plot)
