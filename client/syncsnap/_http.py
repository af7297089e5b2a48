"""HTTP/1.1 to the daemon: h11 over one Trio stream, error mapping, and a sans-I/O SSE parser.

:class:`SseParser` and :func:`error_for_response` know nothing of sockets; :class:`HttpConnection` is the
small adapter that moves bytes between h11 and a Unix or TCP socket, and turns socket trouble into the
client's exceptions (:class:`DaemonNotRunning` when nothing answers, :class:`ConnectionLost` when a
connection breaks).
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
import trio

from ._discovery import Endpoint
from ._errors import (
    ConnectionLost,
    DaemonError,
    DaemonNotRunning,
    NotFound,
    ProtocolError,
    SyncsnapError,
    Unauthorized,
)

USER_AGENT = "syncsnap-client/0.1"
# Bytes asked of the socket per read: an SSE event is a few hundred bytes, a project list a few KiB.
READ_BYTES = 64 * 1024
# A response body we buffer (JSON answers); the largest real one, a long snapshot list, is far below.
MAX_BODY_BYTES = 32 * 1024 * 1024
# One SSE line; a progress event is well under 2 KiB, so anything near this is not our daemon.
MAX_SSE_LINE = 1024 * 1024


# ----------------------------------------------------------------------------------------------------
# SSE (sans-I/O)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    """A dispatched Server-Sent Event: its type (``message`` when none was given), data and id."""

    event: str
    data: str
    id: str | None


@dataclass(frozen=True)
class SseComment:
    """A comment line (``: keep-alive``); text without the colon and one leading space."""

    text: str


_LINE_END = re.compile(rb"\r\n|\n|\r")


class SseParser:
    """The WHATWG event-stream parser, fed bytes, returning events and comments.

    ``retry`` holds the last ``retry:`` value (milliseconds) seen. Lines may end with CRLF, LF or CR, and
    may be split anywhere across chunks.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._started = False
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent | SseComment]:
        self._buf += chunk
        out: list[SseEvent | SseComment] = []
        pos = 0
        while True:
            m = _LINE_END.search(self._buf, pos)
            # A CR at the very end may be the first half of a CRLF: wait for the next byte.
            if m is None or (m.group() == b"\r" and m.end() == len(self._buf)):
                break
            line = self._buf[pos:m.start()]
            pos = m.end()
            item = self._line(line)
            if item is not None:
                out.append(item)
        self._buf = self._buf[pos:]
        if len(self._buf) > MAX_SSE_LINE:
            raise ProtocolError("The daemon sent an event-stream line over 1 MiB; is this syncsnapd?")
        return out

    def _line(self, raw: bytes) -> SseEvent | SseComment | None:
        if not self._started:
            self._started = True
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        line = raw.decode("utf-8", errors="replace")
        if line == "":
            if not self._data:
                self._event = ""
                return None
            ev = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._data, self._event = [], ""
            return ev
        if line.startswith(":"):
            return SseComment(line[1:].removeprefix(" "))
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


# ----------------------------------------------------------------------------------------------------
# Responses and errors
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ProtocolError(f"The daemon answered {self.status} with a body that is not JSON ({exc}); "
                                "is it syncsnapd?") from None


def _daemon_error(status: int, body: bytes) -> tuple[str, str]:
    try:
        err = json.loads(body)["error"]
        return str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        return "", body.decode("utf-8", "replace").strip()[:200]


# What to do about the daemon's refusals of operations (docs/api.md, "Operations"), by error code.
HINTS = {
    "snapshot_unknown": "`syncsnap snapshots PROJECT` lists a project's snapshots.",
    "target_not_empty": "`--overwrite` restores over what is there.",
    "busy": "one check or prune runs at a time; try again when it has ended.",
    "store_error": "`syncsnap check` says what is damaged.",
}


def _sentence(text: str) -> str:
    """The daemon's message, ending with a full stop."""
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def error_for_response(endpoint: Endpoint, method: str, target: str, status: int, body: bytes) -> SyncsnapError:
    """The exception for an error answer (status >= 400), with a message that says what to do."""
    code, message = _daemon_error(status, body)
    where = f"syncsnapd at {endpoint.describe()}"
    if status == 401:
        if endpoint.token is None:
            problem = f"no token was found in {endpoint.token_source}"
        else:
            problem = f"the token in {endpoint.token_source} is not the daemon's"
        return Unauthorized(f"{where} refused the request ({code or 'unauthorized'}): {problem}. Point "
                            "SYNCSNAP_TOKEN_FILE at the daemon's token file (its `token_file` setting), or use "
                            "the Unix socket.", status=status, code=code)
    if status == 403:
        if code == "forbidden_host":
            hint = "use 127.0.0.1, [::1] or localhost as the host in SYNCSNAP_URL"
        else:
            hint = "run the client as the user who runs the daemon"
        return Unauthorized(f"{where} refused the request: {message or 'forbidden'} ({hint}).",
                            status=status, code=code)
    hint = HINTS.get(code, "")
    if status == 404:
        if message.startswith("No project named"):
            hint = "`syncsnap projects` lists the configured projects."
        elif message.startswith("No run "):
            hint = "`syncsnap runs PROJECT` lists a project's runs."
        text = _sentence(message) + (f" ({hint})" if hint else "") if message else \
            f"{where} has no {target} (an older version?)."
        return NotFound(text, status=status, code=code)
    if status in (400, 409, 422, 500) and message and code not in ("bad_request", "internal_error", ""):
        # The daemon refused what was asked (a target that is not empty, a check already running, ...):
        # its own sentence says why.
        return DaemonError(f"syncsnapd refused the request: {_sentence(message)}" + (f" ({hint})" if hint else ""),
                           status=status, code=code)
    if status == 503:
        return DaemonError(f"{where} is unavailable right now: {message or 'service unavailable'} "
                           "(too many connections, or it is shutting down); try again in a moment.",
                           status=status, code=code)
    return DaemonError(f"{where} answered {method} {target} with {status} {code}: {message}".rstrip(": ")
                       + ("" if status < 500 else "; see the daemon's log."), status=status, code=code)


# ----------------------------------------------------------------------------------------------------
# The connection (I/O)
# ----------------------------------------------------------------------------------------------------


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
