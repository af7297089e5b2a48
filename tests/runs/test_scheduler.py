"""The scheduler with the real engine and store: queueing, exactly one terminal event per run, rate limits."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from syncsnapd.core import ProjectConfig
from syncsnapd.runs import Event, Scheduler, Tracker
from syncsnapd.store import Store


async def _collect_until(sub, runs: set[str], terminal_count: int) -> list[Event]:  # type: ignore[no-untyped-def]
    got: list[Event] = []
    with trio.fail_after(60):
        async for ev in sub:
            got.append(ev)
            if sum(1 for e in got if e.progress.terminal and e.progress.run in runs) >= terminal_count:
                return got
    return got


@asynccontextmanager
async def running_scheduler(tmp_path: Path, root: Path) -> AsyncIterator[tuple[Scheduler, Tracker, Store]]:
    """A scheduler serving project "p" on ``root`` with a real store; cancelled and closed on exit."""
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", root)])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            yield sched, tracker, store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def _folder(tmp_path: Path, n: int = 50, size: int = 200_000) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    for i in range(n):
        (root / f"f{i:03}.bin").write_bytes(os.urandom(size))
    return root


async def test_one_running_one_queued_and_requests_coalesce(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path, _folder(tmp_path)) as (sched, tracker, _):
        sub = tracker.subscribe(["p"])
        assert sub.get_nowait() is not None  # idle state
        run1, prog = sched.request_snapshot("p")
        assert prog.run == run1 and prog.state == "waiting" and prog.step == 1
        run2, _ = sched.request_snapshot("p")
        run3, _ = sched.request_snapshot("p")
        assert run2 != run1 and run3 == run2  # one queued follow-up, later requests coalesce
        events = await _collect_until(sub, {run1, run2}, 2)
    terminals = [e.progress for e in events if e.progress.terminal]
    assert [(p.run, p.state) for p in terminals] == [(run1, "completed"), (run2, "completed")]
    # The follow-up started only after the first ended.
    first_of_run2 = next(i for i, e in enumerate(events) if e.progress.run == run2)
    last_of_run1 = max(i for i, e in enumerate(events) if e.progress.run == run1)
    assert first_of_run2 > last_of_run1
    second = terminals[1].snapshot
    assert second is not None and second.files_unchanged == 50 and second.bytes_added < 50_000
    for run in (run1, run2):
        pct = [e.progress.percent for e in events if e.progress.run == run]
        assert pct == sorted(pct)


async def test_failed_run_ends_in_one_failed_event_and_the_next_run_works(tmp_path: Path) -> None:
    root = _folder(tmp_path, n=3, size=1000)
    async with running_scheduler(tmp_path, root) as (sched, tracker, _):
        sub = tracker.subscribe(["p"])
        sub.get_nowait()
        shutil.rmtree(root)
        run1, _ = sched.request_snapshot("p")
        events = await _collect_until(sub, {run1}, 1)
        failed = [e.progress for e in events if e.progress.terminal]
        assert len(failed) == 1 and failed[0].state == "failed"
        assert failed[0].error is not None and failed[0].error["code"] == "folder_missing"
        assert tracker.latest("p").state == "failed"
        _folder(tmp_path, n=2, size=10)
        run2, _ = sched.request_snapshot("p")
        events = await _collect_until(sub, {run2}, 1)
        assert [e.progress.state for e in events if e.progress.terminal] == ["completed"]


async def test_cancelled_run_publishes_cancelled_exactly_once(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path, _folder(tmp_path, n=40, size=2_000_000)) as (sched, tracker, _):
        sub = tracker.subscribe(["p"])
        run, _ = sched.request_snapshot("p")
        with trio.fail_after(30):
            async for ev in sub:
                if ev.progress.step >= 4:
                    break
    # Leaving the block cancelled the scheduler (a daemon shutdown): the run must end exactly once.
    rest = []
    while (ev := sub.get_nowait()) is not None:
        rest.append(ev.progress)
    terminal = [p for p in rest if p.terminal]
    assert [(p.run, p.state) for p in terminal] == [(run, "cancelled")]
    reopened = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=False))
    assert reopened.list_snapshots("p") == []


async def test_progress_is_rate_limited_not_one_event_per_file(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3000):
        (root / f"f{i}").write_bytes(b"x" * (i % 100))
    async with running_scheduler(tmp_path, root) as (sched, tracker, _):
        sub = tracker.subscribe(["p"])
        sub.get_nowait()
        t0 = trio.current_time()
        run, _ = sched.request_snapshot("p")
        events = await _collect_until(sub, {run}, 1)
        elapsed = trio.current_time() - t0
    # Step changes (6) plus a few per second, never one per file.
    assert len(events) <= 8 + 5 * elapsed, (len(events), elapsed)
    assert events[-1].progress.snapshot is not None and events[-1].progress.snapshot.files == 3000
