"""``python -m bench memory``: what syncsnap's memory grows with, printed as a table and written to
docs/memory.md.

- **Chunk index**: bytes per chunk of the master index (``store/_index.py``) holding N synthetic chunks
  (packs of 5,000), measured in a fresh process as the growth of its RSS and as what tracemalloc sees plus
  the index's own buffers (anonymous mmaps, which tracemalloc does not trace); and the time of a look-up
  (``has``) of a stored and of an unknown chunk.
- **Daemon**: a real syncsnapd (``bench/_daemon.py``) snapshots a tree of N small files (100 bytes to
  2 KiB, 100 per directory): its peak RSS during the initial and a no-change snapshot (sampled every
  20 ms), and its idle RSS 5 s after each (as ``make bench-scale`` measures it).
- **Live vs fragmented** (not in the table): ``bench/_memory_probe.py TREE`` runs one snapshot in process
  and prints RSS, tracemalloc's live total and top sites (``PROBE_TRACE=1``), pymalloc's arenas against
  its bytes in live blocks (``sys._debugmallocstats``) and glibc's heap (``mallinfo2``).

Environment: ``MEMORY_FILES`` (comma list of tree sizes, default ``20000,100000``), ``MEMORY_CHUNKS``
(chunk counts for the index, default ``100000,1000000``), ``MEMORY_DOC`` (where to write the table,
default docs/memory.md; empty: do not write), ``MEMORY_TREES`` (``files=path,...``: use an existing tree
of that many files as it is, never built nor changed, e.g. the scale bench's ``small-400000``). ``PYTHONPATH`` chooses the code measured (the daemon runs
``syncsnapd`` of this venv, which imports from it), so the same command measures a branch before and after.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from ._daemon import Daemon, timed_snapshot

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work" / "memory"
MiB = 1 << 20

_INDEX_PROBE = r"""
import gc, json, os, random, sys, time, tracemalloc
from pathlib import Path
from syncsnapd.store._index import MasterIndex

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

