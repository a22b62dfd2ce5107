"""Reference strategies: where the reference log-probs ``ref_w``, ``ref_l`` of a batch come from.

DPO's loss compares the policy with a fixed reference (Rafailov et al. 2023, eq. 7). The loop
asks a strategy two things and never which strategy it has:

* ``reference.logps(batch, pairs) -> SequenceLogps | None``: summed completion log-probs of the
  batch's 2B sequences (None for reference-free losses);
* ``reference.on_step(step)``: called after each optimizer step (TR-DPO's refresh).

Strategies (``model.reference``):

* ``copy``: a frozen copy of the starting policy (full fine-tuning's default; a second model in memory).
* ``model``: a separate model loaded from ``model.ref_model``.
* ``lora``: the policy itself with its LoRA adapters switched off (``peft``'s ``disable_adapter``):
  the frozen base is the reference, no second copy. LoRA's ``B`` starts at zero, so policy and
  reference agree at step 0.
* ``precomputed``: one no-grad pass over all training and evaluation pairs before training; the
  values are cached under ``$DPOKIT_CACHE/reference/`` keyed by the tokenized pairs, the reference
  weights, precision and attention kernel, and reused by later runs. No reference model stays in
  memory while training: the pass uses the starting policy itself (adapters off) or, with
  ``ref_model``, a model that is freed afterwards.
* ``none``: reference-free losses (SimPO, ORPO); with a loss that compares to a reference (DPO,
  IPO, ...), the reference log-probs are taken as 0, as TRL's ``reference_free=True`` does, so
  the implicit reward is ``beta * log pi(y|x)`` (`Zeros`).

TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment", sec. 3):
every ``ref_refresh_steps`` optimizer steps the reference becomes
``ref <- alpha * policy + (1 - alpha) * ref`` (``alpha = ref_refresh_mix``; 1 is the hard update).

Build the strategy before a checkpoint's weights are loaded into the policy: ``copy`` and
``precomputed`` take the reference from the policy as it starts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from dpokit import dist
from dpokit.attention import attention_of
from dpokit.config import ModelConfig
from dpokit.data.collate import PreferenceBatch
from dpokit.data.pairs import TokenizedPair
from dpokit.errors import ConfigError
from dpokit.lean_attention import NAME as LEAN
from dpokit.logps import SequenceLogps, SequenceScorer, unwrap
from dpokit.lora import find_peft
from dpokit.paths import cache_dir

CACHE_VERSION = "1"
META_KEY = "reference_logps"  # TokenizedPair.meta entry of the precomputed strategy: (chosen, rejected)

Batcher = Callable[[list[TokenizedPair]], PreferenceBatch]


class Reference:
    """Reference-free (``none``): no reference log-probs; also the base of the other strategies."""

    name = "none"

    def logps(self, batch: PreferenceBatch, pairs: list[TokenizedPair]) -> SequenceLogps | None:
        return None

    def on_step(self, step: int) -> None:
        """Called after optimizer step ``step`` (counted from 1)."""

    def describe(self) -> str:
        return self.name

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep for the next step to be the same (a refreshed reference's
        weights); empty when the reference never changes."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"reference '{self.name}' keeps no state, but the checkpoint holds some")

    def key(self) -> str | None:
        """What identifies the reference's values across a resume (the precomputed cache's key)."""
        return None


class Zeros(Reference):
    """Reference-free DPO: every reference log-prob is 0 (TRL's ``reference_free``)."""

    name = "none (reference log-probs taken as 0)"

    def logps(self, batch: PreferenceBatch, pairs: list[TokenizedPair]) -> SequenceLogps | None:
        zeros = torch.zeros(2 * batch.num_pairs, device=batch.target_ids.device)  # (2B,)
        return SequenceLogps(zeros, batch.completion_tokens, zeros)


class FrozenModel(Reference):
    """A frozen model in memory (``copy`` or ``model``), optionally refreshed toward the policy (TR-DPO)."""

    def __init__(self, model: nn.Module, name: str, policy: nn.Module | None = None,
                 refresh_steps: int | None = None, refresh_mix: float = 1.0, precision: str = "fp32") -> None:
        model.eval()
        model.requires_grad_(False)
        self.model, self.name, self.policy = model, name, policy
        self.scorer = SequenceScorer(model)  # kept: under FSDP2 it is the sharded root (``fsdp.py``)
        self.refresh_steps, self.refresh_mix = refresh_steps, refresh_mix
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if refresh_steps is not None:
            self.pairs = matching_parameters(self.model, policy)
        elif precision in ("bf16", "fp16"):  # a frozen reference: cast its matmul weights once
            cast_linear_weights(model, torch.bfloat16 if precision == "bf16" else torch.float16)

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch, pairs: list[TokenizedPair]) -> SequenceLogps:
        return self.scorer(batch).detach()

    @torch.no_grad()
    def on_step(self, step: int) -> None:
        if self.refresh_steps is None or step % self.refresh_steps:
            return
        # TR-DPO: ref <- alpha * policy + (1 - alpha) * ref (Gorbatovski et al. 2024, sec. 3).
        for ref, pol in self.pairs:
            ref.lerp_(pol.detach().to(ref.dtype), self.refresh_mix)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.refresh_steps is None:
            return {}
        return {k: v.detach().contiguous() for k, v in unwrap(self.model).state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        own = unwrap(self.model).state_dict()
        if own.keys() != state.keys():
            raise ValueError("the checkpoint's reference weights do not match this reference model")
        for name, value in state.items():
            own[name].copy_(value)

    def describe(self) -> str:
        text = {"copy": "frozen copy of the policy", "model": "separate model"}.get(self.name, self.name)
        if self.refresh_steps is not None:
            text += f", refreshed every {self.refresh_steps} steps (TR-DPO, mix {self.refresh_mix})"
        return text


def cast_linear_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Hold the weights (and biases) of a frozen model's plain ``nn.Linear`` layers in ``dtype``, the
    autocast dtype; returns how many layers were cast.

    Autocast casts a linear layer's fp32 weight to its dtype on every call (its cache keeps only
    weights that need gradients, for one forward), so a frozen reference paid a cast of all its
    matmul weights on every batch. Cast once, the results are the same bit for bit, as long as the
    model only runs under autocast of that dtype (the reference does) and never changes (TR-DPO's
    refreshed reference keeps fp32). Norms and embedding tables (a head tied to one too) stay fp32,
    as autocast keeps them.
    The fp32 head check (`head_matches_forward`) is done first, while the model is still fp32.
    """
    from dpokit.logps import head_matches_forward

    inner = unwrap(model)
    weight = next((p for p in inner.parameters() if p.is_floating_point()), None)
    if weight is None:
        return 0
    vocab = getattr(getattr(inner, "config", None), "vocab_size", None) or 2
    head_matches_forward(inner, (torch.arange(16, device=weight.device) % vocab)[None])
    tables = {id(m.weight) for m in inner.modules() if isinstance(m, nn.Embedding)}  # a tied head stays fp32
    n = 0
    for module in inner.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float32 and id(module.weight) not in tables:
            module.to(dtype)
            n += 1
    return n


def matching_parameters(reference: nn.Module, policy: nn.Module | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(reference, policy) tensors paired by name; a ConfigError if the two models differ."""
    if policy is None:
        raise ValueError("a refreshed reference needs the policy")
    ref_params = dict(unwrap(reference).named_parameters())
    pol_params = dict(unwrap(policy).named_parameters())
    if ref_params.keys() != pol_params.keys() or any(
            ref_params[k].shape != pol_params[k].shape for k in ref_params):
        raise ConfigError("ref_refresh_steps needs a reference with the policy's architecture; "
                          "the reference model's parameters differ from the policy's")
    return [(ref_params[k], pol_params[k]) for k in ref_params]


