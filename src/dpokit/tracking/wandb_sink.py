"""Weights & Biases: the resolved config and every metric of the run, from the main process.

The API key is wandb's business: it comes from ``WANDB_API_KEY`` or wandb's own login (``wandb
login``) and is never read, printed or stored here. ``WANDB_MODE=offline`` writes the run under
``<output>/wandb/`` to sync later (``wandb sync``). A resumed run continues the same W&B run: its
id is kept in ``<output>/logs/wandb_run_id``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dpokit.errors import DpokitError
from dpokit.tracking.sinks import RunInfo, scalars

LOGIN_FIX = ("set WANDB_API_KEY in the environment, run `wandb login` once, or set WANDB_MODE=offline to write "
             "the run locally and `wandb sync` it later")


def _scrub(text: str) -> str:
    """``text`` without the API key in it, should a library message ever quote it."""
    key = os.environ.get("WANDB_API_KEY")
    return text.replace(key, "***") if key else text


class WandbSink:
    name = "wandb"

    def __init__(self) -> None:
        self.run = None

    def start(self, run: RunInfo) -> None:
        import wandb

        id_file = Path(run.output_dir) / "logs" / "wandb_run_id"
        run_id = id_file.read_text().strip() if run.resume and id_file.is_file() else None
        try:
            self.run = wandb.init(
                project=run.project or os.environ.get("WANDB_PROJECT") or "dpokit", name=run.name,
                tags=list(run.tags) or None, config={**run.config, "devices": list(run.devices)},
                dir=str(run.output_dir), id=run_id, resume="allow" if run_id else None)
        except Exception as e:  # wandb raises UsageError, AuthenticationError, CommError, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if "api key" in first.lower() or "login" in first.lower() or "auth" in type(e).__name__.lower():
                raise DpokitError(f"report_to wandb: W&B is not logged in ({_scrub(first)})\n  fix: {LOGIN_FIX}") from None
            raise DpokitError(f"report_to wandb: W&B could not start: {_scrub(first)}\n  fix: check the network and "
                              "your W&B login, or set WANDB_MODE=offline") from None
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run.id + "\n")

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(scalars(row), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
