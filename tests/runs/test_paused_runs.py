"""Pause and resume below the API: the scheduler's rules under a virtual clock, the history's accounting of
paused time from a run's events, the progress gate worker threads wait on, and the paused file."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from syncsnapd.core import Progress, ProjectConfig, RunCancelled, RunProgress
from syncsnapd.engine import SnapshotError
from syncsnapd.runs import Event, History, ProjectPaused, RetryPolicy, Scheduler, Tracker
from syncsnapd.store import Store


async def test_a_paused_project_starts_no_run_not_even_a_retry_and_one_on_resume(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The step-1 waiter fails the first run (no worker thread runs, so virtual times are exact); the
    retry timer fires while the project is paused, as do automatic requests; the resume starts one run,
    the retry (the first automatic request is the one remembered)."""
    starts: list[tuple[float, str | None, int]] = []

    async def waiter(project: ProjectConfig, progress: RunProgress) -> None:
        p = progress.current()
        starts.append((trio.current_time(), p.trigger, p.attempt))
        if len(starts) == 1:
            raise SnapshotError("sync_unreachable", "Syncthing is not answering.")
        await trio.sleep(1)
        raise SnapshotError("sync_unreachable", "Still not.")

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path)], waiter=waiter,
                      retry=RetryPolicy(attempts=2, backoff=10))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            t0 = trio.current_time()
            first, _ = sched.request_snapshot("p")
            await trio.sleep(1)
            await sched.pause("p")
            assert sched.is_paused("p")
            await trio.sleep(20)  # the retry was due at 10 s
            with pytest.raises(ProjectPaused) as refused:
                sched.request_snapshot("p")  # trigger "api"
            assert (refused.value.code, refused.value.message) == (
                "project_paused", "Project 'p' is paused; resume it first.")
            later, _ = sched.request_snapshot("p", "watch")
            assert sched.request_snapshot("p", "schedule")[0] == later  # remembered once
            assert not sched.busy() and len(starts) == 1
            await trio.sleep(30)
            await sched.resume("p")
            await sched.resume("p")  # idempotent
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert [(round(t - t0, 6), trig, a) for t, trig, a in starts] == [(0.0, "api", 1), (51.0, "retry", 2)]
    assert not sched.is_paused("p")


