"""``GET /api/v1/ws``: progress and control over a WebSocket, served by trio-websocket.

The HTTP server authorizes the request as any other (peer uid on the Unix socket; Host and token on TCP),
then hands the connection over (:class:`UpgradeResponse`); trio-websocket performs the handshake.

Client messages are JSON objects with an ``op`` and an optional ``id`` that the answer echoes:

- ``{"op": "subscribe", "projects": ["docs"] | "*", "last_event_id": N}``: (re)start the push of progress
  events; answered ``{"type": "reply", "op": "subscribe", "id", "ok": true}``, then, if a resume was
  impossible, ``{"type": "gap", "last_event_id": N}``, then ``{"type": "progress", "progress": {...}}``
  for each event (the same objects and event ids as the SSE streams).
- ``{"op": "unsubscribe"}``: stop pushing.
- ``{"op": "snapshot", "project": "docs"}``: start a snapshot; answered with ``run`` and ``progress``.

Errors: ``{"type": "error", "op", "id", "error": {"code", "message"}}``; the connection stays open,
except for a reader too far behind (the tracker dropped its subscription): it is disconnected at once,
and resumes with ``last_event_id``. A protocol
error in the client's frames gets a close frame with its code (1002, 1007, 1009) before the connection
closes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket

from ..http import Request, UpgradeResponse
from ..runs import ProjectPaused, Scheduler, Subscription, Tracker, UnknownProject
from ._encodings import event_ws
from ._errors import api_error

log = logging.getLogger("syncsnapd.ws")

# Client messages are small JSON commands; anything bigger is a mistake or an attack (close 1009).
MAX_MESSAGE_BYTES = 64 * 1024

# Close codes that never travel in a close frame (RFC 6455 section 7.4.1): no frame is owed for them.
_NOT_ON_THE_WIRE = frozenset({1005, 1006, 1015})
# A control frame's payload is at most 125 bytes: the 2-byte code and a reason of at most 123.
_MAX_CLOSE_REASON = 123
# How long the close frame owed after a protocol error may take to send before the connection closes
# anyway (the client is misbehaving; the HTTP layer's send deadline bounds it too).
CLOSE_FRAME_SECONDS = 1.0


def _close_frame(code: int, reason: str) -> bytes:
    # A server's close frame (unmasked, FIN, opcode 8) carrying code and reason.
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:_MAX_CLOSE_REASON].decode(
        "utf-8", "ignore").encode("utf-8")
    return bytes((0x88, len(payload))) + payload


class _Wire(trio.abc.Stream):
    """The session's connection, watched for the close frame we owe.

    When wsproto finds a protocol error in the client's frames (a bad opcode or frame, invalid UTF-8 in a
    text message), trio-websocket closes the connection without sending a close frame (its
    ``_handle_close_connection_event`` answers only a close the peer sent). RFC 6455 section 7.1.7 asks
    for one with the error's code, so this stream sends it in ``aclose`` when none went out.
    trio-websocket writes each frame with one ``send_all``, so a frame starts every call here.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.close_sent = False
        self._sending = 0  # sends in progress: a frame must not be written into the middle of another
        self._broken = False  # a send failed or was cancelled part-way: what follows would be garbage
        self.ws: trio_websocket.WebSocketConnection | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:1]) == b"\x88":  # FIN + opcode 8: our close frame
            self.close_sent = True
        self._sending += 1
        try:
            await self._stream.send_all(data)
        except BaseException:
            self._broken = True
            raise
        finally:
            self._sending -= 1

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_owed_close(self) -> None:
        """Send the close frame the session owes, if it owes one: the connection closed for a reason
        that travels on the wire, and no close frame went out. Shielded (the session is ending, and its
        tasks are being cancelled) but bounded by ``CLOSE_FRAME_SECONDS``."""
        reason = self.ws.closed if self.ws is not None else None
        if (reason is None or self.close_sent or self._sending or self._broken
                or reason.code in _NOT_ON_THE_WIRE):
            return
        self.close_sent = True
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_FRAME_SECONDS):
            try:
                await self._stream.send_all(_close_frame(reason.code, reason.reason or ""))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def aclose(self) -> None:
        # trio-websocket closes the stream after a close handshake or a protocol error (then without its
        # close frame). The socket itself is left to the HTTP connection, which closes it when the session
        # returns (at once: the session sees ConnectionClosed): closing it here could cut the close frame
        # the session is sending, and the reader may get here before accept() has handed the session its
        # connection, when what we owe is not known yet.
        await self.send_owed_close()