n, per = int(sys.argv[1]), 5000
rng = random.Random(1)
gc.collect()
before = rss()
tracemalloc.start()
index = MasterIndex(Path("/nonexistent"))
load = 0.0
known = []
for p in range(n // per):
    records = [(rng.randbytes(32), 8 + i * 3000, 1500, 3000, 1) for i in range(per)]
    pack = rng.randbytes(32).hex()
    t0 = time.perf_counter()
    index.add_pack(pack, records)
    load += time.perf_counter() - t0
    known.append(records[p % per][0].hex())
del records
gc.collect()
traced = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
stats = getattr(index, "statistics", lambda: {"table_bytes": 0})()
after = rss()
probes = (known * (100000 // len(known) + 1))[:100000]
unknown = [rng.randbytes(32).hex() for _ in range(100000)]
times = {}
for name, keys in (("hit", probes), ("miss", unknown)):
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        for k in keys:
            index.has(k)
        best = min(best, time.perf_counter() - t0)
    times[name] = best / len(keys) * 1e9
print(json.dumps({"chunks": n, "rss_per_chunk": (after - before) / n,
                  "traced_per_chunk": (traced + stats["table_bytes"]) / n,
                  "load_us_per_chunk": load / n * 1e6, "has_hit_ns": times["hit"], "has_miss_ns": times["miss"]}))
"""


def index_figures(chunks: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _INDEX_PROBE, str(chunks)], check=True, capture_output=True,
                         text=True, env=os.environ)
    return dict(json.loads(out.stdout))


def build_tree(root: Path, files: int) -> None:
    """``files`` small files (100 B to 2 KiB of random bytes), 100 per directory; kept between runs."""
    marker = root / ".complete"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(files)
    for i in range(files):
        d = root / f"d{i // 10000:02}" / f"s{i // 100:04}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06}.dat").write_bytes(rng.randbytes(rng.randint(100, 2048)))
    past = time.time() - 3600
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), (past, past))
    marker.write_text("")


def daemon_figures(files: int) -> dict[str, Any]:
    given = dict(item.split("=", 1) for item in os.environ.get("MEMORY_TREES", "").split(",") if item)
    if str(files) in given:
        tree = Path(given[str(files)])
    else:
        tree = WORK / f"tree-{files}"
        build_tree(tree, files)
    # watch = false: the only runs are the ones measured (a watcher would snapshot the new tree at start).
    daemon = Daemon(WORK / f"daemon-{files}", {"m": tree}, extra={"watch": False})
    daemon.start()
    try:
        figures: dict[str, Any] = {"files": files, "start_rss": daemon.status("VmRSS") or 0}
        for label in ("initial", "no-change"):
            run = trio.run(lambda: timed_snapshot(daemon.http or daemon.unix, "m", rss_of=daemon))  # type: ignore[arg-type]
            assert run.final.get("state") == "completed", run.final
            time.sleep(5.0)
            figures[f"{label}_seconds"] = run.seconds
            # The high-water mark covers what sampling misses; after the first run it is the first's.
            hwm = daemon.status("VmHWM") or 0 if label == "initial" else 0
            figures[f"{label}_peak"] = max(max(run.rss_samples, default=0), hwm)
            figures[f"{label}_idle"] = daemon.status("VmRSS") or 0
    finally:
        daemon.stop()
    return figures


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def main(argv: list[str]) -> int:
    files = [int(x) for x in os.environ.get("MEMORY_FILES", "20000,100000").split(",") if x]
    chunk_counts = [int(x) for x in os.environ.get("MEMORY_CHUNKS", "100000,1000000").split(",") if x]
    lines = ["| chunks | RSS growth per chunk | traced + buffers per chunk | load per chunk | has (stored) | "
             "has (unknown) |", "|---|---|---|---|---|---|"]
    for n in chunk_counts:
        f = index_figures(n)
        print(f)
        lines.append(f"| {n:,} | {f['rss_per_chunk']:.0f} B | {f['traced_per_chunk']:.0f} B | "
                     f"{f['load_us_per_chunk']:.1f} us | {f['has_hit_ns']:.0f} ns | {f['has_miss_ns']:.0f} ns |")
    lines += ["", "| files | initial: time, peak RSS | idle after | no-change: time, peak RSS | idle after |",
              "|---|---|---|---|---|"]
    for n in files:
        f = daemon_figures(n)
        print(f)
        lines.append(f"| {n:,} | {f['initial_seconds']:.1f} s, {_mb(f['initial_peak'])} | {_mb(f['initial_idle'])} "
                     f"| {f['no-change_seconds']:.1f} s, {_mb(f['no-change_peak'])} | {_mb(f['no-change_idle'])} |")
    table = "\n".join(lines)
    print(table)
    doc = os.environ.get("MEMORY_DOC", str(REPO / "docs" / "memory.md"))
    if doc:
        Path(doc).write_text(_DOC_HEAD + table + "\n" + _DOC_TAIL)
    return 0


_DOC_HEAD = """# Memory

Written by `python -m bench memory` (`bench/_memory.py`). The chunk index with N synthetic chunks in a fresh
process; a real daemon snapshotting trees of small files (100 B to 2 KiB, 100 per directory), RSS sampled
every 20 ms, idle RSS 5 s after each run. Targets (issue 14): peak <= 150 MB at 100k files, idle <= 80 MB +
40 MB per million stored chunks.

"""
_DOC_TAIL = """
Notes (issue 14, item 3; measured on a 2-core machine shared with other work and niced, code before and
after the change run alternately; times vary by up to 2x between rounds while others ran):

- Where the idle RSS came from (`bench/_memory_probe.py`, one snapshot of 100k files in process, before
  this change): RSS 33 -> 82 MB, of which only ~0.6 MB was live data allocated by the run (tracemalloc).
  The rest: pymalloc arenas grown from 11 to 29-33 (1 MiB each) by the run's per-file objects (an `Entry`,
  its path, chunk list and hex strings, and a work item per file, all kept until the commit), and pinned
  afterwards by a few hundred small survivors; and 23-31 MB of free glibc heap, kept because glibc raises
  its trim threshold with the largest block freed (a 6 MiB read buffer: 12 MiB per worker thread's arena),
  which `malloc_trim` does not release in threads' arenas.
- Now a run keeps per file a binary record in anonymous mmaps freed whole at its end (`engine/_entrylog.py`:
  ~90 bytes a small file for its entry and ~80 for its work item, against ~360 bytes of objects), decoding
  `Entry` objects a tree group at a time for the commit; step 4's batches are arrays of record offsets.
  glibc's trim and mmap thresholds were fixed at 4 MiB and `malloc_trim(0)` runs after each run. In process
  after 100k files: RSS 33 -> 50-59 MB, 17-20 arenas, 3-12 MB free glibc heap; tracemalloc's peak during
  the run 31 MB (was 77 MB).
- Then the 4 MiB thresholds were replaced by one malloc arena (`M_ARENA_MAX` 1, set when the daemon starts;
  `engine/_malloc.py`) with glibc's dynamic thresholds: the fixed mmap threshold made every block of 4 MiB
  or more be mapped and faulted in again (397,511 page faults in the 20k-file benchmark's initial snapshot,
  against 65,704 now; about 20% of its time), and with one arena `malloc_trim(0)` releases the whole free
  heap, top included.
- Daemon, before -> after (`MEMORY_FILES=100000,400000 MEMORY_TREES=...`, rounds alternated):
  - 100k files: peak 151-155 -> 109-111 MB; idle after the initial run 137-144 -> 73-75 MB; initial
    7.3-13.6 s -> 6.6-7.4 s; no-change 2.5-4.0 s -> 2.2-3.3 s.
  - 400k files (the scale bench's tree): peak 362-370 -> 194-195 MB (restic: 355 MB); idle after the
    initial run 330-334 -> 109-119 MB, after the no-change run 334 -> 85-92 MB (target 96 MB for 401,602
    chunks); initial 43.8-82.4 s -> 38.3-49.8 s; no-change 8.8-13.7 s -> 10.1-11.5 s.
  - A 1 GiB file in process (`bench/_memory_probe.py .../big-1073741824`): 3.5-5.8 s before, 4.0-6.1 s
    after; not conclusive on this loaded machine. The thresholds trade speed against idle memory: 1 MiB
    trim threshold looked ~20% slower on it, 8 MiB/16 MiB matched the old speed but kept the old idle
    (82 MB in process after 100k files).
- The "before -> after" figures above were taken with the daemon's watcher on: it snapshots a new tree by
  itself at start, so the "initial" row measured a second run after that one (and the idle RSS after two
  runs). `python -m bench memory` now sets `watch = false` like the other benchmarks; the table at the top
  is from that, with one arena (`MEMORY_FILES=100000,400000 MEMORY_TREES=400000=bench/.work/scale/small-400000`,
  the scale bench's tree; times taken while other work ran niced): 400k files idle 88 MB after the initial run (target 96 MB for 401,602
  chunks), 88 MB after the no-change run.
- What is left: the pymalloc arenas pinned by the run's few survivors (6-9 MB). Not tried: the run's heavy
  part in a child process.
- The chunk index rows above were not measured again (the index did not change): ~54 B per chunk (49-byte
  records in an anonymous mmap, bucket arrays, and a dict of recent additions merged when the last writer
  finishes); look-ups ~1 us.
"""
