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

A run exists before it is acknowledged or does any work: :meth:`History.record_run` writes its row
(state ``waiting``, or ``queued`` for a follow-up run waiting behind a running one) at once, in a worker
thread, on the same connection and under the same lock as the writer's transactions, and the API (before
its 202) and the run's executor (before the run's body) await it, for at most
:data:`RECORD_WAIT_SECONDS`. So a daemon killed right after it accepted a run still has the run's row,
which the next start ends ``failed`` with code ``interrupted`` (:meth:`History.interrupted_runs`). If the
row cannot be written within that time (the database locked by another process for longer, a full disk,
a read-only file), the run goes on all the same and its row waits in memory for the writer, with its
retries, like the events: the history is degraded, and says so in health; a daemon killed before the
writer succeeds loses that run's record (and the events not written yet), as it loses those events.

Event ids never repeat, across restarts too: the daemon reserves blocks of ids in the database before it
uses them (:data:`ID_RESERVATION`), so even events that were published but not yet written when the
daemon died are never re-issued.

A history that cannot be used never stops the daemon (:meth:`History.open`): a damaged database (not a
database, or corrupt where the start-up reads it) is moved aside to ``history.sqlite3.corrupt-<time>``
and a new one is started; a database that cannot be written (a read-only file, a full disk) or opened at
all is used read-only, or not at all, while events wait in memory as for a failed write, and each retry
first opens it again. :attr:`History.notice` says which happened, and :meth:`History.serve` reports it.
While the database cannot be written, event ids are not reserved in it: a daemon that stops before it can
write again may issue those ids again at its next start.

All database access runs off the event loop, in worker threads, serialised by a lock (one connection).

The history is bounded: :meth:`History.serve_trim` (a supervised service of the daemon) deletes, at start
and hourly, the finished runs the retention no longer keeps (``daemon.history_keep_days``,
``history_keep_runs``) with their events, and caps each project's events (:data:`EVENTS_KEPT`); it never
touches an unfinished run. ``GET .../stats`` is answered from running totals (:class:`RunTotals`), loaded
once and kept current by every write that changes a finished snapshot run, so it reads no rows.

This module is longer than most: the writer, its retries, the run records, the trim and the queries share
that one connection, its lock and the writer's in-memory state, and are kept in one piece so that the
rules for them are read in one place.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Generator, Iterable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from ..core import Progress, SyncsnapdError, parse_time
from ._records import (
    FINISHED,
    RUN_COLUMNS,
    HistoryStatistics,
    ProjectStats,
    RunRecord,
    RunTotals,
    TotalsRow,
    progress_from_json,
    run_from_row,
)
from ._tracker import Event, Subscription, Tracker

__all__ = ["History", "HistoryStatistics", "ProjectStats", "RunRecord"]

# Told when the writer starts failing (the error) and when it writes again (None).
ProblemReport = Callable[[SyncsnapdError | None], None]

log = logging.getLogger("syncsnapd.history")

# Event ids reserved ahead in the database. A crash can only skip ids, never reuse them.
ID_RESERVATION = 100_000
# Events kept in the database per project by :meth:`History.trim`, whatever the runs' retention: the
# progress logs of long runs (four events a second) are bounded too. Events of unfinished runs are never
# trimmed. About 2 KB each: at most about 100 MB per project.
EVENTS_KEPT = 50_000
# How often the history is trimmed (History.serve_trim): at start, then every hour.
TRIM_INTERVAL_SECONDS = 3600.0
# Runs (with their events) deleted per transaction by a trim, so that the writer and history queries
# never wait long behind it; events likewise.
TRIM_BATCH_RUNS = 500
TRIM_BATCH_EVENTS = 5000
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
# How long a new run waits for its row to be written before it is acknowledged (202) or starts its work.
# A write takes milliseconds; this is the longest a request is held up while another process holds the
# database's lock (two attempts of BUSY_TIMEOUT_SECONDS: behind the writer's own, then its own) before the
# run goes on with its record waiting in memory (see the module docstring).
RECORD_WAIT_SECONDS = 2.0
# Run ids recently recorded, remembered so that the second wait for the same run (the API's, then the
# executor's) returns at once.
RECORDED_REMEMBERED = 1024
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
# Columns added since the first version, with their definitions: added where missing when the database
# is opened for writing (ALTER TABLE ... ADD COLUMN; older rows take the default).
_ADDED_COLUMNS = (("runs", "paused_seconds", "REAL NOT NULL DEFAULT 0"), ("runs", "result", "TEXT"))

