"""Runs snapshots: per project at most one running and one queued follow-up run.

Requests (from the API, later from watchers) call :meth:`Scheduler.request_snapshot`, which never waits.
Each project has one task that takes the queued run and executes it through the shared
:class:`RunExecutor` (exactly one terminal event per run, whatever happens): step 1 (waiting) through the
project's waiter, steps 2-5 through the snapshot engine. A failed run is retried after a backoff
(:class:`RetryPolicy`) by a timer task; timers are guarded in one place (:meth:`Scheduler._guarded`), so a
failing one is logged and never stops the scheduler. They are not supervised services: a timer fires
once, and restarting one that failed would only fail again.

A run exists in the history before it is acknowledged or does any work: whoever hands a run id to a user
awaits :meth:`Scheduler.wait_recorded` (the API before its 202), and the executor records each run before
its body (both through ``record``, the history's ``record_run``, bounded). A queued follow-up run is
recorded ``queued``; if it is dropped (the running run cancelled, its project removed, the daemon
stopping) it ends ``cancelled`` with one terminal event, so that its record ends too.

A project can be paused (:meth:`Scheduler.pause`, kept in ``state_dir/paused.json`` by ``_paused.py``):
its running run is held (:meth:`RunProgress.pause`), no run starts (neither a queued follow-up nor a
retry), an API request is refused (:class:`ProjectPaused`), and automatic requests (watch, schedule,
start-up, retry) are remembered as one pending request, which starts one run on :meth:`Scheduler.resume`.
A paused run lends back what it holds, so that pausing one project never stalls the others: its token of
``run_limiter`` (:class:`_RunToken`), and each of its worker threads held by the pause its token of the
thread limiter (``engine/_threads.py``). Resumed, it goes on at once with them.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from ..core import (
    Progress,
    ProjectConfig,
    RunProgress,
    SnapshotSummary,
    SyncsnapdError,
    count_of,
    human_bytes,
    utc_now,
)
from ..engine import take_snapshot
from ..store import Store
from ._executor import SHUTDOWN, Body, Outcome, Recorder, Run, RunExecutor
from ._paused import load_paused, save_paused
from ._stores import Stores
from ._tracker import Tracker

log = logging.getLogger("syncsnapd.scheduler")

# Step 1 hook: waits until the project is ready to be captured (the folder settled, the sync tool idle).
Waiter = Callable[[ProjectConfig, RunProgress], Awaitable[None]]


async def no_wait(project: ProjectConfig, progress: RunProgress) -> None:
    """The waiter for a plain folder snapshot requested explicitly: nothing to wait for."""
    await trio.lowlevel.checkpoint()


_run_counter = itertools.count(1)


def new_run_id() -> str:
    """Run ids sort by start time and stay unique across restarts: ms timestamp, counter, random."""
    return f"r-{int(time.time() * 1000):x}-{next(_run_counter):04d}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic retry of failed runs (never of cancelled ones): ``attempts`` runs in all, the n-th retry
    ``backoff * 2**(n-1)`` seconds after the failure."""

    attempts: int = 3
    backoff: float = 30.0


@dataclass(frozen=True)
class _Request:
    run: str
    trigger: str
    attempt: int = 1
    retry_of: str | None = None
    requested_at: str = field(default_factory=utc_now)


@dataclass
class _ProjectSlot:
    config: ProjectConfig
    # The announced run: executing, or about to.
    run: Run | None = None
    queued: _Request | None = None
    retry_scope: trio.CancelScope | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)
    loop_scope: trio.CancelScope | None = None
    # An automatic request made while the project is paused: the one run its resume starts.
    pending: _Request | None = None
    # The running run's token of run_limiter, while it holds one.
    run_token: _RunToken | None = None


