"""``GET /api/v1/health`` and the project's ``watch``: supervised services as users see them, through the
real API and HTTP server over memory streams, under ``autojump_clock`` (exact virtual times)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from helpers.http import H11Client, memory_server
from syncsnapd.api import Api
from syncsnapd.core import ProjectConfig, ServiceError, Supervisor, SyncsnapdError
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.sources import WatchStatus
from syncsnapd.store import Store


async def get(client: H11Client, path: str) -> Any:
    reply = await client.request("GET", f"/api/v1{path}")
    assert reply.status == 200, reply
    return reply.json()


async def test_health_lists_services_and_the_degraded_ones_and_watch_shows_the_error(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    # Virtual time, jumping once everything has waited 0.2 s of real time: the project endpoints read
    # the store in a worker thread, which a jump at once (autojump_clock) would race.
    mock_clock.autojump_threshold = 0.2
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    scheduler = Scheduler(store, tracker, [ProjectConfig("docs", tmp_path)])
    supervisor = Supervisor()
    watch = WatchStatus(mode="inotify")
    api = Api(scheduler, tracker, heartbeat=15, watch_status={"docs": watch}, supervisor=supervisor)
    folder_back = trio.Event()

    async def source(*, task_status: trio.TaskStatus[None]) -> None:
        if not folder_back.is_set():
            raise SyncsnapdError("The folder /x does not exist.", code="folder_missing")
        task_status.started()
        await trio.sleep_forever()

    async def steady(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    def on_change(status: Any) -> None:
        watch.error = status.error

    try:
        async with trio.open_nursery() as nursery, memory_server(api) as (stream, _):
            await nursery.start(supervisor.serve)
            await supervisor.start("history", steady)
            t0 = trio.current_time()
            await supervisor.start("project:docs/watch", source, on_change=on_change)
            client = H11Client(stream)
            await trio.sleep(0.25)
            health = await get(client, "/health")
            assert health["status"] == "ok" and health["projects"] == 1
            assert health["degraded"] == ["project:docs/watch"]
            assert health["services"] == [
                {"name": "history", "state": "running", "failures": 0, "error": None, "retry_in_seconds": None},
                {"name": "project:docs/watch", "state": "backoff", "failures": 1,
                 "error": {"code": "folder_missing", "message": "The folder /x does not exist."},
                 "retry_in_seconds": 0.75},
            ]
            assert (await get(client, "/projects/docs"))["watch"] == {
                "mode": "inotify", "warning": None,
                "error": {"code": "folder_missing", "message": "The folder /x does not exist."}}

            # Retried at 1 s (fails again), then 2 s later: by then the folder is back.
            await trio.sleep_until(t0 + 1.5)
            health = await get(client, "/health")
            assert health["services"][1]["failures"] == 2 and health["services"][1]["retry_in_seconds"] == 1.5
            folder_back.set()
            await trio.sleep_until(t0 + 3.0)
            health = await get(client, "/health")
            assert health["degraded"] == [] and health["services"][1]["state"] == "running"
            assert (await get(client, "/projects/docs"))["watch"]["error"] is None
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_service_error_of_a_syncsnapd_error_keeps_its_code() -> None:
    error = ServiceError.from_exception(ExceptionGroup("g", [SyncsnapdError("gone", code="folder_missing")]))
    assert error == ServiceError("folder_missing", "gone")
