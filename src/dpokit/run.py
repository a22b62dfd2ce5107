"""What a training run holds: `Run`, built by `train.setup`, driven by `train.fit`, and saved and
restored whole by ``checkpoint.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from dpokit.config import Config
from dpokit.data.stream import DataStream
from dpokit.dist import DistInfo
from dpokit.tasks import Metrics, Task
from dpokit.tracking import MetricsLog

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class TrainState:
    """Counters of the run, micro-steps and optimizer steps apart."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done
    tokens_seen: int = 0  # TRL's num_tokens: prompt + chosen and prompt + rejected of each pair (SFT: rows)


class Watcher(Protocol):
    """What the step and the checkpoints need of the run's watch (``watch.Watch``): to hear of each
    step and each checkpoint written (the mirror), the best checkpoint (kept out of the rotation),
    and its state."""

    def step_done(self, flops: float) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def best_checkpoint(self, out_dir: Path) -> Path | None: ...

    def saved(self, path: Path, removed: list[Path]) -> None: ...


@dataclass
class Run:
    """Everything a training run holds; a checkpoint saves what the next step depends on."""

    config: Config  # resolved: the precision that runs, the layout the model allows
    given: dict[str, Any]  # the config as given (precision resolved): what a resume must match
    task: Task
    info: DistInfo
    device: torch.device
    precision: str
    tokenizer: PreTrainedTokenizerBase
    policy: nn.Module
    scorer: nn.Module  # SequenceScorer(policy), wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # loss scaling under fp16; a pass-through otherwise
    stream: DataStream
    state: TrainState
    total_steps: int
    warmup_steps: int
    out_dir: Path
    log: MetricsLog
    window: Metrics  # the metrics of the logging window in progress
    watch: Watcher  # `watch.Watch`: throughput, margin logs, diagnostics, early stopping, the mirror
    weights_step: int | None = None  # the step whose weights the policy holds, when not the last
