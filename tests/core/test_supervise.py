"""The supervisor: failures are logged once and restarted with backoff; cancellation is not a failure.

Everything timed runs under ``autojump_clock`` (virtual time starts at 0) and asserts exact times.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from syncsnapd.core._supervise import ServiceError, ServiceStatus, Supervisor

Service = Callable[..., Awaitable[None]]
Clock = trio.testing.MockClock
Logs = pytest.LogCaptureFixture
Status = trio.TaskStatus[None]
IGNORED = trio.TASK_STATUS_IGNORED


class AuthError(Exception):
    code = "sync_auth"


async def serving(nursery: trio.Nursery, **kw: Any) -> Supervisor:
    sup = Supervisor(**kw)
    await nursery.start(sup.serve)
    return sup


def scripted(times: list[float], runs: Sequence[float | None] = (),
             exc: Callable[[], Exception] = lambda: ValueError("boom")) -> Service:
    """A service recording when each attempt starts. Attempt i follows runs[i]: None fails before
    started(); a number calls started(), runs that long and fails. Past the list: fail at once."""
    async def service(*, task_status: Status = IGNORED) -> None:
        times.append(trio.current_time())
        run = runs[len(times) - 1] if len(times) <= len(runs) else None
        if run is not None:
            task_status.started()
            await trio.sleep(run)
        raise exc()
    return service


async def forever(ticks: list[float], *, task_status: Status = IGNORED) -> None:
    """A healthy service: starts, then ticks every 10 s; records -1 when it is cancelled."""
    task_status.started()
    try:
        while True:
            ticks.append(trio.current_time())
            await trio.sleep(10)
    except trio.Cancelled:
        ticks.append(-1)
        raise


def error_records(caplog: Logs) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("max_backoff", "expected"), [
    (300.0, [0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 811, 1111]),
    (5.0, [0, 1, 3, 7, 12, 17, 22, 27]),
])
async def test_restarts_with_doubling_capped_backoff(
        autojump_clock: Clock, nursery: trio.Nursery, max_backoff: float, expected: list[float]) -> None:
    sup = await serving(nursery, max_backoff=max_backoff)
    times: list[float] = []
    await sup.start("history", scripted(times))
    await trio.sleep(expected[-1] + 0.5)
    assert times == expected
    retry_at = expected[-1] + min(max_backoff, 2.0 ** (len(expected) - 1))
    status = sup.status("history")
    error = ServiceError("internal_error", "boom")
    assert status == ServiceStatus("history", "backoff", len(expected), error, retry_at)
    assert status.to_json()["retry_in_seconds"] == retry_at - trio.current_time()
    assert sup.degraded() == [status]


def nested(depth: int, times: list[float]) -> Service:
    """A service whose failure arrives wrapped in ``depth`` nested nurseries' exception groups."""
    async def raiser() -> None:
        raise OSError("disk gone")

    async def group(level: int) -> None:
        async with trio.open_nursery() as n:
            if level == 1:
                n.start_soon(raiser)
            else:
                n.start_soon(group, level - 1)
            await trio.sleep_forever()

    async def service(*, task_status: Status = IGNORED) -> None:
        times.append(trio.current_time())
        await group(depth)
    return service


@pytest.mark.parametrize("depth", [1, 3])
async def test_exception_group_from_nested_nurseries_is_a_failure(
        autojump_clock: Clock, nursery: trio.Nursery, depth: int) -> None:
    sup = await serving(nursery)
    times: list[float] = []
    await sup.start("project:docs/watch", nested(depth, times))
    assert sup.status("project:docs/watch") == ServiceStatus(
        "project:docs/watch", "backoff", 1, ServiceError("internal_error", "disk gone"), 1.0)
    await trio.sleep(3.5)
    assert times == [0, 1, 3]


async def test_one_failing_service_leaves_the_others_and_serve_running(
        autojump_clock: Clock, nursery: trio.Nursery) -> None:
    sup = await serving(nursery)
    ticks: list[float] = []
    await sup.start("metrics", forever, ticks)
    await sup.start("syncthing", scripted([]))
    await trio.sleep(55)
    assert ticks == [0, 10, 20, 30, 40, 50]
    assert [(s.name, s.state) for s in sup.statuses()] == [("metrics", "running"), ("syncthing", "backoff")]
    await sup.start("history", forever, [])  # serve() is still running
    assert sup.status("history") == ServiceStatus("history", "running")


