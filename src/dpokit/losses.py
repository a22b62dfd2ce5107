"""Preference losses: pure functions of log-prob tensors, registered by name.

Every loss is registered as a `LossSpec` that declares what it needs: a reference model or not,
per-sequence **sums** or per-token **means** of the log-probs, and how much of the chosen
answers' negative log-likelihood (NLL) it carries. The loop calls ``spec.fn(inputs, cfg)`` and
never branches on a loss name; `LossSpec.fn` converts the log-probs to the declared form, runs
the formula and adds the NLL terms (the loss's own and ``--rpo-alpha``).

Notation (Rafailov et al. 2023): ``pi_w = log pi(y_w|x)`` summed over completion tokens, likewise
``pi_l``, ``ref_w``, ``ref_l``; ``h = (pi_w - pi_l) - (ref_w - ref_l)``; ``beta`` is the KL
strength (IPO's tau). Losses that average per token see ``pi / |y|`` in place of ``pi``.

Defaults (each from the paper or the reference code named beside the loss):

=========== ========= ==================================================================
loss        log-probs hyperparameters
=========== ========= ==================================================================
sigmoid     sum       beta 0.1; label_smoothing 0 (cDPO: the assumed flip rate, e.g. 0.1)
robust      sum       beta 0.1; label_smoothing 0 (= DPO; set the flip rate, e.g. 0.1)
ipo         mean      beta (tau) 0.1; ``sequence_logps: sum`` gives the reference impl.
hinge       sum       beta 0.1 (the margin is 1 / beta)
exo_pair    sum       beta 0.1; label_smoothing 0 means eps = 1e-3 (Ji et al. 2024)
nca_pair    sum       beta 0.1
sppo_hard   sum       beta 0.1
apo_zero    sum       beta 0.1
apo_down    sum       beta 0.1
discopop    sum       beta 0.1; discopop_tau 0.05 (Lu et al. 2024)
simpo       mean      beta 2.0, simpo_gamma 0.5 (gamma/beta = 0.25, the SimPO code's default)
orpo        mean      orpo_lambda 0.1 (Hong et al. 2024); beta 0.1 only scales logged rewards
sft         mean      NLL of the chosen answers alone (for weighted combinations)
=========== ========= ==================================================================

``rpo_alpha`` (Pang et al. 2024 use 1.0; default 0, off) adds ``alpha * NLL(y_w)`` to any loss.
Several losses can be combined with weights: ``loss_type: sigmoid,sft`` with
``loss_weights: [1.0, 0.2]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

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


Formula = Callable[[LossInputs, "LossConfig"], LossOutput]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its formula and what it needs.

    ``formula`` sees the log-probs in the form ``logps`` names (``"sum"`` or ``"mean"``; None passes
    them through, for combinations whose parts convert for themselves). ``nll`` is the weight of
    the chosen answers' NLL that belongs to the loss itself (ORPO's L_SFT term, the ``sft`` loss).
    ``default_beta`` is the paper's beta, used when the config leaves ``beta`` unset.
    """

    name: str
    formula: Formula
    needs_reference: bool
    summary: str
    logps: Literal["sum", "mean"] | None = "sum"
    nll: float = 0.0
    default_beta: float = 0.1
    settings: tuple[str, ...] = ()  # the loss-specific LossConfig fields the formula reads

    def pair_loss(self, x: LossInputs, cfg: LossConfig) -> LossOutput:
        """The formula on the log-probs in its declared form, plus the loss's own NLL term."""
        if self.logps is not None:
            x = with_logps(x, self.logps if cfg.sequence_logps == "auto" else cfg.sequence_logps)
        out = self.formula(x, cfg)
        if self.nll:
            out.token_loss = _plus(out.token_loss, self.nll * chosen_nll(x))
        return out

    def fn(self, x: LossInputs, cfg: LossConfig) -> LossOutput:
        """The whole loss for B pairs: `pair_loss` plus ``rpo_alpha * NLL(y_w)`` (RPO: Pang et al. 2024,
        "Iterative Reasoning Preference Optimization", the DPO + NLL objective)."""
        out = self.pair_loss(x, cfg)
        if cfg.rpo_alpha:
            out.token_loss = _plus(out.token_loss, cfg.rpo_alpha * chosen_nll(x))
        return out


# ---- helpers ------------------------------------------------------------------------------------


def with_logps(x: LossInputs, kind: str) -> LossInputs:
    """``x`` with its log-probs as per-sequence sums (``"sum"``) or per-token means (``"mean"``)."""
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


