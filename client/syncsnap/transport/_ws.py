"""The daemon's WebSocket (``GET /api/v1/ws``): wsproto over the connection the follower already opened.

trio-websocket, which the daemon serves this endpoint with, is a thin layer over wsproto that needs a
nursery for a background reader task. The follower is a plain async iterator that does its reads inside
``__anext__`` (so cancelling the caller cancels everything, and the blocking API can drive it from one
call to the next), so the client speaks wsproto itself, as it speaks h11 for HTTP: :class:`WsConnection`
moves bytes between wsproto and the Trio stream only when asked to.

The handshake goes over a connection that has just answered ``/health`` (keep-alive): the daemon parses
each request afresh and hands an upgrade request's connection to its WebSocket session. A refused
handshake (401, 403, 503, ...) becomes the same exception, with the same sentence, as a refused request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._endpoint import Endpoint
from .._errors import ConnectionLost, NotFound, ProtocolError, SyncsnapError
from ..protocol import WS_TARGET, error_for_response
from ._http import READ_BYTES, USER_AGENT

# A message from the daemon is one progress object (under 2 KiB) or a reply; anything near this is not it.
MAX_MESSAGE_BYTES = 1024 * 1024
# Close code (RFC 6455) of a normal goodbye.
CLOSE_NORMAL = 1000
# How long answering a ping (or the daemon's close) may take before the connection counts as dead.
ANSWER_SECONDS = 5.0


class WsConnection:
    """One WebSocket to the daemon. Every method works in the calling task; none runs in the background.

    :meth:`receive` reads what the socket has and returns the complete JSON messages in it (answering the
    daemon's pings on the way); :attr:`closed` tells that the connection ended, and :attr:`close_code` how.
    """

    def __init__(self, stream: trio.abc.Stream, endpoint: Endpoint) -> None:
        self._stream = stream
        self.endpoint = endpoint
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._parts: list[str] = []
        self._size = 0
        self.closed = False
        self.close_code: int | None = None
        self._next_id = 0
        self._pending: list[Any] = []  # events read with the handshake's answer, after it

    # --- the handshake -----------------------------------------------------------------------------

    @classmethod
    async def handshake(cls, stream: trio.abc.Stream, endpoint: Endpoint,
                        headers: Iterable[tuple[str, str]] = ()) -> WsConnection:
        """Upgrade ``stream`` (an HTTP connection between requests) to a WebSocket.

        Raises the client's exception for a refused handshake (:func:`error_for_response`), with a
        sentence of its own for a daemon that has no WebSocket endpoint.
        """
        conn = cls(stream, endpoint)
        extra = [(b"user-agent", USER_AGENT.encode())]
        if endpoint.transport == "tcp" and endpoint.token:
            extra.append((b"authorization", f"Bearer {endpoint.token}".encode()))
        extra += [(k.lower().encode(), v.encode()) for k, v in headers]
        await conn._send_bytes(conn._ws.send(Request(host=endpoint.host_header, target=WS_TARGET,
                                                     extra_headers=extra)), "while asking for a WebSocket")
        rejected: RejectConnection | None = None
        body = b""
        while True:
            events = await conn._receive_events("before the daemon answered the WebSocket request")
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    conn._pending = events[i + 1:]
                    return conn
                if isinstance(event, RejectConnection):
                    rejected = event
                    if not event.has_body:
                        raise conn._refused(event.status_code, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished and rejected is not None:
                        raise conn._refused(rejected.status_code, body)
            if conn.closed:
                raise conn._lost("before the daemon answered the WebSocket request")

    def _refused(self, status: int, body: bytes) -> SyncsnapError:
        self.closed = True
        if status in (404, 405, 426):
            return NotFound(f"syncsnapd at {self.endpoint.describe()} has no WebSocket endpoint ({WS_TARGET} "
                            f"answered {status}): it is older than this client; use the SSE transport "
                            "(--transport sse).", status=status)
        return error_for_response(self.endpoint, "GET", WS_TARGET, status, body)

    # --- bytes in and out --------------------------------------------------------------------------

    def _lost(self, what: str, exc: BaseException | None = None) -> ConnectionLost:
        self.closed = True
        detail = f": {exc}" if exc is not None and str(exc) else ""
        return ConnectionLost(f"The WebSocket to syncsnapd at {self.endpoint.describe()} broke {what}{detail}; "
                              "is the daemon restarting?")

    async def _send_bytes(self, data: bytes, what: str) -> None:
        if not data:
            return
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._lost(what, exc) from exc

    async def _receive_events(self, what: str) -> list[Any]:
        """Read once from the socket; the wsproto events it completed (pings are answered here)."""
        try:
            data: bytes | None = bytes(await self._stream.receive_some(READ_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._lost(what, exc) from exc
        if not data:
            data = None  # EOF
            self.closed = True
        try:
            self._ws.receive_data(data)
            events = list(self._ws.events())
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.closed = True
            raise ProtocolError(f"The daemon at {self.endpoint.describe()} broke the WebSocket protocol: "
                                f"{exc}") from exc
        # The events are consumed: a cancellation from here on would lose them, so answers are shielded
        # (a few bytes on a local socket; a peer that does not take them within ANSWER_SECONDS is gone).
        with trio.CancelScope(shield=True), trio.move_on_after(ANSWER_SECONDS) as answering:
            for event in events:
                try:
                    if isinstance(event, Ping):
                        await self._send_bytes(self._ws.send(event.response()), "while answering a ping")
                    elif isinstance(event, CloseConnection):
                        self.close_code = event.code
                        self.closed = True
                        if self._ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._send_bytes(self._ws.send(event.response()), "while closing")
                except ConnectionLost:
                    self.closed = True  # what arrived is still returned; the next receive says it is over
        if answering.cancelled_caught:
            self.closed = True
        return events

    # --- messages ----------------------------------------------------------------------------------

    async def send(self, obj: dict[str, Any]) -> int:
        """Send one JSON command with a fresh ``id`` (returned: the daemon echoes it in its answer)."""
        self._next_id += 1
        msg = {**obj, "id": self._next_id}
        try:
            data = self._ws.send(TextMessage(data=json.dumps(msg, separators=(",", ":"))))
        except LocalProtocolError as exc:
            raise self._lost("while sending a command", exc) from exc
        await self._send_bytes(data, "while sending a command")
        return self._next_id

    async def ping(self) -> None:
        """Send a ping; the daemon's pong arrives through :meth:`receive` (as an empty read)."""
        try:
            data = self._ws.send(Ping(payload=os.urandom(4)))
        except LocalProtocolError as exc:
            raise self._lost("while sending a ping", exc) from exc
        await self._send_bytes(data, "while sending a ping")

    async def receive(self) -> list[dict[str, Any]]:
        """Read once; the complete messages that arrived (maybe none: a pong, part of a message).

        Raises :class:`ConnectionLost` when the connection broke, :class:`ProtocolError` for a message
        that is not a JSON object. After the daemon's close frame :attr:`closed` is set; messages sent
        before it are still returned.
        """
        if self.closed and not self._pending:
            raise self._lost("(it was closed)")
        out: list[dict[str, Any]] = []
        if self._pending:
            events, self._pending = self._pending, []
        else:
            events = await self._receive_events("while reading")
        for event in events:
            if isinstance(event, Message):
                if not isinstance(event, TextMessage):
                    raise ProtocolError("The daemon sent a binary WebSocket message; is it syncsnapd?")
                self._parts.append(event.data)
                self._size += len(event.data)
                if self._size > MAX_MESSAGE_BYTES:
                    self.closed = True
                    raise ProtocolError("The daemon sent a WebSocket message over 1 MiB; is it syncsnapd?")
                if event.message_finished:
                    text = "".join(self._parts)
                    self._parts, self._size = [], 0
                    try:
                        msg = json.loads(text)
                    except ValueError:
                        msg = None
                    if not isinstance(msg, dict):
                        raise ProtocolError("The daemon sent a WebSocket message that is not a JSON object; "
                                            "is it syncsnapd?")
                    out.append(msg)
        return out

    async def aclose(self) -> None:
        """Say goodbye (a close frame, if the connection is still open) and close the socket."""
        with trio.CancelScope(shield=True):
            if self._ws.state is ConnectionState.OPEN:
                try:
                    with trio.move_on_after(1):
                        await self._send_bytes(self._ws.send(CloseConnection(code=CLOSE_NORMAL)), "while closing")
                except (ConnectionLost, LocalProtocolError):
                    pass
            self.closed = True
            await self._stream.aclose()
