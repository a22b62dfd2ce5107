"""The preference losses' formulas: pure functions of per-pair log-prob tensors.

Each formula takes `LossInputs` (already in the form its `dpokit.losses.LossSpec` declares: sums or
per-token means) and returns the (B,) per-pair losses; the registry (`dpokit.losses`) adds the NLL
terms and the logged rewards. Notation (Rafailov et al. 2023): ``pi_w = log pi(y_w|x)`` summed over
completion tokens, likewise ``pi_l``, ``ref_w``, ``ref_l``; ``beta`` is the KL strength (IPO's tau).

Numerics. The registry runs every formula in float64 (`widen`): the inputs are (B,) tensors, so it
costs nothing, and float32 sums near -4000 keep their last digits through the differences. The
log-ratio is still formed in the accurate order, ``h = (pi_w - ref_w) - (pi_l - ref_l)``: two
differences of close numbers (exact in floating point) and then one of small ones, where
``(pi_w - pi_l) - (ref_w - ref_l)`` rounds the large difference of chosen and rejected first.
DiscoPOP and ORPO use stable forms that stay finite, with finite gradients, for every finite input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
    per_token: bool = False  # True when the log-probs above are per-token means (see `with_logps`)
    chosen_prompt: torch.Tensor | None = None  # (B,) summed log-probs of the chosen rows' prompt tokens, when asked
    chosen_prompt_tokens: torch.Tensor | None = None  # (B,) how many prompt tokens those sums cover


@dataclass
class LossOutput:
    """Per-pair losses and logged rewards; ``token_loss`` is a sum over tokens (or None).

    The loop divides ``losses.sum()`` by the number of pairs in the optimizer step and
    ``token_loss`` by the number of tokens its NLL covers in the step (the chosen completions, and
    their prompts under ``orpo_prompt_nll``), so that batch B with K accumulation steps gives the
    same update as batch BK. The rewards are TRL's (`logged_rewards`).
    """

    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) detached
    rejected_rewards: torch.Tensor  # (B,) detached
    token_loss: torch.Tensor | None = None  # scalar sum over tokens


# ---- helpers ------------------------------------------------------------------------------------

_LOG_PROBS = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected", "chosen_prompt")


def widen(x: LossInputs) -> LossInputs:
    """``x`` with its log-probs in float64 (float32 on MPS, which has no float64)."""
    dtype = torch.float32 if x.policy_chosen.device.type == "mps" else torch.float64
    return replace(x, **{k: None if getattr(x, k) is None else getattr(x, k).to(dtype) for k in _LOG_PROBS})


def with_logps(x: LossInputs, kind: str) -> LossInputs:
    """``x`` with its log-probs as per-sequence sums (``"sum"``) or per-token means (``"mean"``).
    The prompt sums stay sums: only the NLL reads them."""
    if (kind == "mean") == x.per_token:
        return x
    n_w, n_l = x.chosen_tokens.clamp(min=1), x.rejected_tokens.clamp(min=1)  # (B,), (B,)
    if kind == "mean":
        def scale(t: torch.Tensor | None, n: torch.Tensor) -> torch.Tensor | None:
            return None if t is None else t / n
    else:
        def scale(t: torch.Tensor | None, n: torch.Tensor) -> torch.Tensor | None:
            return None if t is None else t * n
    return replace(
        x, policy_chosen=scale(x.policy_chosen, n_w), policy_rejected=scale(x.policy_rejected, n_l),
        reference_chosen=scale(x.reference_chosen, n_w), reference_rejected=scale(x.reference_rejected, n_l),
        per_token=kind == "mean")


def chosen_nll(x: LossInputs, prompt: bool = False) -> torch.Tensor:
    """Sum of ``-log p`` over the chosen completions' tokens (and their prompts' with ``prompt``);
    the loop divides it by the step's count of those tokens."""
    nll = -with_logps(x, "sum").policy_chosen.sum()
    if prompt:
        if x.chosen_prompt is None:
            raise ValueError("the prompt's NLL needs the prompt log-probs: collate with prompt_logps=True")
        nll = nll - x.chosen_prompt.sum()
    return nll


