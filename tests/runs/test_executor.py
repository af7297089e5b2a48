"""The run lifecycle that snapshot runs and operation runs share (RunExecutor): exactly one terminal event
whatever happens, cancelled even when the cancellation arrives wrapped in an exception group, internal
errors as ``internal_error``, and one ticker publishing the counters of every run at exact times.

Each test runs once per kind of run (the plans of snapshot, restore, check and prune runs), since the
same executor now serves both the scheduler and the operations."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from syncsnapd.core import Plan, Progress, RunProgress
from syncsnapd.engine import SnapshotError
from syncsnapd.runs import Outcome, Run, RunExecutor, RunFailed, Tracker
from syncsnapd.runs._operations import CHECK_PLAN, PRUNE_PLAN, RESTORE_PLAN

SNAPSHOT_PLAN = RunProgress("p", "r", lambda p: None).plan
PLANS = [SNAPSHOT_PLAN, RESTORE_PLAN, CHECK_PLAN, PRUNE_PLAN]
KINDS = [plan.kind for plan in PLANS]


@asynccontextmanager
async def serving(executor: RunExecutor) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve)
        yield nursery
        nursery.cancel_scope.cancel()


class Recorder:
    """The publish callable of runs: every event with its (virtual) time, also sent to a real tracker."""

    def __init__(self) -> None:
        self.tracker = Tracker()
        self.events: list[tuple[float, Progress]] = []

    def __call__(self, progress: Progress) -> None:
        self.events.append((trio.current_time(), self.tracker.publish(progress).progress))

    def new_run(self, plan: Plan, run_id: str = "r-1") -> Run:
        run = Run(RunProgress("p" if plan.kind in ("snapshot", "restore") else "", run_id, self, plan=plan), self)
        run.announce()
        return run

    def terminal(self, run: Run) -> list[Progress]:
        return [p for _, p in self.events if p.run == run.id and p.terminal]


@pytest.mark.parametrize("plan", PLANS, ids=KINDS)
@pytest.mark.parametrize("seen_by", ["flag", "trio"])
async def test_cancel_mid_step_wrapped_in_an_exception_group_ends_in_one_cancelled_event(
        plan: Plan, seen_by: str) -> None:
    """The body's worker thread is in the middle of step 2 (inside a nursery of the body, so the
    cancellation comes back wrapped in an exception group) when the run is cancelled. The thread sees the
    cancel by the run's flag (RunCancelled) or by trio's (Cancelled); either way the run ends with
    exactly one `cancelled` event with the given reason."""
    entered, go = threading.Event(), threading.Event()
    wrapped: list[BaseException] = []

    async def body(progress: RunProgress) -> Outcome:
        progress.set_step(2, files_total=10)

        def work() -> None:
            entered.set()
            go.wait()
            progress.add_done(files=1)
            if seen_by == "flag":
                progress.check_cancelled()
            else:
                trio.from_thread.check_cancelled()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, work)
        except BaseException as exc:
            wrapped.append(exc)
            raise
        return Outcome("not reached")

    recorder = Recorder()
    executor = RunExecutor()
    run = recorder.new_run(plan)
    ended = trio.Event()

    async def execute() -> None:
        await executor.execute(run, body)  # returns: the run's own scope absorbed its cancellation
        ended.set()

    async with serving(executor) as nursery:
        nursery.start_soon(execute)
        await trio.to_thread.run_sync(entered.wait)
        run.cancel("cancelled", "The run was cancelled on request.")
        go.set()
        with trio.fail_after(10):
            await ended.wait()
    assert len(wrapped) == 1 and isinstance(wrapped[0], BaseExceptionGroup)
    final = recorder.terminal(run)
    assert [(p.state, p.error) for p in final] == [
        ("cancelled", {"code": "cancelled", "message": "The run was cancelled on request."})]
    assert final[0].message == f"{plan.kind.capitalize()} cancelled: the run was cancelled on request"
    assert recorder.events[-1][1] == final[0]  # nothing after the terminal event
    assert executor.active() == []


@pytest.mark.parametrize("plan", PLANS, ids=KINDS)
async def test_a_run_whose_owner_stops_ends_cancelled_with_shutdown_once(plan: Plan) -> None:
    """The owner's nursery is cancelled (the daemon stops) while a run waits inside a nursery of its body."""
    recorder = Recorder()
    executor = RunExecutor()
    run = recorder.new_run(plan)

    async def body(progress: RunProgress) -> Outcome:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
        return Outcome("not reached")

    async with serving(executor) as nursery:
        nursery.start_soon(executor.execute, run, body)
        await trio.testing.wait_all_tasks_blocked()
    assert [(p.state, p.error) for p in recorder.terminal(run)] == [
        ("cancelled", {"code": "shutdown", "message": "The daemon is shutting down."})]
    assert run.progress.cancelled  # worker threads, if any, were told too


