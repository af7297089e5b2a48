"""Runs snapshots: per project at most one running and one queued follow-up run.

Requests (from the API, later from watchers) call :meth:`Scheduler.request_snapshot`, which never waits.
Each project has one task that takes the queued run and executes it: step 1 (waiting) through the
project's waiter, steps 2-5 through the snapshot engine, and exactly one terminal event at the end,
whatever happens (completed, failed, or cancelled).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..core import Progress, ProjectConfig, RunCancelled, RunProgress, SnapshotSummary, human_bytes
from ..engine import SnapshotError, take_snapshot
from ..store import Store
from ._tracker import Tracker

log = logging.getLogger("syncsnapd.scheduler")

# How often a run publishes its counters: a few events per second is smooth for a progress bar and
# cheap for hundreds of subscribers; step changes are published at once regardless.
TICK_SECONDS = 0.25

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


@dataclass
class _ProjectSlot:
    config: ProjectConfig
    running: str | None = None
    queued: _Request | None = None
    progress: RunProgress | None = None
    retry_scope: trio.CancelScope | None = None
    wakeup: trio.Event = field(default_factory=trio.Event)
    run_scope: trio.CancelScope | None = None
    loop_scope: trio.CancelScope | None = None
    cancel_reason: tuple[str, str] | None = None


class UnknownProject(KeyError):
    pass


class Scheduler:
    """Owns the per-project run loops. Start with ``await nursery.start(scheduler.serve)``."""

    def __init__(self, store: Store, tracker: Tracker, projects: list[ProjectConfig], *,
                 waiter: Waiter = no_wait, limiter: trio.CapacityLimiter | None = None,
                 exclude: tuple[Path, ...] = (), max_concurrent: int = 2, retry: RetryPolicy = RetryPolicy(),
                 expected: Callable[[str], float | None] = lambda project: None) -> None:
        self.store = store
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
        self._slots: dict[str, _ProjectSlot] = {}
        self._nursery: trio.Nursery | None = None
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
        return any(s.running or s.queued for s in self._slots.values())

    # --- requests ----------------------------------------------------------------------------------

    def request_snapshot(self, project_id: str, trigger: str = "api", *, attempt: int = 1,
                         retry_of: str | None = None) -> tuple[str, Progress]:
        """Ask for a snapshot of ``project_id``; returns (run id, current progress). Never waits.

        Idle project: a new run starts (its first event, step 1, is published before this returns).
        Running project: one follow-up run is queued; later requests coalesce into that queued run.
        ``trigger`` says who asked (api, watch, schedule, start-up, retry); it is carried by the run's
        events and kept in the history.
        """
        log.debug("%s: snapshot requested (%s)", project_id, trigger)
        slot = self._slots.get(project_id)
        if slot is None:
            raise UnknownProject(project_id)
        if slot.running is None:
            slot.queued = _Request(new_run_id(), trigger, attempt, retry_of)
            self._begin(slot)
            slot.wakeup.set()
            assert slot.running is not None
            return slot.running, self.tracker.latest(project_id)
        if slot.queued is None:
            slot.queued = _Request(new_run_id(), trigger, attempt, retry_of)
        return slot.queued.run, self.tracker.latest(project_id)

    def _begin(self, slot: _ProjectSlot) -> None:
        """Turn the queued run into the running one and publish its first event."""
        req = slot.queued
        assert req is not None
        slot.running, slot.queued = req.run, None
        if slot.retry_scope is not None:
            slot.retry_scope.cancel()  # a new run supersedes a pending retry
            slot.retry_scope = None
        slot.progress = RunProgress(slot.config.id, req.run, self.tracker.publish, trigger=req.trigger,
                                    attempt=req.attempt, retry_of=req.retry_of,
                                    expected_seconds=self._expected(slot.config.id))
        slot.progress.add_done()  # mark dirty so the step-1 state is published now
        slot.progress.flush()

    # --- changing the set of projects (config reload) and cancelling ------------------------------

    def cancel_run(self, project_id: str, code: str = "cancelled",
                   message: str = "The snapshot was cancelled.") -> str | None:
        """Cancel the running run of ``project_id`` (it ends ``cancelled`` with ``code``) and drop a queued
        one. Returns the cancelled run id, or None if nothing was running."""
        slot = self._slots.get(project_id)
        if slot is None:
            raise UnknownProject(project_id)
        slot.queued = None
        if slot.retry_scope is not None:
            slot.retry_scope.cancel()
            slot.retry_scope = None
        if slot.running is None:
            return None
        slot.cancel_reason = (code, message)
        self._stop_run(slot)  # a run not executing yet is cancelled as soon as it starts
        return slot.running

    @staticmethod
    def _stop_run(slot: _ProjectSlot) -> None:
        if slot.progress is not None:
            slot.progress.cancel()  # for worker threads, which trio's cancellation does not reach
        if slot.run_scope is not None:
            slot.run_scope.cancel()

    def set_projects(self, projects: list[ProjectConfig]) -> None:
        """Apply a new project list: add, remove (a running run ends ``cancelled``), or update a project's
        settings for its next run. Runs of unchanged projects are not disturbed."""
        wanted = {p.id: p for p in projects}
        for pid in [pid for pid in self._slots if pid not in wanted]:
            slot = self._slots.pop(pid)
            slot.cancel_reason = ("project_removed", "The project was removed from the configuration.")
            self._stop_run(slot)
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
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            for slot in self._slots.values():
                nursery.start_soon(self._project_loop, slot)
            task_status.started()

    async def _project_loop(self, slot: _ProjectSlot) -> None:
        slot.loop_scope = trio.CancelScope()
        try:
            with slot.loop_scope:
                await self._loop_body(slot)
        finally:
            if self._slots.get(slot.config.id) is not slot:
                # Removed by a reload: its last run has published its terminal event by now.
                self.tracker.remove_project(slot.config.id)

    async def _loop_body(self, slot: _ProjectSlot) -> None:
        while True:
            await slot.wakeup.wait()
            slot.wakeup = trio.Event()
            if slot.running is None and slot.queued is not None:
                self._begin(slot)
            while slot.running is not None:
                await self._execute(slot)
                slot.running, slot.progress, slot.run_scope, slot.cancel_reason = None, None, None, None
                if slot.queued is not None:
                    self._begin(slot)

    async def _execute(self, slot: _ProjectSlot) -> None:
        project, progress = slot.config, slot.progress
        assert progress is not None
        final: Progress | None = None
        slot.run_scope = scope = trio.CancelScope()
        if slot.cancel_reason is not None:
            scope.cancel()  # cancelled between its request and now
        try:
            with scope:
                try:
                    await self._waiter(project, progress)
                    if self.run_limiter.available_tokens == 0:
                        progress.set_message(f"Waiting for other snapshots to finish "
                                             f"({self.run_limiter.borrowed_tokens} running)")
                        progress.flush()
                    async with self.run_limiter:
                        progress.set_message(None)
                        summary = await take_snapshot(
                            self.store, project.id, project.path, progress,
                            ignore=project.ignore_fn(self._exclude), limiter=self._limiter,
                        )
                    final = progress.finish("completed", snapshot=summary, message=_completed_message(summary))
                    log.info("%s: %s", project.id, final.message)
                except SnapshotError as exc:
                    final = progress.finish("failed", error={"code": exc.code, "message": exc.message},
                                            message=f"Snapshot failed: {exc.message}")
                    log.warning("%s: run %s failed: %s", project.id, progress.run, exc.message)
                    self._schedule_retry(slot, final)
                except RunCancelled:
                    pass  # worker threads saw the cancel flag: reported as cancelled below
                except Exception:
                    log.exception("%s: run %s failed unexpectedly", project.id, progress.run)
                    final = progress.finish("failed", error={"code": "internal_error",
                                                             "message": "An internal error stopped the snapshot; "
                                                                        "see the daemon's log."},
                                            message="Snapshot failed: internal error")
                    self._schedule_retry(slot, final)
        finally:
            # Exactly one terminal event, however the run ended: cancellation may arrive as trio.Cancelled,
            # as RunCancelled from a worker thread, or wrapped in an exception group by a nursery inside
            # the waiter or the engine (which our own cancel scope then absorbs silently).
            if final is None:
                code, message = slot.cancel_reason or ("shutdown", "The daemon is shutting down.")
                final = progress.finish(
                    "cancelled", error={"code": code, "message": message},
                    message=f"Snapshot cancelled: {message[0].lower()}{message[1:].rstrip('.')}")
                log.info("%s: run %s cancelled (%s)", project.id, progress.run, code)
            self.tracker.publish(final)

    def _schedule_retry(self, slot: _ProjectSlot, failed: Progress) -> None:
        """After a failure, start the next attempt after the backoff, unless another run starts first."""
        if failed.attempt >= self.retry.attempts or self._nursery is None:
            return
        delay = self.retry.backoff * 2 ** (failed.attempt - 1)
        first = failed.retry_of or failed.run
        scope = slot.retry_scope = trio.CancelScope()
        log.info("%s: retrying in %g s (attempt %d of %d)", slot.config.id, delay, failed.attempt + 1,
                 self.retry.attempts)

        async def retry() -> None:
            with scope:
                await trio.sleep(delay)
                slot.retry_scope = None
                if self._slots.get(slot.config.id) is slot:
                    self.request_snapshot(slot.config.id, "retry", attempt=failed.attempt + 1, retry_of=first)

        self._nursery.start_soon(retry)

    async def _ticker(self) -> None:
        """Publish every running run's counters a few times a second (one task for all runs)."""
        try:
            while True:
                await trio.sleep(TICK_SECONDS)
                for slot in self._slots.values():
                    if slot.progress is not None:
                        slot.progress.flush()
        finally:
            # The scheduler is being cancelled (shutdown): worker threads cannot see trio's cancellation,
            # so raise their flag; they stop at their next check and the runs end `cancelled`.
            for slot in self._slots.values():
                if slot.progress is not None:
                    slot.progress.cancel()


def _completed_message(s: SnapshotSummary) -> str:
    msg = (f"Snapshot {s.id} completed: {s.files:,} files ({human_bytes(s.bytes)}), "
           f"{human_bytes(s.bytes_added)} added in {s.duration_seconds:.1f} s")
    if s.warnings:
        msg += f", {s.warnings} warning{'s' if s.warnings != 1 else ''}"
    return msg

