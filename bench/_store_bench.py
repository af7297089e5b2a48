"""The store's own benchmarks, without the daemon (``python -m bench store-bench`` / ``prune-bench``)::

    python -m bench store-bench DIR [--files 5000] [--mib 400]
    python -m bench prune-bench DIR [--files 5000] [--mib 1000] [--rounds 10] [--keep 3]

``store-bench`` generates a tree like the reference one (mostly 1-64 KiB files, a few 1-50 MiB ones,
partly compressible) in ``DIR/tree`` and times an initial, a no-change and a 1%-changed snapshot into
``DIR/store``, each in a process of its own (``store-bench-phase``), with its peak RSS.
``prune-bench`` takes ``--rounds`` snapshots of such a tree, rewriting 10% of its files with new content
before each, then times a prune keeping the newest ``--keep`` (forget, each collector phase) and the two
check levels. ``prune-bench`` deletes ``DIR`` first.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import trio

from syncsnapd.core import KeepPolicy, RunProgress, SnapshotSummary
from syncsnapd.engine import take_snapshot
from syncsnapd.store import GarbageCollector, Store, plan_forget

__all__ = ["COMMANDS", "main"]

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("store-bench", "store-bench-phase", "prune-bench")


def _progress(project: str) -> RunProgress:
    return RunProgress(project, "r-bench", lambda event: None)


def _backdate(root: Path, seconds: int = 3600) -> None:
    """Move every mtime into the past, so that no file counts as just modified (see RACY_WINDOW_NS)."""
    past = time.time_ns() - seconds * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(past, past), follow_symlinks=False)
    os.utime(root, ns=(past, past))


def make_bench_tree(root: Path, files: int, total_mib: int, seed: int = 1) -> None:
    """A tree like the reference one: ~99.7% files of 1-64 KiB, the rest 1-50 MiB; ~half compressible."""
    rng = random.Random(seed)
    pool_random = rng.randbytes(64 << 20)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(5000)]
    text = bytearray()
    while len(text) < 64 << 20:
        text += b" ".join(rng.choices(words, k=1000)) + b"\n"
    pool_text = bytes(text)
    n_large = max(1, files * 3 // 1000)
    small_sizes = [rng.randint(1 << 10, 64 << 10) for _ in range(files - n_large)]
    large_budget = max(n_large << 20, (total_mib << 20) - sum(small_sizes))
    weights = [rng.random() + 0.05 for _ in range(n_large)]
    large_sizes = [min(50 << 20, max(1 << 20, int(large_budget * w / sum(weights)))) for w in weights]
    sizes = small_sizes + large_sizes
    rng.shuffle(sizes)
    for i, size in enumerate(sizes):
        d = root / f"d{i % 40:02d}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        pool = pool_text if rng.random() < 0.5 else pool_random
        with open(d / f"f{i:05d}.dat", "wb") as f:
            written = 0
            while written < size:
                n = min(size - written, 8 << 20)
                off = rng.randrange(0, len(pool) - n)
                f.write(pool[off:off + n])
                written += n


def bench_phase(workdir: Path, label: str) -> None:
    """One timed snapshot of ``workdir/tree`` into ``workdir/store``, in a process of its own."""
    tree, store_root = workdir / "tree", workdir / "store"

    async def one() -> tuple[SnapshotSummary, float]:
        store = Store.open(store_root, writable=True)
        try:
            t = time.perf_counter()
            s = await take_snapshot(store, "bench", tree, _progress("bench"))
            return s, time.perf_counter() - t
        finally:
            store.close()

    s, dt = trio.run(one)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    rss = int(hwm.split()[1]) / 1024
    print(f"{label:12s} {dt:6.2f} s  new={s.files_new} changed={s.files_changed} "
          f"unchanged={s.files_unchanged} added={s.bytes_added / 2**20:.1f} MiB  peak RSS {rss:.0f} MB",
          flush=True)


def store_bench(workdir: Path, files: int, total_mib: int) -> None:
    tree, store_root = workdir / "tree", workdir / "store"
    if not tree.exists():
        t = time.perf_counter()
        make_bench_tree(tree, files, total_mib)
        _backdate(tree)
        print(f"generated {files} files in {time.perf_counter() - t:.1f} s")
    shutil.rmtree(store_root, ignore_errors=True)
    all_files = sorted(tree.rglob("*.dat"))
    size = sum(p.stat().st_size for p in all_files)
    print(f"tree: {len(all_files)} files, {size / 2**20:.0f} MiB (page cache warm)")

    def phase(label: str) -> None:
        subprocess.run([sys.executable, "-m", "bench", "store-bench-phase", str(workdir), label], check=True,
                       cwd=REPO)

    phase("initial")
    phase("no-change")
    rng = random.Random(7)
    past = time.time_ns() - 60 * 1_000_000_000
    for p in rng.sample(all_files, max(1, len(all_files) // 100)):
        with open(p, "r+b") as f:
            f.write(os.urandom(min(4096, p.stat().st_size)))  # new content, never seen before
        os.utime(p, ns=(past, past))  # changed, but not "just modified" (see RACY_WINDOW_NS)
    phase("1% changed")
    store_size = sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file())
    print(f"store size {store_size / 2**20:.0f} MiB")


def prune_bench(workdir: Path, files: int, total_mib: int, rounds: int, keep: int) -> None:
    tree, store_root = workdir / "tree", workdir / "store"
    shutil.rmtree(workdir, ignore_errors=True)
    t = time.perf_counter()
    make_bench_tree(tree, files, total_mib)
    _backdate(tree)
    print(f"generated {files} files, {total_mib} MiB in {time.perf_counter() - t:.1f} s", flush=True)
    rng = random.Random(11)
    all_files = sorted(tree.rglob("*.dat"))

    async def snap() -> SnapshotSummary:
        with Store.open(store_root, writable=True) as store:
            return await take_snapshot(store, "bench", tree, _progress("bench"))

    t = time.perf_counter()
    for r in range(rounds):
        if r:
            past = time.time_ns() - 60 * 1_000_000_000
            for p in rng.sample(all_files, max(1, len(all_files) // 10)):
                size = p.stat().st_size
                with open(p, "r+b") as f:
                    f.write(os.urandom(min(size, 64 << 10)))  # new content in the first chunk
                os.utime(p, ns=(past, past))
        trio.run(snap)
    store_bytes = sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file())
    print(f"{rounds} snapshots in {time.perf_counter() - t:.1f} s; store {store_bytes / 2**20:.0f} MiB, "
          f"{len(list(store_root.glob('packs/*/*.pack')))} packs", flush=True)
    os.system("sync")
    with Store.open(store_root, writable=True) as store:
        t0 = time.perf_counter()
        decisions = plan_forget(store.list_snapshots(), {"bench": KeepPolicy(last=keep)})
        gone = store.forget([sid for d in decisions.values() for sid in d.forget])
        t1 = time.perf_counter()
        with GarbageCollector(store) as gc:
            gc.mark()
            t2 = time.perf_counter()
            gc.plan()
            t3 = time.perf_counter()
            gc.repack()
            t4 = time.perf_counter()
            gc.delete()
            t5 = time.perf_counter()
        st = gc.stats
        print(f"prune: forgot {len(gone)} snapshots in {t1 - t0:.2f} s; mark {t2 - t1:.2f} s, plan {t3 - t2:.2f} s, "
              f"repack {t4 - t3:.2f} s ({st.packs_repacked} packs, {st.bytes_repacked / 2**20:.0f} MiB copied into "
              f"{st.packs_written}), delete {t5 - t4:.2f} s ({st.packs_deleted} unused + {st.packs_repacked} "
              f"repacked packs); total {t5 - t0:.2f} s, freed {st.bytes_freed / 2**20:.0f} MiB", flush=True)
        for read_data in (False, True):
            t = time.perf_counter()
            report = store.check(read_data=read_data)
            print(f"check{' --read-data' if read_data else ''}: {time.perf_counter() - t:.2f} s, ok={report.ok}, "
                  f"{report.packs} packs, {report.chunks} chunks", flush=True)


def main(argv: list[str]) -> int:
    """Run one of :data:`COMMANDS` (``argv[0]``) with its arguments."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("store-bench", help="time an initial, a no-change and a 1%%-changed snapshot")
    b.add_argument("dir", type=Path)
    b.add_argument("--files", type=int, default=5000)
    b.add_argument("--mib", type=int, default=400)
    pb = sub.add_parser("prune-bench", help="time forget, each prune phase and check after many snapshots")
    pb.add_argument("dir", type=Path)
    pb.add_argument("--files", type=int, default=5000)
    pb.add_argument("--mib", type=int, default=1000)
    pb.add_argument("--rounds", type=int, default=10)
    pb.add_argument("--keep", type=int, default=3)
    bp = sub.add_parser("store-bench-phase", help="(internal) one timed snapshot of store-bench")
    bp.add_argument("dir", type=Path)
    bp.add_argument("label")
    args = parser.parse_args(argv)
    if args.cmd == "store-bench-phase":
        bench_phase(args.dir, args.label)
    elif args.cmd == "prune-bench":
        prune_bench(args.dir, args.files, args.mib, args.rounds, args.keep)
    else:
        store_bench(args.dir, args.files, args.mib)
    return 0
