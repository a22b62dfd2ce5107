"""Training diagnostics: the warning signs of the users' guides, spotted while training.

`Diagnostics` is fed each logged training row (the metrics of one logging window, TRL's names)
and returns advice the first time a sign shows; each sign is reported once per run. The signs
and their thresholds (all in logged rows, so they scale with ``logging_steps``):

* **Loss stuck at its start** (ln 2 = 0.693 for DPO): ``stuck_rows`` (5) logged rows in a row,
  all after warmup and at least 10% of the run past it, whose loss is within ``stuck_tolerance``
  (0.01, times the start value when that is above 1) of the first logged loss. The first row is
  step 1, where policy and reference are still equal, so for losses with a reference it is the
  exact start value.
* **Reward margin turning negative**: ``rewards/margins`` below its first logged value (0 for losses
  with a reference) in ``negative_rows`` (3) logged rows in a row.
* **Chosen log-probs falling**: the chosen answers' log-prob per token, relative to the
  reference (``rewards/chosen / beta / tokens/chosen``; for reference-free losses, whose rewards
  are per-token means already, ``rewards/chosen / beta``), more than ``chosen_drop`` (0.1 nat per
  token) below its first logged value in ``negative_rows`` (3) rows in a row.
* **Loss rising**: the loss went up in ``rising_rows`` (3) windows in a row and ends more than
  ``rise_tolerance`` (0.05, times the lowest loss when that is above 1) above the lowest loss so far.

The advice is the guides' ("Monitoring Training", "Common Issues and Solutions").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Diagnostics:
    """Watches logged training rows; `observe` returns (and prints) each warning the first time."""

    total_steps: int
    warmup_steps: int = 0
    beta: float = 0.1
    print_fn: Callable[[str], None] | None = print
    stuck_rows: int = 5
    stuck_tolerance: float = 0.01
    negative_rows: int = 3
    per_token: bool = False  # rewards are per-token means (reference-free losses), not sums (`rewards_per_token`)
    chosen_drop: float = 0.1
    rising_rows: int = 3
    rise_tolerance: float = 0.05
    rows: list[dict[str, float]] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)

    def observe(self, row: dict[str, Any]) -> list[str]:
        """Take one logged training row; return the warnings it raises for the first time."""
        if "loss" not in row:  # evaluation rows carry eval_ names
            return []
        keys = ("step", "loss", "rewards/margins", "rewards/chosen")
        values = {k: row.get(k) for k in keys}
        values["tokens"] = 1.0 if self.per_token else row.get("tokens/chosen", 1.0)
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values.values()):
            return []
        values["beta"] = float(row.get("beta") or self.beta)
        self.rows.append(values)
        messages = []
        for name, check in (("stuck", self._stuck), ("margin", self._margin),
                            ("chosen", self._chosen), ("rising", self._rising)):
            if name in self.fired:
                continue
            message = check()
            if message:
                self.fired.add(name)
                messages.append(message)
                if self.print_fn is not None:
                    self.print_fn(message)
        return messages

    # ---- the checks; each looks at self.rows and returns a message or None ----------------------

    def _last(self, n: int) -> list[dict[str, float]] | None:
        """The last ``n`` rows, not counting the first (the start values); None if fewer."""
        return self.rows[-n:] if len(self.rows) > n else None

    def _stuck(self) -> str | None:
        start = self.rows[0]["loss"]
        tol = self.stuck_tolerance * max(1.0, abs(start))
        recent = self._last(self.stuck_rows)
        if recent is None:
            return None
        settled = self.warmup_steps + 0.1 * self.total_steps
        if recent[0]["step"] <= self.warmup_steps or recent[-1]["step"] < settled:
            return None
        if all(abs(r["loss"] - start) < tol for r in recent):
            return (f"warning: at step {recent[-1]['step']} the loss is still {recent[-1]['loss']:.4f}, where it "
                    f"started ({start:.4f}; ln 2 = 0.693 for DPO): the model is not learning the preferences. "
                    "Try a larger --beta (e.g. 0.3) or --lr (e.g. 1e-6), check the data (is 'chosen' really "
                    "the better answer?), or train longer (--steps).")
        return None

    def _margin(self) -> str | None:
        start = self.rows[0]["rewards/margins"]
        recent = self._last(self.negative_rows)
        if recent and all(r["rewards/margins"] < start for r in recent):
            return (f"warning: the reward margin has been below {start:+.4f} for {self.negative_rows} logged "
                    f"windows ({recent[-1]['rewards/margins']:+.4f} at step {recent[-1]['step']}): the model is "
                    "moving toward the rejected answers (divergence). Lower --lr (e.g. 1e-7) or --beta "
                    "(e.g. 0.05), or raise --grad-accum (e.g. 8).")
        return None

    def _chosen(self) -> str | None:
        def level(r: dict[str, float]) -> float:
            return r["rewards/chosen"] / r["beta"] / max(1.0, r["tokens"])

        start = level(self.rows[0])
        recent = self._last(self.negative_rows)
        if recent and all(start - level(r) > self.chosen_drop for r in recent):
            return (f"warning: the chosen answers' log-probs are falling ({start - level(recent[-1]):.2f} nats "
                    f"per token below the start at step {recent[-1]['step']}, rewards/chosen "
                    f"{recent[-1]['rewards/chosen']:+.4f}): the margin grows by pushing the rejected answers "
                    "down faster, and the model may forget how to write the good ones. If samples get worse: "
                    "add the chosen answers' NLL (--rpo-alpha 1.0), lower --lr, raise --beta, or start from an "
                    "SFT model trained on the chosen answers.")
        return None

    def _rising(self) -> str | None:
        losses = [r["loss"] for r in self.rows]
        if len(losses) < self.rising_rows + 1:
            return None
        tail = losses[-(self.rising_rows + 1):]
        best = min(losses)
        rising = all(b > a for a, b in zip(tail, tail[1:]))
        if rising and tail[-1] - best > self.rise_tolerance * max(1.0, abs(best)):
            return (f"warning: the loss has risen for {self.rising_rows} logged windows in a row ({tail[0]:.4f} -> "
                    f"{tail[-1]:.4f} at step {self.rows[-1]['step']}; lowest {best:.4f}): training is diverging. "
                    "Lower --lr (e.g. 1e-7) or --beta (e.g. 0.05), or raise --grad-accum (e.g. 8).")
        return None
