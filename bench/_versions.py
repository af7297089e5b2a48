"""The versions section of ``make bench`` (issue 13): every version of one path, and find, over 500 snapshots
of a 20,000-file tree, through the store API (``syncsnapd.store.VersionIndex``, what the daemon's
``GET /projects/{id}/versions`` and ``/find`` run in their worker thread, minus HTTP).

The store is built with the store API directly (hand-made entries, each file's content one small chunk:
no folder is walked), ``BENCH_VERSIONS_CHANGES`` files changed between snapshots, every 10th snapshot
deleting the looked-up file and the next re-creating it. Then, timed:

* cold: the cache file removed, the store freshly opened, one path's versions (the whole cache built);
* from the file: the store freshly opened with the cache file there (a daemon restart);
* warm: the median of 20 look-ups of the same path on the open store;
* find: a glob matching about 1 path in 200, its versions over every snapshot (limit 1000).

Environment: ``BENCH_VERSIONS_SNAPSHOTS`` (500), ``BENCH_VERSIONS_FILES`` (20,000), ``BENCH_VERSIONS_CHANGES``
(5). A smaller size measures the same steps (the rows say which size ran); the targets are for the full one.
Standalone: ``python -m bench._versions DIR``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from syncsnapd.store import (
    Entry,
    SnapshotStats,
    Store,
    VersionIndex,
    hash_bytes,
    make_snapshot_id,
    versions_cache_path,
    versions_of,
)

__all__ = ["markdown_rows", "run"]

# The targets.
COLD_TARGET_S = 2.0
WARM_TARGET_S = 0.2
PROJECT = "bench"
MTIME = 1_700_000_000_000_000_000


def _size() -> tuple[int, int, int]:
    return (int(os.environ.get("BENCH_VERSIONS_SNAPSHOTS", "500")), int(os.environ.get("BENCH_VERSIONS_FILES", "20000")),
            int(os.environ.get("BENCH_VERSIONS_CHANGES", "5")))


def _path(i: int) -> str:
    return f"d{i % 50:02d}/s{i % 7}/f{i:06d}.txt"


def build(root: Path, snapshots: int, files: int, changes: int, log: Callable[[str], None]) -> tuple[str, float]:
    """The store at ``root``: ``snapshots`` snapshots of ``files`` files. Returns (the looked-up path,
    seconds it took)."""
    t0 = time.perf_counter()
    rng = random.Random(13)
    hot = _path(files // 2)
    content: dict[str, bytes] = {_path(i): b"file %d" % i for i in range(files)}
    mtimes = dict.fromkeys(content, MTIME)
    hashes: dict[str, tuple[bytes, str]] = {}  # path -> (its content, that content's hash)
    dirs = sorted({p.rpartition("/")[0] for p in content} | {p.split("/")[0] for p in content})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with Store.open(root, writable=True) as store:
        for n in range(snapshots):
            for _ in range(changes):
                p = _path(rng.randrange(files))
                content[p] = b"%s v%d" % (p.encode(), n)
                mtimes[p] = MTIME + n
            if n % 5 == 1:
                content[hot] = b"hot v%d" % n
                mtimes[hot] = MTIME + n
            deleted = n % 10 == 9  # deleted in every 10th, re-created in the next
            writer = store.begin_write()
            entries = [Entry(d, "dir", 0, MTIME, 0o755, 0, None) for d in dirs]
            for p, data in content.items():
                if deleted and p == hot:
                    continue
                known = hashes.get(p)
                if known is None or known[0] is not data:
                    h = hash_bytes(data)
                    if not store.has_chunk(h):
                        writer.add_chunk(h, data)
                    hashes[p] = known = (data, h)
                entries.append(Entry(p, "file", len(data), mtimes[p], 0o644, 0, [known[1]]))
            entries.sort(key=_walk_key)
            sid = make_snapshot_id(start + timedelta(minutes=n))
            store.commit_snapshot(writer, snapshot_id=sid, project=PROJECT, root="/bench", entries=entries,
                                  stats=SnapshotStats(files=files))
            if n and n % 100 == 0:
                log(f"  versions: {n} of {snapshots} snapshots built ({time.perf_counter() - t0:.0f} s)")
    return hot, time.perf_counter() - t0


def _walk_key(e: Entry) -> tuple[tuple[str, ...], str]:
    # The engine's walk order: a directory's sorted listing, then each subdirectory's in turn.
    parts = e.path.split("/")
    return tuple(parts[:-1]), parts[-1]


def _versions(store: Store, path: str) -> list[Any]:
    index = VersionIndex.of(store)
    index.update()
    ids = [i.id for i in store.list_snapshots(PROJECT)]
    held = index.lookup(ids, [path]).get(path, {})
    found: list[Any] = versions_of([(sid, held.get(sid)) for sid in ids])
    return found


def _find(store: Store, pattern: str, limit: int = 1000) -> int:
    index = VersionIndex.of(store)
    index.update()
    ids = [i.id for i in store.list_snapshots(PROJECT)]
    names = index.paths(lambda p: fnmatchcase(p, pattern))[:limit]
    found = index.lookup(ids, names)
    return sum(len(versions_of([(sid, held.get(sid)) for sid in ids])) for held in found.values())


def measure(root: Path, hot: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold, from the file, warm and find, on the store at ``root``."""
    out: dict[str, Any] = {}
    with Store.open(root, writable=True) as store:
        cache = versions_cache_path(store)
    assert cache is not None
    cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with Store.open(root, writable=True) as store:
        found = _versions(store, hot)
        out["cold_s"] = time.perf_counter() - t0
        out["versions"] = len(found)
        out["stats"] = VersionIndex.of(store).statistics()
        log(f"  cold build: {out['stats']}")
        warm = []
        for _ in range(20):
            t = time.perf_counter()
            _versions(store, hot)
            warm.append(time.perf_counter() - t)
        out["warm_s"] = statistics.median(warm)
        t = time.perf_counter()
        out["find_versions"] = _find(store, "*/f*7[05].txt")
        out["find_s"] = time.perf_counter() - t
    out["cache_bytes"] = cache.stat().st_size
    t0 = time.perf_counter()
    with Store.open(root, writable=True) as store:
        _versions(store, hot)
        out["from_file_s"] = time.perf_counter() - t0
    return out


