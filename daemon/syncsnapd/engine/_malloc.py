"""Tell glibc's allocator to give freed memory back to the system, so the daemon's idle RSS after a run is
what it still uses (issue 14, item 3; figures in docs/memory.md).

By default glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), and its
trim threshold to twice that: after a run that freed a 6 MiB read buffer, every malloc arena (one per
worker thread) keeps up to 12 MiB of free memory at its top for good (``malloc_trim`` does not release
the top of a thread's arena either). Measured after a 100k-file run in one process: 28 MB free but kept
in the heap. Fixing both thresholds turns that adjustment off: blocks of :data:`MMAP_THRESHOLD` and more
are mapped and unmapped on their own, and an arena gives back its top once :data:`TRIM_THRESHOLD` is
free there. Both are 4 MiB, so that a run's usual blocks (a chunk of about 1 MiB and its compressed copy)
stay in the heap and are reused rather than faulted in again for every chunk: with a 1 MiB trim threshold
the idle daemon kept ~8 MB less after 100k files, but a 1 GiB file took ~20% longer (docs/memory.md).

Also, after each run, :func:`give_back` releases the free pages in the middle of the heaps. Process-wide,
the thresholds set once, at the first snapshot. Skipped where the C library is not glibc, or when the
environment sets glibc's own ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` (they win).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

__all__ = ["give_back", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 4 << 20
MMAP_THRESHOLD = 4 << 20
_tuned = False
_trim: Callable[[int], int] | None = None


def tune_allocator() -> bool:
    """Fix glibc's trim and mmap thresholds (see the module docstring); True if it did so now."""
    global _tuned
    if _tuned:
        return False
    _tuned = True
    if sys.platform != "linux" or any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    global _trim
    _trim = libc.malloc_trim
    _trim.argtypes = [ctypes.c_size_t]
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def give_back() -> None:
    """After a run: ``malloc_trim(0)`` returns the free pages inside glibc's heaps too, which a block
    still in use above them keeps from the top (a few ms)."""
    if _trim is not None:
        _trim(0)
