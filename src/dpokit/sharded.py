"""Checkpoints of a sharded (FSDP2) run: ``torch.distributed.checkpoint`` for the resumable state,
one consolidated Hugging Face directory for the final model.

``checkpoint-N/dcp/`` holds the trained parameters and the optimizer state, each rank writing its
own shards (``.distcp`` files) plus DCP's metadata; the rest of the checkpoint (scheduler, RNG per
rank, counters, config) is written as for any run, and the whole directory is made atomic the same
way (``atomic.py``: a temporary directory, every rank's part, a marker, one rename by rank 0).
State dicts are keyed by parameter name (``get_state_dict``), not by shard, so DCP reshards on load:
a checkpoint written by 2 ranks resumes on 1, or on 4. Frozen parameters (a LoRA base) are left
out, as the unsharded checkpoint keeps only the adapter.

The final model is gathered (every rank takes part), then rank 0 puts the full weights into a fresh
copy of the starting model on the CPU and saves it as ``checkpoint.save_final`` does for one
process (merged, with LoRA's adapter beside it): ``from_pretrained`` loads it in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpokit.atomic import pause
from dpokit.config import ModelConfig

DCP_DIR = "dcp"


def _options() -> Any:
    """Each rank's shards of the trained parameters (a LoRA base's frozen ones left out)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def has_shards(path: Path) -> bool:
    """Whether the checkpoint at ``path`` holds DCP shards (written by a sharded run)."""
    return (path / DCP_DIR).is_dir()


def save(policy: nn.Module, optimizer: torch.optim.Optimizer, tmp: Path) -> None:
    """Every rank writes its shards of the trained parameters and their optimizer state into
    ``tmp/dcp`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(policy, optimizer, options=_options())
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
    pause()


def load(policy: nn.Module, optimizer: torch.optim.Optimizer | None, path: Path) -> None:
    """Read ``path/dcp`` into ``policy`` (and ``optimizer``), resharded to this run's layout: sharded
    over any number of ranks, or whole on one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        state = {"model": get_model_state_dict(policy, options=_options())}
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        set_model_state_dict(policy, state["model"], options=_options())
        return
    model_state, optim_state = get_state_dict(policy, optimizer, options=_options())
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options())


def full_weights(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded ``policy``, on rank 0's CPU (empty on the other ranks);
    every rank must call it. Frozen parameters are included: the final model is whole."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_consolidated(weights: dict[str, torch.Tensor], model_config: ModelConfig, path: Path,
                      tokenizer: Any) -> None:
    """Rank 0: ``weights`` (from `full_weights`) in a fresh CPU copy of the starting model, saved
    as one Hugging Face directory (LoRA: merged, the adapter in ``adapter/``)."""
    from dpokit.lora import save_policy
    from dpokit.models import load_policy

    model = load_policy(model_config, torch.device("cpu"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in weights if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded]  # tied weights come with their twin
    if untied or unexpected:
        raise RuntimeError(f"the gathered weights do not fit the model (missing {untied[:3]}, "
                           f"unexpected {unexpected[:3]})")
    save_policy(model, path, tokenizer)
