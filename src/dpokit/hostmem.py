"""Host memory that does not fault on every step.

A training step allocates and frees the same few hundred large tensors every time (activations,
logits chunks, gradients). With glibc's defaults each one over its dynamic mmap threshold is
mapped fresh and unmapped on free, and the top of the heap is handed back to the kernel as soon
as it is free: the next step touches every page again, one minor page fault per 4 KiB. On the
benchmark model that is about 47,000 faults a step, a fifth of its wall time on a 2-core CPU.

`tune` changes two things, for this process only, before torch allocates anything:

* glibc keeps freed memory (``mallopt``: a fixed 32 MiB mmap threshold, the largest glibc takes,
  and no trimming), so a step reuses the pages of the step before;
* torch asks for transparent huge pages on its large allocations (``THP_MEM_ALLOC_ENABLE``,
  read once, at torch's first large allocation), 512 times fewer faults where the kernel has
  them.

What is kept is what the step's peak needs anyway: measured peak RSS does not grow. A user who
chose an allocator already (``LD_PRELOAD`` of jemalloc or tcmalloc, ``MALLOC_*`` or
``GLIBC_TUNABLES`` settings) keeps it, and a ``THP_MEM_ALLOC_ENABLE`` of their own stands;
``DPOKIT_HOST_MEMORY=system`` leaves everything as the system has it.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit systems
NO_TRIM = 2**31 - 1

_tuned: bool | None = None


def user_chose() -> bool:
    """Whether the environment already says how host memory is allocated."""
    env = os.environ
    preload = env.get("LD_PRELOAD", "")
    return (env.get("DPOKIT_HOST_MEMORY") == "system" or "GLIBC_TUNABLES" in env or any(k.startswith("MALLOC_") for k in env)
            or "jemalloc" in preload or "tcmalloc" in preload)


def tune() -> bool:
    """Keep freed host memory and ask for huge pages (see the module); whether it did. Once
    per process; a no-op off glibc or where the user chose otherwise."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; a refused setting leaves glibc's default in place.
    _tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM))
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return _tuned
