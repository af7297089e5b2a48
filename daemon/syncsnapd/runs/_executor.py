"""The lifecycle of one run, shared by snapshot runs (the scheduler) and operation runs (restore, check,
prune): publishing its counters, cancelling it, and ending it in exactly one terminal event.

A run's owner builds a :class:`Run` (its :class:`RunProgress` and how to publish it), announces it, and
awaits :meth:`RunExecutor.execute` with a *body*: the run's own work, which returns an :class:`Outcome`.
What differs between kinds of runs (the steps, the result, a retry after a failure) lives in the body,
in the plan of the progress and with the owner; how a run ends is decided here, once:

* the body returns: ``completed`` with the outcome's message, snapshot summary or result;
* the body raises a :class:`SyncsnapdError` (a :class:`RunFailed`, a ``SnapshotError``, ...): ``failed``
  with its ``code`` and ``message`` (and the ``result`` of a :class:`RunFailed`);
* the run is cancelled: ``cancelled`` with the reason given to :meth:`Run.cancel` (``shutdown`` when the
  owner itself was cancelled). The cancellation may arrive as ``trio.Cancelled``, as
  :class:`RunCancelled` from a worker thread, or wrapped in an exception group by a nursery inside the
  body (which the run's own cancel scope then absorbs silently): all of them end the run ``cancelled``;
* anything else: ``failed`` with ``internal_error`` (logged with its traceback).

Before the body does any work, the run's record is awaited (the executor's ``record``, the history's
``record_run``: bounded, and the run goes on if the history cannot be written), so that a run that did
anything is in the history even when the daemon is killed a moment later.

One ticker task per executor (:meth:`RunExecutor.serve`) publishes the counters of all its runs a few
times a second; when the owner shuts down it raises the cancel flag of every run, since worker threads
cannot see trio's cancellation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core import Progress, RunCancelled, RunProgress, SnapshotSummary, SyncsnapdError

__all__ = ["TICK_SECONDS", "Body", "Outcome", "Recorder", "Run", "RunExecutor", "RunFailed"]

# How often a run publishes its counters: a few events per second is smooth for a progress bar and
# cheap for hundreds of subscribers; step changes are published at once regardless.
TICK_SECONDS = 0.25
# Why a run ended when nobody gave a reason: its owner (the daemon) is stopping.
SHUTDOWN = ("shutdown", "The daemon is shutting down.")


@dataclass(frozen=True)
class Outcome:
    """What a run's body produced: the terminal event's message, and a snapshot or a result."""

    message: str
    snapshot: SnapshotSummary | None = None
    result: dict[str, Any] | None = None


class RunFailed(SyncsnapdError):
    """A run ends ``failed`` with this code and message, and possibly a ``result`` (a check's report)."""

    def __init__(self, code: str, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        self.result = result


Body = Callable[[RunProgress], Awaitable[Outcome]]
# Writes a new run's row in the history before it is acknowledged or works (History.record_run): given the
# run's first progress, it returns once the row is written or its bounded wait is over.
Recorder = Callable[[Progress], Awaitable[object]]


@dataclass(eq=False)
class Run:
    """One run: its progress, where its events go, and how it is stopped.

    ``publish`` must be the callable ``progress`` publishes through. The cancel scope may be cancelled
    before the run executes; it then ends ``cancelled`` as soon as it starts.
    """

    progress: RunProgress
    publish: Callable[[Progress], object]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_reason: tuple[str, str] | None = None
    # The terminal progress, once published.
    final: Progress | None = None

    @property
    def id(self) -> str:
        return self.progress.run

    def announce(self) -> None:
        """Publish the run's first event (step 1) now."""
        self.progress.add_done()  # mark dirty so the step-1 state is published
        self.progress.flush()

    def cancel(self, code: str, message: str) -> None:
        """Stop the run: it ends ``cancelled`` with this error ``code`` and ``message`` (the latest reason
        given before it ends wins)."""
        self.cancel_reason = (code, message)
        self.progress.cancel()  # for worker threads, which trio's cancellation does not reach
        self.scope.cancel()


def _log_name(progress: RunProgress) -> str:
    return f"{progress.project or 'store'}: {progress.plan.kind} run {progress.run}"


class RunExecutor:
    """Executes runs to their single terminal event; one ticker for all of them.

    Args:
        logger: where the runs' outcomes are logged (the owner's logger).
        record: awaited before each run's body, with the run's progress (see the module docstring).
        record_end: awaited with a run's terminal progress before that is published (bounded inside).
    """

    def __init__(self, *, logger: logging.Logger | None = None, record: Recorder | None = None,
                 record_end: Recorder | None = None) -> None:
        self._log = logger if logger is not None else logging.getLogger("syncsnapd.runs")
        self._record = record
        self._record_end = record_end
        self._active: dict[str, Run] = {}

    def active(self) -> list[Run]:
        """The runs executing now, oldest first."""
        return list(self._active.values())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish every executing run's counters every :data:`TICK_SECONDS` until cancelled; then raise
        the cancel flag of every run still executing (its worker threads stop at their next check)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(TICK_SECONDS)
                for run in list(self._active.values()):
                    run.progress.flush()
        finally:
            for run in self._active.values():
                run.progress.cancel()

    async def execute(self, run: Run, body: Body) -> Progress:
        """Run ``body`` as ``run`` and publish its terminal event; returns that event's progress.

        The terminal event carries the run's final counters itself; counters changed since the last tick
        are not published separately before it.

        If the caller itself is cancelled (the owner shuts down), the run ends ``cancelled`` and the
        cancellation propagates.
        """
        progress = run.progress
        final: Progress | None = None
        self._active[run.id] = run
        try:
            with run.scope:
                try:
                    if self._record is not None:
                        await self._record(progress.current())
                    outcome = await body(progress)
                except BaseException as exc:  # sorted out, and re-raised if it must propagate, by _ended
                    final = self._ended(run, exc)
                else:
                    final = progress.finish("completed", message=outcome.message, snapshot=outcome.snapshot,
                                            result=outcome.result)
                    self._log.info("%s: %s", _log_name(progress), outcome.message)
        finally:
            del self._active[run.id]
            if final is None:
                final = self._cancelled(run)
            if self._record_end is not None:
                # Recorded before it is published: a kill in between must not end the run twice. Shielded
                # (bounded inside): the end is recorded even while the owner shuts down.
                with trio.CancelScope(shield=True):
                    await self._record_end(final)
            self._publish_final(run, final)
        return final

    def end_unstarted(self, run: Run) -> None:
        """End ``run`` ``cancelled`` if it was announced but will never execute (its owner stopped first)."""
        if run.final is None and run.id not in self._active:
            self._publish_final(run, self._cancelled(run))

    def _publish_final(self, run: Run, final: Progress) -> None:
        run.final = final
        run.publish(final)

    def _ended(self, run: Run, exc: BaseException) -> Progress | None:
        """The terminal progress of a body that raised ``exc``, or None if the run was cancelled.

        Re-raises what must propagate (trio's cancellation, ``KeyboardInterrupt``): the run's own scope
        absorbs the cancellation it caused; any other goes on to the owner.
        """
        stop: BaseException | None
        error: BaseException | None
        if isinstance(exc, BaseExceptionGroup):
            stop, error = exc.split(_is_stop)
        elif _is_stop(exc):
            stop, error = exc, None
        else:
            stop, error = None, exc
        final = None
        if error is not None:
            if stop is not None:
                # An error while the run was being cancelled (say, from its cleanup): it ends cancelled.
                self._log.error("%s: failed while being cancelled", _log_name(run.progress), exc_info=error)
            else:
                final = self._failed(run, error)
        if stop is None:
            return final
        if isinstance(stop, BaseExceptionGroup):
            _, propagate = stop.split(RunCancelled)
            if propagate is not None:
                raise propagate from None
        elif not isinstance(stop, RunCancelled):
            raise stop
        return None

    def _failed(self, run: Run, exc: BaseException) -> Progress:
        progress = run.progress
        what = progress.plan.kind.capitalize()
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, SyncsnapdError):
            self._log.warning("%s failed: %s", _log_name(progress), leaf.message)
            return progress.finish("failed", error=leaf.to_json(), message=f"{what} failed: {leaf.message}",
                                   result=leaf.result if isinstance(leaf, RunFailed) else None)
        self._log.error("%s failed unexpectedly", _log_name(progress), exc_info=exc)
        noun = "snapshot" if progress.plan.kind == "snapshot" else "run"
        return progress.finish("failed", error={"code": "internal_error",
                                                "message": f"An internal error stopped the {noun}; "
                                                           "see the daemon's log."},
                               message=f"{what} failed: internal error")

    def _cancelled(self, run: Run) -> Progress:
        progress = run.progress
        code, message = run.cancel_reason or SHUTDOWN
        self._log.info("%s cancelled (%s)", _log_name(progress), code)
        return progress.finish("cancelled", error={"code": code, "message": message},
                               message=f"{progress.plan.kind.capitalize()} cancelled: "
                                       f"{message[0].lower()}{message[1:].rstrip('.')}")


def _is_stop(exc: BaseException) -> bool:
    """A cancellation (trio's, a worker thread's) or anything else that is not an error of the run.

    False for exception groups, so that ``split`` sorts their leaves.
    """
    if isinstance(exc, BaseExceptionGroup):
        return False
    return isinstance(exc, RunCancelled) or not isinstance(exc, Exception)
