"""The order in which training examples are seen: one shuffled pass after another.

The order is global: every process computes the same permutation of all examples for an epoch,
each optimizer step takes the next ``batch_size x grad_accum x world_size`` examples of it, and
process ``r`` trains on every ``world_size``-th example of each micro-batch's share, starting at
``r``. So 2 processes x batch B see, step by step, exactly the examples 1 process x batch 2B sees,
and ``(epoch, position)`` is the whole state: a checkpoint taken on N processes resumes on M.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class DataStream:
    """Endless stream of example indices; ``epoch`` and ``position`` (global) are its state."""

    size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    position: int = 0  # examples of this epoch's order already taken, by all processes together
    lengths: list[int] | None = None  # tokens per example: given, batches are grouped by length
    group: int = 1  # examples per length-sorted mega-batch
    key: str = ""  # a fingerprint of the data (`checkpoint.data_key`): a resume must read the same

    def order(self, epoch: int) -> list[int]:
        """The permutation of all examples for ``epoch`` (the same on every process)."""
        order = list(range(self.size))
        random.Random(self.seed + epoch).shuffle(order)
        if self.lengths is not None and self.group > 1:
            # Length grouping: sort each mega-batch of shuffled examples, longest first, so that the
            # micro-batches cut from it hold examples of similar length (less padding).
            lengths = self.lengths
            order = [i for start in range(0, len(order), self.group)
                     for i in sorted(order[start : start + self.group], key=lambda i: -lengths[i])]
        return order

    def _take_global(self, n: int) -> list[int]:
        out: list[int] = []
        order = self.order(self.epoch)
        while len(out) < n:
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self.order(self.epoch)
            step = min(n - len(out), len(order) - self.position)
            out += order[self.position : self.position + step]
            self.position += step
        return out

    def take(self, batch_size: int, micro_batches: int = 1) -> list[list[int]]:
        """This process's ``micro_batches`` micro-batches of ``batch_size`` example indices each."""
        share = batch_size * self.world_size
        return [self._take_global(share)[self.rank :: self.world_size] for _ in range(micro_batches)]

    def epochs_done(self) -> float:
        """Passes over the data so far (fractional)."""
        return self.epoch + self.position / max(1, self.size)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}
