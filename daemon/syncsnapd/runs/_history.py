"""Run history and the persisted event log, in SQLite (stdlib sqlite3, WAL).

Every published event is written here by :meth:`History.serve`, so the history survives restarts: run rows
with trigger, per-step timings, outcome and snapshot stats; the event log for ``Last-Event-ID`` resume
across a restart; and statistics per project.

The history is the complete record: it reads the tracker through a lossless subscription and moves each
event at once into its own in-memory queue, from which a writer task writes them in order, in batches (the
events published while a write runs form the next batch). A write that fails (the database locked by
another process, disk full, an I/O error) is retried with backoff (:data:`RETRY_FIRST_SECONDS` doubling to
:data:`RETRY_MAX_SECONDS`) for as long as it takes, never fatal; meanwhile events wait in memory up to
:data:`MAX_PENDING_EVENTS`, beyond which the oldest waiting ones are dropped and counted as lost
(:meth:`History.statistics`, exported by ``/metrics``), with one log line per episode.

Event ids never repeat, across restarts too: the daemon reserves blocks of ids in the database before it
uses them (:data:`ID_RESERVATION`), so even events that were published but not yet written when the
daemon died are never re-issued.

All database access runs off the event loop, in worker threads, serialised by a lock (one connection).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import statistics
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..core import Progress, SnapshotSummary, SyncsnapdError, parse_time
from ._tracker import Event, Subscription, Tracker

# Told when the writer starts failing (the error) and when it writes again (None).
ProblemReport = Callable[[SyncsnapdError | None], None]

log = logging.getLogger("syncsnapd.history")

# Event ids reserved ahead in the database. A crash can only skip ids, never reuse them.
ID_RESERVATION = 100_000
# Events kept in the database per project; older ones are trimmed (run rows are kept).
EVENTS_KEPT = 50_000
# Events loaded into the tracker's replay buffer at start (resume across a restart).
REPLAY_ON_START = 4096
# How long SQLite waits for a lock another connection holds before a statement fails with "database is
# locked". Short, because our own retry (below) takes over and because history queries (GET
# /api/v1/runs/...) wait, in their worker threads, for the connection lock that a waiting write holds.
BUSY_TIMEOUT_SECONDS = 1.0
# A failed write is retried after 0.5 s, then each time after twice the previous delay, at most 30 s
# apart, for as long as it takes: a database locked by another process or a full disk is not fatal.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# Events held in memory, not yet written, while writes fail. An event (progress object and its JSON)
# takes about 1.2 KiB (1.8 KiB once its SSE encoding is cached too), so this is at most about 35-55 MiB:
# two hours of a snapshot run at four events a second. Beyond it the oldest waiting events are dropped
# and counted (HistoryStatistics.events_lost).
MAX_PENDING_EVENTS = 30_000
# Events per transaction: a backlog is written in several short transactions, in order, so that history
# queries never wait behind one huge write.
MAX_BATCH_EVENTS = 2_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    trigger TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    retry_of TEXT,
    state TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    duration_seconds REAL,
    steps TEXT NOT NULL DEFAULT '{}',
    error_code TEXT,
    error_message TEXT,
    bytes_total INTEGER,
    snapshot TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_project ON runs (project, started_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    run TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run, id);
"""


@dataclass(frozen=True)
class RunRecord:
    """One run as stored (``GET /api/v1/runs/{run}``)."""

    run: str
    project: str
    kind: str
    trigger: str | None
    attempt: int
    retry_of: str | None
    state: str
    started_at: str | None
    ended_at: str | None
    duration_seconds: float | None
    step_seconds: dict[str, float]
    error: dict[str, str] | None
    snapshot: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "project": self.project or None, "kind": self.kind, "trigger": self.trigger,
            "attempt": self.attempt, "retry_of": self.retry_of, "state": self.state,
            "started_at": self.started_at, "ended_at": self.ended_at, "duration_seconds": self.duration_seconds,
            "step_seconds": self.step_seconds, "error": self.error, "snapshot": self.snapshot,
        }


