"""Placement of the models on several processes: DDP (a replica per rank) or FSDP2 (shards).

Under ``--parallelism fsdp`` (``--fsdp true``) each decoder layer of the policy becomes its own
FSDP2 unit (``torch.distributed.fsdp.fully_shard``), then the scorer that wraps the policy is the
root unit (embeddings, final norm and head): the scorer's forward calls the decoder and the head
itself, so the root's hooks must sit on it. Each rank keeps 1/N of every parameter, its gradient
and its optimizer state; a unit's parameters are gathered just before it runs and freed after.

* mixed precision: under ``bf16`` the gathered parameters are bf16 and gradients are reduced in
  fp32 (``MixedPrecisionPolicy``); under ``fp32`` everything stays fp32;
* ``--fsdp-offload``: the shards (and so the optimizer state) live in CPU memory;
* the reference is sharded the same way (no full copy per rank); a LoRA reference (adapters off)
  runs through the policy's own sharded scorer; precomputed log-probs are scored before sharding,
  each rank its share (``reference.score_pairs``);
* gradient checkpointing works as without FSDP (recomputation re-gathers a layer's shards).

The optimizer must be built after `place`: sharding replaces the parameters by DTensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dpokit import dist
from dpokit.config import TrainConfig
from dpokit.errors import ConfigError
from dpokit.logps import SequenceScorer, unwrap


def check(cfg: TrainConfig, precision: str, refresh_steps: int | None, load_in_4bit: bool) -> None:
    """Settings FSDP2 does not run here, refused before any model loads."""
    if cfg.parallelism != "fsdp":
        return
    if precision == "fp16":
        raise ConfigError("--parallelism fsdp with --precision fp16: FSDP2 here runs bf16 or fp32\n"
                          "  fix: use --precision bf16 (bf16 parameters, fp32 gradient reduction) or fp32")
    if refresh_steps is not None:
        raise ConfigError("--parallelism fsdp with ref_refresh_steps (TR-DPO): a refreshed reference is not "
                          "sharded yet\n  fix: use --parallelism ddp for TR-DPO, or drop --ref-refresh-steps")
    if load_in_4bit:
        raise ConfigError("--parallelism fsdp with load_in_4bit: 4-bit weights cannot be sharded\n"
                          "  fix: QLoRA keeps the base small already; use --parallelism ddp")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes transformers keeps whole
    (``_no_split_modules``: ``LlamaDecoderLayer``, ``GPT2Block``, ...)."""
    inner = unwrap(model)
    names = set(getattr(inner, "_no_split_modules", None) or [])
    layers = [m for m in inner.modules() if type(m).__name__.removeprefix("FSDP") in names]
    if not layers:
        raise ConfigError(f"--parallelism fsdp: cannot find the decoder layers of {type(inner).__name__} "
                          "(it names no _no_split_modules)\n  fix: use --parallelism ddp for this model")
    return layers


def shard(scorer: nn.Module, precision: str, offload: bool) -> nn.Module:
    """FSDP2 over ``scorer``'s model in place: each decoder layer, then the scorer as root. Every
    rank shards rank 0's weights (``fully_shard`` itself keeps each rank's own)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, object] = {}
    if precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    dist.broadcast_from_main(scorer)  # weights drawn per rank (LoRA's A) start as rank 0's, as under DDP
    for layer in decoder_layers(scorer.model):
        fully_shard(layer, **kwargs)
    fully_shard(scorer, **kwargs)
    return scorer


def place(scorer: SequenceScorer, reference: object, cfg: TrainConfig, precision: str, device: torch.device,
          log: Callable[[str], None]) -> nn.Module:
    """The training scorer as this run places it: itself on one process, DDP-wrapped, or sharded
    by FSDP2 together with the task's ``reference`` (the scorer it holds, if any)."""
    if not dist.is_initialized() or dist.world_size() == 1:
        return scorer
    if cfg.parallelism != "fsdp":
        return dist.wrap_ddp(scorer, device)
    layers = len(decoder_layers(scorer.model))
    offload = cfg.fsdp_offload and device.type != "cpu"
    if cfg.fsdp_offload and not offload:
        log("note: --fsdp-offload on a CPU run changes nothing: the shards are in CPU memory already")
    shard(scorer, precision, offload)
    ref_scorer = getattr(reference, "scorer", None)
    if getattr(reference, "peft", None) is not None:  # the LoRA reference: the policy, adapters off
        reference.scorer = scorer  # type: ignore[attr-defined]
    elif isinstance(ref_scorer, SequenceScorer):  # a frozen copy or model: sharded like the policy
        shard(ref_scorer, precision, offload)
    log(f"FSDP2: {layers} decoder layers sharded over {dist.world_size()} ranks"
        f"{', bf16 parameters / fp32 reduction' if precision == 'bf16' else ''}"
        f"{', shards offloaded to CPU' if offload else ''}")
    return scorer


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip gradients to ``max_norm`` in place; the total norm before clipping, over all shards."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2: the norm of this rank's shards is partial
        norm = norm.full_tensor()
    return float(norm)
