"""The one interface every tracker implements, and what a tracker is told when a run starts.

A sink is started once on the main process (`Sink.start`), then gets every logged row with its
optimizer step (`Sink.log`), and is closed at the end (`Sink.close`). The console and
``metrics.jsonl`` are written by `MetricsLog` itself; TensorBoard and W&B are sinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Row keys that are not metrics: the step is the x axis, the time stamp is the wall clock.
NOT_METRICS = frozenset({"step", "time"})


@dataclass(frozen=True)
class RunInfo:
    """What a tracker needs to know about the run: where it writes, what it is called, its config."""

    output_dir: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config (`Config.to_dict()`)
    project: str | None = None
    tags: tuple[str, ...] = ()
    resume: bool = False  # the run continues an earlier one in the same output directory
    start_step: int = 0  # the step it continues from: trackers drop what an earlier run logged past it
    devices: tuple[str, ...] = ()  # each rank's device, in rank order


class Sink(Protocol):
    """A tracker: ``start`` once, ``log`` each row, ``close`` at the end."""

    name: str

    def start(self, run: RunInfo) -> None:
        """Open files or connections; a failure the user can fix raises `DpokitError`."""

    def log(self, row: dict[str, Any], step: int) -> None:
        """Record ``row`` (TRL's metric names; non-finite values already None) at optimizer ``step``."""

    def close(self) -> None:
        """Flush and finish."""


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a row, under the Hugging Face Trainer's tracker names (``loss`` ->
    ``train/loss``, ``eval_loss`` -> ``eval/loss``), so dashboards line up with TRL runs."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        name = f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"
        out[name] = float(value)
    return out


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{section: {key: value}}`` -> ``{"section.key": value}`` with values TensorBoard's hparams
    take (bool, int, float, str); lists, dicts and None become their text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