class AdapterDisabled(Reference):
    """The policy's base: the same peft model with its LoRA adapters switched off."""

    name = "lora"

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        self.peft = find_peft(policy)
        self.scorer: nn.Module = SequenceScorer(policy)  # under FSDP2: the policy's sharded scorer
        if self.peft is None:
            raise ConfigError("model.reference 'lora' needs a policy with LoRA adapters (--lora true)")

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch, pairs: list[TokenizedPair]) -> SequenceLogps:
        with self.peft.disable_adapter():
            return self.scorer(batch).detach()

    def describe(self) -> str:
        return "the policy with its LoRA adapters off"


class Precomputed(Reference):
    """Reference log-probs computed once before training, read from each pair's ``meta``."""

    name = "precomputed"

    def __init__(self, source: str, cache_key: str) -> None:
        self.source = source
        self.cache_key = cache_key

    def key(self) -> str | None:
        return self.cache_key

    def logps(self, batch: PreferenceBatch, pairs: list[TokenizedPair]) -> SequenceLogps:
        values = torch.tensor([p.meta[META_KEY] for p in pairs], dtype=torch.float32)  # (B, 2)
        logps = torch.cat([values[:, 0], values[:, 1]]).to(batch.target_ids.device)  # (2B,)
        return SequenceLogps(logps, batch.completion_tokens, torch.zeros_like(logps))

    def describe(self) -> str:
        return f"precomputed ({self.source})"


