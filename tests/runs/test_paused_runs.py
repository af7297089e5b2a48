"""Pause and resume below the API: the scheduler's rules under a virtual clock, the history's accounting of
paused time from a run's events, the progress gate worker threads wait on, the paused file, and what a
paused run lends back (its running slot, its worker threads' tokens) so that it never stalls another
project's run."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from syncsnapd.core import Progress, ProjectConfig, RunCancelled, RunProgress
from syncsnapd.engine import SnapshotError
from syncsnapd.runs import Event, History, ProjectPaused, RetryPolicy, Scheduler, Subscription, Tracker
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


def test_a_worker_held_by_a_pause_says_so_once_each_way_however_the_hold_ends() -> None:
    """``held(True)`` before the wait, ``held(False)`` once after it: on resume, on cancel, and when
    ``poll`` raises (trio's cancellation reaching the thread); never when the run is not paused."""
    progress = RunProgress("p", "r1", lambda p: None)
    calls: list[bool] = []
    progress.check_cancelled(held=calls.append)
    assert calls == []

    class Stop(Exception):
        pass

    def stop_after_one_poll() -> None:
        if polls:
            raise Stop()
        polls.append(1)

    polls: list[int] = []
    outcomes: list[str] = []

    def worker(poll: Callable[[], None] | None) -> None:
        try:
            progress.check_cancelled(poll, calls.append)
            outcomes.append("went on")
        except (RunCancelled, Stop) as exc:
            outcomes.append(type(exc).__name__)

    for end in ("resume", "poll", "cancel"):
        progress.pause()
        t = threading.Thread(target=worker, args=(stop_after_one_poll if end == "poll" else None,))
        t.start()
        if end == "resume":
            assert not outcomes and t.is_alive()
            progress.resume()
        elif end == "cancel":
            progress.cancel()
        t.join(5)
        assert not t.is_alive()
    assert outcomes == ["went on", "Stop", "RunCancelled"]
    assert calls == [True, False] * 3


async def _until(sub: Subscription, pred: Callable[[Progress], bool]) -> Progress:
    async for ev in sub:
        if pred(ev.progress):
            return ev.progress
    raise AssertionError("the subscription ended")


async def test_a_paused_run_lends_its_running_slot_until_it_is_resumed_or_ends(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """``max_concurrent = 1``. Run "a" is paused at 1 s in step 1 (its waiter takes 5 s); at 5 s it takes
    the only running slot and holds before step 2, lending the slot back (no worker thread runs while it
    holds, so the times are exact). "b", asked for at 10 s, enters step 2 at once and never waits for a
    slot (its folder is missing: it fails there, in a worker thread, after which times are counted from
    its end, T). Each pause and resume moves the limiter's total between 2 and 1; a cancel while paused,
    and the scheduler stopping while paused, give the slot back too."""
    seen: list[tuple[float, Progress]] = []
    b_ended = trio.Event()

    async def waiter(project: ProjectConfig, progress: RunProgress) -> None:
        if project.id == "a":
            await trio.sleep(5)

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("a", tmp_path / "gone-a"),
                                       ProjectConfig("b", tmp_path / "gone-b")],
                      waiter=waiter, max_concurrent=1, retry=RetryPolicy(attempts=1))
    slots = sched.run_limiter

    async def record(sub: Subscription) -> None:
        async for ev in sub:
            seen.append((trio.current_time() - t0, ev.progress))
            if ev.progress.project == "b" and ev.progress.terminal:
                b_ended.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            t0 = trio.current_time()
            nursery.start_soon(record, tracker.subscribe(lossless=True))
            first, _ = sched.request_snapshot("a")
            await trio.sleep(1)
            await sched.pause("a")
            assert slots.total_tokens == 1  # step 1 holds no slot: nothing to lend
            await trio.sleep_until(t0 + 6)
            assert (slots.total_tokens, slots.borrowed_tokens) == (2, 1)
            await trio.sleep_until(t0 + 10)
            other, _ = sched.request_snapshot("b")
            await b_ended.wait()
            t1 = trio.current_time() - t0
            assert (slots.total_tokens, slots.borrowed_tokens) == (2, 1)
            totals = []
            for _ in range(3):
                await sched.resume("a")
                totals.append(slots.total_tokens)
                await sched.pause("a")
                totals.append(slots.total_tokens)
            assert totals == [1, 2] * 3
            await trio.sleep(10)
            assert sched.cancel_run("a") == first
            await trio.sleep(1)
            assert (slots.total_tokens, slots.borrowed_tokens) == (1, 0)

            await sched.resume("a")
            second, _ = sched.request_snapshot("a")
            await trio.sleep(1)
            await sched.pause("a")
            await trio.sleep(8)  # holding its slot since T + 16 s, lent
            assert (slots.total_tokens, slots.borrowed_tokens) == (2, 1)
            nursery.cancel_scope.cancel()  # the daemon stopping
    finally:
        store.close()
    assert (slots.total_tokens, slots.borrowed_tokens) == (1, 0)
    b = [(t, p.step, p.state, p.message) for t, p in seen if p.run == other]
    assert b[:2] == [(10.0, 1, "waiting", "Waiting for the folder to settle"),
                     (10.0, 2, "browsing", "Browsing folder status")], b
    assert b[-1][2] == "failed" and not [m for *_, m in b if m.startswith("Waiting for other")]
    ends = [(round(t - t1, 6), p.state) for t, p in seen if p.terminal and p.run == first]
    assert ends == [(10.0, "cancelled")]
    last = tracker.latest("a")
    assert (last.run, last.state) == (second, "cancelled") and last.error is not None
    assert last.error["code"] == "shutdown"
    assert [(t, p.paused) for t, p in seen if p.run == first][:2] == [(0.0, False), (1.0, True)]