def log_ratios(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``pi_w - ref_w`` and ``pi_l - ref_l``: each a difference of two close numbers."""
    return x.policy_chosen - x.reference_chosen, x.policy_rejected - x.reference_rejected  # (B,), (B,)


def margin(x: LossInputs) -> torch.Tensor:
    """``h = (pi_w - ref_w) - (pi_l - ref_l)``, in the order that keeps float precision."""
    a, b = log_ratios(x)
    return a - b  # (B,)


def logged_rewards(x: LossInputs, with_reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards TRL 1.16 logs, whatever form the loss itself uses.

    With a reference (``DPOTrainer``, every loss type, IPO included): ``beta * (sum log pi - sum log
    pi_ref)`` (Rafailov et al. 2023, section 5). Reference-free (``CPOTrainer`` with SimPO,
    ``ORPOTrainer``): ``beta * mean log pi``, the per-token mean over the completion.
    """
    if with_reference:
        a, b = log_ratios(with_logps(x, "sum"))
        return (x.beta * a).detach(), (x.beta * b).detach()
    m = with_logps(x, "mean")
    return (x.beta * m.policy_chosen).detach(), (x.beta * m.policy_rejected).detach()


def _smoothed(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(logits) - eps log sigmoid(-logits)`` (cDPO's label smoothing)."""
    return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


_LN2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate and with finite gradients (Maechler 2012,
    "Accurately computing log(1 - exp(-|a|))"): ``log(-expm1(x))`` above ``-ln 2``, ``log1p(-exp(x))``
    below. Each branch is evaluated only where it is finite, so the unused one adds no NaN to the
    gradient."""
    below, above = x.clamp(max=-_LN2), x.clamp(min=-_LN2)
    return torch.where(x < -_LN2, torch.log1p(-torch.exp(below)), torch.log(-torch.expm1(above)))


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` for ``p = exp(mean_logp)``: ``mean_logp - log1mexp(mean_logp)``.

    At ``p = 1`` exactly (an empty answer, or every token certain) the odds are infinite, so the
    value is taken a hair below (``sqrt(tiny)`` of the dtype) while the gradient passes through
    unchanged: no sequence loses its gradient. In float64 the product of the saturated
    ``sigmoid`` and ``1 / (1 - p)`` stays representable there, and tends to its finite limit.
    """
    tiny = torch.finfo(mean_logp.dtype).tiny ** 0.5
    m = mean_logp + (mean_logp.clamp(max=-tiny) - mean_logp).detach()  # value below 0, gradient of identity
    return m - log1mexp(m)


# ---- the losses (each returns the (B,) per-pair losses) -----------------------------------------


def sigmoid_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """DPO, Rafailov et al. 2023, eq. 7: ``-log sigmoid(beta * h)``.

    With ``label_smoothing = eps > 0`` this is conservative DPO (Mitchell 2023, "A note on DPO with
    noisy preferences"): ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
    """
    return _smoothed(x.beta * margin(x), cfg.label_smoothing)


def robust_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """Robust DPO, Chowdhury et al. 2024 ("Provably Robust DPO"): unbiased under label flips at rate eps.

    ``((1 - eps)(-log sigmoid(beta h)) - eps (-log sigmoid(-beta h))) / (1 - 2 eps)``.
    """
    logits = x.beta * margin(x)  # (B,)
    eps = cfg.label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


def ipo_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """IPO, Azar et al. 2023, eq. 17: ``(h - 1 / (2 tau))^2`` with ``tau = beta``.

    Per-token means by default (as TRL and LLaMA-Factory); ``sequence_logps: sum`` gives the
    reference implementation's sums.
    """
    return (margin(x) - 1 / (2 * x.beta)) ** 2


def hinge_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """Hinge loss of SLiC (Zhao et al. 2023) as used by RSO (Liu et al. 2023): ``relu(1 - beta h)``."""
    return torch.relu(1 - x.beta * margin(x))


def exo_pair_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """EXO, Ji et al. 2024, eq. 16 (pairwise): reverse KL from the eps-smoothed label to the model.

    ``sigmoid(z) (log sigmoid(z) - log(1 - eps)) + sigmoid(-z) (log sigmoid(-z) - log eps)``,
    ``z = beta h``; ``eps = label_smoothing``, or 1e-3 (the paper's value) when that is 0.
    """
    eps = cfg.label_smoothing or 1e-3
    z = x.beta * margin(x)  # (B,)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def nca_pair_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """NCA, Chen et al. 2024 ("Noise Contrastive Alignment"), pairwise: raises the chosen reward itself.

    ``-log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)``, ``r = beta (pi - ref)``.
    """
    r_w, r_l = (x.beta * r for r in log_ratios(x))  # (B,), (B,)
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


def sppo_hard_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """SPPO, Wu et al. 2024, eq. 4.7 with hard win probabilities (1 for chosen, 0 for rejected).

    ``(pi_w - ref_w - 1/(2 beta))^2 + (pi_l - ref_l + 1/(2 beta))^2``.
    """
    a, b = log_ratios(x)  # (B,), (B,)
    return (a - 0.5 / x.beta) ** 2 + (b + 0.5 / x.beta) ** 2


def apo_zero_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """APO-zero, D'Oosterlinck et al. 2024, eq. 7: chosen answers are better than the model's own.

    ``(1 - sigmoid(beta (pi_w - ref_w))) + sigmoid(beta (pi_l - ref_l))``.
    """
    a, b = log_ratios(x)  # (B,), (B,)
    return (1 - torch.sigmoid(x.beta * a)) + torch.sigmoid(x.beta * b)


def apo_down_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """APO-down, D'Oosterlinck et al. 2024, eq. 8: chosen answers are worse than the model's own.

    ``sigmoid(beta (pi_w - ref_w)) + (1 - sigmoid(beta h))``.
    """
    a, _ = log_ratios(x)  # (B,)
    return torch.sigmoid(x.beta * a) + (1 - torch.sigmoid(x.beta * margin(x)))


def discopop_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """DiscoPOP (log-ratio modulated loss), Lu et al. 2024, eq. 5, with ``z = beta h``.

    ``(1 - m) (-log sigmoid(z)) + m exp(-z)``, ``m = sigmoid(z / tau)``, ``tau = discopop_tau``,
    computed as ``sigmoid(-z / tau) (-log sigmoid(z)) + exp(log sigmoid(z / tau) - z)``: the product
    ``m exp(-z)`` never forms ``0 * inf``. Finite with finite gradients for every finite z when
    ``tau <= 1`` (the paper's 0.05); with ``tau > 1`` the true loss grows as ``exp(-z (1 - 1/tau))``.
    """
    z = x.beta * margin(x)  # (B,)
    tau = cfg.discopop_tau
    return torch.sigmoid(-z / tau) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)


def simpo_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """SimPO, Meng et al. 2024, eq. 6 (reference-free, length-normalised, target margin gamma).

    ``-log sigmoid(beta (pi_w/|y_w| - pi_l/|y_l|) - gamma)`` with ``gamma = simpo_gamma``; label
    smoothing applies as in cDPO (as TRL's CPO trainer does).
    """
    return _smoothed(x.beta * (x.policy_chosen - x.policy_rejected) - cfg.simpo_gamma, cfg.label_smoothing)


def orpo_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """ORPO, Hong et al. 2024, eq. 6-7: the odds-ratio term ``-lambda log sigmoid(log odds_w - log odds_l)``.

    The odds come from per-token mean log-probs (`log_odds`); ORPO's NLL term L_SFT (eq. 6) is the
    spec's ``nll = 1``, over the completion (the paper) or also the prompt (``orpo_prompt_nll``).
    """
    return -cfg.orpo_lambda * F.logsigmoid(log_odds(x.policy_chosen) - log_odds(x.policy_rejected))


def sft_loss(x: LossInputs, cfg: LossConfig) -> torch.Tensor:
    """No pair loss: the spec's ``nll = 1`` is the whole loss (the chosen answers' NLL). For
    combinations (MPO)."""
    return torch.zeros_like(x.policy_chosen)