@dataclass(frozen=True)
class ProjectStats:
    """Statistics of a project's finished snapshot runs."""

    runs: int
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None
    mean_seconds: float | None
    p95_seconds: float | None
    seconds_per_gib: float | None


@dataclass(frozen=True)
class HistoryStatistics:
    """The history writer's counters (see :meth:`History.statistics`).

    Attributes:
        events_pending: events received from the tracker and not yet written (in memory).
        events_written: events written since start.
        events_lost: events dropped unwritten because more than :data:`MAX_PENDING_EVENTS` were waiting.
        write_failures: write attempts that failed (each retried).
    """

    events_pending: int
    events_written: int
    events_lost: int
    write_failures: int


# Runs a blocking call off the event loop: trio.to_thread.run_sync.
Offload = Callable[[Callable[[], None]], Awaitable[None]]


class History:
    """The SQLite history. Open with :meth:`open` (in a thread), then ``await nursery.start(h.serve, tracker)``.

    Args:
        path: the database file.
        max_pending: events held in memory while writes fail (:data:`MAX_PENDING_EVENTS`).
        busy_timeout: seconds SQLite waits for another connection's lock (:data:`BUSY_TIMEOUT_SECONDS`).
        offload: how a write is run off the event loop; ``trio.to_thread.run_sync`` unless a test runs it
            inline to keep virtual time exact.
    """

    def __init__(self, path: Path, *, max_pending: int = MAX_PENDING_EVENTS,
                 busy_timeout: float = BUSY_TIMEOUT_SECONDS, offload: Offload | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a crash can lose the last transactions, never corrupt the database.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._reserved = 0
        # Per running run: the step it is in and since when, plus the seconds spent in each step so far.
        self._steps: dict[str, tuple[int, float, dict[str, float]]] = {}
        # Expected duration of the next snapshot per project (seconds), read on the Trio thread.
        self.expected: dict[str, float | None] = {}
        # The newest event id committed (written by write(), in a worker thread, under the lock).
        self._written_upto = 0
        # The writer's state, on the Trio thread. Events received from the tracker and not yet written:
        # the batch being written (or waiting for its retry), then the rest in order.
        self._offload: Offload = offload if offload is not None else trio.to_thread.run_sync
        self._max_pending = max_pending
        self._batch: list[Event] = []
        self._pending: deque[Event] = deque()
        self._arrived = trio.Event()
        self._received: int | None = None  # the newest event id taken from the tracker
        self._written = 0
        self._lost = 0
        self._failures = 0
        self._lost_in_episode = 0  # since the last successful write (an episode is logged once)

    @classmethod
    def open(cls, path: Path, **kw: Any) -> History:
        """Create the folder and open (or create) the database; keywords as for the constructor."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(path, **kw)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- start-up ----------------------------------------------------------------------------------

    def reserve_event_ids(self) -> int:
        """The first event id this daemon may use; reserves a block ahead of it in the database."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'reserved_event_id'").fetchone()
            reserved = int(row[0]) if row else 1
            top = self._db.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
            first = max(reserved, top + 1)
            self._reserve_locked(first + ID_RESERVATION)
            return first

    def _reserve_locked(self, upto: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES ('reserved_event_id', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(upto),))
        self._reserved = upto

    def recent_events(self, limit: int = REPLAY_ON_START) -> list[Event]:
        """The newest ``limit`` persisted events, oldest first (for the tracker's replay buffer)."""
        with self._lock:
            rows = self._db.execute("SELECT id, data FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [Event(i, _progress_from_json(json.loads(d))) for i, d in reversed(rows)]

    def latest_per_project(self) -> dict[str, Progress]:
        with self._lock:
            rows = self._db.execute(
                "SELECT e.data FROM events e JOIN (SELECT project, MAX(id) AS id FROM events GROUP BY project) m "
                "ON e.id = m.id").fetchall()
        out = {}
        for (d,) in rows:
            p = _progress_from_json(json.loads(d))
            out[p.project] = p
        return out

    def interrupted_runs(self) -> list[RunRecord]:
        """Runs that never reached a terminal state: the daemon died while they were in flight."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE state NOT IN ('completed', 'failed', 'cancelled')"
            ).fetchall()
        return [_run_from_row(r) for r in rows]

    # --- writing -------------------------------------------------------------------------------------

    def write(self, events: Iterable[Event], last_event_id: int) -> None:
        """Persist a batch of events, in order, and update their runs (one transaction).

        Idempotent: events already committed are skipped, so a failed batch can simply be written again.
        On failure nothing is kept, in the database or in this object's per-run state.

        Raises:
            sqlite3.Error: the database refused the write (locked by another process, disk full, I/O).
        """
        with self._lock:
            db = self._db
            steps = {run: (step, since, dict(seconds)) for run, (step, since, seconds) in self._steps.items()}
            reserved, written = self._reserved, self._written_upto
            db.execute("BEGIN")
            try:
                for ev in events:
                    if ev.id <= written:
                        continue
                    p = ev.progress
                    db.execute("INSERT OR IGNORE INTO events (id, project, run, data) VALUES (?, ?, ?, ?)",
                               (ev.id, p.project, p.run, ev.json_text))
                    if p.run is not None:
                        self._update_run(p, parse_time(p.updated_at) or time.time())
                        if p.terminal and p.kind == "snapshot" and p.state == "completed":
                            self.expected[p.project] = self._expected_locked(p.project)
                    written = ev.id
                if last_event_id + ID_RESERVATION // 2 > self._reserved:
                    self._reserve_locked(last_event_id + ID_RESERVATION)
                db.execute("COMMIT")
            except BaseException:
                self._steps, self._reserved = steps, reserved
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the transaction is gone either way; the first error is the one to report
                raise
            self._written_upto = written

    def _update_run(self, p: Progress, now: float) -> None:
        assert p.run is not None
        step, since, seconds = self._steps.get(p.run, (p.step, now, {}))
        if p.step != step:
            seconds[str(step)] = round(seconds.get(str(step), 0.0) + now - since, 3)
            step, since = p.step, now
        terminal = p.terminal
        if terminal:
            self._steps.pop(p.run, None)
        else:
            self._steps[p.run] = (step, since, seconds)
        ended = p.updated_at if terminal else None
        duration = None
        if terminal and p.started_at and p.updated_at:
            start, end = parse_time(p.started_at), parse_time(p.updated_at)
            duration = round(end - start, 3) if start is not None and end is not None else None
        snapshot = json.dumps(p.to_json()["snapshot"]) if p.snapshot is not None else None
        self._db.execute(
            "INSERT INTO runs (run, project, kind, trigger, attempt, retry_of, state, started_at, ended_at, "
            "duration_seconds, steps, error_code, error_message, bytes_total, snapshot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(run) DO UPDATE SET state = excluded.state, ended_at = excluded.ended_at, "
            "duration_seconds = excluded.duration_seconds, steps = excluded.steps, "
            "error_code = excluded.error_code, error_message = excluded.error_message, "
            "bytes_total = COALESCE(excluded.bytes_total, runs.bytes_total), snapshot = excluded.snapshot",
            (p.run, p.project, p.kind, p.trigger, p.attempt, p.retry_of, p.state, p.started_at, ended, duration,
             json.dumps(seconds), p.error["code"] if p.error else None, p.error["message"] if p.error else None,
             p.bytes_total if p.step == 4 else None, snapshot))

    def trim(self) -> None:
        """Keep the newest :data:`EVENTS_KEPT` events per project."""
        with self._lock:
            self._db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                "(PARTITION BY project ORDER BY id DESC) AS n FROM events) WHERE n > ?)", (EVENTS_KEPT,))

    async def serve(self, tracker: Tracker, *, on_problem: ProblemReport | None = None,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every event the tracker publishes, in order, until cancelled (then flush what is left).

        Never fails on a database error: a failed write is retried with backoff while events wait in
        memory (see the module docstring). The events received are kept on this object, so if this
        coroutine is restarted (by a supervisor) it continues where it stopped, with nothing lost.
        ``on_problem`` is told when writes start failing (a ``history_write_failed`` error naming the
        cause and how many events wait) and when they succeed again (None): the daemon shows it in health.
        """
        since = tracker.last_event_id if self._received is None else self._received
        sub = tracker.subscribe(last_event_id=since, transport="internal", lossless=True)
        self._received = since
        try:
            self._take_queued(sub, tracker, since)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_receive, sub)
                await self._serve_writes(tracker, on_problem or (lambda problem: None))
        finally:
            while (ev := sub.get_nowait()) is not None:
                self._take(ev)
            sub.close()
            with trio.CancelScope(shield=True):
                await self._flush_once(tracker)

    def statistics(self) -> HistoryStatistics:
        """Events waiting in memory, written, lost; failed write attempts. Call on the Trio thread."""
        return HistoryStatistics(events_pending=len(self._batch) + len(self._pending),
                                 events_written=self._written, events_lost=self._lost,
                                 write_failures=self._failures)

    def _take_queued(self, sub: Subscription, tracker: Tracker, since: int) -> None:
        taken = 0
        while (ev := sub.get_nowait()) is not None:
            if ev.id > since:
                self._take(ev)
                taken += 1
        if sub.gap:
            # Only when a restarted serve() resumes from further back than the tracker's replay buffer.
            missed = tracker.last_event_id - since - taken
            self._lost += missed
            log.error("history: %d events were published while the history writer was stopped and are "
                      "no longer available; they are missing from the history", missed)

    def _take(self, ev: Event) -> None:
        """Queue one event for writing, within the bound (on the Trio thread, never waits)."""
        self._received = ev.id
        self._pending.append(ev)
        if len(self._batch) + len(self._pending) > self._max_pending:
            self._pending.popleft()  # the oldest not already being written
            self._lost += 1
            self._lost_in_episode += 1
            if self._lost_in_episode == 1:
                log.error("history: %d events are waiting for the database; dropping the oldest until a "
                          "write succeeds (counted in syncsnap_history_events_lost_total)", self._max_pending)
        self._arrived.set()

    async def _serve_receive(self, sub: Subscription) -> None:
        while True:
            await sub.wait()  # a lossless subscription is never closed under us; if it were, this raises
            while (ev := sub.get_nowait()) is not None:
                self._take(ev)

    async def _serve_writes(self, tracker: Tracker, on_problem: ProblemReport) -> None:
        delay = RETRY_FIRST_SECONDS
        failing_since: float | None = None
        while True:
            if not self._batch:
                while not self._pending:
                    await self._arrived.wait()
                    self._arrived = trio.Event()
                n = min(len(self._pending), MAX_BATCH_EVENTS)
                self._batch = [self._pending.popleft() for _ in range(n)]
            try:
                await self._offload(partial(self.write, self._batch, tracker.last_event_id))
            except sqlite3.Error as exc:
                self._failures += 1
                if failing_since is None:
                    failing_since = trio.current_time()
                    log.warning("history: cannot write to %s (%s); retrying with backoff, events wait in "
                                "memory (at most %d)", self.path, exc, self._max_pending)
                on_problem(SyncsnapdError(
                    f"Cannot write the history ({exc}); {len(self._batch) + len(self._pending)} events wait "
                    f"in memory, retrying in {delay:g} s.", code="history_write_failed"))
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            self._written += len(self._batch)
            self._batch = []
            if failing_since is not None:
                log.warning("history: writing again after %.1f s; %d events were lost meanwhile",
                            trio.current_time() - failing_since, self._lost_in_episode)
                failing_since, delay = None, RETRY_FIRST_SECONDS
                on_problem(None)
            self._lost_in_episode = 0

    async def _flush_once(self, tracker: Tracker) -> None:
        """At the end of serve(): one attempt to write what is waiting (shielded by the caller)."""
        events = self._batch + list(self._pending)
        if not events:
            return
        try:
            await self._offload(partial(self.write, events, tracker.last_event_id))
        except sqlite3.Error as exc:
            log.error("history: %d events not written when the writer stopped: %s", len(events), exc)
            return
        self._written += len(events)
        self._batch, self._pending = [], deque()

    # --- queries -------------------------------------------------------------------------------------

    def runs(self, project: str, *, limit: int = 20, before: str | None = None) -> list[RunRecord]:
        """A project's runs, newest first; ``before`` is the run id of the last row of the previous page."""
        with self._lock:
            if before is None:
                rows = self._db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE project = ? ORDER BY started_at DESC, run DESC "
                    "LIMIT ?", (project, limit)).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE project = ? AND (started_at, run) < "
                    "(SELECT started_at, run FROM runs WHERE run = ?) ORDER BY started_at DESC, run DESC LIMIT ?",
                    (project, before, limit)).fetchall()
        return [_run_from_row(r) for r in rows]

    def run(self, run: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run = ?", (run,)).fetchone()
        return _run_from_row(row) if row else None

    def run_events(self, run: str) -> list[str]:
        """A run's full progress log: the JSON text of each event, oldest first."""
        with self._lock:
            return [d for (d,) in self._db.execute("SELECT data FROM events WHERE run = ? ORDER BY id", (run,))]

    def stats(self, project: str) -> ProjectStats:
        """Statistics over the project's finished snapshot runs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, duration_seconds, bytes_total FROM runs WHERE project = ? AND kind = 'snapshot' "
                "AND state IN ('completed', 'failed', 'cancelled')", (project,)).fetchall()
        done = [r for r in rows if r[0] == "completed"]
        failed = sum(1 for r in rows if r[0] == "failed")
        durations = sorted(r[1] for r in done if r[1] is not None)
        per_gib = [r[1] / (r[2] / 2**30) for r in done if r[1] is not None and r[2] and r[2] >= 2**20]
        finished = len(done) + failed
        return ProjectStats(
            runs=len(rows), completed=len(done), failed=failed, cancelled=len(rows) - len(done) - failed,
            success_rate=round(len(done) / finished, 4) if finished else None,
            mean_seconds=round(statistics.fmean(durations), 3) if durations else None,
            p95_seconds=round(_percentile(durations, 0.95), 3) if durations else None,
            seconds_per_gib=round(statistics.fmean(per_gib), 3) if per_gib else None,
        )

    def load_expected(self, projects: Iterable[str]) -> None:
        """Fill :attr:`expected` for these projects (at start; write() keeps it current)."""
        with self._lock:
            for project in projects:
                self.expected[project] = self._expected_locked(project)

    def _expected_locked(self, project: str) -> float | None:
        """A first guess of the next snapshot's duration: the mean of the last few completed runs."""
        rows = self._db.execute(
            "SELECT duration_seconds FROM runs WHERE project = ? AND kind = 'snapshot' AND state = 'completed' "
            "AND duration_seconds IS NOT NULL ORDER BY started_at DESC LIMIT 5", (project,)).fetchall()
        return round(statistics.fmean(r[0] for r in rows), 3) if rows else None


def _percentile(sorted_values: list[float], q: float) -> float:
    # Nearest-rank percentile, as Prometheus and most dashboards report it.
    k = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


_RUN_COLUMNS = ("run, project, kind, trigger, attempt, retry_of, state, started_at, ended_at, duration_seconds, "
                "steps, error_code, error_message, snapshot")


def _run_from_row(r: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run=r[0], project=r[1], kind=r[2], trigger=r[3], attempt=r[4], retry_of=r[5], state=r[6],
        started_at=r[7], ended_at=r[8], duration_seconds=r[9], step_seconds=json.loads(r[10] or "{}"),
        error={"code": r[11], "message": r[12] or ""} if r[11] else None,
        snapshot=json.loads(r[13]) if r[13] else None,
    )


def _progress_from_json(d: dict[str, Any]) -> Progress:
    snap = d.get("snapshot")
    summary = None
    if snap:
        summary = SnapshotSummary(**{**snap, "warning_paths": tuple(snap.get("warning_paths") or ())})
    fields = {k: v for k, v in d.items() if k in Progress.__dataclass_fields__ and k != "snapshot"}
    fields["project"] = fields.get("project") or ""
    return Progress(**fields, snapshot=summary)

