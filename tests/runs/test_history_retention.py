"""The history is bounded: finished runs older than the retention, or beyond its count, go with their
events, at start and every hour; unfinished runs and each project's last outcome stay. ``/stats`` is
kept from running totals, equal to what the kept runs say, and reads no rows.

As in test_history_writer.py, the one test double is the writer's ``offload``: writes and trims run
inline on the Trio thread, so that ``autojump_clock``'s times are exact. The end-to-end test runs a real
daemon on a history written before it starts.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from helpers.daemon import DaemonProcess, make_tree, wait_until
from syncsnapd.core import Progress
from syncsnapd.runs import History, Tracker

DAY = 86400.0
NOW = time.time()


async def inline(fn: Callable[[], None]) -> None:
    await trio.lowlevel.checkpoint()
    fn()


@contextmanager
def history(path: Path, offload: Callable[[Callable[[], None]], Awaitable[None]] | None = inline
            ) -> Iterator[tuple[History, Tracker]]:
    h = History.open(path, offload=offload)
    tracker = Tracker(first_event_id=h.reserve_event_ids())
    for project in ("p", "q"):
        tracker.add_project(project)
    try:
        yield h, tracker
    finally:
        h.close()


def _at(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_run(h: History, tracker: Tracker, run: str, days_ago: float, *, project: str = "p", state: str = "completed",
            seconds: float = 30.0, nbytes: int = 2 << 30, kind: str = "snapshot") -> None:
    """A run that started ``days_ago`` and ran ``seconds`` (ending ``state``; an unfinished one stays in
    step 3), written as the daemon's writer writes its events."""
    start = days_ago * DAY
    steps = [(1, "waiting", 0.0), (4, "compressing", seconds / 2)]
    steps.append((6, state, seconds) if state in ("completed", "failed", "cancelled") else (3, "hashing", seconds))
    events = [tracker.publish(Progress(
        project=project, run=run, kind=kind, state=st, step=step, started_at=_at(start), updated_at=_at(start - at),
        bytes_total=nbytes, error={"code": state, "message": state} if st in ("failed", "cancelled") else None))
        for step, st, at in steps]
    h.write(events, tracker.last_event_id)


def runs_of(h: History, project: str = "p") -> list[str]:
    return sorted(r.run for r in h.runs(project, limit=10_000))


def stats_from_rows(h: History, project: str) -> dict[str, Any]:
    """The statistics as the kept runs say, computed from scratch (the way /stats did before)."""
    rows = [r for r in h.runs(project, limit=10_000) if r.kind == "snapshot"
            and r.state in ("completed", "failed", "cancelled")]
    done = [r for r in rows if r.state == "completed"]
    failed = sum(1 for r in rows if r.state == "failed")
    durations = sorted(r.duration_seconds for r in done if r.duration_seconds is not None)
    return {"runs": len(rows), "completed": len(done), "failed": failed,
            "cancelled": len(rows) - len(done) - failed,
            "mean_seconds": round(statistics.fmean(durations), 3) if durations else None}