@dataclass
class _RunToken:
    """The ``run_limiter`` token of a run in steps 2-5, lent back to the limiter while the run is paused
    (``total_tokens + 1``, so that another project's snapshot may start meanwhile) and taken back at the
    resume or when the run ends, whichever comes first (``- 1``; trio then lets no new run start until
    the running ones are back under ``max_concurrent``). :meth:`settle` after each change of either."""

    limiter: trio.CapacityLimiter
    progress: RunProgress
    lent: bool = False

    def settle(self, *, holding: bool = True) -> None:
        lend = holding and self.progress.paused
        if lend != self.lent:
            self.lent = lend
            self.limiter.total_tokens += 1 if lend else -1


class UnknownProject(SyncsnapdError, KeyError):
    """No project has this id (code ``not_found``). Also a ``KeyError``, as a missing key is."""

    code = "not_found"

    def __init__(self, project: str) -> None:
        super().__init__(f"No project named {project!r}.")
        self.project = project

    def __str__(self) -> str:
        return self.message


class ProjectPaused(SyncsnapdError):
    """A snapshot was asked for explicitly while its project is paused (code ``project_paused``)."""

    code = "project_paused"

    def __init__(self, project: str) -> None:
        super().__init__(f"Project {project!r} is paused; resume it first.")
        self.project = project


