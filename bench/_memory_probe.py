"""In-process memory probe of one snapshot run (``python -m bench.memory_probe`` is not a command: run
``python bench/_memory_probe.py TREE [STORE]``): runs :func:`take_snapshot` of TREE into a fresh store
the way the daemon does (a trio run, the default thread limiter, a real :class:`RunProgress`), then
prints, 5 s after the run: RSS, tracemalloc's live total and top allocation sites (``PROBE_TRACE=1``;
tracemalloc slows the run), and the pymalloc summary of ``sys._debugmallocstats()`` (arenas, pools,
bytes in live blocks against bytes in empty pools and free blocks). Live vs fragmented: what the
allocated blocks hold against what the arenas that pymalloc cannot give back hold."""

from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mallocstats() -> dict[str, int]:
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    os.close(w)
    try:
        sys._debugmallocstats()
        sys.stderr.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b or not os.get_blocking(r):
            chunks.append(b)
            break
        chunks.append(b)
        if len(b) < (1 << 16):
            break
    os.close(r)
    text = b"".join(chunks).decode()
    out: dict[str, int] = {}
    for key in ("arenas allocated current", "bytes in allocated blocks", "bytes in available blocks",
                "bytes in empty pools", "bytes lost to pool headers", "bytes lost to quantization",
                "bytes lost to arena alignment", "Total"):
        m = re.search(r"# " + re.escape(key) + r"\s*=\s*([\d,]+)" if key != "Total" else r"Total\s*=\s*([\d,]+)",
                      text)
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def glibc() -> dict[str, str]:
    """glibc's heap (mallinfo2): bytes in use by malloc, free in its arenas, and mmapped."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    mi = libc.mallinfo2()
    return {"heap": f"{mi.arena / 1e6:.1f} MB", "in use": f"{mi.uordblks / 1e6:.1f} MB",
            "free in heap": f"{mi.fordblks / 1e6:.1f} MB", "mmapped": f"{mi.hblkhd / 1e6:.1f} MB"}


def main() -> None:
    import trio

    from syncsnapd.core import RunProgress
    from syncsnapd.engine import take_snapshot
    from syncsnapd.store import Store

    tree = Path(sys.argv[1])
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="memprobe-"))
    shutil.rmtree(work / "store", ignore_errors=True)
    trace = os.environ.get("PROBE_TRACE") == "1"
    store = Store.open(work / "store", writable=True)
    gc.collect()
    base = rss()
    print("before: pymalloc", mallocstats().get("arenas allocated current"), "arenas; glibc", glibc())
    if trace:
        tracemalloc.start(1)
    t0 = time.perf_counter()
    summary = trio.run(take_snapshot, store, "p", tree, RunProgress("p", "r1", lambda p: None))
    seconds = time.perf_counter() - t0
    time.sleep(5)
    gc.collect()
    print(f"files {summary.files}, {seconds:.1f} s; RSS before {base / 1e6:.0f} MB, after {rss() / 1e6:.0f} MB")
    if trace:
        snap = tracemalloc.take_snapshot()
        live, peak = tracemalloc.get_traced_memory()
        print(f"tracemalloc: live {live / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB")
        for stat in snap.statistics("lineno")[:12]:
            print("  ", stat)
        print("  by count (small objects outliving the run pin pymalloc arenas):")
        for stat in sorted(snap.statistics("lineno"), key=lambda st: st.count, reverse=True)[:12]:
            print("  ", stat)
        tracemalloc.stop()
    ms = mallocstats()
    print("pymalloc:", {k: (f"{v / 1e6:.1f} MB" if "arenas" not in k else v) for k, v in ms.items()})
    print("glibc:", glibc())
    if os.environ.get("PROBE_TRIM") == "1":
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        print(f"after malloc_trim(0): RSS {rss() / 1e6:.0f} MB")
    store.close()
    if len(sys.argv) <= 2:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