@dataclass(frozen=True)
class _Pausing(ProjectConfig):
    """A project whose ignore predicate also calls ``hook`` with each path, in the walk's worker thread:
    how a test pauses a run from inside a worker thread at a known point (nothing else of the real engine
    runs there), so that the walk then holds at its next directory, in that thread."""

    hook: Callable[[str], None] = field(default=lambda rel: None, compare=False)

    def ignore_fn(self, exclude: tuple[Path, ...] = ()) -> Callable[[str], bool]:
        base = super().ignore_fn(exclude)

        def ignored(rel: str) -> bool:
            self.hook(rel)
            return base(rel)

        return ignored


def _tree(root: Path, dirs: int = 3, files: int = 5) -> Path:
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(files):
            (root / f"d{d}" / f"f{f}.txt").write_bytes(f"{d} {f} ".encode() * 100)
    return root


@pytest.mark.parametrize("end", ["resume", "repeat", "cancel", "fail", "shutdown"])
async def test_a_run_paused_in_a_worker_thread_lends_its_thread_and_slot_and_takes_them_back(
        tmp_path: Path, end: str) -> None:
    """One worker thread and one running slot in all. Run "a" is paused from inside its walk (which then
    holds in its worker thread, at its next directory): a snapshot of "b" still runs to completion, and
    "a" stays paused. Then "a" is resumed (and completes), paused and resumed again several times, cancelled
    or the scheduler stopped; or it fails right after the pause. Every way, both limiters end with the
    totals they were made with and nothing borrowed. Real worker threads run, so the clock is real: the
    test waits for events, never for a time (``fail_after`` only bounds a hang)."""
    threads = trio.CapacityLimiter(1)
    lent_at_fail: list[tuple[float, float]] = []
    sched: Scheduler

    def hook(rel: str) -> None:
        if rel != "d1/":  # the walk gives directories to the ignore rules with a trailing "/"
            return
        trio.from_thread.run(sched.pause, "a")
        if end == "fail":
            lent_at_fail.append(trio.from_thread.run_sync(
                lambda: (sched.run_limiter.total_tokens, threads.total_tokens)))
            raise SnapshotError("folder_missing", "The folder went away.")

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [_Pausing("a", _tree(tmp_path / "a"), hook=hook),
                                       ProjectConfig("b", _tree(tmp_path / "b"))],
                      limiter=threads, max_concurrent=1, retry=RetryPolicy(attempts=1))
    slots = sched.run_limiter
    sub = tracker.subscribe(lossless=True)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(sched.serve)
                run, _ = sched.request_snapshot("a")
                if end == "fail":
                    final = await _until(sub, lambda p: p.run == run and p.terminal)
                    assert (final.state, final.paused) == ("failed", False)
                    assert lent_at_fail == [(2, 1)]  # the slot was lent; the thread never held
                else:
                    await _paused_a_stalls_nothing(sched, tracker, sub, run, slots, threads, end)
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert (slots.total_tokens, slots.borrowed_tokens) == (1, 0)
    assert (threads.total_tokens, threads.borrowed_tokens) == (1, 0)


async def _paused_a_stalls_nothing(sched: Scheduler, tracker: Tracker, sub: Subscription, run: str,
                                   slots: trio.CapacityLimiter, threads: trio.CapacityLimiter, end: str) -> None:
    await _until(sub, lambda p: p.run == run and p.paused)
    other, _ = sched.request_snapshot("b")
    done = await _until(sub, lambda p: p.run == other and p.terminal)
    assert done.state == "completed" and done.snapshot is not None and done.snapshot.files == 15
    assert tracker.latest("a").paused and tracker.latest("a").step == 3
    assert (slots.total_tokens, threads.total_tokens) == (2, 2)  # both lent by "a"
    if end in ("resume", "repeat"):
        for _ in range(3 if end == "repeat" else 0):
            await sched.resume("a")
            assert slots.total_tokens == 1
            await trio.sleep(0.01)  # lets the run go on a little (not needed for what is asserted)
            await sched.pause("a")
            await trio.sleep(0.01)
        await sched.resume("a")
        final = await _until(sub, lambda p: p.run == run and p.terminal)
        assert final.state == "completed" and final.snapshot is not None and final.snapshot.files == 15
    elif end == "cancel":
        sched.cancel_run("a")
        final = await _until(sub, lambda p: p.run == run and p.terminal)
        assert final.state == "cancelled"