def chosen_nll(x: LossInputs) -> torch.Tensor:
    """Sum over all chosen completion tokens of ``-log p``: the loop divides it by the step's token count."""
    return -with_logps(x, "sum").policy_chosen.sum()


def _plus(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a + b


def implicit_rewards(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``beta * (pi - ref)`` for chosen and rejected (Rafailov et al. 2023, section 5)."""
    chosen = x.beta * (x.policy_chosen - x.reference_chosen)  # (B,)
    rejected = x.beta * (x.policy_rejected - x.reference_rejected)  # (B,)
    return chosen.detach(), rejected.detach()


def policy_rewards(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of reference-free losses: ``beta * pi`` (per-token means; TRL's CPO / ORPO convention)."""
    return (x.beta * x.policy_chosen).detach(), (x.beta * x.policy_rejected).detach()


def _h(x: LossInputs) -> torch.Tensor:
    return (x.policy_chosen - x.policy_rejected) - (x.reference_chosen - x.reference_rejected)  # (B,)


def _ratios(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``pi_w - ref_w`` and ``pi_l - ref_l``."""
    return x.policy_chosen - x.reference_chosen, x.policy_rejected - x.reference_rejected  # (B,), (B,)


# ---- the losses ---------------------------------------------------------------------------------


def sigmoid_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """DPO, Rafailov et al. 2023, eq. 7: ``-log sigmoid(beta * h)``.

    With ``label_smoothing = eps > 0`` this is conservative DPO (Mitchell 2023, "A note on DPO with
    noisy preferences"): ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
    """
    logits = x.beta * _h(x)  # (B,)
    eps = cfg.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return LossOutput(losses, *implicit_rewards(x))


def robust_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """Robust DPO, Chowdhury et al. 2024 ("Provably Robust DPO"): unbiased under label flips at rate eps.

    ``((1 - eps)(-log sigmoid(beta h)) - eps (-log sigmoid(-beta h))) / (1 - 2 eps)``.
    """
    logits = x.beta * _h(x)  # (B,)
    eps = cfg.label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return LossOutput(losses, *implicit_rewards(x))


def ipo_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """IPO, Azar et al. 2023, eq. 17: ``(h - 1 / (2 tau))^2`` with ``tau = beta``.

    Per-token means by default (as TRL and LLaMA-Factory); ``sequence_logps: sum`` gives the
    reference implementation's sums.
    """
    losses = (_h(x) - 1 / (2 * x.beta)) ** 2  # (B,)
    return LossOutput(losses, *implicit_rewards(x))


def hinge_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """Hinge loss of SLiC (Zhao et al. 2023) as used by RSO (Liu et al. 2023): ``relu(1 - beta h)``."""
    losses = torch.relu(1 - x.beta * _h(x))  # (B,)
    return LossOutput(losses, *implicit_rewards(x))


def exo_pair_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """EXO, Ji et al. 2024, eq. 16 (pairwise): reverse KL from the eps-smoothed label to the model.

    ``sigmoid(z) (log sigmoid(z) - log(1 - eps)) + sigmoid(-z) (log sigmoid(-z) - log eps)``,
    ``z = beta h``; ``eps = label_smoothing``, or 1e-3 (the paper's value) when that is 0.
    """
    eps = cfg.label_smoothing or 1e-3
    z = x.beta * _h(x)  # (B,)
    losses = (torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - eps))
              + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
    return LossOutput(losses, *implicit_rewards(x))


def nca_pair_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """NCA, Chen et al. 2024 ("Noise Contrastive Alignment"), pairwise: raises the chosen reward itself.

    ``-log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)``, ``r = beta (pi - ref)``.
    """
    r_w, r_l = (x.beta * r for r in _ratios(x))  # (B,), (B,)
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return LossOutput(losses, *implicit_rewards(x))


def sppo_hard_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """SPPO, Wu et al. 2024, eq. 4.7 with hard win probabilities (1 for chosen, 0 for rejected).

    ``(pi_w - ref_w - 1/(2 beta))^2 + (pi_l - ref_l + 1/(2 beta))^2``.
    """
    a, b = _ratios(x)  # (B,), (B,)
    losses = (a - 0.5 / x.beta) ** 2 + (b + 0.5 / x.beta) ** 2
    return LossOutput(losses, *implicit_rewards(x))


def apo_zero_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """APO-zero, D'Oosterlinck et al. 2024, eq. 7: chosen answers are better than the model's own.

    ``(1 - sigmoid(beta (pi_w - ref_w))) + sigmoid(beta (pi_l - ref_l))``.
    """
    a, b = _ratios(x)  # (B,), (B,)
    losses = (1 - torch.sigmoid(x.beta * a)) + torch.sigmoid(x.beta * b)
    return LossOutput(losses, *implicit_rewards(x))


def apo_down_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """APO-down, D'Oosterlinck et al. 2024, eq. 8: chosen answers are worse than the model's own.

    ``sigmoid(beta (pi_w - ref_w)) + (1 - sigmoid(beta h))``.
    """
    a, _ = _ratios(x)  # (B,)
    losses = torch.sigmoid(x.beta * a) + (1 - torch.sigmoid(x.beta * _h(x)))
    return LossOutput(losses, *implicit_rewards(x))


def discopop_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """DiscoPOP (log-ratio modulated loss), Lu et al. 2024, eq. 5, with ``z = beta h``.

    ``(1 - m) (-log sigmoid(z)) + m exp(-z)``, ``m = sigmoid(z / tau)``, ``tau = discopop_tau``.
    """
    z = x.beta * _h(x)  # (B,)
    m = torch.sigmoid(z / cfg.discopop_tau)
    losses = (1 - m) * -F.logsigmoid(z) + m * torch.exp(-z)
    return LossOutput(losses, *implicit_rewards(x))


def simpo_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """SimPO, Meng et al. 2024, eq. 6 (reference-free, length-normalised, target margin gamma).

    ``-log sigmoid(beta (pi_w/|y_w| - pi_l/|y_l|) - gamma)`` with ``gamma = simpo_gamma``; label
    smoothing applies as in cDPO (as TRL's CPO trainer does).
    """
    logits = x.beta * (x.policy_chosen - x.policy_rejected) - cfg.simpo_gamma  # (B,)
    eps = cfg.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return LossOutput(losses, *policy_rewards(x))


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` for ``p = exp(mean_logp)``, with ``log(1 - p) = log(-expm1(log p))``."""
    mean_logp = mean_logp.clamp(max=-1e-6)  # p = 1 (an empty answer) would make the odds infinite
    return mean_logp - torch.log(-torch.expm1(mean_logp))


def orpo_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """ORPO, Hong et al. 2024, eq. 6-7: the odds-ratio term ``-lambda log sigmoid(log odds_w - log odds_l)``.

    The odds come from per-token mean log-probs; ORPO's NLL term L_SFT (eq. 6) is the spec's
    ``nll = 1``, normalised by the step's chosen tokens like any NLL term.
    """
    ratio = _log_odds(x.policy_chosen) - _log_odds(x.policy_rejected)  # (B,)
    losses = -cfg.orpo_lambda * F.logsigmoid(ratio)
    return LossOutput(losses, *policy_rewards(x))


def sft_loss(x: LossInputs, cfg: LossConfig) -> LossOutput:
    """Plain NLL of the chosen answers (the spec's ``nll = 1``); no pair loss. For combinations (MPO)."""
    return LossOutput(torch.zeros_like(x.policy_chosen), *policy_rewards(x))


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec("sigmoid", sigmoid_loss, True, "DPO (cDPO with label_smoothing)", settings=("label_smoothing",)),
        LossSpec("robust", robust_loss, True, "robust DPO under label noise (label_smoothing = flip rate)",
                 settings=("label_smoothing",)),
        LossSpec("ipo", ipo_loss, True, "IPO, squared loss toward a margin of 1/(2 beta)", logps="mean"),
        LossSpec("hinge", hinge_loss, True, "hinge loss (SLiC / RSO)"),
        LossSpec("exo_pair", exo_pair_loss, True, "EXO, pairwise", settings=("label_smoothing",)),
        LossSpec("nca_pair", nca_pair_loss, True, "NCA, pairwise"),
        LossSpec("sppo_hard", sppo_hard_loss, True, "SPPO with hard labels"),
        LossSpec("apo_zero", apo_zero_loss, True, "APO-zero (chosen better than the model's outputs)"),
        LossSpec("apo_down", apo_down_loss, True, "APO-down (chosen worse than the model's outputs)"),
        LossSpec("discopop", discopop_loss, True, "DiscoPOP, log-ratio modulated", settings=("discopop_tau",)),
        LossSpec("simpo", simpo_loss, False, "SimPO, reference-free, length-normalised", logps="mean",
                 default_beta=2.0, settings=("simpo_gamma", "label_smoothing")),
        LossSpec("orpo", orpo_loss, False, "ORPO, reference-free, NLL + odds ratio", logps="mean", nll=1.0,
                 settings=("orpo_lambda",)),
        LossSpec("sft", sft_loss, False, "NLL of the chosen answers only", logps="mean", nll=1.0),
    ]
}


def loss_names(loss_type: str) -> list[str]:
    """``"sigmoid, sft"`` -> ``["sigmoid", "sft"]``; a ConfigError for unknown or repeated names."""
    from dpokit.errors import ConfigError

    names = [n.strip() for n in loss_type.split(",")]
    for name in names:
        if name not in LOSSES:
            shown = f"{name!r} in {loss_type!r}" if len(names) > 1 else repr(name)
            raise ConfigError(f"unknown loss_type {shown}; supported: {', '.join(LOSSES)} "
                              "(several, comma-separated, give a weighted combination)")
    if len(set(names)) != len(names):
        raise ConfigError(f"loss_type {loss_type!r} names a loss twice")
    return names


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name``, or the weighted combination of a comma-separated list.

    A combination needs a reference when any part does; its rewards (and its default beta) are
    those of the first part; its weights come from ``cfg.loss_weights`` (1 each when unset).
    """
    names = loss_names(name)
    if len(names) == 1:
        return LOSSES[names[0]]
    parts = [LOSSES[n] for n in names]

    def combined(x: LossInputs, cfg: LossConfig) -> LossOutput:
        weights = cfg.loss_weights or [1.0] * len(parts)
        outs = [part.pair_loss(x, cfg) for part in parts]
        losses = sum(w * out.losses for w, out in zip(weights, outs))  # (B,)
        token_loss = None
        for w, out in zip(weights, outs):
            if out.token_loss is not None:
                token_loss = _plus(token_loss, w * out.token_loss)
        return LossOutput(losses, outs[0].chosen_rewards, outs[0].rejected_rewards, token_loss)

    return LossSpec(",".join(names), combined, any(p.needs_reference for p in parts),
                    " + ".join(p.summary for p in parts), logps=None, default_beta=parts[0].default_beta,
                    settings=tuple(dict.fromkeys(name for p in parts for name in p.settings)))


def ignored_settings(cfg: LossConfig) -> list[str]:
    """Loss-specific settings given a non-default value that the chosen loss does not read (as
    ``label_smoothing`` with ``ipo``), as ``name=value``: the run names them in a note."""
    from dataclasses import fields

    specific = {name for spec in LOSSES.values() for name in spec.settings}
    reads = get_loss(cfg.loss_type).settings
    return [f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
            if f.name in specific and f.name not in reads and getattr(cfg, f.name) != f.default]


def rewards_per_token(loss_type: str, sequence_logps: str = "auto") -> bool:
    """Whether the logged rewards of ``loss_type`` come from per-token means (its own convention,
    or ``sequence_logps`` when set) rather than per-sequence sums."""
    first = LOSSES[loss_names(loss_type)[0]]
    return (first.logps if sequence_logps == "auto" else sequence_logps) == "mean"


# ---- beta schedules -----------------------------------------------------------------------------

BETA_SCHEDULES = ("constant", "linear", "cosine")


def beta_at(beta: float, schedule: str, step: int, total: int) -> float:
    """Beta for optimizer step ``step`` (0-based) of ``total``.

    ``constant``: beta. ``linear``: ``beta * (1 + step / total)`` (the quick-start guide's schedule:
    gentle at first, twice as strong at the end). ``cosine``: the same rise from beta to 2 beta
    along a half cosine, ``beta * (1 + (1 - cos(pi step / total)) / 2)``: flat at both ends.
    """
    progress = min(1.0, step / max(1, total))
    if schedule == "linear":
        return beta * (1 + progress)
    if schedule == "cosine":
        return beta * (1 + (1 - math.cos(math.pi * progress)) / 2)
    return beta


# ---- a config's loss settings, resolved by the registry ---------------------------------------


def resolve_loss_config(cfg: LossConfig) -> LossConfig:
    """``cfg`` checked against the registry: the loss name(s) known (a ConfigError naming the supported
    ones), ``beta`` None -> the first loss's paper default, one weight per loss in a combination.
    Idempotent; `configure.build_config` calls it, and so does the loop for configs built in code."""
    from dpokit.errors import ConfigError

    spec = get_loss(cfg.loss_type)
    names = loss_names(cfg.loss_type)
    if cfg.loss_weights is not None and len(cfg.loss_weights) != len(names):
        raise ConfigError(f"loss.loss_weights has {len(cfg.loss_weights)} weights for {len(names)} losses "
                          f"({', '.join(names)})")
    return replace(cfg, loss_type=spec.name, beta=spec.default_beta if cfg.beta is None else cfg.beta)