# A run's step bookkeeping while it runs: the step it is in and since when, the seconds spent in each step
# so far, when its current pause began (None unless paused) and the seconds paused before it.
_StepState = tuple[int, float, dict[str, float], float | None, float]


def _advance(state: _StepState | None, p: Progress, now: float) -> _StepState:
    """The bookkeeping after event ``p`` of its run at ``now`` (``state`` None: the run's first event)."""
    step, since, seconds, paused_at, paused = state if state is not None else (p.step, now, {}, None, 0.0)
    if paused_at is not None and not p.paused:  # resumed (or ended while paused): the step goes on
        paused, paused_at, since = paused + now - paused_at, None, now
    if p.step != step:
        seconds[str(step)] = round(seconds.get(str(step), 0.0) + now - since, 3)
        step, since = p.step, now
    if p.paused and paused_at is None:  # paused time counts in no step
        seconds[str(step)] = round(seconds.get(str(step), 0.0) + now - since, 3)
        paused_at = since = now
    return step, since, seconds, paused_at, paused


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
        read_only: open the file for reading only (:meth:`open`'s fallback for a file it cannot write).
    """

    def __init__(self, path: Path, *, max_pending: int = MAX_PENDING_EVENTS,
                 busy_timeout: float = BUSY_TIMEOUT_SECONDS, offload: Offload | None = None,
                 read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._busy_timeout = busy_timeout
        self._db = self._connect(path, read_only=read_only)
        # Each project's finished snapshot runs summed up (GET .../stats): loaded once here, then kept
        # current by each write that changes such a run's row. Under their own lock, held only briefly.
        self._totals_lock = threading.Lock()
        self._totals = RunTotals()
        self._totals_diffs: list[tuple[TotalsRow | None, TotalsRow | None]] = []
        try:
            self._load_totals_locked()
        except BaseException:
            self._db.close()
            raise
        # False while the database cannot be written (see open()): each write first opens it again.
        self._writable = True
        # True while an empty database in memory stands in for one that cannot even be read.
        self._in_memory = False
        # What went wrong when it was opened (moved aside, not writable), for health; None when all is well.
        self.notice: SyncsnapdError | None = None
        self._reserved = 0
        # Per running run: the step it is in and since when, the seconds spent in each step so far, when
        # its current pause began (None unless paused) and the seconds paused before it.
        self._steps: dict[str, _StepState] = {}
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
        # Run rows (their first state) not written yet: each new run's, until record_run() or the writer
        # has written it. On the Trio thread, like the events waiting.
        self._records: dict[str, Progress] = {}
        self._recording: dict[str, trio.Event] = {}  # runs whose record_run() write is under way
        self._recorded: OrderedDict[str, None] = OrderedDict()  # the last RECORDED_REMEMBERED written
        self._offload_given = offload is not None
        # One record write at a time: one abandoned after RECORD_WAIT_SECONDS holds it until it returns,
        # so writes stuck behind a lock never pile up in worker threads.
        self._record_limiter = trio.CapacityLimiter(1)

    def _connect(self, path: Path, *, read_only: bool = False) -> sqlite3.Connection:
        target, uri = (f"file:{quote(str(path))}?mode=ro", True) if read_only else (str(path), False)
        db = sqlite3.connect(target, timeout=self._busy_timeout, check_same_thread=False, isolation_level=None,
                             uri=uri)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a crash can lose the last transactions, never corrupt the database.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            if not read_only:
                for table, column, definition in _ADDED_COLUMNS:
                    if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            # What the start-up reads, so that a database damaged there is found now, not in the daemon.
            db.execute("SELECT value FROM meta WHERE key = 'reserved_event_id'").fetchall()
            db.execute("SELECT MAX(id) FROM events").fetchall()
            db.execute(f"SELECT {RUN_COLUMNS} FROM runs LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def open(cls, path: Path, **kw: Any) -> History:
        """Open (or create) the database, never failing for what is in it; keywords as for the constructor.

        A damaged database is moved aside (``<name>.corrupt-<UTC time>``, with its ``-wal`` and ``-shm``)
        and a new one created. One that cannot be opened for writing is opened read-only (its runs can be
        read), or replaced by an empty one in memory when it cannot be opened at all; writes then wait, and
        retry (see the module docstring). Either way :attr:`notice` says so, and the log.

        Raises:
            OSError: the folder cannot be created (the daemon checks ``daemon.state_dir`` before).
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            history = cls(path, **kw)
        except sqlite3.Error as exc:
            if not _is_damage(exc):
                return cls._unwritable(path, exc, kw)
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            try:
                for suffix in ("", "-wal", "-shm"):
                    if os.path.lexists(f"{path}{suffix}"):
                        os.replace(f"{path}{suffix}", f"{aside}{suffix}")
                history = cls(path, **kw)
            except (OSError, sqlite3.Error) as again:
                return cls._unwritable(path, again, kw)
            log.error("history: %s is damaged (%s); moved it aside to %s and started a new history", path,
                      exc, aside.name)
            history.notice = SyncsnapdError(
                f"The history database was damaged ({exc}); it was moved aside to {aside} and a new one "
                "started: runs before this start are only in that file.", code="history_recreated")
        return history

    @classmethod
    def _unwritable(cls, path: Path, exc: BaseException, kw: dict[str, Any]) -> History:
        """A history on ``path`` that is not written yet: read-only if that works, else empty in memory."""
        try:
            history = cls(path, read_only=True, **kw)
        except sqlite3.Error:
            history = cls(Path(":memory:"), **kw)
            history._in_memory = True
        history.path = path
        history._mark_unwritable(exc)
        return history

    def _mark_unwritable(self, exc: BaseException) -> None:
        self._writable = False
        log.error("history: cannot write to %s (%s); serving without it, events wait in memory and it is "
                  "tried again with backoff", self.path, exc)
        self.notice = SyncsnapdError(
            f"The history database {self.path} cannot be written ({exc}); events wait in memory until it "
            "can.", code="history_unavailable")

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
            if self._in_memory:
                # The real database's ids are unknown: milliseconds since 1970 are above any a daemon
                # issued before (ids grow by far less than 1,000 a second) and still exact in JSON numbers.
                first = max(first, int(time.time() * 1000))
            if self._writable:
                try:
                    self._reserve_locked(first + ID_RESERVATION)
                except sqlite3.Error as exc:  # a read-only file opens, and fails at the first write
                    self._mark_unwritable(exc)
            if not self._writable:
                self._reserved = first  # reserved for real by the first write that works
            return first

    def _reserve_locked(self, upto: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES ('reserved_event_id', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(upto),))
        self._reserved = upto

    def recent_events(self, limit: int = REPLAY_ON_START) -> list[Event]:
        """The newest ``limit`` persisted events, oldest first (for the tracker's replay buffer)."""
        with self._lock:
            rows = self._db.execute("SELECT id, data FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [Event(i, progress_from_json(json.loads(d))) for i, d in reversed(rows)]

    def latest_per_project(self) -> dict[str, Progress]:
        with self._lock:
            rows = self._db.execute(
                "SELECT e.data FROM events e JOIN (SELECT project, MAX(id) AS id FROM events GROUP BY project) m "
                "ON e.id = m.id").fetchall()
        out = {}
        for (d,) in rows:
            p = progress_from_json(json.loads(d))
            out[p.project] = p
        return out

    def interrupted_runs(self) -> list[RunRecord]:
        """Runs that never reached a terminal state: the daemon died while they were in flight."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE state NOT IN ('completed', 'failed', 'cancelled')"
            ).fetchall()
        return [run_from_row(r) for r in rows]

    # --- writing -------------------------------------------------------------------------------------

    def write(self, events: Iterable[Event], last_event_id: int, records: Iterable[Progress] = ()) -> None:
        """Persist a batch of events, in order, and update their runs (one transaction); first the rows of
        ``records``, runs not recorded yet (see :meth:`record_run`), where they are missing.

        Idempotent: events already committed are skipped, so a failed batch can simply be written again.
        On failure nothing is kept, in the database or in this object's per-run state.

        Raises:
            sqlite3.Error: the database refused the write (locked by another process, disk full, I/O).
        """
        with self._lock:
            if not self._writable:
                self._reopen_locked()
            db = self._db
            steps = {run: (step, since, dict(seconds), paused_at, paused)
                     for run, (step, since, seconds, paused_at, paused) in self._steps.items()}
            reserved, written = self._reserved, self._written_upto
            self._totals_diffs = []
            db.execute("BEGIN")
            try:
                for p in records:
                    self._insert_run_locked(p)
                for ev in events:
                    if ev.id <= written:
                        continue
                    p = ev.progress
                    db.execute("INSERT OR IGNORE INTO events (id, project, run, data) VALUES (?, ?, ?, ?)",
                               (ev.id, p.project, p.run, ev.json_text))
                    if p.run is not None:
                        self._update_run(p, parse_time(p.updated_at) or time.time(), ev.id)
                        if p.terminal and p.kind == "snapshot" and p.state == "completed":
                            self.expected[p.project] = self._expected_locked(p.project)
                    written = ev.id
                if last_event_id + ID_RESERVATION // 2 > self._reserved:
                    self._reserve_locked(last_event_id + ID_RESERVATION)
                db.execute("COMMIT")
            except BaseException:
                self._steps, self._reserved, self._totals_diffs = steps, reserved, []
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the transaction is gone either way; the first error is the one to report
                raise
            self._written_upto = written
            self._apply_totals_locked()

    def _reopen_locked(self) -> None:
        """Open the database for writing again (it could not be written so far); raises if it still cannot."""
        # SQLite creates -wal and -shm with the database's mode: a read-only file's are read-only too, and
        # would keep the database read-only after the file is made writable. They are ours: follow it.
        try:
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
            for suffix in ("-wal", "-shm"):
                side = f"{self.path}{suffix}"
                if os.path.exists(side) and os.stat(side).st_uid == os.getuid() and os.access(self.path, os.W_OK):
                    os.chmod(side, mode)
        except OSError:
            pass  # the connect below says what is wrong
        db = self._connect(self.path)
        try:
            db.execute("INSERT INTO meta (key, value) VALUES ('reserved_event_id', ?) ON CONFLICT(key) DO "
                       "UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                       (str(self._reserved + ID_RESERVATION),))
        except BaseException:
            db.close()
            raise
        self._reserved = int(db.execute("SELECT value FROM meta WHERE key = 'reserved_event_id'").fetchone()[0])
        self._db.close()
        self._db, self._writable, self._in_memory = db, True, False
        self._load_totals_locked()  # the rows it had could not all be read before
        if self.notice is not None and self.notice.code == "history_unavailable":
            self.notice = None
        log.warning("history: %s can be written again", self.path)

    def _update_run(self, p: Progress, now: float, event_id: int) -> None:
        assert p.run is not None
        terminal = p.terminal
        ended = p.updated_at if terminal else None
        state = self._steps.get(p.run)
        if state is None and terminal and p.started_at and p.error and p.error.get("code") == "interrupted":
            # Ended at a later start: the bookkeeping died with the daemon. What the history recorded of the
            # run gives its steps, and its end is its last recorded event, not this start (docs/api.md, RUN).
            state, ended = self._replayed_locked(p, event_id)
            now = parse_time(ended) or now
        step, since, seconds, paused_at, paused = _advance(state, p, now)
        if terminal:
            self._steps.pop(p.run, None)
        else:
            self._steps[p.run] = (step, since, seconds, paused_at, paused)
        duration = None
        if terminal and p.started_at and ended:
            start, end = parse_time(p.started_at), parse_time(ended)
            duration = round(end - start, 3) if start is not None and end is not None else None
        snapshot = json.dumps(p.to_json()["snapshot"]) if p.snapshot is not None else None
        result = json.dumps(p.result) if p.result is not None else None
        old = self._totals_row_locked(p.run) if p.kind == "snapshot" else None
        self._db.execute(
            "INSERT INTO runs (run, project, kind, trigger, attempt, retry_of, state, started_at, ended_at, "
            "duration_seconds, steps, error_code, error_message, bytes_total, snapshot, paused_seconds, result) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(run) DO UPDATE SET state = excluded.state, ended_at = excluded.ended_at, "
            "started_at = COALESCE(?, runs.started_at), "
            "duration_seconds = excluded.duration_seconds, steps = excluded.steps, "
            "paused_seconds = excluded.paused_seconds, "
            "error_code = excluded.error_code, error_message = excluded.error_message, "
            "bytes_total = COALESCE(excluded.bytes_total, runs.bytes_total), snapshot = excluded.snapshot, "
            "result = excluded.result",
            # A queued run that never started ends without a started_at: its row keeps (or, never recorded,
            # takes) when it was requested, or ended, so that runs still sort by time; it has no duration.
            (p.run, p.project, p.kind, p.trigger, p.attempt, p.retry_of, p.state, p.started_at or p.updated_at,
             ended, duration, json.dumps(seconds), p.error["code"] if p.error else None,
             p.error["message"] if p.error else None, p.bytes_total if p.step == 4 else None, snapshot,
             round(paused, 3), result, p.started_at))
        if p.kind == "snapshot":
            self._totals_diffs.append((old, self._totals_row_locked(p.run)))

    def _replayed_locked(self, p: Progress, event_id: int) -> tuple[_StepState | None, str]:
        """An interrupted run's step bookkeeping from its recorded events (those before ``p``, its terminal
        event, whose id is ``event_id``), and the time of the last of them (``p.started_at`` if none)."""
        state: _StepState | None = None
        last = p.started_at
        assert last is not None
        for (data,) in self._db.execute("SELECT data FROM events WHERE run = ? AND id < ? ORDER BY id",
                                        (p.run, event_id)):
            seen = progress_from_json(json.loads(data))
            at = parse_time(seen.updated_at)
            if at is None or seen.terminal:
                continue
            state, last = _advance(state, seen, at), seen.updated_at or last
        return state, last

    def _insert_run_locked(self, p: Progress) -> None:
        """The run's row in its first state, unless it has one already (then it is further along)."""
        self._db.execute(
            "INSERT OR IGNORE INTO runs (run, project, kind, trigger, attempt, retry_of, state, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (p.run, p.project, p.kind, p.trigger, p.attempt, p.retry_of, p.state, p.started_at))

    def _write_record(self, p: Progress) -> None:
        """:meth:`record_run`'s write, in a worker thread (autocommit, one statement)."""
        with self._lock:
            if not self._writable:
                raise sqlite3.OperationalError("the history database cannot be written")  # the writer retries
            self._insert_run_locked(p)

    def _write_end(self, p: Progress) -> None:
        """:meth:`record_end`'s write, in a worker thread: the run's row in its terminal state (the batch
        writer completes it, step timings included, when it writes the event itself)."""
        with self._lock:
            if not self._writable:
                raise sqlite3.OperationalError("the history database cannot be written")
            self._insert_run_locked(p)
            assert p.run is not None
            old = self._totals_row_locked(p.run) if p.kind == "snapshot" else None
            self._db.execute(
                "UPDATE runs SET state = ?, ended_at = ?, error_code = ?, error_message = ?, snapshot = ?, "
                "result = ? WHERE run = ? AND state NOT IN ('completed', 'failed', 'cancelled')",
                (p.state, p.updated_at, p.error["code"] if p.error else None,
                 p.error["message"] if p.error else None,
                 json.dumps(p.to_json()["snapshot"]) if p.snapshot is not None else None,
                 json.dumps(p.result) if p.result is not None else None, p.run))
            if p.kind == "snapshot":
                self._totals_diffs = [(old, self._totals_row_locked(p.run))]
                self._apply_totals_locked()

    async def record_end(self, progress: Progress) -> bool:
        """Write a run's terminal state now, before its terminal event is published (at most
        :data:`RECORD_WAIT_SECONDS`). Call on the Trio thread.

        Without it, a daemon killed between publishing a run's end and the batch writer's next write would
        end that run a second time at its next start (``interrupted``), after clients saw it end. Returns
        False if the row could not be written in time (the batch writer writes it with its retries).
        """
        write = partial(self._write_end, progress)
        try:
            with trio.move_on_after(RECORD_WAIT_SECONDS):
                if self._offload_given:
                    await self._offload(write)
                else:
                    await trio.to_thread.run_sync(write, abandon_on_cancel=True, limiter=self._record_limiter)
                return True
        except sqlite3.Error as exc:
            log.warning("history: the end of run %s not recorded (%s); the writer will", progress.run, exc)
            return False
        log.warning("history: the end of run %s not recorded within %g s (the database is busy)",
                    progress.run, RECORD_WAIT_SECONDS)
        return False

    async def record_run(self, progress: Progress) -> bool:
        """Write the row of a new run now, before it is acknowledged or does any work (see the module
        docstring); waits at most :data:`RECORD_WAIT_SECONDS`. Call on the Trio thread.

        ``progress`` is the run's first state (``waiting``; ``queued`` for a follow-up run): its project,
        kind, trigger, attempt, ``retry_of`` and ``started_at`` (for a queued run: when it was requested).
        A row the run already has is left as it is. Waiting again for a run recorded a moment ago returns at
        once; two tasks waiting for the same run share one write.

        Returns:
            True once the row is in the database; False if it could not be written in time (locked,
            disk full, read-only): it then waits in memory and the writer writes it with its retries.
        """
        run = progress.run
        assert run is not None
        if run in self._recorded:
            return True
        under_way = self._recording.get(run)
        if under_way is not None:
            with trio.move_on_after(RECORD_WAIT_SECONDS):
                await under_way.wait()
            return run in self._recorded
        done = self._recording[run] = trio.Event()
        self._records[run] = progress
        write = partial(self._write_record, progress)
        written = False
        try:
            with trio.move_on_after(RECORD_WAIT_SECONDS):
                if self._offload_given:
                    await self._offload(write)
                else:
                    # Abandoned when the wait is over: the thread finishes its one statement by itself.
                    await trio.to_thread.run_sync(write, abandon_on_cancel=True, limiter=self._record_limiter)
                written = True
            if not written:
                log.warning("history: run %s not recorded within %g s (the database is busy); it goes on, its "
                            "record waits in memory", run, RECORD_WAIT_SECONDS)
        except sqlite3.Error as exc:
            log.warning("history: run %s not recorded (%s); it goes on, its record waits in memory", run, exc)
        finally:
            if written:
                if self._records.get(run) is progress:
                    del self._records[run]
                self._remember(run)
            else:
                self._arrived.set()  # the writer takes it over, with its retries
            done.set()
            del self._recording[run]
        return written

    def _remember(self, run: str) -> None:
        self._recorded[run] = None
        while len(self._recorded) > RECORDED_REMEMBERED:
            self._recorded.popitem(last=False)

    def trim(self, *, keep_days: int, keep_runs: int, now: float | None = None) -> tuple[int, int]:
        """Delete what the retention no longer keeps; returns (runs, events) deleted. Blocking.

        A finished run (completed, failed, cancelled), with its progress log, goes when it ended more than
        ``keep_days`` days before ``now`` (default: the time now), or is not among the newest ``keep_runs``
        finished runs of its project (0 turns either limit off). Always kept: unfinished runs and their
        events (a running run, a queued one, one the next start marks ``interrupted``), and each project's
        newest finished run of each kind (its last outcome, the store's last check). Then each project's
        progress log is cut to its newest :data:`EVENTS_KEPT` events, never those of an unfinished run.
        Runs in batches of :data:`TRIM_BATCH_RUNS` (one transaction each), so writes wait little.

        Raises:
            sqlite3.Error: the database refused (locked by another process for long, read-only, I/O).
        """
        counts = [0, 0]
        for _ in self._trim_batches(keep_days, keep_runs, now, counts):
            pass
        return counts[0], counts[1]

    async def serve_trim(self, retention: Callable[[], tuple[int, int]], *, interval: float = TRIM_INTERVAL_SECONDS,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Trim the history (:meth:`trim`) at once, then every ``interval`` seconds, until cancelled.

        ``retention()`` gives (keep_days, keep_runs) at each trim (so a reload of the configuration
        applies at the next one). A trim the database refuses is logged and tried again at the next
        interval, never fatal. Each batch runs off the event loop; a cancellation waits for one batch at
        most.
        """
        task_status.started()
        while True:
            keep_days, keep_runs = retention()
            try:
                runs, events = await self._trim_off_loop(keep_days, keep_runs)
            except sqlite3.Error as exc:
                log.warning("history: trimming failed (%s); trying again in %g s", exc, interval)
            else:
                if runs or events:
                    log.info("history: trimmed %d finished runs and %d events (keeping %s days, %s runs per "
                             "project)", runs, events, keep_days or "all", keep_runs or "all")
            await trio.sleep(interval)

    async def _trim_off_loop(self, keep_days: int, keep_runs: int) -> tuple[int, int]:
        counts = [0, 0]
        batches = self._trim_batches(keep_days, keep_runs, None, counts)
        finished = False

        def step() -> None:
            nonlocal finished
            finished = next(batches, True)

        try:
            while not finished:
                await self._offload(step)
        finally:
            batches.close()
        return counts[0], counts[1]

    def _trim_batches(self, keep_days: int, keep_runs: int, now: float | None,
                      counts: list[int]) -> Generator[bool, None, None]:
        """:meth:`trim`, one batch (transaction) per step; yields False after each; adds to ``counts``."""
        cutoff = None
        if keep_days:
            moment = (time.time() if now is None else now) - keep_days * 86400
            cutoff = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))
        with self._lock:
            if not self._writable:
                raise sqlite3.OperationalError("the history database cannot be written")
            victims = [run for (run,) in self._db.execute(
                "SELECT run FROM (SELECT run, COALESCE(ended_at, started_at) AS t, "
                "ROW_NUMBER() OVER (PARTITION BY project ORDER BY started_at DESC, run DESC) AS n, "
                "ROW_NUMBER() OVER (PARTITION BY project, kind ORDER BY started_at DESC, run DESC) AS k "
                "FROM runs WHERE state IN ('completed', 'failed', 'cancelled')) "
                "WHERE k > 1 AND ((? > 0 AND n > ?) OR t < ?)", (keep_runs, keep_runs, cutoff))
                if run not in self._steps]  # the writer still has events of it to write
        for i in range(0, len(victims), TRIM_BATCH_RUNS):
            batch = victims[i:i + TRIM_BATCH_RUNS]
            marks = ",".join("?" * len(batch))
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    counts[1] += self._db.execute(f"DELETE FROM events WHERE run IN ({marks})", batch).rowcount
                    counts[0] += self._db.execute(
                        f"DELETE FROM runs WHERE run IN ({marks}) AND state IN ('completed', 'failed', 'cancelled')",
                        batch).rowcount
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._load_totals_locked()
            yield False
        with self._lock:
            cuts = []
            for (project,) in self._db.execute("SELECT DISTINCT project FROM events").fetchall():
                row = self._db.execute("SELECT id FROM events WHERE project = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                                       (project, EVENTS_KEPT)).fetchone()
                if row is not None:
                    cuts.append((project, row[0]))
        for project, upto in cuts:  # each project's events from `upto` down, but those of unfinished runs
            while True:
                with self._lock:
                    n = self._db.execute(
                        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE project = ? AND id <= ? AND "
                        "(run IS NULL OR run NOT IN (SELECT run FROM runs WHERE state NOT IN "
                        "('completed', 'failed', 'cancelled'))) LIMIT ?)", (project, upto, TRIM_BATCH_EVENTS)).rowcount
                counts[1] += n
                yield False
                if n < TRIM_BATCH_EVENTS:
                    break

    async def serve(self, tracker: Tracker, *, on_problem: ProblemReport | None = None,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every event the tracker publishes, in order, until cancelled (then flush what is left).

        Never fails on a database error: a failed write is retried with backoff while events wait in
        memory (see the module docstring). The events received are kept on this object, so if this
        coroutine is restarted (by a supervisor) it continues where it stopped, with nothing lost.
        ``on_problem`` is told when writes start failing (a ``history_write_failed`` error naming the
        cause and how many events wait) and when they succeed again (:attr:`notice`, None when all is
        well): the daemon shows it in health. It is told :attr:`notice` at the start, and a database that
        cannot be written is tried again with backoff even while no event comes.
        """
        since = tracker.last_event_id if self._received is None else self._received
        sub = tracker.subscribe(last_event_id=since, transport="internal", lossless=True)
        self._received = since
        try:
            self._take_queued(sub, tracker, since)
            task_status.started()
            if self.notice is not None and on_problem is not None:
                on_problem(self.notice)
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
        shown = self.notice  # what on_problem was told last (serve() told the notice)
        while True:
            if not self._batch and self._writable:
                while not self._pending and not self._records:
                    await self._arrived.wait()
                    self._arrived = trio.Event()
                n = min(len(self._pending), MAX_BATCH_EVENTS)
                self._batch = [self._pending.popleft() for _ in range(n)]
            records = dict(self._records)
            try:
                await self._offload(partial(self.write, self._batch, tracker.last_event_id, records.values()))
            except sqlite3.Error as exc:
                self._failures += 1
                if failing_since is None:
                    failing_since = trio.current_time()
                    log.warning("history: cannot write to %s (%s); retrying with backoff, events wait in "
                                "memory (at most %d)", self.path, exc, self._max_pending)
                shown = SyncsnapdError(
                    f"Cannot write the history ({exc}); {len(self._batch) + len(self._pending)} events wait "
                    f"in memory, retrying in {delay:g} s.", code="history_write_failed")
                on_problem(shown)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            self._written += len(self._batch)
            self._batch = []
            self._written_records(records)
            if failing_since is not None:
                log.warning("history: writing again after %.1f s; %d events were lost meanwhile",
                            trio.current_time() - failing_since, self._lost_in_episode)
                failing_since, delay = None, RETRY_FIRST_SECONDS
            if shown is not self.notice:
                shown = self.notice
                on_problem(shown)
            self._lost_in_episode = 0

    async def _flush_once(self, tracker: Tracker) -> None:
        """At the end of serve(): one attempt to write what is waiting (shielded by the caller)."""
        events = self._batch + list(self._pending)
        records = dict(self._records)
        if not events and not records:
            return
        try:
            await self._offload(partial(self.write, events, tracker.last_event_id, records.values()))
        except sqlite3.Error as exc:
            log.error("history: %d events and %d runs' records not written when the writer stopped: %s",
                      len(events), len(records), exc)
            return
        self._written += len(events)
        self._batch, self._pending = [], deque()
        self._written_records(records)

    def _written_records(self, records: dict[str, Progress]) -> None:
        for run, p in records.items():
            if self._records.get(run) is p:
                del self._records[run]
            self._remember(run)

    # --- queries -------------------------------------------------------------------------------------

    def runs(self, project: str, *, limit: int = 20, before: str | None = None) -> list[RunRecord]:
        """A project's runs, newest first; ``before`` is the run id of the last row of the previous page."""
        with self._lock:
            if before is None:
                rows = self._db.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE project = ? ORDER BY started_at DESC, run DESC "
                    "LIMIT ?", (project, limit)).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE project = ? AND (started_at, run) < "
                    "(SELECT started_at, run FROM runs WHERE run = ?) ORDER BY started_at DESC, run DESC LIMIT ?",
                    (project, before, limit)).fetchall()
        return [run_from_row(r) for r in rows]

    def run(self, run: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run = ?", (run,)).fetchone()
        return run_from_row(row) if row else None

    def run_events(self, run: str) -> list[str]:
        """A run's full progress log: the JSON text of each event, oldest first."""
        with self._lock:
            return [d for (d,) in self._db.execute("SELECT data FROM events WHERE run = ? ORDER BY id", (run,))]

    def last_finished(self, kind: str) -> RunRecord | None:
        """The newest finished run (completed, failed or cancelled) of ``kind`` (e.g. ``check``), or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE kind = ? AND state IN ('completed', 'failed', 'cancelled') "
                "ORDER BY ended_at DESC, run DESC LIMIT 1", (kind,)).fetchone()
        return run_from_row(row) if row else None

    def stats(self, project: str) -> ProjectStats:
        """Statistics over the project's finished snapshot runs (those the history keeps), from running
        totals: no database read, so it may be called on the Trio thread."""
        with self._totals_lock:
            return self._totals.stats(project)

    def _load_totals_locked(self) -> None:
        rows = self._db.execute(
            "SELECT project, state, duration_seconds, bytes_total FROM runs WHERE kind = 'snapshot' AND state IN "
            "('completed', 'failed', 'cancelled')").fetchall()
        totals = RunTotals(rows)
        with self._totals_lock:
            self._totals, self._totals_diffs = totals, []

    def _totals_row_locked(self, run: str) -> TotalsRow | None:
        """A snapshot run's row as the totals count it; None unless it is finished."""
        row = self._db.execute("SELECT project, state, duration_seconds, bytes_total FROM runs WHERE run = ? AND "
                               "kind = 'snapshot'", (run,)).fetchone()
        return (row[0], row[1], row[2], row[3]) if row is not None and row[1] in FINISHED else None

    def _apply_totals_locked(self) -> None:
        """The changes a committed write made to finished snapshot runs, into the totals."""
        with self._totals_lock:
            for old, new in self._totals_diffs:
                self._totals.change(old, new)
        self._totals_diffs = []

    def load_expected(self, projects: Iterable[str]) -> None:
        """Fill :attr:`expected` for these projects (at start; write() keeps it current)."""
        with self._lock:
            for project in projects:
                self.expected[project] = self._expected_locked(project)

    def _expected_locked(self, project: str) -> float | None:
        """A first guess of the next snapshot's duration: the mean of the last few completed runs."""
        rows = self._db.execute(
            "SELECT duration_seconds - paused_seconds FROM runs WHERE project = ? AND kind = 'snapshot' "
            "AND state = 'completed' "
            "AND duration_seconds IS NOT NULL ORDER BY started_at DESC LIMIT 5", (project,)).fetchall()
        return round(statistics.fmean(r[0] for r in rows), 3) if rows else None


def _is_damage(exc: sqlite3.Error) -> bool:
    """The file is not a database, or one damaged where it was read (not: locked, read-only, full, I/O)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
