"""``report_to`` -> the run's trackers, checked and started before training.

`check_trackers` is cheap and has no side effects (names known, packages importable): call it on
every rank as early as the run can, so a missing package stops the run before data or models
load. `build_tracker` checks again, starts the trackers on the main process and returns the
run's `MetricsLog`; a tracker that cannot start (no login, no network) stops the run there, with
an ``error:`` and a ``fix:`` line, never at step 1.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.errors import ConfigError
from dpokit.tracking.console import MetricsLog
from dpokit.tracking.sinks import RunInfo, Sink


@dataclass(frozen=True)
class Tracker:
    module: str  # imported to check the tracker can run
    package: str  # its pip name
    extra: str  # dpokit's pip extra that installs it
    make: Callable[[], Sink]


def _tensorboard() -> Sink:
    from dpokit.tracking.tensorboard_sink import TensorBoardSink

    return TensorBoardSink()


def _wandb() -> Sink:
    from dpokit.tracking.wandb_sink import WandbSink

    return WandbSink()


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("torch.utils.tensorboard", "tensorboard", "tensorboard", _tensorboard),
    "wandb": Tracker("wandb", "wandb", "wandb", _wandb),
}
ALWAYS_ON = ("jsonl", "console")  # written by MetricsLog itself; naming them is allowed


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_report_to(report_to: Sequence[str] | str | None) -> list[str]:
    """The trackers to start for ``report_to`` (TRL's names): ``none``, ``all`` (every tracker whose
    package is installed), ``tensorboard``, ``wandb``, ``jsonl``; a comma-separated string works too."""
    if report_to is None:
        return []
    raw = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip().lower() for item in raw for n in str(item).split(",") if n.strip()]
    known = [*TRACKERS, *ALWAYS_ON, "all", "none"]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"report_to: unknown tracker '{name}'\n  fix: {hint}use any of "
                              f"{', '.join(known)}")
    if "none" in names and set(names) - {"none", *ALWAYS_ON}:
        raise ConfigError(f"report_to: 'none' together with {', '.join(n for n in names if n != 'none')}\n"
                          "  fix: give 'none' alone, or only the trackers you want")
    if "all" in names:
        return [n for n, t in TRACKERS.items() if _importable(t.module)]
    return list(dict.fromkeys(n for n in names if n in TRACKERS))


def check_trackers(output: Any) -> list[str]:
    """The trackers ``output.report_to`` asks for, each importable; else a `ConfigError` naming the
    package and the pip extra that installs it."""
    names = resolve_report_to(getattr(output, "report_to", None))
    for name in names:
        tracker = TRACKERS[name]
        if not _importable(tracker.module):
            raise ConfigError(
                f"report_to {name}: the '{tracker.package}' package is not installed\n  fix: pip install "
                f"'dpokit[{tracker.extra}]' (or pip install {tracker.package}), or drop {name} from report_to")
    return names


def run_name(config: Any) -> str:
    """``output.run_name``, else the output directory's name."""
    return getattr(config.output, "run_name", None) or Path(config.output.dir).resolve().name


def build_tracker(config: Any, out_dir: Path, is_main: bool = True, append: bool = False,
                  devices: Sequence[str] = (), start_step: int = 0) -> MetricsLog:
    """The run's `MetricsLog`: ``metrics.jsonl`` in ``out_dir``, the console, and the trackers of
    ``config.output.report_to``, started. Call on every rank (the checks run everywhere); only the
    main process writes. ``append``: the run resumes an earlier one (rows and tracker runs
    continue); ``devices``: each rank's device name (`memory.device_names`), shown by trackers."""
    names = check_trackers(config.output)
    if not is_main:
        return MetricsLog(None, enabled=False)
    output = config.output
    run = RunInfo(Path(out_dir), run_name(config), config.to_dict(), getattr(output, "project", None),
                  tuple(getattr(output, "tags", None) or ()), append, start_step=start_step, devices=tuple(devices))
    sinks: list[Sink] = []
    try:
        for name in names:
            sink = TRACKERS[name].make()
            sink.start(run)
            sinks.append(sink)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return MetricsLog(Path(out_dir) / "metrics.jsonl", enabled=True, append=append, sinks=sinks)