async def test_a_queued_run_waits_for_the_resume_and_a_pause_holds_the_running_one_between_steps(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A run paused during step 1 holds before step 2 (its step stays 1) and goes on at the resume; the
    follow-up queued before the pause starts only after the resume, once."""
    steps: list[tuple[str, int, bool]] = []

    async def waiter(project: ProjectConfig, progress: RunProgress) -> None:
        await trio.sleep(5)
        raise SnapshotError("folder_missing", "stop here")  # after step 1: exact times, no threads

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path)], waiter=waiter,
                      retry=RetryPolicy(attempts=1))
    sub = tracker.subscribe(["p"])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            run1, _ = sched.request_snapshot("p")
            run2, _ = sched.request_snapshot("p")  # queued
            await trio.sleep(2)
            await sched.pause("p")
            await trio.sleep(30)
            await sched.resume("p")
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    while (ev := sub.get_nowait()) is not None:
        p = ev.progress
        if p.run is not None:
            steps.append((p.run, p.step, p.paused))
    by_run = {r: [(s, paused) for rr, s, paused in steps if rr == r] for r in (run1, run2)}
    # run1: announced, paused (step 1 still), failing at its end (its waiter ran on while paused).
    assert by_run[run1][:2] == [(1, False), (1, True)] and by_run[run1][-1] == (6, False)
    # run2 began only after the resume, and ran once.
    assert by_run[run2][0] == (1, False) and by_run[run2][-1] == (6, False)
    assert sum(1 for s, _ in by_run[run2] if s == 6) == 1


def test_history_counts_paused_time_in_no_step(tmp_path: Path) -> None:
    """Events at exact wall times: step 4 from 10 s, paused 12-20 s, resumed, step 5 at 25 s, end at 26 s."""
    history = History.open(tmp_path / "h.sqlite3")
    base = dict(project="p", run="r1", started_at="2026-12-01T00:00:00.000Z")

    def at(i: int, seconds: int, **kw: object) -> Event:
        return Event(i, Progress(**base, updated_at=f"2026-12-01T00:00:{seconds:02}.000Z", **kw))  # type: ignore[arg-type]

    events = [at(1, 0, step=1, state="waiting"), at(2, 10, step=4, state="compressing"),
              at(3, 12, step=4, state="compressing", paused=True), at(4, 15, step=4, state="compressing", paused=True),
              at(5, 20, step=4, state="compressing"), at(6, 25, step=5, state="uploading"),
              at(7, 26, step=6, state="completed")]
    history.write(events, 7)
    record = history.run("r1")
    assert record is not None
    assert record.step_seconds == {"1": 10.0, "4": 7.0, "5": 1.0}
    assert record.paused_seconds == 8.0 and record.duration_seconds == 26.0
    assert record.to_json()["paused_seconds"] == 8.0
    # Cancelled while paused: the pause ends with the run.
    history.write([Event(8, Progress(project="p", run="r2", step=4, state="compressing",
                                     started_at="2026-12-01T00:01:00.000Z", updated_at="2026-12-01T00:01:02.000Z")),
                   Event(9, Progress(project="p", run="r2", step=4, state="compressing", paused=True,
                                     started_at="2026-12-01T00:01:00.000Z", updated_at="2026-12-01T00:01:03.000Z")),
                   Event(10, Progress(project="p", run="r2", step=6, state="cancelled",
                                      started_at="2026-12-01T00:01:00.000Z", updated_at="2026-12-01T00:01:09.000Z"))],
                  10)
    r2 = history.run("r2")
    assert r2 is not None and r2.paused_seconds == 6.0 and r2.step_seconds == {"4": 1.0}
    history.close()


def test_an_older_history_gets_the_paused_seconds_column(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE runs (run TEXT PRIMARY KEY, project TEXT NOT NULL, kind TEXT NOT NULL, "
                     "trigger TEXT, attempt INTEGER NOT NULL DEFAULT 1, retry_of TEXT, state TEXT NOT NULL, "
                     "started_at TEXT, ended_at TEXT, duration_seconds REAL, steps TEXT NOT NULL DEFAULT '{}', "
                     "error_code TEXT, error_message TEXT, bytes_total INTEGER, snapshot TEXT);"
                     "INSERT INTO runs (run, project, kind, state) VALUES ('old', 'p', 'snapshot', 'completed');")
    db.close()
    history = History.open(path)
    assert history.notice is None
    old = history.run("old")
    assert old is not None and old.paused_seconds == 0.0
    history.close()


def test_a_worker_held_by_a_pause_reads_nothing_until_resumed_and_a_cancel_wakes_it() -> None:
    published: list[Progress] = []
    progress = RunProgress("p", "r1", published.append, expected_seconds=100)
    progress.set_step(4, files_total=10, bytes_total=1000)
    passed = threading.Event()

    def worker() -> None:
        try:
            progress.check_cancelled()
            passed.set()
        except RunCancelled:
            passed.clear()

    assert progress.pause() and not progress.pause()
    last = published[-1]
    assert last.paused and last.eta_seconds is None and last.step == 4
    assert last.message == "Paused: resume to continue (was: Compressing 0 of 10 files (0 B of 1000 B))"
    t = threading.Thread(target=worker)
    t.start()
    assert not passed.wait(0.3)  # held
    assert progress.resume() and not progress.resume()
    assert passed.wait(5)
    assert not published[-1].paused and published[-1].eta_seconds is not None
    assert progress.paused_seconds >= 0.3
    t.join(5)
    # A second worker held by a new pause ends with RunCancelled as soon as the run is cancelled.
    progress.pause()
    held = threading.Thread(target=worker)
    passed.clear()
    held.start()
    progress.cancel()
    held.join(2)
    assert not held.is_alive()
    final = progress.finish("cancelled", message="Snapshot cancelled")
    assert not final.paused
    n = len(published)
    progress.resume()  # after the end: nothing more is published
    assert len(published) == n


@pytest.mark.parametrize("content", [b"[]", b"{", b'{"version": 2, "projects": {}}', b"\xff"])
def test_a_damaged_paused_file_is_logged_and_ignored(tmp_path: Path, content: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "paused.json").write_bytes(content)
    with caplog.at_level(logging.ERROR):
        sched = Scheduler(Store.__new__(Store), Tracker(), [ProjectConfig("p", tmp_path)],
                          paused_file=tmp_path / "paused.json")
    assert not sched.is_paused("p")
    assert "paused.json is damaged" in caplog.text
