"""The endpoints of docs/api.md: the one module that joins the HTTP layer to the tracker and scheduler."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import trio

from .. import __version__
from ..core import Supervisor
from ..http import (
    BodyWriter,
    Request,
    Response,
    Router,
    StreamResponse,
    UpgradeResponse,
    json_response,
    parse_decimal,
    sse_comment,
    sse_retry,
)
from ..runs import Event, Scheduler, Tracker, UnknownProject
from ..sources import WatchStatus
from ..store import SnapshotInfo
from ._encodings import event_json_body, event_sse
from ._errors import api_error, as_http_errors
from ._store_view import SnapshotLists, host_param, register_snapshot_list, store_health
from ._websocket import websocket_endpoint

API = "/api/v1"
# Sent as `retry:` on every stream: how long an EventSource waits before reconnecting (milliseconds).
SSE_RETRY_MS = 2000
# Sent before the current-state events when a Last-Event-ID resume could not be honoured.
GAP_EVENT = "gap"
# Open SSE streams at most (config max_streams); a new one beyond gets 503 and polls meanwhile.
DEFAULT_MAX_STREAMS = 256
# Retry-After (seconds) of that 503.
STREAMS_RETRY_AFTER = 5
# Seconds an S3 store's cached snapshot lists serve a listing before it refreshes them (config refresh_age).
DEFAULT_REFRESH_AGE = 60.0


def known_project(scheduler: Scheduler, pid: str) -> str:
    """``pid`` if the scheduler has that project, else the ``not_found`` answer (for every project
    endpoint)."""
    try:
        scheduler.project(pid)
    except UnknownProject as exc:
        raise api_error(exc.code, exc.message) from None
    return pid


class Api:
    """Handlers bound to one daemon's scheduler and tracker."""

    def __init__(self, scheduler: Scheduler, tracker: Tracker, *, heartbeat: float,
                 watch_status: dict[str, WatchStatus] | None = None, supervisor: Supervisor | None = None,
                 max_streams: int = DEFAULT_MAX_STREAMS, refresh_age: float = DEFAULT_REFRESH_AGE) -> None:
        self.scheduler = scheduler
        # SSE streams: counted when one is accepted, released when its response ends (the WebSocket has
        # its own connections and is not counted).
        self.max_streams = max_streams
        self.open_streams = 0
        self.tracker = tracker
        self.watch_status = watch_status if watch_status is not None else {}
        self.supervisor = supervisor
        self.heartbeat = heartbeat
        # Configuration warnings the daemon shows in health (e.g. no projects configured).
        self.warnings: list[str] = []
        self.started = time.monotonic()
        # The store's snapshot listings; an S3 store's refreshed from the bucket when older than refresh_age.
        self.lists = SnapshotLists(scheduler.stores.all, scheduler.stores.list_snapshots, refresh_age)
        self.router = Router()
        r = self.router
        r.add("GET", f"{API}/health", self.health)
        r.add("GET", f"{API}/projects", self.projects)
        r.add("GET", f"{API}/projects/{{id}}", self.project)
        r.add("GET", f"{API}/projects/{{id}}/progress", self.progress)
        r.add("GET", f"{API}/projects/{{id}}/progress/stream", self.project_stream)
        r.add("GET", f"{API}/projects/{{id}}/snapshots", self.snapshots)
        r.add("POST", f"{API}/projects/{{id}}/snapshots", self.start_snapshot)
        r.add("POST", f"{API}/projects/{{id}}/pause", self.pause)
        r.add("POST", f"{API}/projects/{{id}}/resume", self.resume)
        r.add("GET", f"{API}/events", self.all_events)
        r.add("GET", f"{API}/ws", websocket_endpoint(tracker, scheduler))
        register_snapshot_list(r, self.lists)

    async def __call__(self, request: Request) -> Response | StreamResponse | UpgradeResponse:
        handler, params = self.router.resolve(request.method, request.path)
        return await handler(request, params)

    # --- JSON endpoints ----------------------------------------------------------------------------

    async def health(self, request: Request, params: dict[str, str]) -> Response:
        # Still 200 while services are degraded: the daemon answers, and says what is wrong.
        statuses = self.supervisor.statuses() if self.supervisor is not None else []
        now = trio.current_time()
        store = await store_health(self.scheduler.stores.default)
        return json_response(200, {
            "status": "ok", "version": __version__, "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "projects": len(self.scheduler.project_ids()),
            "services": [s.to_json(now) for s in statuses],
            "degraded": [s.name for s in statuses if s.degraded] + ([] if store["reachable"] else ["store"]),
            "warnings": list(self.warnings),
            "store": store,
        })

    async def projects(self, request: Request, params: dict[str, str]) -> Response:
        infos, stale = await self._last_snapshots()
        return json_response(200, {"projects": [self._project_json(pid, infos.get(pid))
                                                for pid in self.scheduler.project_ids()], "stale": stale})

    async def project(self, request: Request, params: dict[str, str]) -> Response:
        pid = self._known(params["id"])
        infos, _ = await self._last_snapshots()
        return json_response(200, self._project_json(pid, infos.get(pid)))

    async def progress(self, request: Request, params: dict[str, str]) -> Response:
        # The hot path of every poller: the event's JSON was encoded once, when it was published.
        try:
            return Response(200, event_json_body(self.tracker.latest_event(params["id"])))
        except KeyError:
            raise api_error("not_found", f"No project named {params['id']!r}.") from None

    async def snapshots(self, request: Request, params: dict[str, str]) -> Response:
        pid = self._known(params["id"])
        infos, stale = await self.lists.snapshots(pid, host_param(request))
        return json_response(200, {"snapshots": [asdict(i) for i in infos], "stale": stale})

    async def start_snapshot(self, request: Request, params: dict[str, str]) -> Response:
        pid = self._known(params["id"])
        with as_http_errors():  # project_paused
            run, progress = self.scheduler.request_snapshot(pid)
        # The run (running or queued) is in the history before its id is handed out (docs/api.md).
        await self.scheduler.wait_recorded(run)
        return json_response(202, {"run": run, "progress": progress.to_json(),
                                   "stream": f"{API}/projects/{pid}/progress/stream"})

    async def pause(self, request: Request, params: dict[str, str]) -> Response:
        pid = self._known(params["id"])
        await self.scheduler.pause(pid)
        return await self.project(request, params)

    async def resume(self, request: Request, params: dict[str, str]) -> Response:
        pid = self._known(params["id"])
        await self.scheduler.resume(pid)
        return await self.project(request, params)

    def _known(self, pid: str) -> str:
        return known_project(self.scheduler, pid)

    def _project_json(self, pid: str, last: SnapshotInfo | None) -> dict[str, Any]:
        cfg = self.scheduler.project(pid)
        progress = self.tracker.latest(pid)
        watch = self.watch_status.get(pid) or WatchStatus(mode="off")
        # path: null for a Syncthing project configured without one, until Syncthing has told it.
        return {"id": pid, "path": str(cfg.path) if cfg.path_known else None, "state": progress.state,
                "progress": progress.to_json(), "last_snapshot": asdict(last) if last else None,
                "watch": watch.to_json(), "paused": self.scheduler.is_paused(pid)}

    async def _last_snapshots(self) -> tuple[dict[str, SnapshotInfo], str | None]:
        # No cache of our own: the store's catalog caches its listing (and knows when the directory
        # changed), and another machine sharing the bucket adds snapshots without any event here.
        infos, stale = await self.lists.snapshots()
        return {i.project: i for i in infos}, stale  # oldest first, so the newest per project wins

    # --- streams -----------------------------------------------------------------------------------

    async def project_stream(self, request: Request, params: dict[str, str]) -> StreamResponse:
        return self._stream(request, [self._known(params["id"])])

    async def all_events(self, request: Request, params: dict[str, str]) -> StreamResponse:
        return self._stream(request, None)

    def _stream(self, request: Request, projects: list[str] | None) -> StreamResponse:
        last_id = _last_event_id(request)
        if self.open_streams >= self.max_streams:
            raise api_error("unavailable", f"{self.open_streams} event streams are open, the most this daemon "
                            f"serves (max_streams); poll {API}/projects meanwhile and try again later.",
                            (("Retry-After", str(STREAMS_RETRY_AFTER)),))
        self.open_streams += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_streams -= 1

        async def body(writer: BodyWriter) -> None:
            await self._serve_stream(writer, projects, last_id)

        return StreamResponse(200, "text/event-stream", (("Cache-Control", "no-store"),), body, on_end=release)

    async def _serve_stream(self, writer: BodyWriter, projects: list[str] | None, last_id: int | None) -> None:
        head = sse_retry(SSE_RETRY_MS)
        with self.tracker.subscribe(projects, last_event_id=last_id, transport="sse") as sub:

            def fast_path(event: Event) -> bool:
                # The publisher's non-blocking write (docs/architecture.md): only while nothing is pending
                # for this connection; otherwise the event waits in the queue for this task.
                written = writer.write_if_idle(event_sse(event))
                if written is None:
                    return False
                if not written:
                    sub.wake()  # partly written: the rest is pending; this task flushes it
                return True

            def dropped(reason: str) -> None:
                # The tracker dropped a reader hopelessly behind: end the connection now, not at the next
                # write (its socket is full, so that write would wait). The comment goes out only if the
                # socket takes it at once; the reader resumes with Last-Event-ID.
                if reason == "overflow" and not writer.closed:
                    if not writer.pending_bytes:
                        writer.write_nowait(sse_comment("too slow: disconnected; resume with Last-Event-ID"))
                    writer.close()

            sub.on_close = dropped
            if sub.gap:
                head += f"event: {GAP_EVENT}\ndata: {{\"last_event_id\": {last_id}}}\n\n".encode()
            await writer.send(head)
            while not writer.closed and not sub.closed:
                if writer.pending_bytes:
                    await writer.flush()
                    continue
                ev = sub.get_nowait()
                if ev is not None:
                    batch = [event_sse(ev)]
                    while (ev := sub.get_nowait()) is not None:
                        batch.append(event_sse(ev))
                    writer.write_nowait(b"".join(batch))
                    sub.last_delivery = trio.current_time()
                    continue
                # Nothing queued: from now on the publisher writes directly while the socket has room.
                sub.fast_path = fast_path
                with trio.move_on_at(sub.last_delivery + self.heartbeat) as idle:
                    await sub.wait()
                sub.fast_path = None
                if idle.cancelled_caught and trio.current_time() >= sub.last_delivery + self.heartbeat:
                    writer.write_nowait(sse_comment("keep-alive"))
                    sub.last_delivery = trio.current_time()


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    value = parse_decimal(raw)
    if value is None:
        raise api_error("bad_request", "Last-Event-ID must be an event id: a whole number in ASCII digits.")
    return value