@pytest.mark.parametrize("plan", PLANS, ids=KINDS)
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "in-group"])
async def test_an_unexpected_exception_ends_the_run_failed_with_internal_error(
        plan: Plan, wrapped: bool, caplog: pytest.LogCaptureFixture) -> None:
    async def body(progress: RunProgress) -> Outcome:
        if wrapped:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_boom)
        await _boom()
        return Outcome("not reached")

    recorder = Recorder()
    executor = RunExecutor()
    run = recorder.new_run(plan)
    async with serving(executor):
        final = await executor.execute(run, body)
    noun = "snapshot" if plan.kind == "snapshot" else "run"
    assert [p.state for p in recorder.terminal(run)] == ["failed"]
    assert (final.state, final.error, final.message) == (
        "failed", {"code": "internal_error", "message": f"An internal error stopped the {noun}; see the daemon's log."},
        f"{plan.kind.capitalize()} failed: internal error")
    assert "failed unexpectedly" in caplog.text and "ValueError: the disk is on fire" in caplog.text


async def _boom() -> None:
    await trio.lowlevel.checkpoint()
    raise ValueError("the disk is on fire")


@pytest.mark.parametrize("plan", PLANS, ids=KINDS)
async def test_errors_with_a_code_end_the_run_failed_with_that_code(plan: Plan) -> None:
    """A SyncsnapdError (a run failure, a snapshot error), also alone in an exception group, fails the run
    with its own code and message; a RunFailed carries its result into the terminal event."""
    failures: list[Exception] = [
        RunFailed("problems_found", "1 problem(s)", {"ok": False}),
        SnapshotError("folder_missing", "The folder /x does not exist."),
    ]
    recorder = Recorder()
    executor = RunExecutor()
    finals = []
    async with serving(executor):
        for i, exc in enumerate(failures * 2):
            async def body(progress: RunProgress, exc: Exception = exc, grouped: bool = i >= 2) -> Outcome:
                if grouped:
                    raise ExceptionGroup("from a nursery", [exc])
                raise exc

            finals.append(await executor.execute(recorder.new_run(plan, f"r-{i}"), body))
    what = plan.kind.capitalize()
    assert [(p.state, p.error, p.message, p.result) for p in finals] == 2 * [
        ("failed", {"code": "problems_found", "message": "1 problem(s)"}, f"{what} failed: 1 problem(s)",
         {"ok": False}),
        ("failed", {"code": "folder_missing", "message": "The folder /x does not exist."},
         f"{what} failed: The folder /x does not exist.", None),
    ]


async def test_one_ticker_publishes_the_counters_of_every_kind_of_run_at_each_tick(
        autojump_clock: trio.testing.MockClock) -> None:
    """Four runs at once (one per kind); each adds to its counters at 0.3, 0.6 and 0.9 s. The executor's
    one ticker publishes them at 0.5 and 0.75 s (every 0.25 s, only when something changed); the last
    change is in the terminal event at 0.9 s, which is not preceded by an event of its own."""
    recorder = Recorder()
    executor = RunExecutor()

    async def body(progress: RunProgress) -> Outcome:
        progress.set_step(2, files_total=3)
        for _ in range(3):
            await trio.sleep(0.3)
            progress.add_done(files=1)
        return Outcome(f"{progress.plan.kind} done")

    async with serving(executor) as nursery:
        t0 = trio.current_time()
        runs = [recorder.new_run(plan, f"r-{plan.kind}") for plan in PLANS]
        for run in runs:
            nursery.start_soon(executor.execute, run, body)
        await trio.sleep(2)
    for run in runs:
        got = [(round(t - t0, 6), p.step, p.files_done, p.state) for t, p in recorder.events if p.run == run.id]
        working = run.progress.plan.step(2).state
        first = run.progress.plan.step(1).state
        assert got == [(0.0, 1, 0, first), (0.0, 2, 0, working), (0.5, 2, 1, working), (0.75, 2, 2, working),
                       (0.9, len(run.progress.plan.steps) + 1, 3, "completed")], run.id
