"""``python -m bench history``: what a long history costs (issue 14, item 4), with 2 and with many snapshots.

    python -m bench history [--files 10000] [--snapshots 720] [--runs 10000] [--rounds 5] [--dir DIR]
                            [--doc docs/history-costs.md]

Builds one tree of ``--files`` small files, and two stores of it: one with 2 snapshots, one with
``--snapshots`` (hourly snapshots of a tree in which one file changes per hour). Only the first snapshot
of each store is a real run; the others are committed through the store API (``Store.commit_snapshot``
with the first snapshot's entries, one file's mtime changed each time, so each has one new tree group, as
an hourly snapshot of a quiet folder does). Then, alternating between the two stores, best of
``--rounds``:

- **no-change run**: ``take_snapshot`` of the unchanged tree (it commits a snapshot, as the daemon does);
- **snapshot list**: ``Store.list_snapshots(project)`` in a store opened before (the daemon's case),
  mean of 200 calls;
- **check**: ``Store.check(read_data=False)`` (structure: indexes, packs' frames, every snapshot's lists
  of entries);
- **/stats**: ``History.stats(project)`` over a history of 2 and of ``--runs`` finished snapshot runs.

Prints a table and writes it to ``--doc`` (docs/history-costs.md). The machine may be shared: figures
are best of rounds, the two sizes measured side by side.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from syncsnapd.core import Progress, RunProgress
from syncsnapd.engine import take_snapshot
from syncsnapd.runs import Event, History, Tracker
from syncsnapd.store import SnapshotStats, Store, make_snapshot_id

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
PROJECT = "bench"
# Calls of list_snapshots timed together (one is far below the clock's useful resolution).
LIST_CALLS = 200


def _make_tree(root: Path, files: int) -> None:
    rng = random.Random(3)
    past = time.time_ns() - 3600 * 1_000_000_000
    for i in range(files):
        d = root / f"d{i % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:06d}.txt"
        p.write_bytes(rng.randbytes(rng.randint(100, 2000)))
        os.utime(p, ns=(past, past))
    for d in root.iterdir():
        os.utime(d, ns=(past, past))
    os.utime(root, ns=(past, past))


def _progress() -> RunProgress:
    return RunProgress(PROJECT, "r-bench", lambda event: None)


def _build_store(root: Path, tree: Path, snapshots: int) -> None:
    """A store with ``snapshots`` snapshots of ``tree``: one real run, the rest through the store API."""
    shutil.rmtree(root, ignore_errors=True)

    async def first() -> None:
        with Store.open(root, writable=True) as store:
            await take_snapshot(store, PROJECT, tree, _progress())

    trio.run(first)
    with Store.open(root, writable=True) as store:
        base = store.latest(PROJECT)
        assert base is not None
        entries = store.load_entries(base.id)
        files = [i for i, e in enumerate(entries) if e.kind == "file"]
        start = datetime.now(UTC) - timedelta(hours=snapshots + 1)
        for n in range(1, snapshots):
            i = files[(n * 7919) % len(files)]
            entries[i] = entries[i]._replace(mtime_ns=entries[i].mtime_ns + 1)  # one file changed per hour
            writer = store.begin_write()
            store.commit_snapshot(writer, snapshot_id=make_snapshot_id(start + timedelta(hours=n)),
                                  project=PROJECT, root=str(tree), entries=entries,
                                  stats=SnapshotStats(files=len(files)))


def _build_history(path: Path, runs: int) -> None:
    """A history with ``runs`` finished snapshot runs of PROJECT (written as the daemon writes them)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    h = History.open(path)
    try:
        tracker = Tracker(first_event_id=h.reserve_event_ids())
        tracker.add_project(PROJECT)
        start = datetime.now(UTC) - timedelta(hours=runs + 1)
        batch: list[Event] = []
        for n in range(runs):
            t0 = start + timedelta(hours=n)
            at = [(t0 + timedelta(seconds=s)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                  for s in (0, 5, 30)]
            run = f"r{n:07d}"
            for step, state, when in ((1, "waiting", at[0]), (4, "compressing", at[1]), (6, "completed", at[2])):
                p = Progress(project=PROJECT, run=run, kind="snapshot", state=state, step=step,
                             started_at=at[0], updated_at=when, bytes_total=2 << 30)
                batch.append(tracker.publish(p))
            if len(batch) >= 1500:
                h.write(batch, tracker.last_event_id)
                batch = []
        h.write(batch, tracker.last_event_id)
    finally:
        h.close()


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench history")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--snapshots", type=int, default=720)
    parser.add_argument("--runs", type=int, default=10_000, help="finished runs in the large history")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / ".work" / "history-costs")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "history-costs.md")
    args = parser.parse_args(argv)
    work: Path = args.dir
    work.mkdir(parents=True, exist_ok=True)
    tree = work / f"tree-{args.files}"
    if not tree.exists():
        t = time.perf_counter()
        _make_tree(tree, args.files)
        print(f"tree: {args.files} files in {time.perf_counter() - t:.1f} s", flush=True)
    sizes = (2, args.snapshots)
    for n in sizes:
        t = time.perf_counter()
        _build_store(work / f"store-{n}", tree, n)
        print(f"store with {n} snapshots built in {time.perf_counter() - t:.1f} s", flush=True)
    run_sizes = (2, args.runs)
    for n in run_sizes:
        t = time.perf_counter()
        _build_history(work / f"history-{n}.sqlite3", n)
        print(f"history with {n} runs built in {time.perf_counter() - t:.1f} s", flush=True)

    stores = {n: Store.open(work / f"store-{n}", writable=True) for n in sizes}
    histories = {n: History.open(work / f"history-{n}.sqlite3") for n in run_sizes}
    results: dict[str, dict[int, float]] = {"no-change run": {}, "snapshot list (one call)": {},
                                           "check (structure)": {}}
    stats_results: dict[int, float] = {}
    held: dict[int, tuple[int, int]] = {}  # per store: distinct lists of entries (tree groups), packs
    try:
        for store in stores.values():
            store.list_snapshots(PROJECT)  # the daemon has listed them once before any run

        def no_change(store: Store) -> None:
            async def run() -> None:
                await take_snapshot(store, PROJECT, tree, _progress())
            trio.run(run)

        def listing(store: Store) -> None:
            for _ in range(LIST_CALLS):
                store.list_snapshots(PROJECT)

        for _ in range(args.rounds):  # alternating: the two sizes see the same machine
            for n, store in stores.items():
                dt = _best(lambda s=store: no_change(s), 1)
                results["no-change run"][n] = min(results["no-change run"].get(n, float("inf")), dt)
                t = time.perf_counter()
                report = store.check(read_data=False)
                dt = time.perf_counter() - t
                results["check (structure)"][n] = min(results["check (structure)"].get(n, float("inf")), dt)
                held[n] = (getattr(report, "tree_groups", 0), report.packs)  # 0: a version that did not count
                dt = _best(lambda s=store: listing(s), 1) / LIST_CALLS
                key = "snapshot list (one call)"
                results[key][n] = min(results[key].get(n, float("inf")), dt)
            for n, h in histories.items():
                dt = _best(lambda h=h: [h.stats(PROJECT) for _ in range(20)], 1) / 20
                stats_results[n] = min(stats_results.get(n, float("inf")), dt)
    finally:
        for store in stores.values():
            store.close()
        for h in histories.values():
            h.close()

    def ms(x: float) -> str:
        return f"{x * 1000:.3f} ms" if x < 0.01 else f"{x * 1000:.1f} ms"

    small, large = sizes
    rows = [f"| measure | {small} | {large} | ratio |", "|---|---|---|---|"]
    for name, per in results.items():
        rows.append(f"| {name}, snapshots | {ms(per[small])} | {ms(per[large])} | {per[large] / per[small]:.2f} |")
    rows.append(f"| what check verifies: distinct lists of entries (tree groups), packs | {held[small][0]:,}, "
                f"{held[small][1]:,} | {held[large][0]:,}, {held[large][1]:,} | "
                f"{held[large][0] / max(1, held[small][0]):.2f} |")
    rs, rl = run_sizes
    rows.append(f"| /stats (one call), finished runs: {rs} / {rl} | {ms(stats_results[rs])} | "
                f"{ms(stats_results[rl])} | {stats_results[rl] / stats_results[rs]:.2f} |")
    table = "\n".join(rows)
    print(table)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.doc.write_text(
        "# What a long history costs\n\n"
        f"Written by `python -m bench history --files {args.files} --snapshots {args.snapshots} --runs {args.runs} "
        f"--rounds {args.rounds}` on {stamp} (see `bench/_history_costs.py`). A tree of {args.files:,} small files; "
        f"a store with {small} snapshots of it and one with {large} (hourly, one file changed per hour; the "
        "first snapshot is a real run, the others are committed through the store API). Best of rounds, the "
        "two stores measured alternately; the machine (2 cores) may have been shared with other work.\n\n"
        "Targets (issue 14): a no-change run with many snapshots no slower than with 2; check (structure) "
        "at most 3x the time with 2 snapshots. check reads each distinct list of entries (tree group) once: "
        "its time follows the distinct groups and packs the store holds (last row), which grow with what "
        "changed over the history, not with the number of snapshots. The no-change runs add a snapshot to "
        "each store per round.\n\n" + table + "\n")
    print(f"wrote {args.doc}")
    return 0
