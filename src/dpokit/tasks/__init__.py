"""Tasks: what differs between training objectives, behind one interface the loop drives.

A task owns its data (reading and checking it, tokenizing it), how examples become a batch, the
forward pass and its loss, and the metrics it logs. The loop (``train.py``) owns everything else:
the model, the optimizer, the data order, accumulation, logging, evaluation, checkpoints. Two tasks
exist: preference pairs (``preference.py``: DPO and its family) and supervised sequences
(``sft.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import nn

from dpokit.config import Config
from dpokit.diagnostics import Diagnostics

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Example = TypeVar("Example")  # one tokenized training example (a pair, a sequence)
Batch = TypeVar("Batch")  # model inputs of several examples, in a layout
Output = TypeVar("Output")  # what one forward pass over a batch gives


class Metrics(ABC, Generic[Output]):
    """Sums of a task's metrics over a logging window (or an evaluation), averaged on read."""

    @abstractmethod
    def add(self, out: Output) -> None: ...

    @abstractmethod
    def means(self, prefix: str = "") -> dict[str, float]:
        """The window's means under TRL's names (``prefix`` ``eval_`` for evaluation), all ranks."""

    def margins(self) -> list[float]:
        """Per-pair reward margins seen in the window (empty for tasks without pairs)."""
        return []

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The sums so far, JSON-serialisable: a checkpoint between two logged steps keeps them."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(ABC, Generic[Example, Batch, Output]):
    """One training objective. The loop calls, in this order: `load` (before any model is loaded, so
    bad data stops the run in seconds), `tokenize`, `prepare` (once the policy is loaded), then for
    each micro-batch `batch`, `forward`, `objective` and the metrics' `add`."""

    name: str  # "dpo", "sft": the progress bar's label and the checkpoint's task
    unit: str = "examples"  # what one example is called in messages ("pairs")
    train: list[Example]
    eval: list[Example]

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model_config = config.model  # the loaders' view: `tiny.resolve` puts paths in for names
        self.train, self.eval = [], []

    @abstractmethod
    def load(self, log: Callable[[str], None]) -> None:
        """Read and check the raw training and evaluation data."""

    @abstractmethod
    def tokenize(self, tokenizer: PreTrainedTokenizerBase, log: Callable[[str], None]) -> None:
        """Fill ``train`` and ``eval`` with tokenized examples."""

    def prepare(self, policy: nn.Module, device: torch.device, precision: str, total_steps: int,
                log: Callable[[str], None]) -> None:
        """Set up what needs the loaded policy (the reference, the layout the model allows)."""

    @abstractmethod
    def batch(self, examples: list[Example]) -> Batch:
        """Model inputs for ``examples`` on the run's device."""

    @abstractmethod
    def counts(self, batch: Batch) -> list[float]:
        """This batch's share of the step's normalisers (the loop sums them over micro-batches and
        ranks and hands the totals to `objective`)."""

    @abstractmethod
    def forward(self, scorer: nn.Module, batch: Batch, examples: list[Example], step: int) -> Output:
        """Log-probs and losses of a batch at optimizer step ``step`` (0-based)."""

    @abstractmethod
    def objective(self, out: Output, totals: list[float]) -> torch.Tensor:
        """The scalar to minimise for this micro-batch: its share of the whole step's loss, given the
        step's ``totals`` of `counts`, so batch B x accumulation K equals batch BK x 1."""

    @abstractmethod
    def metrics(self) -> Metrics[Output]:
        """An empty metrics window."""

    @abstractmethod
    def num_tokens(self, examples: list[Example]) -> int:
        """Tokens of these examples as TRL's ``num_tokens`` counts them."""

    @abstractmethod
    def lengths(self) -> list[int]:
        """Tokens of each training example (length grouping)."""

    def flops(self, examples: list[Example]) -> float:
        """Useful FLOPs of a training pass over ``examples`` as a prompt-once, padding-free layout
        needs them (``flops.py``): the MFU's numerator."""
        return 0.0

    def after_step(self, step: int) -> None:
        """Called after optimizer step ``step`` (counted from 1)."""

    def row_extras(self, step: int) -> dict[str, float]:
        """Fields added to the training row logged at ``step``."""
        return {}

    def diagnostics(self, total_steps: int, warmup_steps: int, print_fn: Callable[[str], None]) -> Diagnostics | None:
        """The watcher of this task's warning signs, or None."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep (a refreshed reference's weights)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def key(self) -> str | None:
        """What must be the same when a run resumes (the precomputed reference's cache key)."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """The banner's account of the objective (``loss sigmoid, reference: ...``)."""

    @abstractmethod
    def done(self, final: str) -> str:
        """The last line of a successful run."""


def make_task(name: str, config: Config) -> Task:
    """The task called ``name``: ``dpo`` (preference pairs) or ``sft``."""
    if name == "sft":
        from dpokit.tasks.sft import SFTTask

        return SFTTask(config)
    if name == "dpo":
        from dpokit.tasks.preference import PreferenceTask

        return PreferenceTask(config)
    raise ValueError(f"unknown task {name!r}")
