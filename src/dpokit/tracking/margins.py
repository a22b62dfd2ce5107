"""Per-pair reward margins of each logged step, under ``<output>/logs/margins/``.

A mean margin can rise while a tail of pairs goes the wrong way; the distribution shows it.

* ``margins_log.jsonl``: a row per logged step: ``step``, ``epoch``, ``count``, ``mean``, ``std``
  (population), ``min``, ``q05`` ``q25`` ``q50`` ``q75`` ``q95`` (linear interpolation), ``max``,
  ``frac_positive`` (margin > 0, strict, as ``rewards/accuracies``).
* ``epoch_XXX/step_XXXXX.npy``: the margins themselves (float32, every rank's pairs in rank
  order), when ``save_arrays``. ``epoch_XXX`` is the 0-based epoch the step's last pair came from.

The margin of a pair is ``reward_chosen - reward_rejected`` (``beta * h`` for DPO), so the rows'
``mean`` is the ``rewards/margins`` of the metrics row of the same step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpokit import dist

QUANTILES = (5, 25, 50, 75, 95)


def margin_summary(margins: np.ndarray) -> dict[str, Any]:
    """Count, mean, std, min, quantiles, max and the fraction positive of a 1-D array (finite
    values only; None for a statistic of no values)."""
    values = np.asarray(margins, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    out: dict[str, Any] = {"count": int(values.size)}
    if values.size == 0:
        return {**out, **dict.fromkeys(["mean", "std", "min", *(f"q{q:02d}" for q in QUANTILES), "max",
                                        "frac_positive"])}
    out.update(mean=float(values.mean()), std=float(values.std()), min=float(values.min()))
    out.update({f"q{q:02d}": float(v) for q, v in zip(QUANTILES, np.percentile(values, QUANTILES))})
    out.update(max=float(values.max()), frac_positive=float((values > 0).mean()))
    return out


def epoch_index(epoch: float) -> int:
    """The 0-based epoch of a step that ends at fractional ``epoch`` (1.0 ends epoch 0)."""
    return max(0, math.ceil(epoch) - 1)


def array_path(root: Path, step: int, epoch: float) -> Path:
    return Path(root) / f"epoch_{epoch_index(epoch):03d}" / f"step_{step:05d}.npy"


class MarginLog:
    """Writes the margin logs of a run. Call `log` on every rank (it gathers the ranks' margins);
    only the main process writes. ``append``: a resumed run keeps the rows already there."""

    def __init__(self, output_dir: Path, save_arrays: bool = True, append: bool = False,
                 is_main: bool = True) -> None:
        self.root = Path(output_dir) / "logs" / "margins"
        self.save_arrays = save_arrays
        self.is_main = is_main
        self.file = None
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self.file = open(self.root / "margins_log.jsonl", "a" if append else "w", encoding="utf-8")

    def log(self, step: int, epoch: float, margins: torch.Tensor | np.ndarray) -> dict[str, Any] | None:
        """Gather this window's per-pair margins (1-D, this rank's pairs) from every rank and, on the
        main process, write the summary row and the array; returns the row (None off the main one)."""
        local = torch.as_tensor(margins).detach().float().reshape(-1)
        everyone = dist.all_gather_1d(local).cpu().numpy()  # (pairs of all ranks,)
        if not self.is_main:
            return None
        row = {"step": int(step), "epoch": float(epoch), **margin_summary(everyone)}
        if self.save_arrays:
            path = array_path(self.root, step, epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, everyone.astype(np.float32))
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        return row

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
