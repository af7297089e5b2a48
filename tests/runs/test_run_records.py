"""A run is in the history before it is acknowledged or does any work (History.record_run): written at
once, bounded (RECORD_WAIT_SECONDS), and handed to the writer with its retries when the database refuses
it; a queued follow-up run is recorded ``queued`` and ends ``cancelled`` when it is dropped.

Under ``autojump_clock`` with exact virtual times. As in test_history_writer.py, the one test double is the
history's ``offload``: writes run inline on the Trio thread (a worker thread would let the clock jump while
it runs); the database refusals are real (another connection holds ``BEGIN EXCLUSIVE``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from syncsnapd.core import Progress, ProjectConfig, RunProgress
from syncsnapd.runs import History, Scheduler, Tracker
from syncsnapd.store import Store

# runs/_history.py RECORD_WAIT_SECONDS
RECORD_WAIT = 2.0


class Offload:
    """Runs each write inline, recording its virtual time; ``stuck`` makes writes hang (a worker thread
    waiting for a lock) until cancelled."""

    def __init__(self) -> None:
        self.attempts: list[float] = []
        self.stuck = False

    async def __call__(self, fn: Callable[[], None]) -> None:
        self.attempts.append(trio.current_time())
        if self.stuck:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        fn()


@contextmanager
def history(tmp_path: Path, offload: Offload) -> Iterator[tuple[History, Tracker, Callable[[bool], None]]]:
    path = tmp_path / "history.sqlite3"
    h = History.open(path, busy_timeout=0, offload=offload)
    tracker = Tracker(first_event_id=h.reserve_event_ids())
    other = sqlite3.connect(path, isolation_level=None)

    def lock(on: bool) -> None:
        other.execute("BEGIN EXCLUSIVE" if on else "ROLLBACK")

    try:
        yield h, tracker, lock
    finally:
        other.close()
        h.close()


def _first(run: str, state: str = "waiting") -> Progress:
    return Progress(project="p", run=run, state=state, step=1 if state == "waiting" else 0,
                    started_at="2026-01-01T00:00:00.000Z", updated_at="2026-01-01T00:00:00.000Z")


async def test_a_run_is_recorded_at_once_and_a_refused_record_waits_for_the_writer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    offload = Offload()
    with history(tmp_path, offload) as (h, tracker, lock):
        tracker.add_project("p")
        async with trio.open_nursery() as nursery:
            await nursery.start(h.serve, tracker)
            t0 = trio.current_time()
            # Written before any event of the run: the row exists at once.
            assert await h.record_run(_first("r1"))
            rec = h.run("r1")
            assert rec is not None and rec.state == "waiting" and h.run_events("r1") == []
            assert await h.record_run(_first("r1"))  # recorded a moment ago: no second write
            assert len(offload.attempts) == 1
            # The database refuses: the run goes on at once, its record waits for the writer's retries.
            lock(True)
            assert not await h.record_run(_first("r2", "queued"))
            assert trio.current_time() == t0 and h.run("r2") is None
            await trio.sleep(3)
            lock(False)
            await trio.sleep(10)
            rec = h.run("r2")
            assert rec is not None and rec.state == "queued"
            nursery.cancel_scope.cancel()
    # record r1, record r2 (refused), then the writer: at once, 0.5, 1 and 2 s later (written at 3.5).
    assert [round(t - t0, 6) for t in offload.attempts] == [0.0, 0.0, 0.0, 0.5, 1.5, 3.5]


async def test_a_run_waits_for_its_record_at_most_the_bound_then_works_all_the_same(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    offload = Offload()
    started: list[float] = []

    async def waiter(project: ProjectConfig, progress: RunProgress) -> None:
        started.append(trio.current_time())
        await trio.sleep_forever()

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    with history(tmp_path, offload) as (h, tracker, _):
        sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path)], waiter=waiter, record=h.record_run)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sched.serve)
                t0 = trio.current_time()
                offload.stuck = True  # every write hangs, as behind another process's lock
                run, _ = sched.request_snapshot("p")
                await sched.wait_recorded(run)  # what the API awaits before its 202
                assert trio.current_time() - t0 == RECORD_WAIT
                await trio.sleep(1)
                # The executor's own wait for the same run began with the API's and ended with it.
                assert [t - t0 for t in started] == [RECORD_WAIT]
                assert h.run(run) is None
                nursery.cancel_scope.cancel()
        finally:
            store.close()


async def test_a_queued_run_is_recorded_and_ends_cancelled_when_dropped(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async def waiter(project: ProjectConfig, progress: RunProgress) -> None:
        await trio.sleep_forever()

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    with history(tmp_path, Offload()) as (h, tracker, _):
        sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path)], waiter=waiter, record=h.record_run)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(h.serve, tracker)
                scope = trio.CancelScope()

                async def serve_scheduler(*, task_status: trio.TaskStatus[None]) -> None:
                    with scope:
                        await sched.serve(task_status=task_status)

                await nursery.start(serve_scheduler)
                runs = []
                for _ in range(2):
                    run, _ = sched.request_snapshot("p")
                    await sched.wait_recorded(run)
                    runs.append(run)
                first, queued = runs
                states = [(r.state if r else None) for r in (h.run(first), h.run(queued))]
                assert states == ["waiting", "queued"]
                # Cancelling the running run drops the queued one: both end cancelled, in the history too.
                sched.cancel_run("p")
                await trio.sleep(1)
                rec = h.run(queued)
                assert rec is not None and rec.state == "cancelled" and rec.duration_seconds is None
                assert rec.error is not None and rec.error["code"] == "cancelled"
                # The daemon stopping drops a queued run too: cancelled, code shutdown.
                third, _ = sched.request_snapshot("p")
                fourth, _ = sched.request_snapshot("p")
                await sched.wait_recorded(fourth)
                scope.cancel()
                await trio.sleep(1)
                ended = [(r.state, r.error["code"] if r.error else None) if r else None
                         for r in (h.run(first), h.run(third), h.run(fourth))]
                assert ended == [("cancelled", "cancelled"), ("cancelled", "shutdown"), ("cancelled", "shutdown")]
                nursery.cancel_scope.cancel()
        finally:
            store.close()




async def test_a_runs_end_is_in_the_history_before_anyone_sees_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A daemon killed between publishing a run's end and the batch writer's next write must not end
    that run a second time (``interrupted``) at its next start: the end is recorded before it is
    published. No batch writer runs here, so only that record can put the end in the database."""
    offload = Offload()
    seen: list[tuple[str, str | None]] = []
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    (tmp_path / "folder").mkdir()
    with history(tmp_path, offload) as (h, tracker, _):
        sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path / "folder")], record=h.record_run,
                          record_end=h.record_end)

        def on_event(progress: Progress) -> None:
            if progress.terminal:
                rec = h.run(progress.run or "")
                seen.append((progress.state, rec.state if rec is not None else None))

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sched.serve)
                with tracker.subscribe(lossless=True) as sub:
                    run, _ = sched.request_snapshot("p")
                    while not seen:
                        await sub.wait()
                        while (ev := sub.get_nowait()) is not None:
                            on_event(ev.progress)
                nursery.cancel_scope.cancel()
        finally:
            store.close()
    assert seen == [("completed", "completed")]
    # What the next start would mark interrupted: nothing.
    reopened = History.open(tmp_path / "history.sqlite3")
    try:
        assert reopened.interrupted_runs() == []
    finally:
        reopened.close()
