"""How cost grows: pairs/s, MFU and peak RSS over model size and over ``max_length``, dpokit vs TRL.

Run by ``run.py --sweep reduced|full``. Two lines of points, each tool at its defaults, each point
a whole process as in the main table:

* over model size (``assets.SIZES``: the 27M fixture, ~125M and ~360M of the same Llama family,
  random weights built locally), on the HH-RLHF pairs at ``max_length`` 512;
* over ``max_length`` (256 to 2048) on the 27M model, on pairs cut to fill 80% of it
  (``assets.long_pairs``: a 60% prompt and two 20% completions), so the work grows with it.

``full`` runs every size (27m, 125m, 360m) and length (256, 512, 1024, 2048) for 20 steps;
``reduced`` runs 27m and 125m, 256 and 1024, for 6 steps (what fits a small shared CPU).
``--sizes``, ``--lengths``, ``--sweep-steps`` and ``--sweep-trl`` (the points TRL runs at, as
``size@length``) change the grid.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

from assets import SIZES, build_assets
from measure import Case, Result, run_case, workload

GRIDS = {"full": ("27m,125m,360m", "256,512,1024,2048", 20), "reduced": ("27m,125m", "256,1024", 6)}
SIZE_LENGTH = 512  # max_length of the size sweep (the main table's)
LENGTH_SIZE = "27m"  # model of the length sweep
DPOKIT = Case("dpokit (defaults)", "dpokit", [])


@dataclass
class Point:
    axis: str  # "size" or "length"
    size: str
    max_length: int
    params: int
    flops_per_pair: float
    tokens_per_pair: float
    result: Result


def grid(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(axis, size, max_length) of every point, sizes first."""
    sizes, lengths, _ = GRIDS[args.sweep]
    sizes = [s for s in (args.sizes or sizes).split(",") if s]
    lengths = [int(n) for n in (args.lengths or lengths).split(",") if n]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"error: unknown model size {unknown[0]!r}\nfix: choose among {', '.join(SIZES)}")
    return [("size", s, SIZE_LENGTH) for s in sizes] + [("length", LENGTH_SIZE, n) for n in lengths]


def trl_case(args: argparse.Namespace, trl_cases: list[Case]) -> Case:
    """The TRL case of the sweep (``--sweep-trl-case``): its defaults (the first TRL case) or its
    fastest setting (the last: fp32 without checkpointing on a CPU, no checkpointing on a GPU)."""
    return trl_cases[-1] if args.sweep_trl_case == "fastest" else trl_cases[0]


def run_sweep(args: argparse.Namespace, work: Path, env: dict[str, str], trl: Case | None,
              main: list[Result] = ()) -> list[Point]:
    """Every point of the grid; a size point that is the main table's workload (its model size and
    max_length, the HH-RLHF pairs) reuses the main table's result of the same case instead of
    running it again."""
    steps = args.sweep_steps or GRIDS[args.sweep][2]
    trl_at = None if args.sweep_trl is None else set(args.sweep_trl.split(","))
    reuse = {r.name: r for r in main if r.returncode == 0}
    points = []
    for axis, size, length in grid(args):
        assets = build_assets(work / "assets", max(args.pairs, steps * args.batch_size), size,
                              None if axis == "size" else length)
        load = workload(assets["model"], assets["data"], length)
        sub = copy.copy(args)
        sub.max_length, sub.steps = length, steps
        cases = [DPOKIT] + ([trl] if trl and (trl_at is None or f"{size}@{length}" in trl_at) else [])
        same = axis == "size" and size == args.size and length == args.max_length
        for case in cases + [c for c in ([trl] if trl else []) if same and c not in cases]:
            print(f"sweep: {size} model ({load.params / 1e6:.0f}M), max_length {length}", flush=True)
            if same and case.name in reuse:
                result = reuse[case.name]
            elif case not in cases:
                continue
            else:
                result = run_case(case, sub, assets, work, env, load, tag=f"{axis}-{size}-{length}-")
            points.append(Point(axis, size, length, load.params, load.flops_per_pair, load.tokens_per_pair, result))
    return points


