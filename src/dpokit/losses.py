"""Preference losses, registered by name: the registry of the loss family.

Every loss is registered as a `LossSpec` that declares what it needs: a reference model or not,
per-sequence **sums** or per-token **means** of the log-probs, and how much of the chosen
answers' negative log-likelihood (NLL) it carries. The loop calls ``spec.fn(inputs, cfg)`` and
never branches on a loss name; `LossSpec.fn` converts the log-probs to the declared form, runs
the formula (`dpokit.formulas`, in float64), adds the NLL terms (the loss's own and
``--rpo-alpha``) and the logged rewards.

Notation (Rafailov et al. 2023): ``pi_w = log pi(y_w|x)`` summed over completion tokens, likewise
``pi_l``, ``ref_w``, ``ref_l``; ``h = (pi_w - ref_w) - (pi_l - ref_l)``; ``beta`` is the KL
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
orpo        mean      orpo_lambda 0.1 (Hong et al. 2024); NLL over the completion
                      (orpo_prompt_nll: true adds the prompt); beta only scales logged rewards
sft         mean      NLL of the chosen answers alone (for weighted combinations)
=========== ========= ==================================================================

``rpo_alpha`` (Pang et al. 2024 use 1.0; default 0, off) adds ``alpha * NLL(y_w)`` to any loss.
Several losses can be combined with weights: ``loss_type: sigmoid,sft`` with
``loss_weights: [1.0, 0.2]``.

Logged rewards follow TRL 1.16 whatever form the loss uses: ``beta * (sum log pi - sum log
pi_ref)`` for losses with a reference (a combination has one when any part does), ``beta * mean
log pi`` for reference-free ones (`dpokit.formulas.logged_rewards`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch

from dpokit.formulas import (
    LossInputs,
    LossOutput,
    apo_down_loss,
    apo_zero_loss,
    chosen_nll,
    discopop_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    logged_rewards,
    nca_pair_loss,
    orpo_loss,
    robust_loss,
    sft_loss,
    sigmoid_loss,
    simpo_loss,
    sppo_hard_loss,
    widen,
    with_logps,
)

if TYPE_CHECKING:
    from dpokit.config import LossConfig


Formula = Callable[[LossInputs, "LossConfig"], torch.Tensor]  # (B,) per-pair losses


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its formula and what it needs.

    ``formula`` sees the log-probs in the form ``logps`` names (``"sum"`` or ``"mean"``). ``nll`` is
    the weight of the chosen answers' NLL that belongs to the loss itself (ORPO's L_SFT term, the
    ``sft`` loss); ``prompt_nll`` names the boolean `LossConfig` field that extends that NLL over
    the prompt tokens (ORPO's ``orpo_prompt_nll``). ``default_beta`` is the paper's beta, used when
    the config leaves ``beta`` unset. A weighted combination has ``parts`` and no formula.
    """

    name: str
    formula: Formula | None
    needs_reference: bool
    summary: str
    logps: Literal["sum", "mean"] | None = "sum"
    nll: float = 0.0
    default_beta: float = 0.1
    settings: tuple[str, ...] = ()  # the loss-specific LossConfig fields the formula reads
    prompt_nll: str | None = None
    parts: tuple[LossSpec, ...] = ()

    def wants_prompt_logps(self, cfg: LossConfig) -> bool:
        """Whether this loss, as configured, reads the chosen prompts' log-probs (for its NLL)."""
        return any(p.prompt_nll is not None and bool(getattr(cfg, p.prompt_nll, False))
                   for p in (self.parts or (self,)))

    def pair_loss(self, x: LossInputs, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (B,) losses of the formula on the log-probs in its declared form, and the loss's own
        NLL term (a sum over tokens, or None); a combination's parts weighted by ``loss_weights``."""
        if self.parts:
            weights = cfg.loss_weights or [1.0] * len(self.parts)
            losses, token_loss = torch.zeros_like(x.policy_chosen), None
            for w, part in zip(weights, self.parts):
                part_losses, part_tokens = part.pair_loss(x, cfg)
                losses = losses + w * part_losses
                if part_tokens is not None:
                    token_loss = _plus(token_loss, w * part_tokens)
            return losses, token_loss
        form = self.logps if cfg.sequence_logps == "auto" else cfg.sequence_logps
        losses = self.formula(with_logps(x, form), cfg)
        token_loss = self.nll * chosen_nll(x, prompt=self.wants_prompt_logps(cfg)) if self.nll else None
        return losses, token_loss

    def fn(self, x: LossInputs, cfg: LossConfig) -> LossOutput:
        """The whole loss for B pairs: `pair_loss` plus ``rpo_alpha * NLL(y_w)`` (RPO: Pang et al. 2024,
        "Iterative Reasoning Preference Optimization", the DPO + NLL objective), with TRL's rewards.

        Computed in float64 (`dpokit.formulas.widen`) and returned in the dtype of ``x``.
        """
        dtype = x.policy_chosen.dtype
        wide = widen(x)
        losses, token_loss = self.pair_loss(wide, cfg)
        if cfg.rpo_alpha:
            token_loss = _plus(token_loss, cfg.rpo_alpha * chosen_nll(wide))
        chosen, rejected = logged_rewards(wide, self.needs_reference)
        return LossOutput(losses.to(dtype), chosen.to(dtype), rejected.to(dtype),
                          None if token_loss is None else token_loss.to(dtype))


def _plus(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a + b


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
                 settings=("orpo_lambda", "orpo_prompt_nll"), prompt_nll="orpo_prompt_nll"),
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

    A combination needs a reference when any part does (and then logs the rewards of losses with
    one); its default beta is its first part's; its weights come from ``cfg.loss_weights`` (1 each
    when unset).
    """
    names = loss_names(name)
    if len(names) == 1:
        return LOSSES[names[0]]
    parts = tuple(LOSSES[n] for n in names)
    return LossSpec(",".join(names), None, any(p.needs_reference for p in parts),
                    " + ".join(p.summary for p in parts), logps=None, default_beta=parts[0].default_beta,
                    settings=tuple(dict.fromkeys(name for p in parts for name in p.settings)), parts=parts)


def ignored_settings(cfg: LossConfig) -> list[str]:
    """Loss-specific settings given a non-default value that the chosen loss does not read (as
    ``label_smoothing`` with ``ipo``), as ``name=value``: the run names them in a note."""
    from dataclasses import fields

    specific = {name for spec in LOSSES.values() for name in spec.settings}
    reads = get_loss(cfg.loss_type).settings
    return [f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
            if f.name in specific and f.name not in reads and getattr(cfg, f.name) != f.default]


def rewards_per_token(loss_type: str) -> bool:
    """Whether the logged rewards of ``loss_type`` are per-token means (``beta * mean log pi``, the
    reference-free losses) rather than sums over the completion (``beta * (sum log pi - sum log
    pi_ref)``, every loss with a reference, whatever ``sequence_logps`` says)."""
    return not get_loss(loss_type).needs_reference


def needs_prompt_logps(cfg: LossConfig) -> bool:
    """Whether batches must carry the chosen prompts' tokens for log-probs (``collate(...,
    prompt_logps=True)``): only a loss whose NLL covers the prompt (``orpo_prompt_nll``) reads them."""
    return get_loss(cfg.loss_type).wants_prompt_logps(cfg)


# ---- beta schedules -----------------------------------------------------------------------------

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
