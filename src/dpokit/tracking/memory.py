"""Peak memory of every rank, logged by rank 0 in the one run, and each rank's device.

On a GPU: ``torch.cuda.max_memory_allocated`` (what tensors held at the peak) and
``max_memory_reserved`` (what the caching allocator took from the driver, the figure an
out-of-memory error compares with the card's size). On a CPU: the process's peak resident set
(`peak_rss_bytes`). Peaks are since the process started (or since a ``reset_peak_memory_stats``).
GiB throughout (2**30 bytes).
"""

from __future__ import annotations

import resource
import sys

import torch

from dpokit import dist
from dpokit.peak import cpu_model

GIB = 2**30


def local_peaks(device: torch.device) -> tuple[float, float | None]:
    """(peak GiB, reserved GiB or None) of this process on ``device``: CUDA allocated / reserved
    peaks on a GPU, the peak resident set on a CPU (no reserved figure there)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB
    return peak_rss_bytes() / GIB, None


def peak_rss_bytes() -> int:
    """This process's peak resident set: ``VmHWM`` of ``/proc/self/status`` on Linux (``getrusage``
    there keeps the peak of the process before an ``exec``, so a rank started by a big parent
    would report the parent's), else ``getrusage``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux, bytes on macOS


def memory_row(device: torch.device) -> dict[str, float]:
    """``memory/rank{r}_peak_gb`` (and ``memory/rank{r}_reserved_gb`` on GPUs) of every rank, on
    every rank. A collective: call it on all ranks at the same point (the logging step)."""
    peak, reserved = local_peaks(device)
    mine = torch.tensor([peak, -1.0 if reserved is None else reserved], dtype=torch.float64, device=device)
    everyone = dist.all_gather_1d(mine).reshape(-1, 2).tolist()  # (ranks, 2)
    row: dict[str, float] = {}
    for rank, (p, r) in enumerate(everyone):
        row[f"memory/rank{rank}_peak_gb"] = round(p, 4)
        if r >= 0:
            row[f"memory/rank{rank}_reserved_gb"] = round(r, 4)
    return row


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3 (cuda:0, 79.1 GiB)`` or ``CPU: AMD EPYC (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} (cuda:{index}, {props.total_memory / GIB:.1f} GiB)"
    return f"CPU: {cpu_model()} ({torch.get_num_threads()} threads)"


def device_names(device: torch.device) -> list[str]:
    """Every rank's `device_name`, in rank order (a collective, like `memory_row`)."""
    return [str(name) for name in dist.all_gather_object(device_name(device))]