# ---- choosing and building a strategy -----------------------------------------------------------


def strategy_name(cfg: ModelConfig, needs_reference: bool) -> str:
    """The strategy ``cfg.reference`` resolves to (``auto`` filled in), checked against the loss."""
    name = cfg.reference
    if not needs_reference:  # whatever was asked: nothing would read a reference's log-probs
        name = "none"
    elif name == "auto":
        name = "model" if cfg.ref_model else "lora" if cfg.lora else "copy"
    if cfg.ref_refresh_steps is not None and name not in ("copy", "model"):
        raise ConfigError(f"ref_refresh_steps (TR-DPO) refreshes a reference held in memory; reference "
                          f"'{name}' has none. Use --reference copy or --ref-model PATH")
    return name


def build_reference(
    cfg: ModelConfig, loss_name: str, needs_reference: bool, policy: nn.Module, device: torch.device,
    precision: str, batcher: Batcher, pairs: list[TokenizedPair], batch_size: int,
    log: Callable[[str], None] = print,
) -> Reference:
    """The reference strategy of a run with loss ``loss_name``. ``pairs`` are all training and
    evaluation pairs (the precomputed strategy scores them now, ``batch_size`` at a time);
    ``batcher`` lays pairs out as a batch on the device."""
    name = strategy_name(cfg, needs_reference)
    if not needs_reference and cfg.reference not in ("auto", "none"):
        log(f"note: loss '{loss_name}' uses no reference; --reference {cfg.reference} is ignored")
    if name == "none":
        if needs_reference:
            log(f"note: --reference none with loss '{loss_name}': reference log-probs are taken "
                "as 0 (reference-free, as TRL's reference_free), so rewards are beta * log pi(y|x)")
            return Zeros()
        return Reference()
    if name == "copy":
        from dpokit.models import frozen_copy

        return FrozenModel(frozen_copy(policy), "copy", policy, cfg.ref_refresh_steps, cfg.ref_refresh_mix,
                           precision)
    if name == "model":
        return FrozenModel(load_reference_model(cfg, device, policy), "model", policy, cfg.ref_refresh_steps,
                           cfg.ref_refresh_mix, precision)
    if name == "lora":
        return AdapterDisabled(policy)
    return precompute(cfg, policy, device, precision, batcher, pairs, batch_size, log)


def load_reference_model(cfg: ModelConfig, device: torch.device, policy: nn.Module | None = None) -> nn.Module:
    """The separate reference model ``cfg.ref_model``, loaded like the policy (4-bit under QLoRA),
    with the policy's ``dpokit_eager`` attention when `dpokit.attention` chose it for the policy."""
    from dpokit.models import load_model

    attn = cfg.attn_implementation or (LEAN if policy is not None and attention_of(policy) == LEAN else None)
    ref = replace(cfg, name_or_path=cfg.ref_model, weights=None, revision=None, gradient_checkpointing=False,
                  reference="auto", ref_model=None, attn_implementation=attn)
    return load_model(ref, device)