async def test_failure_logged_once_with_traceback(
        autojump_clock: Clock, nursery: trio.Nursery, caplog: Logs) -> None:
    sup = await serving(nursery, initial_backoff=100.0, max_backoff=100.0)
    await sup.start("history", scripted([]))
    await sup.start("watch", nested(2, []))
    await trio.sleep(50)
    records = error_records(caplog)
    assert [r.getMessage() for r in records] == [
        "service history failed (internal_error: boom); restarting in 100 s",
        "service watch failed (internal_error: disk gone); restarting in 100 s"]
    assert all(r.exc_info and r.name == "syncsnapd" for r in records)
    assert "in service\n    raise exc()" in caplog.text
    assert "in raiser" in caplog.text and 'raise OSError("disk gone")' in caplog.text


@pytest.mark.parametrize(("exc", "expected"), [
    (lambda: AuthError("refused the API key"), ServiceError("sync_auth", "refused the API key")),
    (lambda: RuntimeError("bad\nsecond line"), ServiceError("internal_error", "bad")),
    (KeyError, ServiceError("internal_error", "KeyError")),
])
async def test_error_code_and_message(
        autojump_clock: Clock, nursery: trio.Nursery, exc: Callable[[], Exception],
        expected: ServiceError) -> None:
    sup = await serving(nursery)
    await sup.start("syncthing", scripted([], exc=exc))
    status = sup.status("syncthing")
    assert status is not None and status.error == expected and status.degraded
    assert status.to_json(now=0.25) == {
        "name": "syncthing", "state": "backoff", "failures": 1, "retry_in_seconds": 0.75,
        "error": {"code": expected.code, "message": expected.message}}


@pytest.mark.parametrize(("run", "next_attempt"), [(100.0, 104.0), (30.0, 37.0)])
async def test_failure_count_resets_after_healthy_run(
        autojump_clock: Clock, nursery: trio.Nursery, run: float, next_attempt: float) -> None:
    sup = await serving(nursery)
    times: list[float] = []
    await sup.start("history", scripted(times, [None, None, run]))
    await trio.sleep(3.5)
    # Up again: running, error cleared, but still counting failures until healthy.
    assert sup.status("history") == ServiceStatus("history", "running", 2)
    await trio.sleep(next_attempt - 3.5 + 0.5)
    assert times == [0, 1, 3, next_attempt]


async def test_stop_cancels_pending_retry_or_running_service_and_name_is_reusable(
        autojump_clock: Clock, nursery: trio.Nursery) -> None:
    sup = await serving(nursery)
    times: list[float] = []
    await sup.start("retry", scripted(times))
    sup.stop("retry")
    sup.stop("unknown")
    assert sup.status("retry") is None
    await trio.sleep(100)
    assert times == [0]

    events: list[tuple[str, float]] = []

    async def watcher(*, task_status: Status = IGNORED) -> None:
        events.append(("up", trio.current_time()))
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(5)  # cleanup, e.g. releasing an inotify watch
            events.append(("down", trio.current_time()))

    await sup.start("watch", watcher)
    await trio.sleep(15)
    sup.stop("watch")
    assert sup.statuses() == []
    await sup.start("watch", watcher)  # the same name again: waits for the old instance's cleanup
    assert sup.status("watch") == ServiceStatus("watch", "running")
    assert events == [("up", 100), ("down", 120), ("up", 120)]


async def test_shutdown_is_not_a_failure(autojump_clock: Clock, caplog: Logs) -> None:
    sup = Supervisor()
    ticks: list[float] = []
    with pytest.raises(RuntimeError):
        await sup.start("early", forever, ticks)
    shutdown = trio.CancelScope()
    returned: list[float] = []

    async def run_serve(*, task_status: Status = IGNORED) -> None:
        with shutdown:
            await sup.serve(task_status=task_status)
        returned.append(trio.current_time())

    async with trio.open_nursery() as n:
        await n.start(run_serve)
        await sup.start("metrics", forever, ticks)
        with pytest.raises(ValueError):
            await sup.start("metrics", forever, ticks)
        await sup.start("retry", scripted([]))
        await trio.sleep(25)
        shutdown.cancel()
    assert shutdown.cancelled_caught and returned == [25]
    assert ticks == [0, 10, 20, -1] and sup.statuses() == []
    assert len(error_records(caplog)) == 5  # the retries' failures at 0, 1, 3, 7, 15, no more
    with pytest.raises(RuntimeError):
        await sup.start("late", forever, ticks)


