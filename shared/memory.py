"""Keep freed memory in the process for reuse (glibc), instead of returning it to the system.

A device's round allocates and frees a few copies of the model (its weights, gradients, the
change it sends); under glibc's defaults each multi-megabyte tensor is a fresh `mmap` whose pages
fault in one by one and are zeroed by the kernel. Keeping them mapped made a cohort node's
devices 30% faster on ML-100K's 600/200 model (cProfile of 47 devices in process, 18 → 13 ms each).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""mallopt parameters (glibc's malloc.h)."""
MMAP_THRESHOLD = 64 * 2**20
"""Allocations below this come from the heap (glibc's default starts at 128 KiB)."""
TRIM_THRESHOLD = 256 * 2**20
"""Free memory at the top of the heap is kept up to this much."""

_done = False


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; False where the C library is not glibc."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done = ok
    if not ok:
        log.debug("mallopt refused the thresholds: the C library's defaults stay")
    return ok