class Scheduler:
    """Owns the per-project run loops. Start with ``await nursery.start(scheduler.serve)``."""

    def __init__(self, store: Store | Stores, tracker: Tracker, projects: list[ProjectConfig], *,
                 waiter: Waiter = no_wait, limiter: trio.CapacityLimiter | None = None,
                 exclude: tuple[Path, ...] = (), max_concurrent: int = 2, retry: RetryPolicy = RetryPolicy(),
                 expected: Callable[[str], float | None] = lambda project: None,
                 record: Recorder | None = None, record_end: Recorder | None = None,
                 paused_file: Path | None = None) -> None:
        # Each project's runs write to its own store (``stores.of``); ``store`` is the daemon's.
        self.stores = store if isinstance(store, Stores) else Stores(store)
        self.store = self.stores.default
        self.tracker = tracker
        self._waiter = waiter
        # Worker threads for walking, hashing and compressing, shared by all runs.
        self._limiter = limiter or trio.CapacityLimiter(2)
        # Snapshots running at once across projects (steps 2-5). trio's CapacityLimiter is FIFO, so
        # projects take turns in the order they became ready: fair.
        self.run_limiter = trio.CapacityLimiter(max_concurrent)
        self.retry = retry
        self._expected = expected
        # The daemon's own directories, never snapshotted even when they lie inside a project.
        self._exclude = exclude
        self._record = record
        self._executor = RunExecutor(logger=log, record=record, record_end=record_end)
        self._slots: dict[str, _ProjectSlot] = {}
        self._nursery: trio.Nursery | None = None
        # Paused project ids -> when (read once here: the daemon builds its scheduler in a worker thread).
        self._paused_file = paused_file
        self._paused: dict[str, str] = load_paused(paused_file) if paused_file is not None else {}
        self._save_lock = trio.Lock()
        for p in projects:
            self._slots[p.id] = _ProjectSlot(p)
            tracker.add_project(p.id)

    # --- queries -----------------------------------------------------------------------------------

    def project_ids(self) -> list[str]:
        return list(self._slots)

    def project(self, project_id: str) -> ProjectConfig:
        try:
            return self._slots[project_id].config
        except KeyError:
            raise UnknownProject(project_id) from None

    def busy(self) -> bool:
        return any(s.run or s.queued for s in self._slots.values())

    def is_paused(self, project_id: str) -> bool:
        return project_id in self._paused

    # --- pause and resume ----------------------------------------------------------------------------

    async def pause(self, project_id: str) -> None:
        """Pause ``project_id`` (idempotent): its running run holds between files or chunks, and no run
        starts until :meth:`resume`. Recorded in the paused file before this returns.

        Raises:
            UnknownProject: no project ``project_id``.
        """
        slot = self._slot(project_id)
        if project_id not in self._paused:
            self._paused[project_id] = utc_now()
            log.info("%s: paused", project_id)
            if slot.run is not None:
                slot.run.progress.pause()
            if slot.run_token is not None:
                slot.run_token.settle()
            await self._save_paused()

    async def resume(self, project_id: str) -> None:
        """Resume ``project_id`` (idempotent): a held run goes on where it stopped, and what was asked
        for while paused (a queued run, or changes seen) starts one run.

        Raises:
            UnknownProject: no project ``project_id``.
        """
        slot = self._slot(project_id)
        if self._paused.pop(project_id, None) is None:
            return
        log.info("%s: resumed", project_id)
        pending, slot.pending = slot.pending, None
        if slot.run is not None:
            slot.run.progress.resume()
            slot.queued = slot.queued or pending
        if slot.run_token is not None:
            slot.run_token.settle()
        else:
            req, slot.queued = slot.queued or pending, None
            if req is not None:
                self._begin(slot, req)
                slot.wakeup.set()
        await self._save_paused()

    async def _save_paused(self) -> None:
        if self._paused_file is None:
            return
        async with self._save_lock:  # one write at a time, each of the state as it is when it starts
            try:
                await trio.to_thread.run_sync(save_paused, self._paused_file, dict(self._paused))
            except OSError as exc:
                log.error("cannot write %s (%s): the pause is in effect but will not survive a restart",
                          self._paused_file, exc.strerror or exc)

    def _slot(self, project_id: str) -> _ProjectSlot:
        slot = self._slots.get(project_id)
        if slot is None:
            raise UnknownProject(project_id)
        return slot

    # --- requests ----------------------------------------------------------------------------------

    def request_snapshot(self, project_id: str, trigger: str = "api", *, attempt: int = 1,
                         retry_of: str | None = None) -> tuple[str, Progress]:
        """Ask for a snapshot of ``project_id``; returns (run id, current progress). Never waits.

        Idle project: a new run starts (its first event, step 1, is published before this returns).
        Running project: one follow-up run is queued; later requests coalesce into that queued run.
        ``trigger`` says who asked (api, watch, schedule, start-up, retry); it is carried by the run's
        events and kept in the history.

        Paused project: an ``api`` request is refused; any other is remembered (one pending request,
        with the queued run if there is one) and returns the id of the run the resume will start.

        Raises:
            UnknownProject: no project ``project_id``.
            ProjectPaused: the project is paused and ``trigger`` is ``api``.
        """
        log.debug("%s: snapshot requested (%s)", project_id, trigger)
        slot = self._slot(project_id)
        if project_id in self._paused:
            if trigger == "api":
                raise ProjectPaused(project_id)
            if slot.queued is not None:
                return slot.queued.run, self.tracker.latest(project_id)
            if slot.pending is None:
                slot.pending = _Request(new_run_id(), trigger, attempt, retry_of)
                log.info("%s: paused; the %s request waits for the resume", project_id, trigger)
            return slot.pending.run, self.tracker.latest(project_id)
        request = _Request(new_run_id(), trigger, attempt, retry_of)
        if slot.run is None:
            run = self._begin(slot, request)
            slot.wakeup.set()
            return run.id, self.tracker.latest(project_id)
        if slot.queued is None:
            slot.queued = request
        return slot.queued.run, self.tracker.latest(project_id)

    async def wait_recorded(self, run: str) -> None:
        """Wait until the history has ``run``, a run :meth:`request_snapshot` has just returned (running or
        queued), before its id is handed to a user; bounded by the recorder (the history's
        ``RECORD_WAIT_SECONDS``). Returns at once for a run that has ended, or without a recorder."""
        if self._record is None:
            return
        for slot in self._slots.values():
            if slot.run is not None and slot.run.id == run:
                await self._record(slot.run.progress.current())
                return
            if slot.queued is not None and slot.queued.run == run:
                await self._record(_queued_progress(slot.config.id, slot.queued))
                return

    def _begin(self, slot: _ProjectSlot, req: _Request) -> Run:
        """Make ``req`` the project's run and publish its first event."""
        progress = RunProgress(slot.config.id, req.run, self.tracker.publish, trigger=req.trigger,
                               attempt=req.attempt, retry_of=req.retry_of,
                               expected_seconds=self._expected(slot.config.id))
        run = slot.run = Run(progress, self.tracker.publish)
        if slot.retry_scope is not None:
            slot.retry_scope.cancel()  # a new run supersedes a pending retry
            slot.retry_scope = None
        run.announce()
        return run

    def _begin_queued(self, slot: _ProjectSlot) -> None:
        req, slot.queued = slot.queued, None
        if req is not None:
            self._begin(slot, req)

    def _drop_queued(self, slot: _ProjectSlot, code: str, message: str) -> None:
        """Drop the project's queued run, which ends ``cancelled`` (one terminal event, so that its record
        in the history, if it has one, ends too)."""
        req, slot.queued = slot.queued, None
        if req is None:
            return
        log.info("%s: queued snapshot run %s dropped (%s)", slot.config.id, req.run, code)
        queued = _queued_progress(slot.config.id, req)
        self.tracker.publish(replace(
            queued, state="cancelled", step=queued.steps, started_at=None,
            updated_at=utc_now(), error={"code": code, "message": message},
            message=f"Snapshot cancelled before it started: {message[0].lower()}{message[1:].rstrip('.')}"))

    # --- changing the set of projects (config reload) and cancelling ------------------------------

    def cancel_run(self, project_id: str, code: str = "cancelled",
                   message: str = "The snapshot was cancelled.") -> str | None:
        """Cancel the running run of ``project_id`` (it ends ``cancelled`` with ``code``) and drop a queued
        one. Returns the cancelled run id, or None if nothing was running.

        Raises:
            UnknownProject: no project ``project_id``.
        """
        slot = self._slots.get(project_id)
        if slot is None:
            raise UnknownProject(project_id)
        self._drop_queued(slot, code, message)
        if slot.retry_scope is not None:
            slot.retry_scope.cancel()
            slot.retry_scope = None
        if slot.run is None:
            return None
        slot.run.cancel(code, message)  # a run not executing yet is cancelled as soon as it starts
        return slot.run.id

    def set_projects(self, projects: list[ProjectConfig]) -> None:
        """Apply a new project list: add, remove (a running run ends ``cancelled``), or update a project's
        settings for its next run. Runs of unchanged projects are not disturbed."""
        wanted = {p.id: p for p in projects}
        for pid in [pid for pid in self._slots if pid not in wanted]:
            slot = self._slots.pop(pid)
            self._drop_queued(slot, "project_removed", "The project was removed from the configuration.")
            if slot.run is not None:
                slot.run.cancel("project_removed", "The project was removed from the configuration.")
            if slot.loop_scope is not None:
                slot.loop_scope.cancel()  # the loop removes the project from the tracker when it ends
            else:
                self.tracker.remove_project(pid)
        for pid, cfg in wanted.items():
            if pid in self._slots:
                self._slots[pid].config = cfg
            else:
                slot = self._slots[pid] = _ProjectSlot(cfg)
                self.tracker.add_project(pid)
                if self._nursery is not None:
                    self._nursery.start_soon(self._project_loop, slot)

    # --- running -----------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every project's loop until cancelled. Runs in flight end as ``cancelled``."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._executor.serve)
                for slot in self._slots.values():
                    nursery.start_soon(self._project_loop, slot)
                task_status.started()
        finally:
            self._nursery = None

    async def _project_loop(self, slot: _ProjectSlot) -> None:
        slot.loop_scope = trio.CancelScope()
        try:
            with slot.loop_scope:
                await self._loop_body(slot)
        finally:
            if slot.run is not None:
                # Announced, but the loop stopped before executing it: it still ends, once.
                self._executor.end_unstarted(slot.run)
            self._drop_queued(slot, *SHUTDOWN)
            if self._slots.get(slot.config.id) is not slot:
                # Removed by a reload: its last run has published its terminal event by now.
                self.tracker.remove_project(slot.config.id)

    async def _loop_body(self, slot: _ProjectSlot) -> None:
        while True:
            await slot.wakeup.wait()
            slot.wakeup = trio.Event()
            if slot.run is None and slot.config.id not in self._paused:
                self._begin_queued(slot)
            while slot.run is not None:
                final = await self._executor.execute(slot.run, self._snapshot_body(slot))
                slot.run = None
                if final.state == "failed":
                    self._schedule_retry(slot, final)
                if slot.config.id not in self._paused:  # else the queued run waits for the resume
                    self._begin_queued(slot)

    def _snapshot_body(self, slot: _ProjectSlot) -> Body:
        project = slot.config

        async def body(progress: RunProgress) -> Outcome:
            await self._waiter(project, progress)
            if self.run_limiter.available_tokens <= 0:
                progress.set_message(f"Waiting for other snapshots to finish "
                                     f"({self.run_limiter.borrowed_tokens} running)")
                progress.flush()
            async with self.run_limiter:
                progress.set_message(None)
                token = slot.run_token = _RunToken(self.run_limiter, progress)
                token.settle()  # paused while it waited for the token
                try:
                    summary = await take_snapshot(
                        self.stores.of(project.id), project.id, project.path, progress,
                        ignore=project.ignore_fn(self._exclude), limiter=self._limiter,
                    )
                finally:
                    slot.run_token = None
                    token.settle(holding=False)
            return Outcome(_completed_message(summary), snapshot=summary)

        return body

    # --- retries -----------------------------------------------------------------------------------

    def _schedule_retry(self, slot: _ProjectSlot, failed: Progress) -> None:
        """After a failure, start the next attempt after the backoff, unless another run starts first."""
        if failed.attempt >= self.retry.attempts or self._nursery is None:
            return
        delay = self.retry.backoff * 2 ** (failed.attempt - 1)
        scope = slot.retry_scope = trio.CancelScope()
        log.info("%s: retrying in %g s (attempt %d of %d)", slot.config.id, delay, failed.attempt + 1,
                 self.retry.attempts)
        self._nursery.start_soon(self._guarded, f"{slot.config.id}: the retry timer", self._retry_later, slot,
                                 scope, delay, failed)

    async def _retry_later(self, slot: _ProjectSlot, scope: trio.CancelScope, delay: float,
                           failed: Progress) -> None:
        with scope:
            await trio.sleep(delay)
            slot.retry_scope = None
            if self._slots.get(slot.config.id) is slot:
                self.request_snapshot(slot.config.id, "retry", attempt=failed.attempt + 1,
                                      retry_of=failed.retry_of or failed.run)

    @staticmethod
    async def _guarded(what: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run one of the scheduler's helper tasks: its failure is logged and never stops the scheduler
        (nor another project's runs). Cancellation propagates as usual."""
        try:
            await fn(*args)
        except Exception:
            log.exception("%s failed; the scheduler carries on", what)


def _queued_progress(project: str, req: _Request) -> Progress:
    """A queued run's record: ``queued``, ``started_at`` when it was requested (docs/api.md, RUN)."""
    return Progress(project=project, run=req.run, trigger=req.trigger, attempt=req.attempt, retry_of=req.retry_of,
                    state="queued", step=0, started_at=req.requested_at, updated_at=req.requested_at,
                    message="Queued behind the running snapshot")


def _completed_message(s: SnapshotSummary) -> str:
    msg = (f"Snapshot {s.id} completed: {count_of(s.files, 'file')} ({human_bytes(s.bytes)}), "
           f"{human_bytes(s.bytes_added)} added in {s.duration_seconds:.1f} s")
    if s.warnings:
        msg += f", {count_of(s.warnings, 'warning')}"
    return msg
