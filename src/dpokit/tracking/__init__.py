"""Watching a run: where its metrics go (the console, ``metrics.jsonl``, TensorBoard, W&B), its
margin logs, and its memory.

* `console`: `MetricsLog` (the rows' fan-out; the console and JSONL always on), `console_line`,
  `progress_postfix`.
* `sinks`: the `Sink` interface trackers implement, and `RunInfo`.
* `build`: ``report_to`` -> trackers: `check_trackers` (early, cheap), `build_tracker` (starts them).
* `tensorboard_sink`, `wandb_sink`: the two trackers.
* `margins`: `MarginLog`, per-pair margin summaries and arrays under ``logs/margins/``.
* `memory`: `memory_row` (every rank's peak memory), `device_names`.
"""

from dpokit.tracking.build import build_tracker, check_trackers, resolve_report_to
from dpokit.tracking.console import MetricsLog, console_line, progress_postfix
from dpokit.tracking.margins import MarginLog, margin_summary
from dpokit.tracking.memory import device_names, memory_row
from dpokit.tracking.sinks import RunInfo, Sink

__all__ = ["MarginLog", "MetricsLog", "RunInfo", "Sink", "build_tracker", "check_trackers", "console_line",
           "device_names", "margin_summary", "memory_row", "progress_postfix", "resolve_report_to"]
