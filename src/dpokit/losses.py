"""Preference losses: pure functions of log-prob tensors, registered by name.

Every loss has the same signature, ``fn(inputs: LossInputs, cfg: LossConfig) -> LossOutput``, and
declares in its `LossSpec` what it needs (a reference model or not). The training loop looks a
loss up by name and never branches on it.

Notation (Rafailov et al. 2023): ``pi_w = log pi(y_w|x)`` summed over completion tokens, likewise
``pi_l``, ``ref_w``, ``ref_l``; ``h = (pi_w - pi_l) - (ref_w - ref_l)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dpokit.config import LossConfig


@dataclass
class LossInputs:
    """Log-probs of B pairs. Sums over completion tokens, with token counts for per-token means."""

    policy_chosen: torch.Tensor  # (B,)
    policy_rejected: torch.Tensor  # (B,)
    reference_chosen: torch.Tensor | None  # (B,) or None for reference-free losses
    reference_rejected: torch.Tensor | None  # (B,)
    chosen_tokens: torch.Tensor  # (B,)
    rejected_tokens: torch.Tensor  # (B,)
    beta: float  # the beta in force at this step (beta schedules change it)


@dataclass
class LossOutput:
    """Per-pair losses and implicit rewards; ``token_loss`` is a sum over tokens (or None).

    The loop divides ``losses.sum()`` by the number of pairs in the optimizer step and
    ``token_loss`` by the number of chosen completion tokens in the step, so that batch B with
    K accumulation steps gives the same update as batch BK.
    """

    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) detached
    rejected_rewards: torch.Tensor  # (B,) detached
    token_loss: torch.Tensor | None = None  # scalar sum over tokens


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: the function and what it needs."""

    name: str
    fn: Callable[[LossInputs, LossConfig], LossOutput]
    needs_reference: bool
    summary: str


def implicit_rewards(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``beta * (pi - ref)`` for chosen and rejected (Rafailov et al. 2023, section 5)."""
    chosen = x.beta * (x.policy_chosen - x.reference_chosen)
    rejected = x.beta * (x.policy_rejected - x.reference_rejected)
    return chosen.detach(), rejected.detach()


def _h(x: LossInputs) -> torch.Tensor:
    return (x.policy_chosen - x.policy_rejected) - (x.reference_chosen - x.reference_rejected)  # (B,)


def sigmoid_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """DPO, Rafailov et al. 2023, eq. 7: ``-log sigmoid(beta * h)``.

    With ``label_smoothing = eps > 0`` this is conservative DPO (Mitchell 2023):
    ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
    """
    logits = x.beta * _h(x)
    eps = cfg.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return LossOutput(losses, *implicit_rewards(x))


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec("sigmoid", sigmoid_loss, needs_reference=True, summary="DPO (cDPO with label_smoothing)"),
    ]
}


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``; a clear error listing the others if there is none."""
    if name not in LOSSES:
        from dpokit.errors import ConfigError

        raise ConfigError(f"unknown loss_type {name!r}; supported: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
