"""The SFT task: supervised fine-tuning, the stage before DPO (``dpokit sft``).

The loss is the negative log-likelihood of the trained tokens only (completions, assistant turns;
``data/sft.py`` masks the rest). A micro-batch's summed NLL is divided by the number of trained
tokens in the whole optimizer step (all micro-batches, all ranks), so batch B x accumulation K gives
the same update as BK x 1. Full fine-tuning or LoRA / QLoRA; ``<output>/final`` is a Hugging Face
model directory to pass to ``dpokit train --model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dpokit import dist
from dpokit.config import Config
from dpokit.data.sft import SequenceBatch, SFTExample, collate_sequences, load_sft_data, tokenize_items
from dpokit.data.tokenize import options, prepare_tokenizer
from dpokit.errors import DpokitError
from dpokit.flops import ModelCosts, model_costs, step_flops
from dpokit.logps import unwrap
from dpokit.tasks import Metrics, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class NLLOutput:
    """One forward pass over B sequences: their summed NLL and how many tokens it covers."""

    nll: torch.Tensor  # scalar: sum of -log p over the trained tokens
    tokens: int


class TokenMeans(Metrics[NLLOutput]):
    """Summed NLL and trained-token count over a logging window (or an evaluation); ``means``
    gives the mean NLL per trained token over all ranks."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.tokens = 0

    def add(self, out: NLLOutput) -> None:
        self.nll += float(out.nll.detach())
        self.tokens += out.tokens

    def means(self, prefix: str = "") -> dict[str, float]:
        nll, tokens = dist.all_reduce_sum(torch.tensor([self.nll, float(self.tokens)], dtype=torch.float64)).tolist()
        return {f"{prefix}loss": nll / max(1.0, tokens)}

    def state_dict(self) -> dict[str, Any]:
        return {"nll": self.nll, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nll, self.tokens = float(state["nll"]), int(state["tokens"])


class SFTTask(Task[SFTExample, SequenceBatch, NLLOutput]):
    """Next-token NLL of the trained tokens."""

    name = "sft"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.device = torch.device("cpu")
        self.pad_id = 0
        self.costs: ModelCosts | None = None

    def load(self, log: Callable[[str], None]) -> None:
        self.raw = load_sft_data(self.config.data, self.config.train.seed, log)  # bad data stops here

    def tokenize(self, tokenizer: PreTrainedTokenizerBase, log: Callable[[str], None]) -> None:
        prepare_tokenizer(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        cfg = self.config.data
        args = (tokenizer, cfg.max_length, cfg.max_prompt_length)
        train_items, eval_items = self.raw
        self.train, stats = tokenize_items(train_items, *args, **options(cfg))  # max_completion_length, ...
        log(f"train data: {stats.summary()}")
        if eval_items:
            self.eval, eval_stats = tokenize_items(eval_items, *args, **options(cfg))
            log(f"eval data: {eval_stats.summary()}")
        if not self.train:
            raise DpokitError("no training examples left after tokenization; raise --max-length or check the data")

    def prepare(self, policy: nn.Module, device: torch.device, precision: str, total_steps: int,
                log: Callable[[str], None]) -> None:
        self.device = device
        self.costs = model_costs(unwrap(policy).config)

    def batch(self, examples: list[SFTExample]) -> SequenceBatch:
        return collate_sequences(examples, self.pad_id).to(self.device)

    def counts(self, batch: SequenceBatch) -> list[float]:
        return [float(batch.target_ids.numel())]

    def forward(self, scorer: nn.Module, batch: SequenceBatch, examples: list[SFTExample], step: int) -> NLLOutput:
        return NLLOutput(-scorer(batch).logps.sum(), int(batch.target_ids.numel()))

    def objective(self, out: NLLOutput, totals: list[float]) -> torch.Tensor:
        return out.nll / max(1.0, totals[0])

    def metrics(self) -> TokenMeans:
        return TokenMeans()

    def num_tokens(self, examples: list[SFTExample]) -> int:
        return sum(len(e.input_ids) for e in examples)

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.train]

    def flops(self, examples: list[SFTExample]) -> float:
        if self.costs is None:
            return 0.0
        return step_flops([(len(e.input_ids), 0, 0) for e in examples], self.costs,
                          frozen_weights=self.config.model.lora)

    def describe(self) -> str:
        return "loss: mean NLL of the completion tokens"

    def done(self, final: str) -> str:
        return f"saved the fine-tuned model to {final}; align it with `dpokit train --model {final} --data PREFERENCES`"