class _Session:
    def __init__(self, ws: trio_websocket.WebSocketConnection, tracker: Tracker, scheduler: Scheduler) -> None:
        self.ws = ws
        self.tracker = tracker
        self.scheduler = scheduler
        self.sub: Subscription | None = None
        self.pusher: trio.CancelScope | None = None
        self.abort: Callable[[], None] = lambda: None  # ends the session (and so the connection) now

    def dropped(self, reason: str) -> None:
        # The tracker dropped this reader (overflow): its queue of unsent events is full, so the pusher is
        # stuck sending to a client that does not read (or is about to be). End the connection now, not
        # at the send deadline; a close frame could not reach it anyway. It resumes with last_event_id.
        if reason == "overflow":
            log.info("disconnecting a WebSocket subscriber that fell too far behind")
            self.abort()

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(obj, separators=(",", ":")))

    async def reply(self, msg: dict[str, Any], **fields: Any) -> None:
        await self.send({"type": "reply", "op": msg.get("op"), "id": msg.get("id"), "ok": True, **fields})

    async def error(self, msg: dict[str, Any], code: str, message: str) -> None:
        await self.send({"type": "error", "op": msg.get("op"), "id": msg.get("id"),
                         "error": {"code": code, "message": message}})

    def stop_push(self) -> None:
        if self.pusher is not None:
            self.pusher.cancel()
            self.pusher = None
        if self.sub is not None:
            self.sub.close()
            self.sub = None

    async def push(self, sub: Subscription, scope: trio.CancelScope) -> None:
        with scope:
            async for ev in sub:
                await self.ws.send_message(event_ws(ev))

    async def handle(self, nursery: trio.Nursery, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "subscribe":
            projects = msg.get("projects", "*")
            last = msg.get("last_event_id")
            if projects != "*" and not (isinstance(projects, list) and all(isinstance(p, str) for p in projects)):
                await self.error(msg, "bad_request", 'projects must be "*" or a list of project ids.')
                return
            if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
                await self.error(msg, "bad_request", "last_event_id must be a non-negative integer.")
                return
            unknown = [p for p in projects if p not in self.scheduler.project_ids()] if projects != "*" else []
            if unknown:
                await self.error(msg, "not_found", f"No project named {unknown[0]!r}.")
                return
            self.stop_push()
            self.sub = self.tracker.subscribe(None if projects == "*" else projects, last_event_id=last,
                                              transport="websocket")
            self.sub.on_close = self.dropped
            await self.reply(msg)
            if self.sub.gap:
                await self.send({"type": "gap", "last_event_id": last})
            self.pusher = trio.CancelScope()
            nursery.start_soon(self.push, self.sub, self.pusher)
        elif op == "unsubscribe":
            self.stop_push()
            await self.reply(msg)
        elif op == "snapshot":
            project = msg.get("project")
            try:
                run, progress = self.scheduler.request_snapshot(str(project), "api")
            except UnknownProject as exc:
                await self.error(msg, exc.code, f"No project named {project!r}.")
                return
            except ProjectPaused as exc:
                await self.error(msg, exc.code, exc.message)
                return
            await self.scheduler.wait_recorded(run)  # in the history before its id is handed out
            await self.reply(msg, run=run, progress=progress.to_json())
        else:
            await self.error(msg, "bad_request", f"Unknown op {op!r} (subscribe, unsubscribe, snapshot).")


def websocket_endpoint(tracker: Tracker, scheduler: Scheduler) -> Any:
    """The handler for ``GET /api/v1/ws``."""

    async def session(stream: trio.abc.Stream) -> None:
        aborted = False
        async with trio.open_nursery() as nursery:

            def abort() -> None:
                nonlocal aborted
                aborted = True
                nursery.cancel_scope.cancel()

            wire = _Wire(stream)
            try:
                request = await trio_websocket.wrap_server_stream(nursery, wire,
                                                                  max_message_size=MAX_MESSAGE_BYTES)
                ws = wire.ws = await request.accept()
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                nursery.cancel_scope.cancel()
                return
            s = _Session(ws, tracker, scheduler)
            s.abort = abort
            try:
                while True:
                    text = await ws.get_message()
                    try:
                        msg = json.loads(text)
                        if not isinstance(msg, dict):
                            raise ValueError
                    except (ValueError, RecursionError):  # RecursionError: nested too deeply
                        await s.error({}, "bad_request", "Messages must be JSON objects with an op.")
                        continue
                    await s.handle(nursery, msg)
            except trio_websocket.ConnectionClosed:
                # The reader may still be on its way to closing the stream: send what we owe now, before
                # this nursery's cancellation can stop it.
                await wire.send_owed_close()
            finally:
                s.stop_push()
                nursery.cancel_scope.cancel()
        if aborted:
            # Cut, not closed politely: the client is not reading, lingering for it would only wait.
            await trio.aclose_forcefully(stream)

    async def handler(request: Request, params: dict[str, str]) -> UpgradeResponse:
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            raise api_error("upgrade_required", "This endpoint speaks WebSocket: send Upgrade: websocket.",
                            (("Upgrade", "websocket"),))
        return UpgradeResponse(session)

    return handler
