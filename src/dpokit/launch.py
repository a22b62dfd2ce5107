"""What a launcher tells dpokit through the environment: ``accelerate launch`` and its config files.

``torchrun`` and ``accelerate launch --multi_gpu`` (which starts its processes through torchrun's
own machinery) both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; ``dist.init`` reads those. An accelerate config file says more, in variables of
its own, read here before the run is built:

* ``distributed_type: FSDP`` (``ACCELERATE_USE_FSDP``) turns on dpokit's FSDP2, with
  ``fsdp_offload_params`` -> ``--fsdp-offload`` and ``fsdp_activation_checkpointing`` -> gradient
  checkpointing; dpokit always shards fully, one unit per decoder layer (what
  ``TRANSFORMER_BASED_WRAP`` with ``FULL_SHARD`` does), and saves DCP shards plus a consolidated
  ``final/`` (both of ``fsdp_state_dict_type``'s choices at once);
* ``mixed_precision: bf16`` (``ACCELERATE_MIXED_PRECISION``) fills in ``--precision`` when the
  run leaves it at ``auto``;
* ``distributed_type: DEEPSPEED`` (``ACCELERATE_USE_DEEPSPEED``) stops the run with the FSDP2
  settings that do the same (dpokit has no DeepSpeed; a silent fall-back to DDP would run out of
  memory where ZeRO-3 would not).
"""

from __future__ import annotations

import os

from dpokit.config import Config
from dpokit.errors import ConfigError


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def deepspeed_message() -> str:
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
    offload = any(os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{k}_DEVICE", "none").lower() not in ("none", "")
                  for k in ("OPTIMIZER", "PARAM"))
    equivalent = "--fsdp true" + (" --fsdp-offload true" if offload else "") + " --precision bf16"
    return (f"accelerate launch with a DeepSpeed config (ZeRO stage {stage}): dpokit does not run DeepSpeed, and "
            "will not fall back to DDP silently (a model that needs ZeRO would not fit)\n"
            f"  fix: shard with FSDP2 instead, the equivalent of ZeRO-3{' with offload' if offload else ''}: "
            f"launch with an FSDP config (distributed_type: FSDP, e.g. alignment-handbook's fsdp.yaml), or "
            f"`torchrun --nproc_per_node N -m dpokit train ... {equivalent}`")


def from_accelerate(config: Config) -> list[str]:
    """Apply what ``accelerate launch`` set in the environment to ``config``; returns notes to print."""
    if _on("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(deepspeed_message())
    notes: list[str] = []
    if _on("ACCELERATE_USE_FSDP"):
        train = config.train
        if train.parallelism == "ddp":
            raise ConfigError("accelerate launch with an FSDP config, and --parallelism ddp\n  fix: drop "
                              "--parallelism ddp (the config shards with FSDP2), or launch with multi_gpu.yaml")
        train.parallelism = "fsdp"
        if _on("FSDP_OFFLOAD_PARAMS"):
            train.fsdp_offload = True
        if _on("FSDP_ACTIVATION_CHECKPOINTING"):
            config.model.gradient_checkpointing = True
        strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        if strategy not in ("FULL_SHARD", "1"):
            notes.append(f"note: the accelerate config's fsdp_sharding_strategy {strategy} is run as FULL_SHARD "
                         "(FSDP2, one unit per decoder layer)")
        notes.append("accelerate FSDP config: FSDP2" + (", offload to CPU" if train.fsdp_offload else ""))
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision in ("bf16", "fp16") and config.model.precision == "auto":
        config.model.precision = precision  # type: ignore[assignment]
    return notes
