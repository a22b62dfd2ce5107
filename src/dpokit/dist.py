"""Distributed helpers: the only module that talks to ``torch.distributed``.

Under ``torchrun`` (RANK / WORLD_SIZE set) the process group is started here; a single process
works the same way with rank 0 of 1. The rest of the code asks `is_main()`, `barrier()`,
`all_reduce_sum()` and the two gathers (`all_gather_1d`, `all_gather_object`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as td

from dpokit.errors import rank_prefix


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_type: str = "cpu") -> DistInfo:
    """Start the process group when launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not td.is_initialized():
        td.init_process_group("nccl" if device_type == "cuda" else "gloo")
        if td.get_rank() != 0:
            _prefix_warnings()
    return DistInfo(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _prefix_warnings() -> None:
    """Python warnings of this (non-zero) rank carry its rank, so N copies of one warning read apart."""
    import warnings

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        shown(f"{rank_prefix()}{message}", category, filename, lineno, file, line)

    warnings.showwarning = show


def is_initialized() -> bool:
    return td.is_initialized()


def world_size() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def is_main() -> bool:
    return not td.is_initialized() or td.get_rank() == 0


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache entry); the other ranks run it after, when
    what it made is there. One process: just the block."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place) and return it; a no-op for one process."""
    if td.is_initialized():
        td.all_reduce(tensor, op=td.ReduceOp.SUM)
    return tensor


def any_true(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process must call it)."""
    if not td.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    td.all_reduce(value, op=td.ReduceOp.MAX)
    return bool(value.item())


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of all processes (every process must call it)."""
    if not td.is_initialized():
        return value
    tensor = torch.tensor([float(value)])
    td.all_reduce(tensor, op=td.ReduceOp.MAX)
    return int(tensor.item())


def gradient_sync(module: torch.nn.Module, sync: bool) -> AbstractContextManager:
    """A context in which ``module``'s backward passes all-reduce gradients only when ``sync``: under
    gradient accumulation the micro-steps before the last skip DDP's all-reduce (``no_sync``) or
    FSDP2's reduce-scatter (``set_requires_gradient_sync``)."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(sync)
        return nullcontext()
    if sync or not hasattr(module, "no_sync"):
        return nullcontext()
    return module.no_sync()


def all_gather_1d(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D ``tensor`` (lengths may differ), concatenated in rank order, on every rank;
    ``tensor`` itself for one process. Lengths are gathered first, then the values padded to the
    longest, since ``all_gather`` needs one size."""
    if not td.is_initialized() or td.get_world_size() == 1:
        return tensor
    tensor = tensor.reshape(-1)
    size = torch.tensor([tensor.numel()], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(td.get_world_size())]
    td.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    parts = [torch.empty_like(padded) for _ in lengths]
    td.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, lengths)])


def all_gather_object(obj: object) -> list[object]:
    """Every rank's picklable ``obj`` in rank order (small things: device names); ``[obj]`` alone."""
    if not td.is_initialized() or td.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_from_main(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (what DDP does when it wraps a model): fresh
    weights drawn per rank, such as LoRA's ``A``, then start the same everywhere."""
    if td.is_initialized() and td.get_world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            td.broadcast(tensor.data, src=0)


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Wrap ``module`` in DistributedDataParallel when several processes run; else return it."""
    if not td.is_initialized() or td.get_world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def shutdown() -> None:
    """Leave the process group together. DDP wrappers of the finished run are collected first:
    one freed only at interpreter exit, after the group is gone, can abort the process."""
    if td.is_initialized():
        import gc

        gc.collect()
        td.barrier()  # keeps ranks from exiting mid-collective (ANCHORS.md)
        td.destroy_process_group()
