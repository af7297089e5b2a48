"""HTTP/1.1 to the daemon: h11 over one Trio stream (a Unix or loopback TCP socket).

:class:`HttpConnection` is the small adapter that moves bytes between h11 and the socket, and turns
socket trouble into the client's exceptions (:class:`DaemonNotRunning` when nothing answers,
:class:`ConnectionLost` when a connection breaks). What the answers mean is ``syncsnap.protocol``'s.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

import h11
import trio

from .._endpoint import Endpoint
from .._errors import ConnectionLost, DaemonNotRunning, ProtocolError, SyncsnapError, Unauthorized
from ..protocol import Response

USER_AGENT = "syncsnap-client/0.1"
# Bytes asked of the socket per read: an SSE event is a few hundred bytes, a project list a few KiB.
READ_BYTES = 64 * 1024
# A response body we buffer (JSON answers); the largest real one, a long snapshot list, is far below.
MAX_BODY_BYTES = 32 * 1024 * 1024


def _connect_error(endpoint: Endpoint, exc: OSError) -> SyncsnapError:
    where = endpoint.describe()
    start = "start it with `syncsnapd`"
    if endpoint.transport == "unix":
        if exc.errno == errno.ENOENT:
            return DaemonNotRunning(f"syncsnapd is not running: no socket at {where} (from {endpoint.source}); "
                                    f"{start}.")
        if exc.errno == errno.ECONNREFUSED:
            return DaemonNotRunning(f"syncsnapd is not running: nothing listens on {where} (from "
                                    f"{endpoint.source}; a stale socket?); {start}.")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Unauthorized(f"Cannot connect to syncsnapd at {where}: permission denied; run the client as "
                                "the user who runs the daemon.")
    elif exc.errno == errno.ECONNREFUSED or isinstance(exc, ConnectionRefusedError):
        return DaemonNotRunning(f"syncsnapd is not running: nothing listens on {where} (from {endpoint.source}); "
                                f"{start}.")
    return DaemonNotRunning(f"syncsnapd is not reachable at {where} (from {endpoint.source}): "
                            f"{exc.strerror or exc}; {start}, or check SYNCSNAP_SOCKET / SYNCSNAP_URL.")


def check_socket(endpoint: Endpoint) -> None:
    """Refuse a Unix socket that is not a socket or not ours: another user's could be a false syncsnapd
    (a missing one is left to the connect, which says the daemon is not running)."""
    try:
        st = os.stat(endpoint.path)
    except OSError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SyncsnapError(f"Refusing to connect to {endpoint.path} (from {endpoint.source}): it is not a socket.")
    if st.st_uid != os.getuid():
        raise SyncsnapError(f"Refusing to connect to {endpoint.path} (from {endpoint.source}): the socket belongs "
                            f"to uid {st.st_uid}, not to you (uid {os.getuid()}), so it may not be your syncsnapd.")


class HttpConnection:
    """One HTTP/1.1 connection to the daemon (keep-alive: several requests, one after another)."""

    def __init__(self, stream: trio.abc.Stream, endpoint: Endpoint) -> None:
        self._stream = stream
        self.endpoint = endpoint
        self._h11 = h11.Connection(h11.CLIENT)
        self.requests = 0
        self.closed = False

    @classmethod
    async def open(cls, endpoint: Endpoint) -> HttpConnection:
        """Connect. Raises :class:`DaemonNotRunning` (or :class:`Unauthorized` for a socket we may not use)."""
        stream: trio.abc.Stream
        try:
            if endpoint.transport == "unix":
                check_socket(endpoint)
                stream = await trio.open_unix_socket(endpoint.path)
            else:
                stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        except OSError as exc:
            raise _connect_error(endpoint, exc) from exc
        return cls(stream, endpoint)

    @property
    def reusable(self) -> bool:
        return not self.closed and self._h11.our_state is h11.IDLE and self._h11.their_state is h11.IDLE

    def _headers(self, extra: Iterable[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
        headers = [("Host", self.endpoint.host_header), ("User-Agent", USER_AGENT)]
        if self.endpoint.transport == "tcp" and self.endpoint.token:
            headers.append(("Authorization", f"Bearer {self.endpoint.token}"))
        headers.append(("Content-Length", str(len(body))))
        headers.extend(extra)
        return headers

    def _lost(self, what: str, exc: BaseException | None = None) -> ConnectionLost:
        self.closed = True
        detail = f": {exc}" if exc is not None and str(exc) else ""
        return ConnectionLost(f"The connection to syncsnapd at {self.endpoint.describe()} broke {what}{detail}; "
                              "is the daemon restarting?")

    async def _send(self, event: h11.Event) -> None:
        try:
            data = self._h11.send(event)
        except h11.LocalProtocolError as exc:  # pragma: no cover - a bug in this module
            self.closed = True
            raise ProtocolError(f"Cannot send this request: {exc}") from exc
        if data:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._h11.send_failed()
                raise self._lost("while sending a request", exc) from exc

    async def _next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.closed = True
                raise ProtocolError(f"The daemon at {self.endpoint.describe()} sent bad HTTP: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = bytes(await self._stream.receive_some(READ_BYTES))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._lost("while reading the answer", exc) from exc
            if not data and self._h11.their_state is h11.SEND_RESPONSE:
                raise self._lost("before the daemon answered")
            if not data and self._h11.their_state is h11.SEND_BODY:
                raise self._lost("in the middle of an answer")
            self._h11.receive_data(data)

    async def _start(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes) -> h11.Response:
        self.requests += 1
        await self._send(h11.Request(method=method, target=target, headers=self._headers(headers, body)))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise self._lost("before the daemon answered")
            # InformationalResponse (1xx): keep reading.

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"") -> Response:
        """Send one request and read the whole answer."""
        head = await self._start(method, target, headers, body)
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY_BYTES:
                    self.closed = True
                    raise ProtocolError(f"The daemon's answer to {target} is over 32 MiB; is it syncsnapd?")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise self._lost("in the middle of an answer")
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        else:
            self.closed = True
        return Response(head.status_code, list(head.headers), b"".join(chunks))

    async def start_stream(self, target: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """Send a GET and read the answer's head; read the body with :meth:`receive_body`.

        For an error status the (small) body is read at once and returned in ``body``.
        """
        head = await self._start("GET", target, headers, b"")
        if head.status_code >= 300:
            chunks = []
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            self.closed = True
            return Response(head.status_code, list(head.headers), b"".join(chunks))
        return Response(head.status_code, list(head.headers), b"")

    async def receive_body(self) -> bytes | None:
        """The next piece of a streamed body; None when the body (or the connection) ended."""
        event = await self._next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        self.closed = True
        return None

    def detach(self) -> trio.abc.Stream:
        """Hand the socket over to another protocol (a WebSocket), between two requests."""
        if not self.reusable:
            raise ProtocolError("Cannot upgrade a connection in the middle of a request.")
        self.closed = True
        return self._stream

    async def aclose(self) -> None:
        self.closed = True
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
