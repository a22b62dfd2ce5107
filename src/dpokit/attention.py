"""Which attention kernel a run on a CPU uses: SDPA or dpokit's eager, whichever this machine runs faster.

Which is faster depends on the CPU, so it is measured rather than guessed. PyTorch's
flash-attention CPU kernel (what SDPA runs) is the faster one on CPUs with AMX tiles; without
them it can lose to the plain recipe transformers calls ``eager`` (two matrix multiplies around an
fp32 softmax), run in blocks of query rows by `dpokit.lean_attention` (``dpokit_eager``): on a
2-core AVX-512 EPYC (both threads), 8 bf16 rows of 8 heads of 64 over 384 tokens took 64 ms
forward and backward with SDPA, 43 ms with ``dpokit_eager`` and 100 ms with transformers' eager.

``dpokit_eager`` keeps each row's ``(heads, T, T)`` probabilities (2 bytes a score in bf16), so it
is only considered while they stay small (`MAX_SCORES`), and only for the model types whose own
eager attention is that recipe (`dpokit.lean_attention.STANDARD`). The probe times one row of both
at the run's shape on one core (forward and backward, each core's own CPU time, as `dpokit.peak`
does), once per CPU, torch version, precision and shape, and keeps the times in
``$DPOKIT_CACHE/attention.json``. A kernel named with ``--attn-implementation``, a GPU, or a model
without SDPA support is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dpokit import dist
from dpokit.lean_attention import NAME as LEAN
from dpokit.lean_attention import attend, lean_for, register
from dpokit.logps import unwrap
from dpokit.paths import cache_dir, remembered
from dpokit.peak import DTYPES, cpu_model

MAX_SCORES = 1 << 22  # heads x T x T of one row: 4M scores (e.g. 8 heads at 724 tokens), 8 MiB kept in bf16
FASTER = 0.9  # eager must take at most this share of SDPA's time: a clear win, not noise


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _lean(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return attend(q, k, v, mask, q.shape[-1] ** -0.5)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {"sdpa": _sdpa, LEAN: _lean}
register()  # so that a model can be loaded with, or switched to, ``dpokit_eager``


def measure(heads: int, head_dim: int, length: int, dtype: torch.dtype, repeats: int = 4) -> dict[str, float]:
    """Seconds of one row's attention forward and backward under each of `KERNELS`: one core's
    CPU time, best of ``repeats`` after a warm-up, the kernels taking turns (so that a change in
    the machine's load falls on both)."""
    rng = torch.Generator().manual_seed(0)  # its own: a probe must not move the run's random numbers
    q, k, v = (torch.randn(1, heads, length, head_dim, generator=rng).to(dtype).requires_grad_() for _ in range(3))
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, length, length, dtype=dtype).masked_fill_(~causal, torch.finfo(dtype).min)
    grad = torch.randn(1, heads, length, head_dim, generator=rng).to(dtype)
    best = dict.fromkeys(KERNELS, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for attempt in range(repeats + 1):
            for name, kernel in KERNELS.items():
                start = time.thread_time()
                kernel(q, k, v, mask).backward(grad)
                if attempt:  # the first round warms up
                    best[name] = min(best[name], time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: max(seconds, 1e-9) for name, seconds in best.items()}


def probe_key(heads: int, head_dim: int, length: int, precision: str) -> str:
    return (f"{cpu_model()} | torch {torch.__version__} | {precision} | {heads} heads x {head_dim} x {length} "
            f"tokens | {' v '.join(KERNELS)}")


def cpu_attention(heads: int, head_dim: int, length: int, precision: str, cache: Path | None = None) -> str:
    """``dpokit_eager`` when it is clearly the faster kernel on this CPU at this shape and its
    scores stay small, else ``sdpa``; the timings are measured once and cached."""
    if heads * length * length > MAX_SCORES or precision not in DTYPES:
        return "sdpa"
    times = remembered(cache or cache_dir() / "attention.json", probe_key(heads, head_dim, length, precision),
                       lambda: measure(heads, head_dim, length, DTYPES[precision]))
    faster = isinstance(times, dict) and times.get(LEAN, 1.0) < FASTER * times.get("sdpa", 0.0)
    return LEAN if faster else "sdpa"


def attention_shape(config) -> tuple[int, int]:
    """(query heads, head dim) of a transformers config (its text model's, for composite models)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return int(heads), int(getattr(text, "head_dim", None) or text.hidden_size // heads)


def attention_of(model: nn.Module) -> str | None:
    """The attention kernel ``model`` (or the transformers model inside its wrappers) runs."""
    return getattr(unwrap(model).config, "_attn_implementation", None)


def choose_attention(model: nn.Module, device: torch.device, precision: str, length: int) -> str:
    """Switch ``model`` to ``dpokit_eager`` when `cpu_attention` finds it faster here; the kernel
    it runs. Under ``torchrun`` every process must call this, and the kernel changes only when
    every process finds it faster (ranks keep one kernel)."""
    current = str(attention_of(model))
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if device.type != "cpu" or current != "sdpa" or not lean_for(config.model_type):
        return current
    heads, head_dim = attention_shape(model.config)
    lean = cpu_attention(heads, head_dim, length, precision) == LEAN
    if not dist.any_true(not lean):
        model.set_attn_implementation(LEAN)
        return LEAN
    return current
