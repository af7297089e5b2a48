"""The history writer: a write the database refuses is retried with backoff, never fatal; events wait in
memory up to a bound, beyond which the oldest are dropped and counted; nothing else is ever lost.

The database refusals are real: another connection holds ``BEGIN EXCLUSIVE`` on the same file. The one
test double is the writer's ``offload``: the tests run each write inline on the Trio thread instead of in a
worker thread (a thread would let ``autojump_clock`` jump while it runs, and the times would not be exact);
with ``busy_timeout=0`` a refused write returns at once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

from syncsnapd.core import Progress, SyncsnapdError
from syncsnapd.runs import History, Tracker


def inline(attempts: list[float]) -> Callable[[Callable[[], None]], Awaitable[None]]:
    """Run each write on the Trio thread, recording the virtual time of every attempt."""

    async def offload(fn: Callable[[], None]) -> None:
        attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        fn()

    return offload


class Locker:
    """Another connection to the history database that can hold its write lock."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)

    def lock(self) -> None:
        self.db.execute("BEGIN EXCLUSIVE")

    def unlock(self) -> None:
        self.db.execute("ROLLBACK")


@contextmanager
def history(tmp_path: Path, attempts: list[float], **kw: object) -> Iterator[tuple[History, Tracker, Locker]]:
    path = tmp_path / "history.sqlite3"
    h = History.open(path, busy_timeout=0, offload=inline(attempts), **kw)
    tracker = Tracker(first_event_id=h.reserve_event_ids())
    tracker.add_project("p")
    locker = Locker(path)
    try:
        yield h, tracker, locker
    finally:
        locker.db.close()
        h.close()


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(1_700_000_000 + seconds, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _step(run: str, step: int, at: float) -> Progress:
    state = {1: "waiting", 2: "scanning", 3: "hashing", 4: "compressing", 5: "committing", 6: "completed"}[step]
    return Progress(project="p", run=run, state=state, step=step, percent=step * 16.0, started_at=_at(0),
                    updated_at=_at(at))


def _stored_ids(h: History, run: str) -> list[int]:
    return [json.loads(d)["event_id"] for d in h.run_events(run)]


async def test_refused_writes_are_retried_at_exact_backoff_times_and_every_event_is_written_in_order(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []
    problems: list[tuple[float, str | None]] = []

    def on_problem(problem: SyncsnapdError | None) -> None:
        problems.append((round(trio.current_time() - t0, 6), None if problem is None else problem.code))

    with history(tmp_path, attempts) as (h, tracker, locker):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(h.serve, tracker, on_problem=on_problem))
            t0 = trio.current_time()
            # Steps 1 and 2 are written at once; the rest of the run meets a locked database.
            first = [tracker.publish(_step("r1", s, at)).id for s, at in ((1, 0), (2, 1))]
            await trio.sleep(0.1)
            assert _stored_ids(h, "r1") == first
            locker.lock()
            await trio.sleep(0.9)
            rest = [tracker.publish(_step("r1", s, at)).id for s, at in ((3, 3), (4, 6), (5, 10), (6, 15))]
            await trio.sleep(69)  # the lock is held until t0 + 70
            waiting_run = h.run("r1")
            assert waiting_run is not None and waiting_run.state == "scanning"
            stats = h.statistics()
            assert (stats.events_pending, stats.write_failures, stats.events_lost) == (4, 8, 0)
            locker.unlock()
            await trio.sleep(30)
            assert h.statistics().events_pending == 0
            # The backoff starts afresh after a success.
            locker.lock()
            tracker.publish(_step("r2", 1, 100))
            await trio.sleep(0.2)
            locker.unlock()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        assert [round(t - t0, 6) for t in attempts] == [
            0.0,  # steps 1 and 2, written
            1.0, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 62.5,  # refused; each retry 0.5, 1, 2, 4, 8, 16, 30 s later
            92.5,  # 30 s later again: the lock went at 70, written
            100.0, 100.5,  # a new refusal: the first retry is 0.5 s later again
        ]
        assert _stored_ids(h, "r1") == first + rest
        # The daemon is told of each refused attempt (shown in health) and of the recovery.
        assert problems == [*((t, "history_write_failed") for t in (1.0, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 62.5)),
                            (92.5, None), (100.0, "history_write_failed"), (100.5, None)]
        rec = h.run("r1")
        assert rec is not None and rec.state == "completed" and rec.duration_seconds == 15.0
        # Step timings survive the failed attempts (each attempt starts from the state the last commit left).
        assert rec.step_seconds == {"1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "5": 5.0}
        assert len(_stored_ids(h, "r2")) == 1
        stats = h.statistics()
        assert (stats.events_written, stats.events_pending, stats.write_failures, stats.events_lost) == (7, 0, 9, 0)


async def test_beyond_the_bound_the_oldest_waiting_events_are_dropped_counted_and_logged_once_per_episode(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[float] = []
    with history(tmp_path, attempts, max_pending=10) as (h, tracker, locker):
        async with trio.open_nursery() as nursery:
            await nursery.start(h.serve, tracker)
            for episode in range(2):
                locker.lock()
                ids = [tracker.publish(_step(f"r{episode}", 4, i)).id for i in range(30)]
                await trio.sleep(5)
                stats = h.statistics()
                assert (stats.events_pending, stats.events_lost) == (10, 20 * (episode + 1))
                locker.unlock()
                await trio.sleep(60)
                assert h.statistics().events_pending == 0
                # The newest ten were kept and written, in order.
                assert _stored_ids(h, f"r{episode}") == ids[20:]
            nursery.cancel_scope.cancel()
    dropping = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(dropping) == 2 and all(r.levelno == logging.ERROR for r in dropping)
    recovered = [r.getMessage() for r in caplog.records if "writing again" in r.getMessage()]
    assert len(recovered) == 2 and all("20 events were lost" in m for m in recovered)


async def test_a_restarted_writer_continues_where_the_last_one_stopped(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """As a supervisor restarts it: events waiting in memory and events published while it was stopped
    are all written by the next serve()."""
    attempts: list[float] = []
    with history(tmp_path, attempts) as (h, tracker, locker):
        async with trio.open_nursery() as nursery:
            locker.lock()
            scope = trio.CancelScope()

            async def first_serve(*, task_status: trio.TaskStatus[None]) -> None:
                with scope:
                    await h.serve(tracker, task_status=task_status)

            await nursery.start(first_serve)
            waiting = [tracker.publish(_step("r1", 4, i)).id for i in range(3)]
            await trio.sleep(1)
            scope.cancel()  # its final flush is refused too: the events stay in memory
            await trio.sleep(1)
            assert h.statistics().events_pending == 3
            while_stopped = [tracker.publish(_step("r1", 4, i)).id for i in range(3, 5)]
            locker.unlock()
            await nursery.start(h.serve, tracker)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert _stored_ids(h, "r1") == waiting + while_stopped
        assert h.statistics().events_lost == 0


async def test_at_shutdown_what_waits_is_written_once() -> None:
    """Cancelling serve() (the daemon stopping) writes the events received so far, in a worker thread."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        h = History.open(Path(d) / "history.sqlite3")
        try:
            tracker = Tracker(first_event_id=h.reserve_event_ids())
            tracker.add_project("p")
            async with trio.open_nursery() as nursery:
                await nursery.start(h.serve, tracker)
                ids = [tracker.publish(_step("r1", s, s)).id for s in range(1, 7)]
                nursery.cancel_scope.cancel()  # before the writer task has even run
            assert _stored_ids(h, "r1") == ids
            rec = h.run("r1")
            assert rec is not None and rec.state == "completed"
        finally:
            h.close()
