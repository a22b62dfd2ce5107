"""TensorBoard: event files under ``<output>/runs/<time>_<run name>/`` (``tensorboard --logdir
<output>/runs``), with the resolved config as hparams and as text."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from dpokit.tracking.sinks import RunInfo, flat_config, scalars


def run_log_dir(output_dir: Path, name: str, resume: bool) -> Path:
    """A fresh run gets a new time-stamped directory, so two runs in one output directory show as
    two runs, not one zig-zag line; a resumed run continues the newest one (TensorBoard joins
    the event files of a directory)."""
    runs = Path(output_dir) / "runs"
    if resume:
        earlier = sorted((p for p in runs.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if earlier:
            return earlier[-1]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = runs / f"{stamp}_{name}"
    n = 1
    while path.exists():  # two runs started within one second
        n += 1
        path = runs / f"{stamp}-{n}_{name}"
    return path


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self) -> None:
        self.writer = None
        self.log_dir: Path | None = None

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.log_dir = run_log_dir(run.output_dir, run.name, run.resume)
        # A resumed run purges the events an earlier run wrote past its checkpoint's step.
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=run.start_step + 1 if run.resume else None)
        if run.resume:
            return  # the config is in the run's first event file already
        text = yaml.safe_dump(run.config, sort_keys=False)
        self.writer.add_text("config", "```yaml\n" + text + "```", 0)
        if run.devices:
            self.writer.add_text("devices", "\n\n".join(f"rank {i}: {d}" for i, d in enumerate(run.devices)), 0)
        # The hparams summaries go into this run's own event file (add_hparams would open a
        # sub-run for them), so the HParams tab lists this run with its config.
        for summary in hparams(flat_config(run.config), {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log(self, row: dict[str, Any], step: int) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a run is watched while it runs

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
