"""When the loop logs, evaluates and saves: resolved once from the config and the run's length.

As the Hugging Face Trainer reads them: ``logging_steps`` / ``eval_steps`` / ``save_steps`` below 1
are fractions of the run's optimizer steps, rounded up (``ceil(0.5 * 7) = 4``); each ``*_strategy`` is
``steps`` (every so many steps), ``epoch`` (at the end of each pass over the data) or ``no``. dpokit
also logs the first and last steps whatever the strategy, evaluates at the end of a run that
evaluates at all, and always writes ``final/``, so checkpoints are never written at the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpokit.config import Config


def every(value: float | None, total: int) -> int | None:
    """Steps between events for a ``*_steps`` value: None (or 0) for never, a fraction of ``total``
    rounded up, or the whole number itself."""
    if not value:
        return None
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


@dataclass(frozen=True)
class Intervals:
    total: int  # optimizer steps of the run
    steps_per_epoch: int
    log_every: int | None
    eval_every: int | None
    save_every: int | None
    strategies: tuple[str, str, str]  # logging, eval, save
    evaluates: bool  # whether the run evaluates at all (given eval data)

    @classmethod
    def resolve(cls, cfg: Config, total_steps: int, num_examples: int, world_size: int = 1) -> Intervals:
        per_step = cfg.train.batch_size * cfg.train.grad_accum * world_size
        strategies = (cfg.output.logging_strategy, cfg.train.eval_strategy, cfg.output.save_strategy)
        return cls(total_steps, max(1, math.ceil(num_examples / per_step)),
                   every(cfg.output.logging_steps, total_steps), every(cfg.train.eval_steps, total_steps),
                   every(cfg.output.save_steps, total_steps), strategies, cfg.train.eval_strategy != "no")

    def _due(self, step: int, strategy: str, steps: int | None) -> bool:
        if strategy == "epoch":
            return step % self.steps_per_epoch == 0
        return strategy == "steps" and steps is not None and step % steps == 0

    def log(self, step: int) -> bool:
        """Log the training metrics after optimizer step ``step`` (1-based)."""
        return step in (1, self.total) or self._due(step, self.strategies[0], self.log_every)

    def eval(self, step: int) -> bool:
        """Evaluate after ``step``, before the last one (the run's final evaluation follows the loop)."""
        return self.evaluates and step != self.total and self._due(step, self.strategies[1], self.eval_every)

    def save(self, step: int) -> bool:
        """Write ``checkpoint-{step}`` (never at the last step: ``final/`` is written then)."""
        return step != self.total and self._due(step, self.strategies[2], self.save_every)