async def test_start_returns_after_started_or_first_failure(
        autojump_clock: Clock, nursery: trio.Nursery) -> None:
    sup = await serving(nursery)

    async def slow_start(fail: bool, *, task_status: Status = IGNORED) -> None:
        await trio.sleep(2)
        if fail:
            raise AuthError("no key")
        task_status.started()
        await trio.sleep_forever()

    await sup.start("ok", slow_start, False)
    assert trio.current_time() == 2 and sup.status("ok") == ServiceStatus("ok", "running")
    await sup.start("bad", slow_start, True)
    assert trio.current_time() == 4
    assert sup.status("bad") == ServiceStatus("bad", "backoff", 1, ServiceError("sync_auth", "no key"), 5.0)
    with trio.move_on_after(1):  # the caller gives up before started(): the service is cancelled too
        await sup.start("gave-up", slow_start, False)
    assert sup.status("gave-up") is None and trio.current_time() == 5

    async def returns(*, task_status: Status = IGNORED) -> None:
        await trio.sleep(1)

    await sup.start("once", returns)
    assert trio.current_time() == 6
    await trio.sleep(100)
    assert sup.status("once") == ServiceStatus("once", "stopped")
    await sup.start("once", returns)  # a stopped name may be started again


async def test_on_change_sequence_and_raising_callback(
        autojump_clock: Clock, nursery: trio.Nursery, caplog: Logs) -> None:
    seen: list[tuple[str, float, int]] = []
    sup = await serving(nursery, on_change=lambda s: seen.append((s.state, trio.current_time(), s.failures)))

    def broken(status: ServiceStatus) -> None:
        raise KeyError("callback bug")

    times: list[float] = []
    await sup.start("history", scripted(times, [10.0, 100.0, 1000.0]), on_change=broken)
    await trio.sleep(200)
    assert times == [0, 11, 112]
    assert seen == [("starting", 0, 0), ("running", 0, 0), ("backoff", 10, 1), ("running", 11, 1),
                    ("running", 71, 0), ("backoff", 111, 1), ("running", 112, 1), ("running", 172, 0)]
    callback_errors = [r for r in caplog.records
                       if r.getMessage() == "on_change callback failed for service history" and r.exc_info]
    assert len(callback_errors) == len(seen)


@pytest.mark.parametrize("how", ["stop", "shutdown"])
async def test_error_during_cancellation_propagates_as_cancellation(
        autojump_clock: Clock, caplog: Logs, how: str) -> None:
    sup = Supervisor()
    attempts: list[float] = []

    async def mixed(*, task_status: Status = IGNORED) -> None:
        async def cleanup_fails() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise OSError("cleanup failed") from None

        attempts.append(trio.current_time())
        async with trio.open_nursery() as n:
            n.start_soon(trio.sleep_forever)
            n.start_soon(cleanup_fails)
            task_status.started()

    with trio.CancelScope() as shutdown:
        async with trio.open_nursery() as n:
            await n.start(sup.serve)
            await sup.start("watch", mixed)
            await trio.sleep(5)
            if how == "stop":
                sup.stop("watch")
                await trio.sleep(100)
            shutdown.cancel()
    assert shutdown.cancelled_caught and attempts == [0]
    assert [r.getMessage() for r in error_records(caplog)] == [
        "service watch failed while being cancelled (cleanup failed)"]


async def test_a_running_service_reports_a_problem_and_its_end_without_a_restart(autojump_clock: Clock) -> None:
    seen: list[ServiceStatus] = []
    ticks: list[float] = []
    async with trio.open_nursery() as nursery:
        sup = await serving(nursery, on_change=seen.append)
        await sup.start("history", forever, ticks)
        sup.report("history", AuthError("the database is locked"))
        status = sup.status("history")
        assert status is not None and status.state == "running" and status.degraded
        assert status.error == ServiceError("sync_auth", "the database is locked")
        assert [s.name for s in sup.degraded()] == ["history"]
        sup.report("history", None)
        assert sup.degraded() == [] and ticks == [0.0]  # never restarted
        sup.report("unknown", ValueError("ignored"))
        nursery.cancel_scope.cancel()
    assert [(s.state, s.error is not None) for s in seen] == [
        ("starting", False), ("running", False), ("running", True), ("running", False)]
