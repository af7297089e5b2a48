"""The per-connection Trio adapter: reads requests, writes responses, keeps the connection alive or not.

The protocol decisions live in sans-I/O modules (:mod:`._validation`, :mod:`._authorization`, the app's
routing); a :class:`Connection` does the reading and writing, and owns everything that takes time:

- **Timeouts are cancel scopes at the edge**: one per connection, whose deadline follows the phase the
  connection is in (and one around a request body). A fresh connection has ``header_timeout`` to deliver
  its first request head; an idle keep-alive connection has ``keepalive_timeout`` to start its next
  request, then ``header_timeout`` from that first byte to finish the head; a body has ``body_timeout``.
  A head that started but did not finish gets 408; a connection that sent nothing at all is closed
  silently (nginx does the same: a 408 on a connection the client believes idle would be read as the
  answer to its next request).
- **h11 parses every request**; each request/response cycle gets a fresh ``h11.Connection`` fed with
  whatever followed the previous request, so pipelined requests are answered in order. A complete
  response (``Content-Length``) is formatted by :func:`~._heads.format_head` and written with one
  non-blocking ``os.write`` (``send_all`` only for what the kernel did not take); keep-alive follows h11's
  rule (RFC 9112 section 9.3: HTTP/1.1 without ``Connection: close``). Measured with ``wrk -c32`` on a
  health endpoint, this took the server from ~7,400 to ~10,500 req/s (hypercorn's Trio worker: ~2,300 on
  the same machine): letting h11's state machine also track plain responses (its Response event,
  EndOfMessage, start_next_cycle) cost about 18 us of the ~100 us of CPU a request takes.
- **Errors** follow h11's ``examples/trio-server.py``: input h11 refuses gets its ``error_status_hint``
  (400, 431, 501) and ``Connection: close``; a handler's exception gets 500 ``internal_error`` with no
  exception text (the traceback goes to the ``syncsnapd.http`` log); an error response is sent only if no
  response has started in this cycle; a failed send ends the connection (and calls ``send_failed()`` on
  a stream's h11 connection). One bad connection never takes the server down.
- **A rate bound per connection** (``HttpConfig.request_rate`` and ``request_burst``, a token bucket):
  a request beyond it gets 429 ``rate_limited`` with ``Retry-After``, and the connection reads nothing
  more until Retry-After has passed, so a client asking back to back cannot take the interpreter from the
  engine's threads (see ``DEFAULT_REQUEST_RATE``). The connection stays open.
- **Streams** (:class:`~syncsnapd.http.StreamResponse`, i.e. SSE): the head goes through h11 (chunked on
  HTTP/1.1, always ``Connection: close``), then :func:`~._streaming.serve_stream_body` runs the body; the
  connection is *not* reused after a stream.
- **Upgrades** (:class:`~syncsnapd.http.UpgradeResponse`, i.e. WebSocket): the connection leaves HTTP and
  the session gets a stream that replays the request head.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import cast

import h11
import trio

from ._authorization import check_access
from ._config import LINGER_SECONDS, MAX_RECV, RATE_LIMITED_CODE
from ._context import ServerContext
from ._heads import REASONS, SERVER, format_head
from ._messages import (
    Headers,
    HTTPError,
    Peer,
    Request,
    Response,
    StreamResponse,
    UpgradeResponse,
    error_response,
)
from ._send import send_with_deadline, socket_fd
from ._streaming import TrioBodyWriter, serve_stream_body
from ._validation import body_too_large, parse_request, protocol_error_response

__all__ = ["Connection", "send_eof_and_drain"]

LOGGER = logging.getLogger("syncsnapd.http")

# Answers the connection gives by itself.
_INTERNAL_ERROR = error_response(500, "internal_error", "Internal server error; see the daemon's log.")
_SHUTTING_DOWN = error_response(503, "unavailable", "The daemon is shutting down.")
_TIMEOUT = error_response(408, "request_timeout", "The request was not received in time.")
_END_OF_MESSAGE = h11.EndOfMessage()


class _RequestTimeout(Exception):
    # A request body did not arrive within body_timeout.
    pass


class _ReplayStream(trio.abc.Stream):
    """A connection whose first bytes received are ``replay`` (for protocol upgrades)."""

    def __init__(self, stream: trio.abc.Stream, replay: bytes, send_timeout: float) -> None:
        self._stream = stream
        self._replay = replay
        self._send_timeout = send_timeout

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            n = len(self._replay) if max_bytes is None else max_bytes
            data, self._replay = self._replay[:n], self._replay[n:]
            await trio.lowlevel.checkpoint()
            return data
        return cast(bytes, await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # The session's writes get the send deadline too: a WebSocket client that stops reading is closed.
        await trio.lowlevel.checkpoint()
        # The descriptor is looked up at each send: once the session has closed the stream, its number
        # may already belong to another connection.
        fd = socket_fd(self._stream)
        if fd < 0 and isinstance(self._stream, trio.SocketStream):
            raise trio.ClosedResourceError("the connection was closed")
        await send_with_deadline(self._stream, fd, data, self._send_timeout)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Connection:
    """One client connection; :class:`~syncsnapd.http.HttpServer` runs one task (:meth:`run`) per instance
    and calls :meth:`begin_shutdown` on each at shutdown.
    """

    __slots__ = (
        "context",
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
        "authenticated",
        "tokens",
        "tokens_at",
        "resume_at",
    )

    def __init__(self, context: ServerContext, stream: trio.abc.HalfCloseableStream, peer: Peer) -> None:
        self.context = context
        self.stream = stream
        # The socket's descriptor, for direct non-blocking reads and writes (-1 for a stream without one,
        # like the memory streams of tests).
        self.fd = socket_fd(stream)
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=context.config.max_head)
        self.method = "GET"  # of the request being answered: a HEAD response carries no body
        self.keep_alive = True  # False once this connection is to close after the current response
        self.responded = False  # a response was (at least partly) sent in this cycle
        self.linger = True  # close politely (shut down writing, drain); False after an aborted stream
        self.scope = trio.CancelScope()  # the connection's timeouts (replaced in run)
        self.idle = False  # waiting for the first byte of a request: shutdown may close us
        self.writer: TrioBodyWriter | None = None  # set while streaming
        self.session_scope: trio.CancelScope | None = None  # set while an upgraded session runs
        # Authenticated connections leave the server's smaller budget of unauthenticated ones: on the Unix
        # socket by the peer's uid at accept, on TCP by the first request with a valid token.
        self.authenticated = False
        # The rate bound's token bucket: requests this connection may still make at once, as of tokens_at.
        self.tokens = float(context.config.request_burst)
        self.tokens_at = trio.current_time()
        # After a 429: the connection reads nothing before this time, its Retry-After (0.0: no pause).
        self.resume_at = 0.0

    def begin_shutdown(self) -> None:
        """Close the connection if it is idle, end its stream or session; a request in progress finishes
        (its response carries ``Connection: close``)."""
        if self.idle:
            self.scope.cancel()
        if self.session_scope is not None:
            self.session_scope.cancel()
        if self.writer is not None:
            self.writer.cancel_body()

    async def run(self) -> None:
        """Serve requests until the connection is to close. Raises trio.BrokenResourceError (or
        ClosedResourceError) when the client goes away mid-send; the caller closes the stream."""
        # One cancel scope for the whole connection carries the deadline of the phase it is in: waiting
        # for a request (keepalive_timeout; header_timeout for the first one, counted from accept),
        # receiving the rest of a head (header_timeout from its first byte), none while a request is
        # handled. Moving a deadline costs about half as much as entering and leaving a scope per request.
        scope = self.scope = trio.CancelScope(
            deadline=trio.current_time() + self.context.config.header_timeout
        )
        with scope:
            await self._serve()
        if scope.cancelled_caught and not self.idle:
            # Part of a head arrived, but not all of it in time.
            await self._respond_error(_TIMEOUT)
            await self._close_gracefully()

    async def _serve(self) -> None:
        max_head = self.context.config.max_head
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
        # The rest waits for the client, with the send deadline: one that stopped reading is closed.
        await send_with_deadline(self.stream, fd, data, self.context.config.send_timeout)

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
        config = self.context.config
        if self.resume_at:
            # Rate-limited: nothing is read (the client's requests wait in the socket) until the next one
            # is allowed; shutdown may close the connection meanwhile.
            self.idle = True
            await trio.sleep_until(self.resume_at)
            self.idle = False
            self.resume_at = 0.0
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
            if self.context.shutting_down:
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
        context = self.context
        config = context.config
        request = parse_request(event, self.peer, max_head=config.max_head, max_body=config.max_body)
        self.method = request.method
        headers = request.headers
        self.keep_alive = event.http_version == b"1.1" and not _asks_to_close(headers)
        if context.shutting_down:
            await self._respond(_SHUTTING_DOWN, close=True)
            return
        length = headers.get("content-length")
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        wait = self._take_token()
        if wait:
            # Over the rate bound: refused before reading any body (one left unread closes the
            # connection), and the connection reads nothing more until Retry-After has passed: what the
            # answer asks of the client is what the server holds it to.
            response, retry_after = _rate_limited(config.request_rate, wait)
            self.resume_at = trio.current_time() + retry_after
            await self._respond(response, close=has_body)
            return
        access = check_access(request, token=config.token, sessions=config.sessions)
        if access.refusal is not None:
            # Refused before reading any body; a body left unread means the connection must close.
            await self._respond(access.refusal, close=has_body)
            return
        auth = access.auth
        if auth is not None:
            # A public dashboard page asked for without credentials leaves the connection unauthenticated.
            if not self.authenticated:
                self.authenticated = True
                context.unauthenticated.discard(self)
            r = request
            request = Request(r.method, r.target, r.path, r.query, headers, r.body, r.peer, auth)
        if has_body:
            request = dataclasses.replace(request, body=await self._receive_body())
        try:
            result = await context.app(request)
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

    def _take_token(self) -> float:
        # The token bucket: 0.0 if a request may be served now (and take a token), else the seconds until
        # the next one may be.
        config = self.context.config
        rate = config.request_rate
        if rate == math.inf:
            return 0.0
        now = trio.current_time()
        tokens = min(float(config.request_burst), self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if tokens > 0.999999:  # a client at exactly the rate passes, whatever the clock's rounding
            self.tokens = max(0.0, tokens - 1.0)
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate

    async def _upgrade(self, event: h11.Request, response: UpgradeResponse) -> None:
        # Leave HTTP: the session's protocol library re-reads the request head from a stream that replays
        # it (and whatever followed it) before the live connection, and does its own handshake.
        head = b"%s %s HTTP/%s\r\n" % (event.method, event.target, event.http_version)
        head += b"".join(b"%s: %s\r\n" % (name, value) for name, value in event.headers.raw_items())
        replay = head + b"\r\n" + self.conn.trailing_data[0]
        self.keep_alive = False
        self.responded = True
        self.context.count(101)
        self.context.open_streams += 1
        self.session_scope = trio.CancelScope()
        try:
            with self.session_scope:
                await response.session(_ReplayStream(self.stream, replay, self.context.config.send_timeout))
        finally:
            self.session_scope = None
            self.context.open_streams -= 1

    async def _receive_body(self) -> bytes:
        # Read the body through h11 (Content-Length or chunked), at most max_body bytes.
        conn = self.conn
        config = self.context.config
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
        date = self.context.date.get()
        try:
            head = format_head(response, date)
        except ValueError:
            # A header or status the application built is not valid HTTP: a bug, answered like any other.
            LOGGER.exception("invalid %d response", response.status)
            response = _INTERNAL_ERROR
            head = format_head(response, date)
        if close or not self.keep_alive or self.context.shutting_down:
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
        self.context.count(response.status)

    async def _stream(self, response: StreamResponse) -> None:
        try:
            await self._stream_response(response)
        finally:
            if response.on_end is not None:
                response.on_end()

    async def _stream_response(self, response: StreamResponse) -> None:
        # Send the head through h11 (it chooses the framing), then let serve_stream_body run the body and
        # end it with the final chunk (unless the client is gone). The connection closes afterwards.
        context = self.context
        conn = self.conn
        self.keep_alive = False
        try:
            fields = [(b"Date", context.date.get()), (b"Server", SERVER)]
            fields.append((b"Content-Type", response.content_type.encode("latin-1")))
            fields += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
            fields.append((b"Connection", b"close"))
            head = h11.Response(
                status_code=response.status, headers=fields, reason=REASONS.get(response.status, b"")
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
        context.count(response.status)
        if self.method == "HEAD":
            return
        chunked = b"\r\ntransfer-encoding: chunked\r\n" in data.lower()  # what h11 chose
        writer = TrioBodyWriter(
            conn,
            self.stream,
            chunked=chunked,
            max_pending=context.config.stream_max_pending,
            send_timeout=context.config.send_timeout,
        )
        self.writer = writer
        try:
            await serve_stream_body(writer, response.body, self.stream, context)
        finally:
            self.writer = None
            self.linger = writer.finished

    async def _close_gracefully(self) -> None:
        # Shut down our side, then read and drop what the client still sends until it closes (or
        # LINGER_SECONDS pass), so that closing does not reset the connection under the response.
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await send_eof_and_drain(self.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def send_eof_and_drain(stream: trio.abc.HalfCloseableStream, limit: float = math.inf) -> None:
    """Shut down our sending side, then read and drop what the client sends until it closes, or until
    ``limit`` bytes were read: the lingering close. Put it under a deadline (``LINGER_SECONDS``).

    Raises:
        trio.BrokenResourceError, trio.ClosedResourceError: the connection broke.
    """
    await stream.send_eof()
    drained = 0
    while drained < limit:
        data = await stream.receive_some(MAX_RECV)
        if not data:
            break
        drained += len(data)


_RATE_LIMITED: dict[tuple[float, int], Response] = {}


def _rate_limited(rate: float, wait: float) -> tuple[Response, int]:
    # 429 with Retry-After in whole seconds (at least 1: RFC 9110 has no fractions), built once per value.
    retry_after = max(1, math.ceil(wait))
    response = _RATE_LIMITED.get((rate, retry_after))
    if response is None:
        response = _RATE_LIMITED[(rate, retry_after)] = error_response(
            429, RATE_LIMITED_CODE,
            f"More than {rate:g} requests per second on one connection; retry after {retry_after} s.",
            (("Retry-After", str(retry_after)),),
        )
    return response, retry_after


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
