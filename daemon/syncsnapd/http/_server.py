"""The Trio adapter for syncsnapd's HTTP/1.1 layer: one task per connection, h11 underneath.

The protocol decisions live in the sans-I/O modules (``_validation``, ``_routing``, ``_authorization``,
``_messages``); this module does the reading and writing, and owns everything that takes time:

- **Timeouts are cancel scopes at the edge**: one per connection, whose deadline follows the phase the
  connection is in (and one around a request body). A fresh connection has
  ``header_timeout`` to deliver its first request head; an idle keep-alive connection has
  ``keepalive_timeout`` to start its next request, then ``header_timeout`` from that first byte to finish
  the head; a body has ``body_timeout``. A head that started but did not finish gets 408; a connection
  that sent nothing at all is closed silently (nginx does the same: a 408 on a connection the client
  believes idle would be read as the answer to its next request).
- **h11 parses every request**; each request/response cycle gets a fresh ``h11.Connection`` fed with
  whatever followed the previous request, so pipelined requests are answered in order. A complete
  response (``Content-Length``) is a few lines of formatting here, written with one non-blocking
  ``os.write`` (``send_all`` only for what the kernel did not take); keep-alive follows h11's rule
  (HTTP/1.1 without ``Connection: close``). Streaming bodies are framed by h11 (chunked encoding).
  Measured with ``wrk -c32`` on a health endpoint, this took the server from ~7,400 to ~10,500 req/s
  (hypercorn's Trio worker: ~2,300 on the same machine): building and validating h11's Response event
  and stepping its state machine for every response cost more than the rest of the server's work.
- **Errors** follow h11's ``examples/trio-server.py``: input h11 refuses gets its ``error_status_hint``
  (400, 431, 501) and ``Connection: close``; a handler's exception gets 500 ``internal_error`` with no
  exception text (the traceback goes to the ``syncsnapd.http`` log); an error response is sent only if no
  response has started in this cycle; a failed send ends the connection (and calls ``send_failed()`` on
  a stream's h11 connection). One bad connection never takes the server down.
- **Streams** (:class:`~syncsnapd.http.StreamResponse`, i.e. SSE): chunked on HTTP/1.1, always
  with ``Connection: close``: the connection is *not* reused after a stream. The body runs next to a task
  that watches the socket; EOF, a reset or any byte from the client (it was told the connection closes)
  cancels the body at once. Bytes are written through a :class:`TrioBodyWriter` whose ``write_nowait`` is the
  publisher's fast path.
- **Limits**: at most ``max_connections`` open connections; the next ones get a canned 503 and are closed
  without being read (beyond a little draining so the kernel does not reset the answer away).
- **Shutdown**: :meth:`HttpServer.begin_shutdown` stops accepting, closes idle connections, lets requests
  in progress finish (their responses carry ``Connection: close``), ends streams with their final chunk
  (a shielded send of at most ``FINAL_CHUNK_SECONDS``), and :func:`serve_http` returns once every
  connection is gone or ``shutdown_grace`` has passed, whichever comes first.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import re
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from wsgiref.handlers import format_date_time

import h11
import trio

from ._authorization import authorize
from ._messages import (
    App,
    BodyWriter,
    Headers,
    HTTPError,
    Peer,
    Response,
    StreamResponse,
    UpgradeResponse,
    error_response,
)
from ._validation import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEAD,
    body_too_large,
    parse_request,
    protocol_error_response,
)

__all__ = [
    "BodyWriter",
    "HttpConfig",
    "HttpServer",
    "HttpStatistics",
    "TrioBodyWriter",
    "serve_http",
]

LOGGER = logging.getLogger("syncsnapd.http")

# Bytes asked of the kernel per read; h11's example and hypercorn use the same.
MAX_RECV = 2**16

# After a response with "Connection: close" we shut down our sending side and read (and drop) what the
# client still sends for up to this many seconds before closing: closing a socket with unread data makes
# the kernel send a reset, which can destroy the response before the client reads it (h11's trio example
# does the same; nginx calls it lingering_close, default 5 s, lingering_time 30 s).
LINGER_SECONDS = 1.0

# How long a stream's final zero-length chunk may take to send when the server shuts down. The send is
# shielded, so this bounds how much a stuck client delays shutdown.
FINAL_CHUNK_SECONDS = 0.2

# Refusing connections beyond max_connections costs a task each; beyond this many refusals at once we
# close without answering.
MAX_REFUSING = 64

# Errors that accept(2) returns when the system is out of resources: retried after a pause, and logged
# (trio's serve_listeners handles them the same way, with the same pause).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_SECONDS = 0.100

_SERVER = b"syncsnapd"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TCP_PEER = Peer("tcp")
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_INTERNAL_ERROR = error_response(500, "internal_error", "Internal server error; see the daemon's log.")
_SHUTTING_DOWN = error_response(503, "unavailable", "The daemon is shutting down.")
_TOO_MANY = error_response(503, "unavailable", "Too many connections; try again shortly.")
_TIMEOUT = error_response(408, "request_timeout", "The request was not received in time.")


@dataclass(frozen=True)
class HttpConfig:
    """Settings of the HTTP server. Times are in seconds, sizes in bytes.

    Attributes:
        token: the bearer token TCP clients must present; ``None`` refuses every TCP request.
        max_connections: open connections beyond this get 503 ``unavailable`` and are closed.
        header_timeout: time to receive a request head (from accept, or from its first byte on a
            keep-alive connection); 408 when it passes mid-head.
        body_timeout: time to receive a request body once its head is in; 408 when it passes.
        keepalive_timeout: an idle keep-alive connection is closed after this long.
        max_body: larger request bodies get 413.
        max_head: larger request heads get 431.
        stream_max_pending: a stream whose client leaves more than this many bytes unread is disconnected
            (the tracker should coalesce long before; this is the backstop that bounds memory).
        shutdown_grace: after :meth:`HttpServer.begin_shutdown`, requests in progress get this long to
            finish before their connections are cancelled.
    """

    token: str | None = None
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_body: int = DEFAULT_MAX_BODY
    max_head: int = DEFAULT_MAX_HEAD
    stream_max_pending: int = 1024 * 1024
    shutdown_grace: float = 0.5


@dataclass(frozen=True)
class HttpStatistics:
    """A snapshot of the server's counters (see :meth:`HttpServer.statistics`).

    Attributes:
        open_connections: connections being served (not counting those refused with 503).
        open_streams: streaming responses in progress.
        requests_by_status: responses sent since start, by status code (503s to refused connections
            included).
        connections_refused: connections answered 503 because of ``max_connections``.
    """

    open_connections: int
    open_streams: int
    requests_by_status: dict[int, int]
    connections_refused: int


# Header fields: a name is a token, a value has no control characters but HTAB (RFC 9110 section 5.5);
# h11 applies the same rules to what it sends.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*\Z")
# Framing and connection management belong to the server.
_RESERVED_FIELDS = frozenset({"content-length", "transfer-encoding", "connection", "date", "server"})
_END_OF_MESSAGE = h11.EndOfMessage()
_content_type_fields: dict[str, bytes] = {}


def _header_field(name: str, value: str) -> bytes:
    if not _TOKEN.match(name) or not _FIELD_VALUE.match(value) or name.lower() in _RESERVED_FIELDS:
        raise ValueError(f"invalid response header field {name!r}: {value!r}")
    return f"{name}: {value}\r\n".encode("latin-1")  # UnicodeEncodeError is a ValueError


def _content_type_field(content_type: str) -> bytes:
    field = _content_type_fields.get(content_type)
    if field is None:
        if not _FIELD_VALUE.match(content_type):
            raise ValueError(f"invalid content type {content_type!r}")
        field = f"Content-Type: {content_type}\r\n".encode("latin-1")
        if len(_content_type_fields) < 64:
            _content_type_fields[content_type] = field
    return field


class _RequestTimeout(Exception):
    # A request body did not arrive within body_timeout.
    pass


class _DateCache:
    # The Date header changes once a second; formatting it costs more than the rest of a small response
    # head, so it is formatted at most once a second.
    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._value = format_date_time(now).encode("ascii")
            self._second = now
        return self._value


class TrioBodyWriter:
    """The :class:`~syncsnapd.http.BodyWriter` of a stream: built by the server for each one.

    ``write_nowait`` is the fan-out fast path: the publisher calls it for every subscriber, and it frames the
    data as a chunk (in the framing h11 chose for the response) and writes it at once with a non-blocking ``os.write`` on the connection's
    socket, without awaiting anything. Whatever the socket does not take stays *pending*, in order; a
    flusher task that the server runs next to the body (parked until bytes go pending, so it costs nothing
    on the fast path) sends it as the client reads. ``await flush()`` waits until nothing is pending, e.g.
    for back-pressure.

    A broken connection never raises here: the writer becomes ``closed``, the body is cancelled (so it
    exits at its next checkpoint), and later writes are ignored. A client that leaves more than
    ``HttpConfig.stream_max_pending`` bytes unread is disconnected the same way.

    Over a stream without a file descriptor (``trio.testing.memory_stream_pair`` in tests),
    ``write_nowait`` only buffers and the flusher (or ``flush``) sends with ``send_all``.

    Use it from the Trio thread only.
    """

    __slots__ = (
        "_conn",
        "_chunked",
        "_stream",
        "_fd",
        "_pending",
        "_inflight",
        "_max_pending",
        "_closed",
        "_finished",
        "_closed_event",
        "_wakeup",
        "_lock",
        "_body_scope",
    )

    def __init__(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        *,
        chunked: bool = True,
        max_pending: int = 1024 * 1024,
    ) -> None:
        self._conn = conn
        self._chunked = chunked  # False for an HTTP/1.0 client: the body ends when the connection closes
        self._stream = stream
        # trio sockets are in non-blocking mode, so a plain os.write on the descriptor never blocks. The
        # descriptor stays valid while the writer is open: the server marks the writer closed before it
        # closes the socket.
        self._fd: int | None = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self._pending = bytearray()
        self._inflight = 0  # bytes handed to send_all and not yet confirmed (fd-less streams only)
        self._max_pending = max_pending
        self._closed = False
        self._finished = False
        self._closed_event = trio.Event()
        self._wakeup: trio.Event | None = None
        self._lock = trio.Lock()
        self._body_scope: trio.CancelScope | None = None

    @property
    def closed(self) -> bool:
        """True once the stream has ended: client gone, :meth:`close` called, or final chunk sent."""
        return self._closed

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted by :meth:`write_nowait` and not yet handed to the kernel."""
        return len(self._pending) + self._inflight

    def write_nowait(self, data: bytes) -> bool:
        """Send ``data`` as one chunk without blocking; return True if nothing is left pending.

        If earlier bytes are still pending, ``data`` is queued behind them (order is kept) and the flusher
        sends it. Returns False (and does nothing) when the writer is closed.
        """
        if self._closed:
            return False
        if not data:  # an empty chunk would end the body
            return not (self._pending or self._inflight)
        # h11 chose the framing when it sent the head and will end the body; the chunk header itself is
        # formatted here: through h11 it costs 2.4 us of the 3.6 us a delivery takes (1,000 subscribers:
        # 2.4 ms per event).
        framed = b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        if self._pending or self._inflight or self._fd is None:
            self._queue(framed)
            return False
        try:
            written = os.write(self._fd, framed)
        except BlockingIOError:
            written = 0
        except OSError:
            self._abort("the client connection broke")
            return False
        if written < len(framed):
            self._queue(memoryview(framed)[written:])
            return False
        return True

    async def flush(self) -> None:
        """Wait until every pending byte is handed to the kernel (or the writer is closed)."""
        async with self._lock:  # a checkpoint, even when there is nothing to do
            fd = self._fd
            pending = self._pending
            while pending and not self._closed:
                if fd is None:
                    data = bytes(pending)
                    pending.clear()
                    self._inflight = len(data)
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._abort("the client connection broke")
                    except BaseException:
                        # Cancelled part-way: how much was sent is unknown, so the chunk framing is lost.
                        self._abort("a flush was cancelled mid-send")
                        raise
                    finally:
                        self._inflight = 0
                    continue
                try:
                    written = os.write(fd, pending)
                except BlockingIOError:
                    written = 0
                except OSError:
                    self._abort("the client connection broke")
                    break
                del pending[:written]
                if pending:
                    # Cancellation-safe: nothing is lost if we are cancelled while waiting.
                    try:
                        await trio.lowlevel.wait_writable(fd)
                    except trio.ClosedResourceError:
                        self._abort("the connection was closed")

    async def send(self, data: bytes) -> None:
        """:meth:`write_nowait` then :meth:`flush`: send ``data`` and wait until the kernel has it."""
        self.write_nowait(data)
        await self.flush()

    async def wait_closed(self) -> None:
        """Wait until the stream ends (client gone, :meth:`close`, or final chunk sent)."""
        await self._closed_event.wait()

    def close(self) -> None:
        """Abandon the stream now: the connection is closed without the final chunk and the body is
        cancelled. For a client that fell hopelessly behind; it reconnects with ``Last-Event-ID``. To end
        a stream cleanly, return from the body instead."""
        self._abort("the stream was closed by the application")

    # -- used by the server ------------------------------------------------------------------------

    def _queue(self, data: bytes | memoryview) -> None:
        was_empty = not self._pending
        self._pending += data
        if len(self._pending) > self._max_pending:
            LOGGER.info("disconnecting a stream client that left %d bytes unread", len(self._pending))
            self._abort("too many bytes pending")
        elif was_empty and self._wakeup is not None:
            self._wakeup.set()

    def _abort(self, reason: str) -> None:
        if self._closed:
            return
        LOGGER.debug("stream ended: %s", reason)
        self._closed = True
        self._pending.clear()
        self._conn.send_failed()
        self._closed_event.set()
        if self._wakeup is not None:
            self._wakeup.set()
        if self._body_scope is not None:
            self._body_scope.cancel()

    async def _run_flusher(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            await self.flush()

    async def _finish(self) -> None:
        # Flush, then send the final zero-length chunk; afterwards the writer is closed.
        await self.flush()
        if self._closed:
            return
        self._queue(self._conn.send(h11.EndOfMessage()))
        await self.flush()
        if not self._closed:
            self._finished = True
            self._closed = True
            self._closed_event.set()
            if self._wakeup is not None:
                self._wakeup.set()

    def _detach(self) -> None:
        # The connection is about to close: make later calls no-ops without touching the descriptor.
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._closed_event.set()
        self._body_scope = None


class _ReplayStream(trio.abc.Stream):
    """A connection whose first bytes received are ``replay`` (for protocol upgrades)."""

    def __init__(self, stream: trio.abc.Stream, replay: bytes) -> None:
        self._stream = stream
        self._replay = replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            n = len(self._replay) if max_bytes is None else max_bytes
            data, self._replay = self._replay[:n], self._replay[n:]
            await trio.lowlevel.checkpoint()
            return data
        return cast(bytes, await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Connection:
    # One client connection; HttpServer runs one task per instance.
    #
    # h11 parses every request: each request/response cycle gets a fresh h11.Connection, fed with whatever
    # followed the previous request (pipelining). A complete response (Content-Length) is formatted here
    # in one piece, and keep-alive follows h11's rule (RFC 9112 section 9.3: HTTP/1.1 without "Connection:
    # close"); a streaming response is framed by h11 (chunked encoding). Measured with wrk -c32 on the
    # health endpoint, letting h11's state machine also track plain responses (building its Response
    # event, EndOfMessage, start_next_cycle) cost about 18 us of the ~100 us of CPU a request takes.
    __slots__ = (
        "server",
        "stream",
        "fd",
        "peer",
        "conn",
        "method",
        "keep_alive",
        "responded",
        "linger",
        "scope",
        "idle",
        "writer",
        "session_scope",
    )

    def __init__(self, server: HttpServer, stream: trio.abc.HalfCloseableStream, peer: Peer) -> None:
        self.server = server
        self.stream = stream
        # The socket's descriptor, for direct non-blocking reads and writes (-1 for a stream without one,
        # like the memory streams of tests).
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.config.max_head)
        self.method = "GET"  # of the request being answered: a HEAD response carries no body
        self.keep_alive = True  # False once this connection is to close after the current response
        self.responded = False  # a response was (at least partly) sent in this cycle
        self.linger = True  # close politely (shut down writing, drain); False after an aborted stream
        self.scope = trio.CancelScope()  # the connection's timeouts (replaced in run)
        self.idle = False  # waiting for the first byte of a request: shutdown may close us
        self.writer: TrioBodyWriter | None = None  # set while streaming
        self.session_scope: trio.CancelScope | None = None  # set while an upgraded session runs

    def begin_shutdown(self) -> None:
        if self.idle:
            self.scope.cancel()
        if self.session_scope is not None:
            self.session_scope.cancel()
        writer = self.writer
        if writer is not None and writer._body_scope is not None:
            writer._body_scope.cancel()

    async def run(self) -> None:
        # One cancel scope for the whole connection carries the deadline of the phase it is in: waiting
        # for a request (keepalive_timeout; header_timeout for the first one, counted from accept),
        # receiving the rest of a head (header_timeout from its first byte), none while a request is
        # handled. Moving a deadline costs about half as much as entering and leaving a scope per request.
        scope = self.scope = trio.CancelScope(
            deadline=trio.current_time() + self.server.config.header_timeout
        )
        with scope:
            await self._serve()
        if scope.cancelled_caught and not self.idle:
            # Part of a head arrived, but not all of it in time.
            await self._respond_error(_TIMEOUT)
            await self._close_gracefully()

    async def _serve(self) -> None:
        max_head = self.server.config.max_head
        first = True
        buffered = b""
        while True:
            try:
                event = await self._receive_head(first, buffered)
                if event is None:
                    return
                first = False
                await self._handle(event)
            except _RequestTimeout:
                await self._respond_error(_TIMEOUT)
            except h11.RemoteProtocolError as exc:
                LOGGER.debug("malformed request from %s: %s", self.peer, exc)
                await self._respond_error(protocol_error_response(exc))
            except HTTPError as exc:
                await self._respond_error(exc.to_response())
            if not self.keep_alive:
                if self.linger:
                    await self._close_gracefully()
                return
            # The next cycle: whatever the client sent after this request is the start of the next one.
            buffered = self.conn.trailing_data[0]
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
            self.responded = False
            self.method = "GET"  # until the next request's method is known (errors carry a body)

    async def _send(self, data: bytes) -> None:
        # A small response nearly always fits in the socket buffer: write it with one non-blocking os.write
        # and skip send_all's extra trip through the scheduler; only what the kernel did not take goes
        # through send_all.
        fd = self.fd
        if fd >= 0:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"client connection broke: {exc}") from exc
            if sent == len(data):
                return
            data = data[sent:]
        await self.stream.send_all(data)

    async def _receive(self) -> bytes:
        fd = self.fd
        if fd >= 0:
            # Wait, then read: trio's receive_some tries a read first, which after a response is nearly
            # always EAGAIN (the client has not sent its next request yet), a wasted system call.
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    return os.read(fd, MAX_RECV)
                except BlockingIOError:
                    continue
                except OSError:
                    return b""  # reset by the peer: same as EOF for us
        try:
            # Typed bytes | bytearray by trio.abc; h11 buffers either.
            return cast(bytes, await self.stream.receive_some(MAX_RECV))
        except trio.BrokenResourceError:
            return b""

    async def _receive_head(self, first: bool, buffered: bytes) -> h11.Request | None:
        # The next request head, or None when the connection should close quietly (EOF, shutdown while
        # idle). Timeouts cancel self.scope (see run). Raises h11.RemoteProtocolError for a malformed head.
        conn = self.conn
        scope = self.scope
        config = self.server.config
        if buffered:
            conn.receive_data(buffered)
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                # A pipelined request, already here: no I/O happened, so yield once, or a client that
                # pipelines many requests would starve the other connections.
                await trio.lowlevel.checkpoint()
                scope.deadline = math.inf
                return event if type(event) is h11.Request else None
            scope.deadline = trio.current_time() + config.header_timeout  # the next head has begun
        else:
            if not first:
                scope.deadline = trio.current_time() + config.keepalive_timeout
            if self.server._shutting_down:
                return None
            self.idle = True  # begin_shutdown may cancel us now
            data = await self._receive()
            self.idle = False
            conn.receive_data(data)
            event = conn.next_event()
            if event is h11.NEED_DATA and not first:
                # The head comes in pieces: from its first byte, it has header_timeout to arrive.
                scope.deadline = trio.current_time() + config.header_timeout
        while event is h11.NEED_DATA:
            conn.receive_data(await self._receive())
            event = conn.next_event()
        scope.deadline = math.inf
        return event if type(event) is h11.Request else None  # else ConnectionClosed

    async def _handle(self, event: h11.Request) -> None:
        server = self.server
        config = server.config
        request = parse_request(event, self.peer, max_head=config.max_head, max_body=config.max_body)
        self.method = request.method
        headers = request.headers
        self.keep_alive = event.http_version == b"1.1" and not _asks_to_close(headers)
        if server._shutting_down:
            await self._respond(_SHUTTING_DOWN, close=True)
            return
        length = headers.get("content-length")
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        refusal = authorize(request, token=config.token)
        if refusal is not None:
            # Refused before reading any body; a body left unread means the connection must close.
            await self._respond(refusal, close=has_body)
            return
        if has_body:
            request = dataclasses.replace(request, body=await self._receive_body())
        try:
            result = await server.app(request)
        except HTTPError as exc:
            result = exc.to_response()
        except Exception:
            LOGGER.exception("internal error answering %s %s", request.method, request.target)
            result = _INTERNAL_ERROR
        if type(result) is Response:
            await self._respond(result)
        elif isinstance(result, StreamResponse):
            await self._stream(result)
        elif isinstance(result, UpgradeResponse):
            await self._upgrade(event, result)
        else:
            LOGGER.error("the app returned %r for %s %s", result, request.method, request.target)
            await self._respond(_INTERNAL_ERROR)

    async def _upgrade(self, event: h11.Request, response: UpgradeResponse) -> None:
        # Leave HTTP: the session's protocol library re-reads the request head from a stream that replays
        # it (and whatever followed it) before the live connection, and does its own handshake.
        head = b"%s %s HTTP/%s\r\n" % (event.method, event.target, event.http_version)
        head += b"".join(b"%s: %s\r\n" % (name, value) for name, value in event.headers.raw_items())
        replay = head + b"\r\n" + self.conn.trailing_data[0]
        self.keep_alive = False
        self.responded = True
        self.server._count(101)
        self.server._open_streams += 1
        self.session_scope = trio.CancelScope()
        try:
            with self.session_scope:
                await response.session(_ReplayStream(self.stream, replay))
        finally:
            self.session_scope = None
            self.server._open_streams -= 1

    async def _receive_body(self) -> bytes:
        # Read the body through h11 (Content-Length or chunked), at most max_body bytes.
        conn = self.conn
        config = self.server.config
        max_body = config.max_body
        pieces: list[bytes] = []
        size = 0
        with trio.move_on_after(config.body_timeout) as scope:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        go_ahead = h11.InformationalResponse(status_code=100, headers=[])
                        await self._send(conn.send(go_ahead))
                    conn.receive_data(await self._receive())
                elif type(event) is h11.Data:
                    size += len(event.data)
                    if size > max_body:  # chunked; Content-Length was checked before reading
                        raise body_too_large(max_body)
                    pieces.append(event.data)
                elif type(event) is h11.EndOfMessage:
                    break
        if scope.cancelled_caught:
            raise _RequestTimeout
        return b"".join(pieces)

    async def _respond_error(self, response: Response) -> None:
        # The client sent something we cannot answer normally: answer (unless a response has already
        # started, as h11's example server does) and close.
        self.scope.deadline = math.inf
        self.keep_alive = False
        if not self.responded:
            await self._respond(response, close=True)

    async def _respond(self, response: Response, *, close: bool = False) -> None:
        # Send a complete response in one write.
        try:
            head = self._format_head(response)
        except ValueError:
            # A header or status the application built is not valid HTTP: a bug, answered like any other.
            LOGGER.exception("invalid %d response", response.status)
            response = _INTERNAL_ERROR
            head = self._format_head(response)
        if close or not self.keep_alive or self.server._shutting_down:
            self.keep_alive = False
            head += b"Connection: close\r\n\r\n"
        else:
            head += b"\r\n"
        self.responded = True
        if self.method != "HEAD":
            head += response.body
        try:
            await self._send(head)
        except BaseException:
            self.keep_alive = False
            self.linger = False
            raise
        self.server._count(response.status)

    def _format_head(self, response: Response) -> bytes:
        # Status line and header fields of a response with a body of known length, without the final
        # CRLF. Raises ValueError for an invalid status or header field.
        status = response.status
        if not 200 <= status <= 599:
            raise ValueError(f"status {status} cannot be a final response")
        head = b"HTTP/1.1 %d %s\r\nDate: %s\r\nServer: syncsnapd\r\n" % (
            status,
            _REASONS.get(status, b""),
            self.server._date.get(),
        )
        if status != 204 and status != 304:
            content_type = response.content_type
            if content_type is not None:
                head += _content_type_field(content_type)
            head += b"Content-Length: %d\r\n" % len(response.body)
        elif response.body:
            raise ValueError(f"a {status} response cannot have a body")
        for name, value in response.headers:
            head += _header_field(name, value)
        return head

    async def _stream(self, response: StreamResponse) -> None:
        # Send the head, run the body next to a task watching the client, end with the final chunk (unless
        # the client is gone). The connection closes afterwards.
        server = self.server
        conn = self.conn
        self.keep_alive = False
        try:
            fields = [(b"Date", server._date.get()), (b"Server", _SERVER)]
            fields.append((b"Content-Type", response.content_type.encode("latin-1")))
            fields += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
            fields.append((b"Connection", b"close"))
            head = h11.Response(
                status_code=response.status, headers=fields, reason=_REASONS.get(response.status, b"")
            )
        except (h11.LocalProtocolError, ValueError):
            LOGGER.exception("invalid %d stream response", response.status)
            await self._respond(_INTERNAL_ERROR, close=True)
            return
        self.responded = True
        # h11 frames the body: chunked for HTTP/1.1, delimited by closing for HTTP/1.0.
        try:
            data = conn.send(head)
            if self.method == "HEAD":
                data += conn.send(_END_OF_MESSAGE)
            await self._send(data)
        except BaseException:
            conn.send_failed()
            self.linger = False
            raise
        server._count(response.status)
        if self.method == "HEAD":
            return
        chunked = b"\r\ntransfer-encoding: chunked\r\n" in data.lower()  # what h11 chose
        writer = TrioBodyWriter(
            conn, self.stream, chunked=chunked, max_pending=server.config.stream_max_pending
        )
        body_scope = writer._body_scope = trio.CancelScope()
        self.writer = writer
        server._open_streams += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, writer)
                nursery.start_soon(writer._run_flusher)
                if server._shutting_down:
                    body_scope.cancel()
                with body_scope:
                    try:
                        await response.body(writer)
                    except Exception:
                        LOGGER.exception("a streaming body failed")
                        # No final chunk: the client sees a truncated response, not a clean end.
                        writer._abort("the body raised")
                if not writer.closed:
                    # The body returned, or was cancelled by shutdown: end the message properly. At
                    # shutdown the send is shielded but short; otherwise a slow reader gets body_timeout
                    # to take what is pending.
                    if server._shutting_down:
                        finish = trio.CancelScope(
                            deadline=trio.current_time() + FINAL_CHUNK_SECONDS, shield=True
                        )
                    else:
                        finish = trio.move_on_after(server.config.body_timeout)
                    with finish:
                        await writer._finish()
                nursery.cancel_scope.cancel()
        finally:
            server._open_streams -= 1
            self.writer = None
            self.linger = writer._finished
            writer._detach()

    async def _watch_client(self, writer: TrioBodyWriter) -> None:
        # During a stream the client has nothing to say (it was told the connection closes): EOF, a reset,
        # or any byte at all ends the stream.
        try:
            await self.stream.receive_some(MAX_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        writer._abort("the client closed the connection or sent unexpected bytes")

    async def _close_gracefully(self) -> None:
        # Shut down our side, then read and drop what the client still sends until it closes (or
        # LINGER_SECONDS pass), so that closing does not reset the connection under the response.
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await self.stream.send_eof()
                while await self.stream.receive_some(MAX_RECV):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _asks_to_close(headers: Headers) -> bool:
    # "Connection: close" among the request's connection options (h11 and RFC 9112 section 9.6).
    value = headers.get("connection")
    if value is None:
        return False
    for field in headers.get_all("connection"):
        for option in field.split(","):
            if option.strip().lower() == "close":
                return True
    return False


class HttpServer:
    """The HTTP server: serves connections with an app, and keeps counters.

    :func:`serve_http` creates one and hands it out through ``task_status``. Tests may also build one and
    call :meth:`serve_connection` on any half-closeable stream (e.g. ``trio.testing.memory_stream_pair``).
    """

    def __init__(self, app: App, config: HttpConfig) -> None:
        self.app = app
        self.config = config
        self._date = _DateCache()
        self._connections: set[_Connection] = set()
        self._refusing = 0
        self._refused = 0
        self._open_streams = 0
        self._by_status: dict[int, int] = {}
        self._shutting_down = False
        self._shutdown_started = trio.Event()
        self._drained: trio.Event | None = None
        self._accept_scope = trio.CancelScope()

    def statistics(self) -> HttpStatistics:
        """Open connections, open streams, responses sent by status, connections refused."""
        return HttpStatistics(
            open_connections=len(self._connections),
            open_streams=self._open_streams,
            requests_by_status=dict(self._by_status),
            connections_refused=self._refused,
        )

    def begin_shutdown(self) -> None:
        """Stop accepting, close idle connections, end streams; requests in progress may finish.

        Idempotent and synchronous. :func:`serve_http` returns once every connection is closed, or after
        ``HttpConfig.shutdown_grace`` seconds (then the stragglers are cancelled).
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        self._accept_scope.cancel()
        for connection in list(self._connections):
            connection.begin_shutdown()
        self._shutdown_started.set()

    async def serve_connection(self, stream: trio.abc.HalfCloseableStream, peer: Peer) -> None:
        """Serve one connection until it closes; closes ``stream`` at the end. Never raises for a
        misbehaving client (errors are logged)."""
        connection = _Connection(self, stream, peer)
        self._connections.add(connection)
        await self._run_connection(connection)

    # -- internals ---------------------------------------------------------------------------------

    def _count(self, status: int) -> None:
        by_status = self._by_status
        by_status[status] = by_status.get(status, 0) + 1

    async def _run_connection(self, connection: _Connection) -> None:
        try:
            await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-send
        except Exception:
            LOGGER.exception("error on an HTTP connection; closing it")
        finally:
            self._connections.discard(connection)
            await trio.aclose_forcefully(connection.stream)
            if not self._connections and self._drained is not None:
                self._drained.set()

    async def _wait_drained(self) -> None:
        while self._connections or self._refusing:
            self._drained = trio.Event()
            await self._drained.wait()

    async def _serve_listeners(
        self,
        listeners: Sequence[tuple[trio.abc.Listener[trio.SocketStream], str]],
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with self._accept_scope:
            async with trio.open_nursery() as accept_nursery:
                for listener, transport in listeners:
                    accept_nursery.start_soon(self._accept_loop, listener, transport, nursery)
                task_status.started()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.SocketStream], transport: str, nursery: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    LOGGER.error(
                        "accept returned %s (%s); retrying in %.0f ms",
                        errno.errorcode.get(exc.errno or 0, "?"),
                        os.strerror(exc.errno or 0),
                        ACCEPT_BACKOFF_SECONDS * 1000,
                        exc_info=True,
                    )
                    await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                    continue
                if len(self._connections) >= self.config.max_connections:
                    self._refused += 1
                    if self._refusing < MAX_REFUSING:
                        self._refusing += 1
                        nursery.start_soon(self._refuse, stream)
                    else:
                        stream.socket.close()
                    continue
                peer = _unix_peer(stream) if transport == "unix" else _TCP_PEER
                connection = _Connection(self, stream, peer)
                self._connections.add(connection)
                nursery.start_soon(self._run_connection, connection)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        # Answer 503 without parsing anything, then close. The little draining avoids a reset that could
        # discard the answer before the client reads it.
        response = _TOO_MANY
        head = (
            b"HTTP/1.1 503 Service Unavailable\r\nDate: %s\r\nServer: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (self._date.get(), _SERVER, len(response.body))
        )
        try:
            with trio.move_on_after(LINGER_SECONDS):
                await stream.send_all(head + response.body)
                self._count(503)
                await stream.send_eof()
                drained = 0
                while drained < MAX_RECV:
                    data = await stream.receive_some(MAX_RECV)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self._refusing -= 1
            if not self._connections and not self._refusing and self._drained is not None:
                self._drained.set()


def _unix_peer(stream: trio.SocketStream) -> Peer:
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return Peer("unix")  # unknown peer: authorize() refuses it
    return Peer("unix", uid, pid)


async def serve_http(
    app: App,
    listeners: Sequence[tuple[trio.abc.Listener[trio.SocketStream], str]],
    config: HttpConfig,
    *,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 with ``app`` on every listener until cancelled or shut down.

    Args:
        app: ``async (Request) -> Response | StreamResponse``; see
            :func:`~syncsnapd.http.router_app`. :class:`~syncsnapd.http.HTTPError`
            becomes its JSON error; any other exception becomes 500 ``internal_error``.
        listeners: ``(listener, transport)`` pairs, transport ``"unix"`` (peers checked with
            ``SO_PEERCRED``) or ``"tcp"`` (``Host`` and bearer token checked). The listeners are closed
            when serving ends.
        config: limits, timeouts and the TCP token.
        task_status: receives the :class:`HttpServer` once every listener is accepting.

    Returns once :meth:`HttpServer.begin_shutdown` has been called and every connection is closed (or the
    shutdown grace has passed). Cancelling the caller's scope closes everything at once.
    """
    for _, transport in listeners:
        if transport not in ("unix", "tcp"):
            raise ValueError(f"unknown transport {transport!r}; expected 'unix' or 'tcp'")
    server = HttpServer(app, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server._serve_listeners, listeners, nursery)
        task_status.started(server)
        await server._shutdown_started.wait()
        with trio.move_on_after(config.shutdown_grace):
            await server._wait_drained()
        nursery.cancel_scope.cancel()