# ---- precomputed reference log-probs ------------------------------------------------------------


def fingerprint(model: nn.Module) -> str:
    """A hash of a model's weights: every tensor's name, shape, dtype and ~4k evenly spaced values.

    Sampling keeps it fast for large models; training moves every weight, so a changed model
    changes the hash. LoRA tensors are left out and peft's ``base_layer`` names folded away, so a
    base model hashes the same with or without (zero-initialised) adapters.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        if ".lora_" in name:
            continue
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
        h.update(f"{name.replace('.base_layer', '')}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def pairs_digest(pairs: list[TokenizedPair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


def cache_path(pairs: list[TokenizedPair], model_hash: str, attention: str | None, precision: str,
               device: torch.device) -> Path:
    settings = json.dumps([CACHE_VERSION, model_hash, precision, attention, device.type])
    key = hashlib.sha256(f"{pairs_digest(pairs)}|{settings}".encode()).hexdigest()[:32]
    return cache_dir() / "reference" / f"{key}.safetensors"


@torch.no_grad()
def score_pairs(model: nn.Module, pairs: list[TokenizedPair], batcher: Batcher, batch_size: int,
                precision: str, device: torch.device) -> torch.Tensor:
    """(N, 2) summed log-probs of chosen and rejected, this rank's share filled in, summed over ranks."""
    from dpokit.models import autocast

    info = dist.init(device.type)
    out = torch.zeros(len(pairs), 2, dtype=torch.float64, device=device)  # (N, 2)
    mine = list(range(info.rank, len(pairs), info.world_size))
    peft = find_peft(model)
    for start in range(0, len(mine), batch_size):
        index = mine[start : start + batch_size]
        batch = batcher([pairs[i] for i in index])
        with autocast(precision, device):
            if peft is not None:
                with peft.disable_adapter():
                    logps = SequenceScorer(model)(batch).logps
            else:
                logps = SequenceScorer(model)(batch).logps  # (2B,)
        b = len(index)
        out[index] = torch.stack([logps[:b], logps[b:]], dim=1).double()
    return dist.all_reduce_sum(out).float().cpu()


def precompute(cfg: ModelConfig, policy: nn.Module, device: torch.device, precision: str, batcher: Batcher,
               pairs: list[TokenizedPair], batch_size: int, log: Callable[[str], None] = print) -> Precomputed:
    """Score every pair with the reference once (or read the cache) and store it in ``pair.meta``."""
    from safetensors.torch import load_file, save_file

    ref_path = cfg.ref_model
    model = load_reference_model(cfg, device, policy) if ref_path else policy
    source = ref_path or "the starting policy"
    path = cache_path(pairs, fingerprint(model), attention_of(model), precision, device)
    values = None
    if path.is_file():
        try:
            values = load_file(str(path))["logps"]
            log(f"reference log-probs read from the cache ({path})")
        except (OSError, KeyError, RuntimeError):
            values = None  # a damaged entry is rebuilt
        if values is not None and values.shape != (len(pairs), 2):
            values = None
    if values is None:
        log(f"precomputing reference log-probs of {len(pairs)} pairs with {source}")
        was_training = model.training
        model.eval()
        values = score_pairs(model, pairs, batcher, batch_size, precision, device)
        model.train(was_training)
        if dist.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            try:
                save_file({"logps": values.contiguous()}, str(tmp))
                os.replace(tmp, path)
            except Exception as e:  # noqa: BLE001 (safetensors' SafetensorError is no OSError)
                from dpokit.writable import cache_full

                raise cache_full(path, tmp, e, "reference log-probs",
                                 "use --reference copy, which needs no cache") from None
    for pair, (chosen, rejected) in zip(pairs, values.tolist()):
        pair.meta[META_KEY] = (chosen, rejected)
    if model is not policy:
        del model
        gc.collect()
    return Precomputed(source, path.stem)
