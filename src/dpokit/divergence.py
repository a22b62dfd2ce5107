"""Divergence: a run whose logged rows are far past healthy bounds is stopped (or warned about)
before it saves a broken model as ``final/``.

A logged training row is *out of bounds* when

* its loss is above ``loss_factor`` (10) times the first logged loss (at least 1): DPO starts at
  ln 2 = 0.693, so above 10; IPO, whose loss starts at (1/(2 beta))^2, scales with it; or
* the chosen answers' log-prob per token (``logps/chosen / tokens/chosen``, preference tasks) is
  below ``min_logp_per_token`` (-30 nats): a model that gave each token the chance of a uniform draw
  from 10^13 words. Healthy models sit near -1 to -3, an untrained one at ln(1 / vocabulary) (about
  -11 for 50,000 tokens); a run with ``--lr 10`` reaches -9,000 in four steps.

``rows`` (3) out-of-bounds rows in a row are a divergence; so is an out-of-bounds last row when the
run ends. With ``--on-divergence stop`` (the default) the run stops there with `Diverged` (exit 1),
before any later checkpoint or ``final/`` is written, and names the last checkpoint saved while the
rows were healthy; with ``warn`` it prints the warning once and goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpokit.errors import RuntimeFault


class Diverged(RuntimeFault):
    """The run diverged and was stopped before saving a broken model."""


@dataclass
class Divergence:
    """Watches logged training rows for a divergence (see the module's docstring for the bounds)."""

    mode: str = "stop"  # or "warn"
    rows: int = 3
    loss_factor: float = 10.0
    min_logp_per_token: float = -30.0
    first_loss: float | None = None
    bad: list[dict[str, float]] = field(default_factory=list)  # the out-of-bounds rows in a row
    last_good_step: int = 0
    warned: bool = False

    def why(self, row: dict[str, Any]) -> str | None:
        """What is out of bounds in ``row`` (a training row), or None."""
        loss = row.get("loss")
        if not isinstance(loss, (int, float)):
            return None
        if self.first_loss is None:
            self.first_loss = float(loss)
        if not math.isfinite(loss):
            return f"loss {loss}"
        bound = self.loss_factor * max(1.0, abs(self.first_loss))
        if loss > bound:
            return f"loss {loss:.6g} > {bound:.3g} ({self.loss_factor:g} x its start {self.first_loss:.4g})"
        logps, tokens = row.get("logps/chosen"), row.get("tokens/chosen")
        if isinstance(logps, (int, float)) and isinstance(tokens, (int, float)) and tokens > 0:
            per_token = logps / tokens
            if per_token < self.min_logp_per_token:
                return (f"logps/chosen {logps:.6g} ({per_token:.4g} nats per token < "
                        f"{self.min_logp_per_token:g})")
        return None

    def observe(self, row: dict[str, Any], out_dir: Path, say: Callable[[str], None]) -> None:
        """Take one logged row; after ``rows`` out-of-bounds rows in a row raise `Diverged` (``stop``)
        or warn once (``warn``)."""
        why = self.why(row)
        if why is None:
            self.bad.clear()
            self.last_good_step = int(row.get("step", 0))
            return
        self.bad.append({"step": int(row.get("step", 0)), "why": why})
        if len(self.bad) >= self.rows:
            self._diverged(out_dir, say)

    def at_end(self, out_dir: Path, say: Callable[[str], None]) -> None:
        """Before ``final/`` is saved: a run whose last logged row is out of bounds has diverged."""
        if self.bad:
            self._diverged(out_dir, say)

    def _diverged(self, out_dir: Path, say: Callable[[str], None]) -> None:
        steps = ", ".join(str(r["step"]) for r in self.bad)
        last = self.bad[-1]
        what = f"training diverged: {last['why']} at step {last['step']} (out of bounds at logged steps {steps})"
        if self.mode == "warn":
            if not self.warned:
                say(f"warning: {what}; --on-divergence warn: the run goes on, and its final/ may be broken")
                self.warned = True
            return
        text, good = self.kept(out_dir)
        again = f"start again from it with --weights {good} and a new --output" if good else "start again"
        raise Diverged(f"{what}; the run is stopped and no final/ is saved. {text}\n  fix: lower --lr (e.g. by "
                       f"10x) or --beta, or raise --warmup-ratio, and {again} (--on-divergence warn trains on "
                       "regardless)")

    def kept(self, out_dir: Path) -> tuple[str, Path | None]:
        """The sentence naming the last checkpoint saved while the rows were healthy, and its path."""
        from dpokit.checkpoint import checkpoints, step_of

        found = checkpoints(out_dir)
        good = [p for p in found if (step_of(p) or 0) <= self.last_good_step]
        later = [p.name for p in found if p not in good]
        text = (f"The last good checkpoint is {good[-1]} (step {step_of(good[-1])})" if good else
                "No checkpoint was saved before it diverged")
        if later:
            text += f"; {', '.join(later)} {'was' if len(later) == 1 else 'were'} saved while diverging"
        return text + ".", good[-1] if good else None

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss, "bad": self.bad, "last_good_step": self.last_good_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_loss = state.get("first_loss")
        self.bad = list(state.get("bad") or [])
        self.last_good_step = int(state.get("last_good_step") or 0)


def last_checkpoint(out_dir: Path) -> str:
    """Which checkpoint a stopped run keeps, in words: "the last checkpoint, OUT/checkpoint-N, is
    intact", or that none was saved."""
    from dpokit.checkpoint import checkpoints

    found = checkpoints(out_dir) if out_dir.is_dir() else []
    return f"the last checkpoint, {found[-1]}, is intact" if found else "no checkpoint was saved yet"