def markdown(points: list[Point], trl_name: str = "TRL (defaults)") -> str:
    lines = [f"How cost grows (dpokit at its defaults, against {trl_name}; size sweep at max_length 512 on the HH-RLHF pairs, "
             "length sweep on the 27M model with pairs filling 80% of max_length):", "",
             "| model | max_length | tokens/pair | GFLOP/pair | tool | steady pairs/s | MFU | pairs per CPU s "
             "| MFU per CPU s | peak RSS GiB | vs TRL steady | vs TRL per CPU s | vs TRL RSS |", "|" + "---|" * 13]
    for p in points:
        r = p.result
        trl = next((q.result for q in points if q.axis == p.axis and q.size == p.size
                    and q.max_length == p.max_length and q.result.tool == "trl" and q.result.returncode == 0), None)
        ok = r.returncode == 0
        mine = trl is not None and r.tool == "dpokit" and ok

        def ratio(a: float | None, b: float | None, mine: bool = mine) -> str:
            return f"{a / b:.2f}x" if mine and a and b else ""

        speed = ratio(r.steady_pairs_per_s, trl and trl.steady_pairs_per_s)
        cpu_speed = ratio(r.cpu_steady_pairs_per_s, trl and trl.cpu_steady_pairs_per_s)
        memory = ratio(r.peak_rss_bytes, trl and trl.peak_rss_bytes)
        steady = f"{r.steady_pairs_per_s:.2f}" if r.steady_pairs_per_s and ok else f"failed (exit {r.returncode})"
        lines.append(f"| {p.params / 1e6:.0f}M | {p.max_length} | {p.tokens_per_pair:.0f} | "
                     f"{p.flops_per_pair / 1e9:.1f} | {r.tool} | {steady} | "
                     f"{f'{100 * r.mfu:.1f}% {r.precision}' if r.mfu else '-'} | "
                     f"{f'{r.cpu_steady_pairs_per_s:.2f}' if r.cpu_steady_pairs_per_s else '-'} | "
                     f"{f'{100 * r.cpu_mfu:.1f}%' if r.cpu_mfu else '-'} | "
                     f"{r.peak_rss_bytes / 2**30:.2f} | {speed} | {cpu_speed} | {memory} |")
    return "\n".join(lines) + "\n"


def plot(points: list[Point], path: str, machine: str, trl_name: str = "TRL (defaults)") -> None:
    """Pairs/s, pairs and MFU per CPU second, and peak RSS over model size (top) and ``max_length`` (bottom), one line per tool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), squeeze=False)
    metrics = [("steady pairs/s", lambda r: r.steady_pairs_per_s),
               ("pairs per CPU second", lambda r: r.cpu_steady_pairs_per_s),
               ("MFU per CPU second %", lambda r: 100 * r.cpu_mfu if r.cpu_mfu else None),
               ("peak RSS GiB", lambda r: r.peak_rss_bytes / 2**30)]
    for row, (axis, label) in enumerate((("size", "parameters (M)"), ("length", "max_length"))):
        for col, (name, value) in enumerate(metrics):
            ax = axes[row][col]
            for tool, style in (("dpokit", "o-"), ("trl", "s--")):
                mine = [p for p in points if p.axis == axis and p.result.tool == tool and p.result.returncode == 0]
                xs = [p.params / 1e6 if axis == "size" else p.max_length for p in mine]
                ys = [value(p.result) for p in mine]
                kept = [(x, y) for x, y in zip(xs, ys) if y is not None]
                if kept:
                    ax.plot(*zip(*kept), style, label="dpokit (defaults)" if tool == "dpokit" else trl_name)
            ax.set_xlabel(label)
            ax.set_ylabel(name)
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend()
    fig.suptitle(f"dpokit (defaults) vs {trl_name}: {machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
