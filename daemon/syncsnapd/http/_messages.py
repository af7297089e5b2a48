"""The vocabulary of our HTTP layer: requests, responses, the errors handlers raise, and JSON bodies.

Plain data and two small functions, no I/O (h11's ``_events.py`` plays the same part for h11):

- :class:`Request` (with its :class:`Headers` and :class:`Peer`) is what a handler gets;
  :class:`Response`, :class:`StreamResponse` and :class:`UpgradeResponse` are what it may return, and
  :data:`Handler` / :data:`App` name those shapes.
- :class:`BodyWriter` is what a streaming body writes with (implemented by
  :class:`~syncsnapd.http._streaming.TrioBodyWriter`).
- :func:`json_response`, :func:`error_response` and :class:`HTTPError` give every error the same JSON
  shape, ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # only for the type of UpgradeResponse.session; this module does no I/O
    import trio

__all__ = [
    "App",
    "Auth",
    "BodyWriter",
    "HTTPError",
    "Handler",
    "Headers",
    "Peer",
    "Request",
    "Response",
    "StreamResponse",
    "Transport",
    "UpgradeResponse",
    "error_response",
    "json_response",
]

# The only transports the daemon listens on.
Transport = Literal["unix", "tcp"]
# How a request was authenticated: the peer's uid, the bearer token, the dashboard's session cookie.
Auth = Literal["unix", "token", "session"]


class Headers:
    """Request header fields, in the order received, with case-insensitive lookup.

    Names are stored lower-cased; values are decoded as Latin-1 (HTTP's historical charset, so any byte
    round-trips). Build one from ``(name, value)`` string pairs: ``Headers([("Host", "localhost")])``.
    """

    __slots__ = ("_items", "_first")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple((name.lower(), value) for name, value in items)
        self._first: dict[str, str] | None = None

    @classmethod
    def from_lowercase(cls, items: list[tuple[str, str]]) -> Headers:
        """Headers from pairs whose names are already lower-case (h11's are): skips the second pass.

        For the request parser (:func:`~syncsnapd.http.parse_request`).
        """
        self = cls.__new__(cls)
        self._items = tuple(items)
        self._first = None
        return self

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case), or ``default`` when absent."""
        first = self._first
        if first is None:
            first = {}
            for key, value in self._items:
                first.setdefault(key, value)
            self._first = first
        return first.get(name.lower(), default)

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in the order received."""
        key = name.lower()
        return [value for item_name, value in self._items if item_name == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection.

    ``uid`` and ``pid`` come from ``SO_PEERCRED`` on the Unix socket; they are ``None`` over TCP (the
    kernel cannot tell us who owns a loopback TCP peer cheaply, hence the bearer token).
    """

    transport: Transport
    uid: int | None = None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, fully received.

    Attributes:
        method: e.g. ``"GET"``.
        target: the request target exactly as sent (``/api/v1/events?last_event_id=3``).
        path: the percent-decoded path without the query (``/api/v1/projects/my docs``). Never contains
            an encoded ``/``, a dot segment or a control character (such requests get 400).
        query: the decoded query parameters; when a name repeats, the last value wins.
        headers: the header fields.
        body: the request body (at most the configured limit).
        peer: who sent it.
        auth: how it was authenticated, set by the server once authorization passed: ``"unix"``,
            ``"token"``, ``"session"``, or ``None`` for a public dashboard page asked for without
            credentials (see :func:`~syncsnapd.http.check_access`).
    """

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    peer: Peer
    auth: Auth | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response, sent with ``Content-Length`` in one write.

    ``headers`` are extra header fields; ``Date``, ``Server``, ``Content-Type`` (unless ``None``) and
    ``Content-Length`` are added by the server.
    """

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class BodyWriter(Protocol):
    """What a streaming body gets to write with; implemented by ``_streaming.TrioBodyWriter``.

    ``write_nowait`` never blocks and never raises on a broken connection: it frames ``data`` as one chunk,
    writes what the socket takes at once and keeps the rest pending (in order); it returns True when
    nothing is pending afterwards, False otherwise (also when ``closed``). The server drains pending bytes
    by itself; ``flush`` waits until that is done. ``close`` abandons the stream (no final chunk) and
    cancels the body.

    ``write_if_idle`` is the publisher's direct send: like ``write_nowait``, but only when nothing is
    pending and the stream is open; it returns None (and writes nothing) otherwise, so the caller can keep
    the data for later.
    """

    @property
    def closed(self) -> bool: ...
    @property
    def pending_bytes(self) -> int: ...
    def write_nowait(self, data: bytes) -> bool: ...
    def write_if_idle(self, data: bytes) -> bool | None: ...
    async def flush(self) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def wait_closed(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A response whose body is produced over time (Server-Sent Events).

    The server sends the head (chunked transfer encoding on HTTP/1.1, always ``Connection: close``), then
    awaits ``body(writer)`` with a :class:`BodyWriter`. When ``body`` returns, the server sends the final
    chunk and closes the connection; a connection is never reused after a stream. If the client
    disconnects, ``body`` is cancelled at once.

    With a ``Content-Length`` among ``headers`` (a download), the body is sent as is, not chunked, and
    must write exactly that many bytes (or close the writer). ``on_end``, if given, is called exactly once
    when the response is over, whether or not its body ran (a HEAD request, a client gone before the
    head was sent): for releasing what the handler reserved.
    """

    status: int
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: Callable[[BodyWriter], Awaitable[None]]
    on_end: Callable[[], None] | None = None


@dataclass(frozen=True)
class UpgradeResponse:
    """Hand the connection over to another protocol (WebSocket): the server stops speaking HTTP and awaits
    ``session(stream)``, where ``stream`` replays the request head (and anything the client sent after
    it) before the live connection, so the protocol library performs its own handshake. The connection
    closes when ``session`` returns. Authorization has already happened, as for any request.
    """

    session: Callable[[trio.abc.Stream], Awaitable[None]]


Handler = Callable[[Request, dict[str, str]], Awaitable[Response | StreamResponse | UpgradeResponse]]
"""A route handler: gets the request and the path parameters of its pattern."""

App = Callable[[Request], Awaitable[Response | StreamResponse | UpgradeResponse]]
"""What :func:`~syncsnapd.http.serve_http` serves: one request in, one response out."""


class HTTPError(Exception):
    """Raised by handlers (and by the protocol layer) to answer with a JSON error.

    The server turns it into :func:`error_response` ``(status, code, message, headers)``.
    """

    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def to_response(self) -> Response:
        """The JSON error response for this error."""
        return error_response(self.status, self.code, self.message, self.headers)


def json_response(status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A JSON response: compact separators and a final newline (nice for curl).

    ``ensure_ascii`` stays on: the body is plain ASCII whatever the data holds, including file names with
    lone surrogates (``os.fsdecode`` of non-UTF-8 names), which a UTF-8 encoder would refuse.
    """
    body = json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
    return Response(status, body, "application/json", headers)


def error_response(
    status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """``{"error": {"code": code, "message": message}}`` with the given status."""
    return json_response(status, {"error": {"code": code, "message": message}}, headers)
