"""The two sinks that are always on: the console (a line per log step, a progress bar) and
``metrics.jsonl``; `MetricsLog` hands each row to them and to the trackers of ``report_to``.

Rows use TRL's metric names (``loss``, ``rewards/chosen``, ... and ``eval_`` prefixes), so
dashboards compare one to one. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpokit.tracking.sinks import Sink


def console_line(row: dict[str, Any]) -> str:
    """``step 100 | loss 0.5200 | reward_margin +0.3500 | accuracy 0.750 | lr 5.0e-07 | 1234 tok/s``."""
    prefix = "eval_" if "eval_loss" in row else ""
    parts = [f"step {row['step']:>5}"]
    if row.get(f"{prefix}loss") is not None:
        parts.append(f"{prefix}loss {row[f'{prefix}loss']:.4f}")
    if row.get(f"{prefix}rewards/margins") is not None:
        parts.append(f"{'eval_' if prefix else ''}reward_margin {row[f'{prefix}rewards/margins']:+.4f}")
    if row.get(f"{prefix}rewards/accuracies") is not None:
        parts.append(f"{'eval_' if prefix else ''}accuracy {row[f'{prefix}rewards/accuracies']:.3f}")
    if row.get("eval_policy_preference") is not None:
        parts.append(f"policy_preference {row['eval_policy_preference']:.3f}")
    if row.get("learning_rate") is not None:
        parts.append(f"lr {row['learning_rate']:.1e}")
    if row.get("tokens_per_second") is not None:
        parts.append(f"{row['tokens_per_second']:.0f} tok/s")
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    return " | ".join(parts)


def progress_postfix(row: dict[str, Any]) -> dict[str, str]:
    """What the progress bar shows after step / total and ETA, from a training row: tokens/s,
    loss and reward margin (those the row has). Pass to ``tqdm.set_postfix(..., refresh=False)``."""
    out: dict[str, str] = {}
    if row.get("tokens_per_second") is not None:
        rate = row["tokens_per_second"]
        out["tok/s"] = f"{rate / 1000:.1f}k" if rate >= 10_000 else f"{rate:.0f}"
    if row.get("loss") is not None:
        out["loss"] = f"{row['loss']:.4f}"
    if row.get("rewards/margins") is not None:
        out["margin"] = f"{row['rewards/margins']:+.3f}"
    return out


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with non-finite floats as None (JSON has no NaN) and a ``time`` stamp."""
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    row.setdefault("time", round(time.time(), 3))
    return row


class MetricsLog:
    """Writes each row to ``metrics.jsonl`` (flushed at once), prints it on the console, and hands
    it to each tracker in ``sinks`` (started already: `build_tracker`).

    A new run starts a fresh file, so two runs into one output directory never mix rows;
    ``append=True`` keeps the rows already there (for a run that resumes an earlier one).
    """

    def __init__(self, path: Path | None, enabled: bool = True, progress=None, append: bool = False,
                 sinks: Sequence[Sink] = ()) -> None:
        self.enabled = enabled
        self.progress = progress
        mode = "a" if append else "w"
        self.file = open(path, mode, encoding="utf-8") if (enabled and path is not None) else None
        self.rows: list[dict[str, Any]] = []
        self.sinks = list(sinks) if enabled else []

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = clean_row(row)
        self.rows.append(row)
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        self.print(console_line(row))
        for sink in self.sinks:
            sink.log(row, int(row["step"]))

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.write(text)
        else:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        """Close the file and every tracker (each once; a second call does nothing)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
