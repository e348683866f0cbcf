"""glibc malloc settings that keep a CPU network's large tensors in the heap instead of mapping them per op.

With glibc's defaults every tensor above 32 MB (a batch of 8 256-px feature maps at 16 channels is already 33 MB)
is an ``mmap`` that is unmapped when freed, so each layer of each step faults in and zeroes fresh pages, and
freed heap memory above 128 kB is given back at once; worker threads allocate from their own arenas, whose
heaps hold at most 64 MB. On this project's 2-core EPYC (Zen 3) that was a third of the time in the kernel:
a width-1.0 training step took 19.9 s and a forward pass of 8 tiles 6.5 s, against 12.7 s and 3.5 s with the
settings below (``benchmarks/bench_allocator.py``). The price: up to :data:`TRIM_THRESHOLD` of freed memory stays
with the process instead of going back to the system (1.5 GB more peak RSS there).

Set ``HISTOSEG_MALLOC_TUNING=0`` to leave the allocator alone. With another allocator preloaded (jemalloc,
tcmalloc) the settings reach only glibc's, which then serves little; nothing breaks.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations below this come from the heap (glibc's default rises only to 32 MB).
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap kept for the next step instead of being returned to the system.
TRIM_THRESHOLD = 1 << 30
#: One arena for all threads: an inference thread (napari's worker, dask's) allocating from a per-thread arena
#: cannot keep tensors of more than 64 MB in its heaps.
ARENA_MAX = 1

_SETTINGS = ((_M_ARENA_MAX, ARENA_MAX), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@functools.cache
def tune_cpu_allocator() -> bool:
    """Apply the settings above once per process, on Linux with glibc; return whether they are in effect.

    Call it before a CPU job allocates, ideally before the threads it computes in are started (threads that
    already have an arena keep it). A no-op elsewhere, when ``HISTOSEG_MALLOC_TUNING=0``, and on later calls.
    """
    if os.environ.get("HISTOSEG_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    results = [mallopt(param, value) for param, value in _SETTINGS]
    applied = all(r == 1 for r in results)
    if not applied:
        logger.info("mallopt refused some allocator settings (results %s)", results)
    return applied