def run(work: Path, res: dict[str, Any], log: Callable[[str], None]) -> None:
    """The section: build (or re-use) the store, measure, put the figures in ``res["path_versions"]``."""
    snapshots, files, changes = _size()
    root = work / f"versions-{snapshots}x{files}x{changes}"
    marker = root / "bench-built"
    hot_file = root / "bench-hot-path"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        log(f"versions: building {snapshots} snapshots of {files:,} files ({changes} changed between snapshots)")
        hot, built = build(root, snapshots, files, changes, log)
        hot_file.write_text(hot)
        marker.write_text(f"{built:.3f}\n")
    built = float(marker.read_text())
    hot = hot_file.read_text()
    log(f"versions: store built in {built:.1f} s; measuring")
    m = measure(root, hot, log)
    m.update(snapshots=snapshots, files=files, changes=changes, build_s=built)
    res["path_versions"] = m
    log(f"versions: cold {m['cold_s']:.3f} s, from the file {m['from_file_s']:.3f} s, warm {m['warm_s'] * 1000:.1f} ms, "
        f"find {m['find_s']:.3f} s ({m['versions']} versions of {hot})")


def markdown_rows(v: dict[str, Any]) -> list[list[str]]:
    """[what, syncsnap, baseline, ratio, target, result] rows for the summary table."""
    size = f"{v.get('snapshots', 0):,} snapshots x {v.get('files', 0):,} files"
    full = v.get("snapshots", 0) >= 500 and v.get("files", 0) >= 20_000
    note = "" if full else " (smaller than the target's size)"
    rows = []
    for key, what, target in (("cold_s", "cold: cache removed, store freshly opened", COLD_TARGET_S),
                              ("warm_s", "warm: median of 20", WARM_TARGET_S)):
        secs = v.get(key)
        ok = None if not isinstance(secs, float) else secs < target
        rows.append([f"Versions of one path, {what}", f"{secs * 1000:.1f} ms" if isinstance(secs, float) else "n/a",
                     size + note, "", f"< {target * 1000:.0f} ms", "n/a" if ok is None else ("PASS" if ok else "MISS")])
    for key, what in (("from_file_s", "Versions of one path, store reopened with its cache file"),
                      ("find_s", "Find (a glob, ~0.5% of paths) over every snapshot"),
                      ("build_s", "Building the versions bench store (store API)")):
        secs = v.get(key)
        extra = f"cache file {v.get('cache_bytes', 0) / 1e6:.1f} MB" if key == "from_file_s" else size
        rows.append([what, f"{secs:.2f} s" if isinstance(secs, float) else "n/a", extra, "", "", "info"])
    return rows


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/.work/runs")
    results: dict[str, Any] = {}
    run(target, results, print)
    for row in markdown_rows(results["path_versions"]):
        print(" | ".join(row))
