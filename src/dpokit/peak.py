"""The hardware's peak FLOP/s, the denominator of MFU (`dpokit.flops.mfu`).

In order: ``output.peak_tflops`` when given; a table of dense (no 2:4 sparsity) peaks of common
GPUs by ``torch.cuda.get_device_name``; on a CPU, a short matrix-multiply probe per dtype (one
core's best rate times the threads: `measure_matmul_flops`), measured once and cached under the dpokit cache, keyed by CPU model, threads and torch version
(a CPU's peak depends on its vector units, which no table lists).
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dpokit.paths import cache_dir, remembered

# Dense tensor-core peaks in TFLOP/s: (pattern on the device name, bf16, fp16, fp32). fp16 / bf16
# are the rates with fp32 accumulation (what mixed-precision training runs); fp32 is the plain
# fp32 rate, since torch keeps TF32 off for matmuls by default. None: no such fast path (V100 and
# T4 have no bf16). More specific names come first (H100 NVL before H100, L40S before L4).
GPU_PEAKS: tuple[tuple[str, float | None, float | None, float | None], ...] = (
    (r"\bB200\b", 2250.0, 2250.0, None),
    (r"\bH200 NVL\b", 835.0, 835.0, 60.0),
    (r"\bH200\b", 989.4, 989.4, 66.9),
    (r"\bGH200\b", 989.4, 989.4, 66.9),
    (r"\bH100 NVL\b", 835.0, 835.0, 60.0),
    (r"\bH100 PCIe\b", 756.0, 756.0, 51.2),
    (r"\bH100\b", 989.4, 989.4, 66.9),  # SXM (``NVIDIA H100 80GB HBM3``)
    (r"\bH800\b", 989.4, 989.4, 66.9),
    (r"\bA100\b", 312.0, 312.0, 19.5),
    (r"\bA800\b", 312.0, 312.0, 19.5),
    (r"\bA10G\b", 70.0, 70.0, 31.2),  # AWS's A10G: half the A10's tensor rate
    (r"\bA10\b", 125.0, 125.0, 31.2),
    (r"\bA40\b", 149.7, 149.7, 37.4),
    (r"\bA30\b", 165.0, 165.0, 10.3),
    (r"\bL40S\b", 362.0, 362.0, 91.6),
    (r"\bL40\b", 181.0, 181.0, 90.5),
    (r"\bL4\b", 121.0, 121.0, 30.3),
    (r"\bRTX 6000 Ada\b", 364.2, 364.2, 91.1),
    (r"\bRTX A6000\b", 154.8, 154.8, 38.7),
    (r"\bRTX 4090\b", 165.2, 165.2, 82.6),  # GeForce: half rate with fp32 accumulation
    (r"\bRTX 3090\b", 71.0, 71.0, 35.6),
    (r"\bV100\b", None, 125.0, 15.7),
    (r"\bT4\b", None, 65.0, 8.1),
    (r"\bMI300X\b", 1307.4, 1307.4, 163.4),
    (r"\bMI250X?\b", 383.0, 383.0, 47.9),
)
PRECISIONS = {"bf16": 1, "fp16": 2, "fp32": 3}  # column of GPU_PEAKS
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of one device, and where the figure comes from (shown beside the MFU)."""

    flops: float
    source: str


def gpu_peak_tflops(name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of the GPU called ``name`` at ``precision`` (bf16, fp16, fp32), or None
    when the table does not know it (or the GPU has no fast path for it)."""
    for pattern, *peaks in GPU_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return peaks[PRECISIONS[precision] - 1]
    return None


def _best_mm_seconds(size: int, dtype: torch.dtype, repeats: int) -> float:
    """One thread's best CPU time for a ``size x size`` multiply, after a warm-up."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        torch.mm(a, b)
        best = min(best, time.thread_time() - start)
    return max(best, 1e-9)


def measure_matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of ``size x size`` matrix multiplies on the CPU's ``torch.get_num_threads()`` cores:
    one core's rate, best of ``repeats`` after a warm-up, times the cores.

    One core, timed by its own CPU clock (``time.thread_time``), because wall time on a machine
    shared with other work measures the load, not the cores: a multi-threaded multiply waits for
    its slowest thread, and any thread is preempted (2 cores measured 66 GFLOP/s of bf16 by wall
    time under load, 870 quiet). The CPU time a thread spent on the multiply is what the core
    did; cores of one CPU are alike, so the peak is one core's rate times the cores. Best, not
    mean: cache misses from other work only ever slow a run down. A dtype without a fast path
    (fp16 on most CPUs: about 1 GFLOP/s) is measured on a smaller multiply, sized from a 256 x 256
    one to take at most about 0.2 s, so that the probe stays short.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = 256
        rate = 2.0 * small**3 / _best_mm_seconds(small, dtype, 2)
        size = max(small, min(size, int((0.1 * rate) ** (1 / 3))))  # one multiply: at most ~0.2 s
        repeats = max(1, min(repeats, int(0.5 * rate / (2.0 * size**3))))  # all of them: ~0.5 s
        rate = max(rate, 2.0 * size**3 / _best_mm_seconds(size, dtype, repeats)) if size > small else rate
    finally:
        torch.set_num_threads(threads)
    return rate * threads


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_probe_key(precision: str) -> str:
    return f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {precision} | per core"


def cpu_peak(precision: str, cache: Path | None = None, size: int = 2048) -> Peak:
    """The CPU's matmul FLOP/s at ``precision``, measured once and kept in ``cache`` (a JSON file,
    by default ``$DPOKIT_CACHE/peak_flops.json``) under `cpu_probe_key`."""
    if cache is None:
        cache = cache_dir() / "peak_flops.json"
    def measure() -> float:
        return measure_matmul_flops(DTYPES[precision], size)

    flops = remembered(Path(cache), cpu_probe_key(precision), measure)
    if not isinstance(flops, (int, float)):  # a value of another kind under the key: measure now
        flops = measure()
    return Peak(float(flops), f"measured ({size}x{size} {precision} matmul, one core's best x "
                f"{torch.get_num_threads()} threads)")


def peak_flops(device: torch.device, precision: str, peak_tflops: float | None = None,
               cache: Path | None = None) -> Peak | None:
    """Peak FLOP/s of one ``device`` running at ``precision`` (``bf16``, ``fp16``, ``fp32``): given
    (``peak_tflops``), from the GPU table, or measured on a CPU; None for an unknown GPU (MFU is
    then not reported: set ``--peak-tflops``)."""
    if peak_tflops:
        return Peak(peak_tflops * 1e12, "given (--peak-tflops)")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = gpu_peak_tflops(name, precision)
        return None if tflops is None else Peak(tflops * 1e12, f"{name} {precision} dense peak")
    if device.type == "cpu":
        return cpu_peak(precision, cache)
    return None
