"""Where metrics go: the console (a line per log step and a progress bar) and ``metrics.jsonl``.

Rows use TRL's metric names (``loss``, ``rewards/chosen``, ... and ``eval_`` prefixes), so
dashboards compare one to one. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def console_line(row: dict[str, Any]) -> str:
    """``step 100 | loss 0.5200 | reward_margin +0.3500 | accuracy 0.750 | lr 5.0e-07 | 1234 tok/s``."""
    prefix = "eval_" if "eval_loss" in row else ""
    parts = [f"step {row['step']:>5}"]
    if f"{prefix}loss" in row:
        parts.append(f"{prefix}loss {row[f'{prefix}loss']:.4f}")
    if f"{prefix}rewards/margins" in row:
        parts.append(f"{'eval_' if prefix else ''}reward_margin {row[f'{prefix}rewards/margins']:+.4f}")
    if f"{prefix}rewards/accuracies" in row:
        parts.append(f"{'eval_' if prefix else ''}accuracy {row[f'{prefix}rewards/accuracies']:.3f}")
    if "eval_policy_preference" in row:
        parts.append(f"policy_preference {row['eval_policy_preference']:.3f}")
    if "learning_rate" in row:
        parts.append(f"lr {row['learning_rate']:.1e}")
    if "tokens_per_second" in row:
        parts.append(f"{row['tokens_per_second']:.0f} tok/s")
    return " | ".join(parts)


class MetricsLog:
    """Writes each row to ``metrics.jsonl`` (flushed at once) and prints it on the console.

    A new run starts a fresh file, so two runs into one output directory never mix rows;
    ``append=True`` keeps the rows already there (for a run that resumes an earlier one).
    """

    def __init__(self, path: Path | None, enabled: bool = True, progress=None, append: bool = False) -> None:
        self.enabled = enabled
        self.progress = progress
        mode = "a" if append else "w"
        self.file = open(path, mode, encoding="utf-8") if (enabled and path is not None) else None
        self.rows: list[dict[str, Any]] = []

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        row.setdefault("time", round(time.time(), 3))
        self.rows.append(row)
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        self.print(console_line(row))

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.write(text)
        else:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
