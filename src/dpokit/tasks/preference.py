"""The preference task: DPO and its family on (prompt, chosen, rejected) pairs.

Per micro-batch the policy and the reference score both answers of each pair (``logps.py``, in the
layout of ``data/collate.py``); the registered loss (``losses.py``) turns the four log-prob tensors
into per-pair losses and implicit rewards. A micro-batch's pair losses are divided by the number of
pairs in the whole optimizer step (all micro-batches, all ranks) and its token terms (ORPO's NLL,
``--rpo-alpha``) by the step's chosen completion tokens, so batch B x accumulation K gives the same
update as batch BK x 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dpokit import dist
from dpokit.config import Config
from dpokit.data.cache import tokenize_train_eval
from dpokit.data.collate import PreferenceBatch, collate
from dpokit.data.pairs import TokenizedPair
from dpokit.data.sources import load_train_eval
from dpokit.data.tokenize import prepare_tokenizer
from dpokit.diagnostics import Diagnostics
from dpokit.errors import DpokitError
from dpokit.flops import ModelCosts, model_costs, step_flops
from dpokit.logps import SequenceLogps, layout_for, unwrap
from dpokit.losses import (
    LossInputs,
    LossOutput,
    beta_at,
    get_loss,
    ignored_settings,
    needs_prompt_logps,
    rewards_per_token,
)
from dpokit.models import base_model_warning
from dpokit.reference import AdapterDisabled, FrozenModel, Reference, build_reference
from dpokit.tasks import Metrics, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def loss_inputs(policy: SequenceLogps, reference: SequenceLogps | None, beta: float) -> LossInputs:
    b = policy.num_pairs
    return LossInputs(
        policy_chosen=policy.chosen, policy_rejected=policy.rejected,
        reference_chosen=None if reference is None else reference.chosen,
        reference_rejected=None if reference is None else reference.rejected,
        chosen_tokens=policy.tokens[:b], rejected_tokens=policy.tokens[b:], beta=beta,
        chosen_prompt=policy.prompt_logps, chosen_prompt_tokens=policy.prompt_tokens,  # ORPO's prompt NLL
    )


@dataclass
class PairOutput:
    """One forward pass over B pairs: the loss's per-pair output and the policy's log-probs."""

    loss: LossOutput
    policy: SequenceLogps


class PairMetrics(Metrics[PairOutput]):
    """Sums of per-pair metrics over a logging window (or an evaluation), averaged on read.

    ``loss`` is what the step minimises: the mean pair loss plus, for losses with a token term
    (ORPO's NLL, ``--rpo-alpha``, ``sft``), that term per chosen completion token, also logged
    alone as ``nll_loss``.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.pairs = 0
        self.token_loss: float | None = None  # summed token term, None when the loss has none
        self.chosen_tokens = 0
        self.margin_values: list[float] = []

    def add(self, out: PairOutput) -> None:
        loss, policy = out.loss, out.policy
        b = policy.num_pairs
        chosen, rejected = loss.chosen_rewards.float(), loss.rejected_rewards.float()
        values = {
            "loss": loss.losses.detach().sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/margins": (chosen - rejected).sum(),
            "rewards/accuracies": (chosen > rejected).float().sum(),
            "tokens/chosen": policy.tokens[:b].sum(),
            "tokens/rejected": policy.tokens[b:].sum(),
            "logps/chosen": policy.chosen.detach().sum(),
            "logps/rejected": policy.rejected.detach().sum(),
            "logits/chosen": policy.logits_mean[:b].sum(),
            "logits/rejected": policy.logits_mean[b:].sum(),
            "policy_preference": (policy.mean[:b] > policy.mean[b:]).float().sum(),
        }
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.pairs += b
        self.margin_values += (chosen - rejected).tolist()
        if loss.token_loss is not None:
            self.token_loss = (self.token_loss or 0.0) + float(loss.token_loss.detach())
            self.chosen_tokens += policy.nll_tokens  # the tokens the NLL covers (prompts too, when scored)

    def means(self, prefix: str = "") -> dict[str, float]:
        extra = [self.token_loss or 0.0, float(self.chosen_tokens)]
        totals = torch.tensor([*self.sums.values(), *extra, float(self.pairs)], dtype=torch.float64)
        dist.all_reduce_sum(totals)
        n = max(1.0, float(totals[-1]))
        out = {f"{prefix}{k}": float(v) / n for k, v in zip(self.sums, totals[:-3])}
        if self.token_loss is not None:
            nll = float(totals[-3]) / max(1.0, float(totals[-2]))
            out[f"{prefix}loss"] += nll
            out[f"{prefix}nll_loss"] = nll
        return out

    def margins(self) -> list[float]:
        return self.margin_values

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "pairs": self.pairs, "token_loss": self.token_loss,
                "chosen_tokens": self.chosen_tokens, "margins": self.margin_values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.pairs = dict(state["sums"]), int(state["pairs"])
        self.token_loss, self.chosen_tokens = state["token_loss"], int(state["chosen_tokens"])
        self.margin_values = list(state["margins"])


class PreferenceTask(Task[TokenizedPair, PreferenceBatch, PairOutput]):
    """DPO and its family: a registered loss of policy and reference log-probs."""

    name = "dpo"
    unit = "pairs"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.spec = get_loss(config.loss.loss_type)
        self.reference = Reference()
        self.device = torch.device("cpu")
        self.pad_id = 0
        self.total_steps = 1
        self.costs: ModelCosts | None = None  # the policy's, for MFU
        self.reference_costs: ModelCosts | None = None  # a reference model's forward during training

    def load(self, log: Callable[[str], None]) -> None:
        self.raw = load_train_eval(self.config.data, self.config.train.seed, log)  # bad data stops here

    def tokenize(self, tokenizer: PreTrainedTokenizerBase, log: Callable[[str], None]) -> None:
        prepare_tokenizer(tokenizer)
        if (warning := base_model_warning(self.config.model, tokenizer)) is not None:
            log(warning)
        self.pad_id = tokenizer.pad_token_id
        # Tokenized once: a second run with the same data, tokenizer and settings reads the cache.
        self.train, self.eval = tokenize_train_eval(self.config.data, *self.raw, tokenizer, log)
        if not self.train:
            raise DpokitError("no training pairs left after tokenization; raise --max-length or check the data")

    def prepare(self, policy: nn.Module, device: torch.device, precision: str, total_steps: int,
                log: Callable[[str], None]) -> None:
        cfg = self.config
        self.device, self.total_steps = device, total_steps
        if ignored := ignored_settings(cfg.loss):
            log(f"note: loss '{self.spec.name}' does not use {', '.join(ignored)}; it has no effect")
        cfg.data.layout, why = layout_for(policy, cfg.data.layout, cfg.data.max_length)
        if why is not None:
            log(f"note: {why}")
        self.reference = build_reference(
            self.model_config, self.spec.name, self.spec.needs_reference, policy, device, precision,
            self.batch, self.train + self.eval, cfg.train.batch_size, log)
        self.costs = model_costs(unwrap(policy).config)
        if isinstance(self.reference, FrozenModel):
            self.reference_costs = model_costs(unwrap(self.reference.model).config)
        elif isinstance(self.reference, AdapterDisabled):
            self.reference_costs = self.costs  # the base's forward, adapters off

    def batch(self, examples: list[TokenizedPair]) -> PreferenceBatch:
        return collate(examples, self.config.data.layout, self.pad_id,
                       prompt_logps=needs_prompt_logps(self.config.loss)).to(self.device)

    def counts(self, batch: PreferenceBatch) -> list[float]:
        return [float(batch.num_pairs), float(batch.nll_tokens)]  # NLL tokens: prompts too, when scored

    def beta(self, step: int) -> float:
        loss = self.config.loss
        return beta_at(loss.beta, loss.beta_schedule, step, self.total_steps)

    def forward(self, scorer: nn.Module, batch: PreferenceBatch, examples: list[TokenizedPair], step: int) -> PairOutput:
        policy = scorer(batch)
        reference = self.reference.logps(batch, examples)
        return PairOutput(self.spec.fn(loss_inputs(policy, reference, self.beta(step)), self.config.loss), policy)

    def objective(self, out: PairOutput, totals: list[float]) -> torch.Tensor:
        step_pairs, step_tokens = totals
        loss = out.loss.losses.sum() / step_pairs
        if out.loss.token_loss is not None:
            loss = loss + out.loss.token_loss / max(1.0, step_tokens)
        return loss

    def metrics(self) -> PairMetrics:
        return PairMetrics()

    def num_tokens(self, examples: list[TokenizedPair]) -> int:
        return sum(p.num_tokens for p in examples)  # as TRL counts, whatever the layout

    def lengths(self) -> list[int]:
        return [p.num_tokens for p in self.train]

    def flops(self, examples: list[TokenizedPair]) -> float:
        if self.costs is None:
            return 0.0
        lengths = [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in examples]
        return step_flops(lengths, self.costs, self.reference_costs, frozen_weights=self.config.model.lora)

    def after_step(self, step: int) -> None:
        self.reference.on_step(step)  # TR-DPO's reference refresh, when configured

    def row_extras(self, step: int) -> dict[str, float]:
        return {"beta": self.beta(step - 1)}

    def diagnostics(self, total_steps: int, warmup_steps: int, print_fn: Callable[[str], None]) -> Diagnostics:
        loss = self.config.loss
        return Diagnostics(total_steps, warmup_steps, loss.beta, print_fn,
                           per_token=rewards_per_token(loss.loss_type))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.reference.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.reference.load_state_dict(state)

    def key(self) -> str | None:
        return self.reference.key()

    def describe(self) -> str:
        loss = self.config.loss
        settings = ", ".join(f"{k} {getattr(loss, k)}" for k in ("beta", *self.spec.settings))
        return f"loss {self.spec.name} ({self.spec.summary}; {settings}), reference: {self.reference.describe()}"

    def done(self, final: str) -> str:
        return f"saved the aligned model to {final}"
