"""Keep freed host memory inside the process, so CPU training reuses its pages.

glibc's ``malloc`` serves every request above its mmap threshold (128 KiB at first, at
most 32 MiB) with a fresh ``mmap`` and gives the pages back on ``free``. A CPU training
update allocates and frees gigabytes of activations and gradients (a DreamerV3 update at
the 2023 ``small`` size on a 16 x 64 batch: about 3 GB), so every update page-faults
its whole working set in again: 0.7-1.1 million minor faults and 1.4-2.3 s of kernel
time per update measured on a 2-core Xeon (``benchmarks/probe_host_memory.py``).

:func:`retain_freed_memory` turns that off with ``mallopt``: no mmap for large blocks
(``M_MMAP_MAX = 0``; glibc still falls back to mmap when the heap cannot grow) and no
trimming of the heap's free top below 2 GiB (``M_TRIM_THRESHOLD``). Freed blocks stay
in the process and the next update reuses them: the faults drop to about zero. The cost
is that the process keeps its peak heap (the resident size stays near the high-water
mark instead of breathing). The environment variables ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...`` do the same from outside; allocators such as jemalloc or
tcmalloc (``LD_PRELOAD``) get there by caching.

The training loop calls it for CPU runs (``train.retain_host_memory``, default true).
Elsewhere than Linux with glibc it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
RETAINED = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt``, or None where there is none (not Linux, musl, ...)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (and its mallopt parameters)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _apply(settings: dict[int, int]) -> bool:
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in settings.items())


def retain_freed_memory() -> bool:
    """Stop glibc from returning large freed blocks to the OS (module docstring).
    Returns whether the settings took effect."""
    return _apply(RETAINED)


def release_freed_memory() -> bool:
    """glibc's default behaviour again (large blocks mmapped and unmapped, heap trimmed at
    128 KiB; the mmap threshold stays fixed at 128 KiB instead of adapting)."""
    return _apply(GLIBC_DEFAULTS)


__all__ = ["release_freed_memory", "retain_freed_memory"]
