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
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
"""mallopt parameters (glibc's malloc.h)."""
MMAP_THRESHOLD = 64 * 2**20
"""Allocations below this come from the heap (glibc's default starts at 128 KiB)."""
TRIM_THRESHOLD = 256 * 2**20
"""Free memory at the top of the heap is kept up to this much."""

_done = False


def _mallopt() -> Callable[[int, int], int] | None:
    """Return glibc's mallopt, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; False where the C library is not glibc."""
    global _done
    if _done:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done = ok
    if not ok:
        log.debug("mallopt refused the thresholds: the C library's defaults stay")
    return ok


@contextmanager
def one_malloc_arena() -> Iterator[None]:
    """Serve every thread of this process, and of the processes started inside the block, from one
    malloc arena (glibc).

    glibc gives busy threads their own arenas of up to 64 MiB, each keeping what it freed. A
    simulation's driver passes each round's weights through Flower's and Ray's threads: on
    ML-100K's device preset three such arenas held 154 MiB of the driver's 616 MiB; with one arena
    for the driver and Ray's processes the tree's peak PSS fell by 46 MiB, rounds no slower. The
    children (Ray's processes) read `MALLOC_ARENA_MAX`, restored when the block ends.
    """
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 1)  # this process: only threads that have no arena yet
    before = os.environ.get("MALLOC_ARENA_MAX")
    os.environ["MALLOC_ARENA_MAX"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MALLOC_ARENA_MAX", None)
        else:
            os.environ["MALLOC_ARENA_MAX"] = before
