"""The scheduler with the real engine and store: queueing, exactly one terminal event per run, rate limits."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from syncsnapd.core import ProjectConfig, RunProgress
from syncsnapd.engine import SnapshotError
from syncsnapd.runs import Event, RetryPolicy, Scheduler, Tracker
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


# --- the run lifecycle (shared with operation runs) and retry timers, at exact virtual times ---------

@asynccontextmanager
async def timed_scheduler(tmp_path: Path, projects: list[str], **kw: object
                          ) -> AsyncIterator[tuple[Scheduler, Tracker, list[tuple[float, Event]]]]:
    """A serving scheduler whose events are recorded with their virtual time from the start."""
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig(pid, tmp_path) for pid in projects], **kw)  # type: ignore[arg-type]
    seen: list[tuple[float, Event]] = []
    sub = tracker.subscribe()
    while sub.get_nowait() is not None:
        pass
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            t0 = trio.current_time()

            async def record() -> None:
                async for ev in sub:
                    seen.append((round(trio.current_time() - t0, 6), ev))

            nursery.start_soon(record)
            yield sched, tracker, seen
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_the_ticker_publishes_a_snapshot_runs_counters_every_quarter_second(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Step 1 changes its message at 0.1 and 0.3 s and fails at 0.6 s (no worker threads: exact times).
    The changes go out at the next ticks (0.25 and 0.5 s), not at once; then exactly one terminal event."""

    async def waiter(project: ProjectConfig, progress: RunProgress) -> None:
        for at, fraction in ((0.1, 0.2), (0.3, 0.6)):
            await trio.sleep_until(t0 + at)
            progress.set_message(f"Syncthing at {fraction:.0%}", fraction=fraction)
        await trio.sleep_until(t0 + 0.6)
        raise SnapshotError("sync_unreachable", "Syncthing is not answering.")

    async with timed_scheduler(tmp_path, ["p"], waiter=waiter, retry=RetryPolicy(attempts=1)) as (
            sched, _, seen):
        t0 = trio.current_time()
        run, _ = sched.request_snapshot("p")
        await trio.sleep(5)
    assert [(t, e.progress.state, e.progress.message) for t, e in seen] == [
        (0.0, "waiting", "Waiting for the folder to settle"),
        (0.25, "waiting", "Syncthing at 20%"),
        (0.5, "waiting", "Syncthing at 60%"),
        (0.6, "failed", "Snapshot failed: Syncthing is not answering."),
    ]
    assert all(e.progress.run == run for _, e in seen)


async def test_an_internal_error_fails_the_snapshot_run_and_it_is_retried(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def broken(project: ProjectConfig, progress: RunProgress) -> None:
        starts.append(trio.current_time() - t0)
        raise RuntimeError("a bug in step 1")

    async with timed_scheduler(tmp_path, ["p"], waiter=broken, retry=RetryPolicy(attempts=2, backoff=10)) as (
            sched, _, seen):
        t0 = trio.current_time()
        sched.request_snapshot("p")
        await trio.sleep(100)
    terminal = [(t, e.progress.attempt, e.progress.state, e.progress.error) for t, e in seen if e.progress.terminal]
    error = {"code": "internal_error", "message": "An internal error stopped the snapshot; see the daemon's log."}
    assert terminal == [(0.0, 1, "failed", error), (10.0, 2, "failed", error)]
    assert starts == [0.0, 10.0]


async def test_a_failing_retry_timer_is_logged_and_the_scheduler_carries_on(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """Starting the retry of "p" at 10 s fails (here: the history's estimate of its duration raises). The
    failure is logged; "q" keeps running its runs and "p" takes new requests."""
    calls: list[str] = []

    def expected(project: str) -> float | None:
        calls.append(project)
        if len(calls) == 2:
            raise OSError("the history database is gone")
        return None

    starts: list[tuple[float, str, str | None]] = []

    async def failing(project: ProjectConfig, progress: RunProgress) -> None:
        starts.append((trio.current_time() - t0, project.id, progress.current().trigger))
        raise SnapshotError("sync_unreachable", "Syncthing is not answering.")

    async with timed_scheduler(tmp_path, ["p", "q"], waiter=failing, expected=expected,
                               retry=RetryPolicy(attempts=2, backoff=10)) as (sched, _, _):
        t0 = trio.current_time()
        sched.request_snapshot("p")
        await trio.sleep(15)
        sched.request_snapshot("q")
        await trio.sleep(15)
        sched.request_snapshot("p")
        await trio.sleep(30)
    assert starts == [(0.0, "p", "api"), (15.0, "q", "api"), (25.0, "q", "retry"), (30.0, "p", "api"),
                      (40.0, "p", "retry")]
    assert "p: the retry timer failed; the scheduler carries on" in caplog.text
    assert "OSError: the history database is gone" in caplog.text


async def test_a_run_announced_just_before_its_project_is_removed_still_ends_once(tmp_path: Path) -> None:
    """The run's first event is out, but its project is removed before the run's loop picks it up: the
    run ends `cancelled` (project_removed) with exactly one terminal event."""
    async with timed_scheduler(tmp_path, ["p", "q"]) as (sched, tracker, seen):
        run, _ = sched.request_snapshot("p")
        sched.set_projects([ProjectConfig("q", tmp_path)])
        await trio.testing.wait_all_tasks_blocked()
    assert [(e.progress.run, e.progress.state, e.progress.error) for _, e in seen] == [
        (run, "waiting", None),
        (run, "cancelled", {"code": "project_removed", "message": "The project was removed from the configuration."}),
    ]
    assert tracker.projects() == ["q"]
