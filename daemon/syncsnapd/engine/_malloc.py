"""Tell glibc's allocator to give freed memory back to the system, so the daemon's idle RSS after a run is
what it still uses (issue 14, item 3; figures in docs/memory.md).

glibc gives each thread that allocates while another holds an arena's lock an arena of its own, and
``malloc_trim`` releases the free top of the main arena only: after a run, every worker thread's arena
kept its free top (up to twice the largest block freed: 12 MiB after a 6 MiB buffer). The daemon
therefore uses one arena (``M_ARENA_MAX`` = 1, set before any thread starts: :func:`tune_allocator`
from the service's start, and again, harmlessly, at the first snapshot). Its threads allocate mostly while
holding the GIL, so one arena's lock is seldom contended. glibc's thresholds stay dynamic: a run's big
blocks (chunks, their compressed copies, pack buffers) stay in the heap and are reused. An earlier version
fixed the mmap and trim thresholds at 4 MiB instead; every block of 4 MiB or more was then mapped and
faulted in again (~400,000 page faults in an initial snapshot of the 20k-file benchmark, against ~60,000,
and ~20% of its time).

After each run, :func:`give_back` calls ``malloc_trim(0)``, which with one arena releases both the free
top of the heap and the free pages in its middle. Skipped where the C library is not glibc, or when the
environment sets glibc's own ``MALLOC_ARENA_MAX`` (it wins).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

__all__ = ["give_back", "tune_allocator"]

_M_ARENA_MAX = -8
_tuned = False
_trim: Callable[[int], int] | None = None


def tune_allocator() -> bool:
    """Make glibc use one arena (see the module docstring); True if it did so now."""
    global _tuned
    if _tuned:
        return False
    _tuned = True
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
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
    return bool(mallopt(_M_ARENA_MAX, 1))


def give_back() -> None:
    """After a run: ``malloc_trim(0)`` returns the free pages inside glibc's heaps too, which a block
    still in use above them keeps from the top (a few ms)."""
    if _trim is not None:
        _trim(0)
