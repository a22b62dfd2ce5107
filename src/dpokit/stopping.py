"""Early stopping and the best checkpoint, as one pure, resumable unit.

The loop hands every evaluation row to `EarlyStopping.update`; it answers whether that step is
the best so far (the checkpoint to keep) and, through `should_stop` and `reason`, whether and why
the run ends. The Hugging Face Trainer's rules, so TRL recipes behave the same:

* the metric is ``metric_for_best_model``, ``eval_`` added when missing (``loss`` -> ``eval_loss``);
* ``greater_is_better`` None: false for a metric whose name ends in ``loss``, else true (accuracies,
  margins, rewards);
* the best is the strictly best value seen (it picks the best checkpoint);
* patience counts evaluations in a row that do not beat the best by more than ``threshold``;
  one that does resets it. A value that is missing or not finite (None in a row) is no improvement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dpokit.errors import ConfigError


def metric_key(name: str) -> str:
    """``loss`` -> ``eval_loss``; a name that starts with ``eval_`` is kept."""
    return name if name.startswith("eval_") else f"eval_{name}"


def infer_greater_is_better(name: str) -> bool:
    """The Trainer's rule: lower is better for losses, higher for everything else."""
    return not name.endswith("loss")


@dataclass
class EarlyStopping:
    """Tracks the best evaluation and the evaluations without improvement since it.

    ``patience`` None: never stops, only tracks the best (for ``load_best_model_at_end`` and
    keeping the best checkpoint out of the rotation).
    """

    metric: str = "eval_loss"
    greater_is_better: bool | None = None
    patience: int | None = None
    threshold: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without an improvement beyond the threshold
    bad_steps: list[int] = field(default_factory=list)  # their steps, for the reason

    def __post_init__(self) -> None:
        self.metric = metric_key(self.metric)
        if self.greater_is_better is None:
            self.greater_is_better = infer_greater_is_better(self.metric)
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"early_stopping_patience {self.patience}: must be at least 1\n"
                              "  fix: give a number of evaluations, or leave it unset to never stop early")
        if self.threshold < 0:
            raise ConfigError(f"early_stopping_threshold {self.threshold}: must be 0 or more")

    @classmethod
    def from_config(cls, train: Any) -> EarlyStopping:
        """From the ``train`` section (``metric_for_best_model``, ``greater_is_better``,
        ``early_stopping_patience``, ``early_stopping_threshold``)."""
        return cls(getattr(train, "metric_for_best_model", "eval_loss"), getattr(train, "greater_is_better", None),
                   getattr(train, "early_stopping_patience", None), getattr(train, "early_stopping_threshold", 0.0))

    def _better(self, value: float, than: float, margin: float = 0.0) -> bool:
        return value > than + margin if self.greater_is_better else value < than - margin

    def update(self, step: int, row: dict[str, Any]) -> bool:
        """Take the evaluation ``row`` of ``step``; returns True when it is the best so far.

        A row without the metric at all is a `ConfigError` naming the metrics it has (a typo in
        ``metric_for_best_model`` should not let a run go on without ever stopping).
        """
        if self.metric not in row:
            have = sorted(k for k in row if k.startswith("eval_"))
            raise ConfigError(f"metric_for_best_model '{self.metric}' is not in the evaluation metrics\n"
                              f"  fix: use one of {', '.join(have) or 'the eval_ metrics (give eval data)'}")
        value = row[self.metric]
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and self.best_value is not None and self._better(value, self.best_value, self.threshold):
            self.bad_evals, self.bad_steps = 0, []
        elif self.best_value is not None or not finite:
            self.bad_evals += 1
            self.bad_steps.append(step)
        if finite and (self.best_value is None or self._better(value, self.best_value)):
            self.best_value, self.best_step = float(value), step
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience

    def reason(self) -> str | None:
        """Why the run stops (a sentence for the log), or None while it goes on."""
        if not self.should_stop:
            return None
        best = "no finite value yet" if self.best_value is None else f"{self.best_value:.6g} at step {self.best_step}"
        beyond = f" by more than {self.threshold:g}" if self.threshold else ""
        plural = "s" if self.bad_evals != 1 else ""
        steps = ", ".join(str(s) for s in self.bad_steps)
        return (f"early stopping: {self.metric} has not improved on its best ({best}){beyond} for "
                f"{self.bad_evals} evaluation{plural} (step{plural} {steps}; patience {self.patience})")

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters of a checkpoint; the settings of this run (metric, patience,
        threshold, direction) stay as configured now."""
        self.best_value, self.best_step = state.get("best_value"), state.get("best_step")
        self.bad_evals, self.bad_steps = int(state.get("bad_evals", 0)), list(state.get("bad_steps", []))
        if state.get("metric") not in (None, self.metric) or state.get("greater_is_better") not in (
                None, self.greater_is_better):
            self.best_value, self.best_step, self.bad_evals, self.bad_steps = None, None, 0, []