async def test_the_trim_runs_at_start_and_every_hour_and_keeps_what_the_retention_says(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with history(tmp_path / "history.sqlite3") as (h, tracker):
        for n in range(3):
            add_run(h, tracker, f"old{n}", 100 + n)
        add_run(h, tracker, "old-running", 120, state="scanning")  # unfinished: never trimmed
        add_run(h, tracker, "old-check", 150, kind="check")  # p's only check: its last outcome stays
        add_run(h, tracker, "q-old", 200, project="q")  # q's newest (and only) run stays
        for n in range(3):
            add_run(h, tracker, f"new{n}", 3 - n)
        old_events = len(h.run_events("old0"))
        assert old_events == 3
        retention = [30, 1000]
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(partial(h.serve_trim, lambda: (retention[0], retention[1])))
            await trio.sleep(0.001)  # the trim at start is done (in no time: the clock only jumps once it is)
            assert runs_of(h) == ["new0", "new1", "new2", "old-check", "old-running"]
            assert h.run_events("old0") == [] and len(h.run_events("old-running")) == 3
            assert runs_of(h, "q") == ["q-old"]
            assert h.stats("p").runs == 3

            # Two more runs; keep_runs now 3 (a reload): the next trim, an hour after the first, applies it.
            add_run(h, tracker, "newer0", 0.5)
            add_run(h, tracker, "newer1", 0.1)
            retention[1] = 3
            await trio.sleep(3600 - 0.002)
            assert round(trio.current_time() - t0, 6) == 3599.999 and len(runs_of(h)) == 7
            await trio.sleep(0.002)  # the trim an hour after the first is done
            assert runs_of(h) == ["new2", "newer0", "newer1", "old-check", "old-running"]
            assert h.stats("p").runs == 3 and stats_from_rows(h, "p")["runs"] == 3
            nursery.cancel_scope.cancel()


def test_the_progress_log_is_capped_per_project_but_never_a_running_runs(tmp_path: Path,
                                                                         monkeypatch: Any) -> None:
    from syncsnapd.runs import _history
    monkeypatch.setattr(_history, "EVENTS_KEPT", 5)
    with history(tmp_path / "history.sqlite3", None) as (h, tracker):
        add_run(h, tracker, "running", 1, state="scanning")
        for n in range(4):
            add_run(h, tracker, f"r{n}", 0.5 - n * 0.1)
        runs, events = h.trim(keep_days=0, keep_runs=0)
        # 15 events: the newest 5 (r3's, r2's last two) and the running run's 3 are kept.
        assert runs == 0 and events == 15 - 5 - 3
        assert len(h.run_events("running")) == 3  # older than all of them, and kept whole
        assert len(h.run_events("r3")) == 3 and len(h.run_events("r2")) == 2 and h.run_events("r0") == []
        assert len(runs_of(h)) == 5  # the runs themselves are kept (keep_runs 0: no count limit)


def test_stats_are_running_totals_equal_to_the_kept_runs_and_read_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with history(path, None) as (h, tracker):
        for n, (state, seconds) in enumerate([("completed", 10.0), ("completed", 31.5), ("failed", 3.0),
                                              ("cancelled", 2.0), ("completed", 7.25), ("completed", 100.0)]):
            add_run(h, tracker, f"r{n}", 10 - n, state=state, seconds=seconds, nbytes=(n + 1) << 30)
        add_run(h, tracker, "running", 1, state="scanning")
        add_run(h, tracker, "q0", 1, project="q", seconds=5.0)
        statements: list[str] = []
        h._db.set_trace_callback(statements.append)  # what the database is asked, nothing changed
        st = h.stats("p")
        assert statements == []
        assert {k: getattr(st, k) for k in ("runs", "completed", "failed", "cancelled", "mean_seconds")} == \
            stats_from_rows(h, "p")
        assert (st.runs, st.completed, st.success_rate, st.p95_seconds) == (6, 4, 0.8, 100.0)
        assert st.mean_seconds == round((10 + 31.5 + 7.25 + 100) / 4, 3)
        assert h.stats("q").runs == 1 and h.stats("nobody").runs == 0
        h._db.set_trace_callback(None)
        # A trim takes runs out of the totals.
        assert h.trim(keep_days=0, keep_runs=2) == (4, 12)
        st = h.stats("p")
        assert (st.runs, st.completed, st.p95_seconds) == (2, 2, 100.0)
        assert st.mean_seconds == stats_from_rows(h, "p")["mean_seconds"] == round((7.25 + 100) / 2, 3)
    with history(path, None) as (h, _):  # loaded once at start, from the rows
        assert h.stats("p") == st


async def test_a_run_whose_end_is_recorded_before_its_events_counts_once(tmp_path: Path) -> None:
    """The executor records a run's end (record_end) before the writer writes its last events: the row
    goes finished, back to running for the events still waiting, then finished with its duration."""
    with history(tmp_path / "history.sqlite3") as (h, tracker):
        first = Progress(project="p", run="r", state="waiting", step=1, started_at=_at(60), updated_at=_at(60))
        await h.record_run(first)
        events = [tracker.publish(first), tracker.publish(Progress(
            project="p", run="r", state="compressing", step=4, started_at=_at(60), updated_at=_at(50),
            bytes_total=1 << 30))]
        end = tracker.publish(Progress(project="p", run="r", state="completed", step=6, started_at=_at(60),
                                       updated_at=_at(40)))
        assert await h.record_end(end.progress)
        assert (h.stats("p").runs, h.stats("p").mean_seconds) == (1, None)  # ended; its duration comes next
        h.write([*events, end], tracker.last_event_id)
        st = h.stats("p")
        assert (st.runs, st.completed, st.mean_seconds, st.seconds_per_gib) == (1, 1, 20.0, 20.0)
        assert st.mean_seconds == stats_from_rows(h, "p")["mean_seconds"]


def test_a_daemon_keeps_only_recent_runs_in_its_history_and_stats(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=3)
    with history(short_tmp / "state" / "history.sqlite3", None) as (h, tracker):
        for n in range(4):
            add_run(h, tracker, f"old{n}", 60 + n)
        for n in range(2):
            add_run(h, tracker, f"recent{n}", 2 - n)
    d: DaemonProcess = daemon_factory({"p": folder}, extra_daemon="history_keep_days = 30")

    def get(path: str) -> Any:
        return json.loads(d.curl(f"http://localhost/api/v1{path}").stdout)

    page = wait_until(lambda: (p := get("/projects/p/runs"))["runs"] and len(p["runs"]) == 2 and p, 10,
                      "the start's trim")
    assert [r["run"] for r in page["runs"]] == ["recent1", "recent0"]
    assert get("/runs/old0")["error"]["code"] == "not_found"
    assert get("/projects/p/stats")["runs"] == 2
