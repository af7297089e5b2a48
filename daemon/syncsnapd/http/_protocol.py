"""Sans-I/O HTTP for syncsnapd: requests, responses, routing, authorization and SSE framing.

Nothing here touches a socket or an event loop. h11 parses the bytes (it is sans-I/O too); this module
adds what h11 leaves to the server:

- :func:`parse_request` turns an ``h11.Request`` into a :class:`Request` and refuses what h11 lets
  through but a careful server should not (both ``Content-Length`` and ``Transfer-Encoding``, two
  ``Host`` headers, a head over the limit, a body over the limit, targets that are not clean paths).
- :class:`Router` maps ``(method, path)`` to a handler, with 404 and 405 (+ ``Allow``).
- :func:`authorize` decides whether a peer may talk to us at all (Unix peer uid; TCP ``Host`` and bearer
  token).
- :func:`json_response`, :func:`error_response` and :class:`HTTPError` give every error the same JSON
  shape, ``{"error": {"code": ..., "message": ...}}``.
- :func:`sse_event`, :func:`sse_comment` and :func:`sse_retry` frame Server-Sent Events.

The Trio adapter that drives all this is :mod:`syncsnapd._http_server`.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote_to_bytes

import h11

if TYPE_CHECKING:  # only for the type of UpgradeResponse.session; this module does no I/O
    import trio

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEAD",
    "App",
    "BodyWriter",
    "HTTPError",
    "Handler",
    "Headers",
    "Peer",
    "Request",
    "Response",
    "Router",
    "StreamResponse",
    "UpgradeResponse",
    "authorize",
    "error_response",
    "json_response",
    "parse_request",
    "query_int",
    "router_app",
    "sse_comment",
    "sse_event",
    "sse_retry",
]

# Limits. Our requests are tiny (a browser's head is 1-2 KiB; our only bodies are optional and ignored), so
# both limits sit far below general-purpose servers: nginx reads heads into 1 KiB buffers and allows up to
# 4 x 8 KiB (large_client_header_buffers), Apache allows 8 KiB per line and 100 lines, h11 buffers up to
# 16 KiB while a head is incomplete. 16 KiB for the whole head keeps h11's figure and turns it into a hard
# limit. Bodies: nginx's client_max_body_size default is 1 MiB; 64 KiB is plenty for JSON commands.
DEFAULT_MAX_HEAD = 16 * 1024
DEFAULT_MAX_BODY = 64 * 1024

# The only transports the daemon listens on.
Transport = Literal["unix", "tcp"]


# ----------------------------------------------------------------------------------------------------
# Requests and responses
# ----------------------------------------------------------------------------------------------------


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
    def _from_lowercase(cls, items: list[tuple[str, str]]) -> Headers:
        # The parser already lower-cases names (h11 does); skip the second pass.
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
    """

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    peer: Peer


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
    """What a streaming body gets to write with; implemented by ``_http_server.TrioBodyWriter``.

    ``write_nowait`` never blocks and never raises on a broken connection: it frames ``data`` as one chunk,
    writes what the socket takes at once and keeps the rest pending (in order); it returns True when
    nothing is pending afterwards, False otherwise (also when ``closed``). The server drains pending bytes
    by itself; ``flush`` waits until that is done. ``close`` abandons the stream (no final chunk) and
    cancels the body.
    """

    @property
    def closed(self) -> bool: ...
    @property
    def pending_bytes(self) -> int: ...
    def write_nowait(self, data: bytes) -> bool: ...
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
    """

    status: int
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: Callable[[BodyWriter], Awaitable[None]]


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
"""What :func:`syncsnapd._http_server.serve_http` serves: one request in, one response out."""


class HTTPError(Exception):
    """Raised by handlers (and by this module) to answer with a JSON error.

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


# Error codes for statuses the protocol layer produces itself (docs/api.md, "Errors").
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


_PROTOCOL_ERROR_MESSAGES = {
    400: "Malformed HTTP request.",
    431: "The request head is too large.",
    501: "Unsupported transfer coding: only chunked is supported.",
}


def protocol_error_response(exc: h11.RemoteProtocolError) -> Response:
    """The response for input h11 refused: its ``error_status_hint`` (400, 431, 501).

    The message is generic: h11's own messages quote the offending bytes, which belong in a debug log,
    not in an answer.
    """
    status = exc.error_status_hint
    message = _PROTOCOL_ERROR_MESSAGES.get(status, "Malformed HTTP request.")
    return error_response(status, STATUS_CODES.get(status, "bad_request"), message)


# ----------------------------------------------------------------------------------------------------
# Request validation
# ----------------------------------------------------------------------------------------------------

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH = re.compile(r"%2[Ff]")
# Control characters (C0 and DEL) in a decoded path: they never name a project and only confuse logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ABSOLUTE = re.compile(r"(?i)http://([^/?#]+)(.*)\Z")


def _bad_request(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


def _decode_path(raw: str) -> str:
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise _bad_request("Malformed percent-escape in the path.")
        # An encoded slash would let one path segment pose as two (or hide a '/' inside a project id);
        # Apache refuses it by default (AllowEncodedSlashes Off), and so do we.
        if _ENCODED_SLASH.search(raw):
            raise _bad_request("Encoded '/' (%2F) is not allowed in the path.")
        try:
            path = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_request("The path is not valid UTF-8 once percent-decoded.") from None
        if _CONTROL.search(path):
            raise _bad_request("Control characters are not allowed in the path.")
    else:
        path = raw
    # Dot segments mean nothing to an API and would make two spellings of one resource.
    if "/." in path:
        for segment in path.split("/"):
            if segment == "." or segment == "..":
                raise _bad_request("Dot segments ('.', '..') are not allowed in the path.")
    return path


def _parse_query(raw: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=100))
    except (UnicodeDecodeError, ValueError):
        raise _bad_request("Malformed query string.") from None


def parse_request(
    event: h11.Request,
    peer: Peer,
    *,
    max_head: int = DEFAULT_MAX_HEAD,
    max_body: int = DEFAULT_MAX_BODY,
) -> Request:
    """Validate a request head parsed by h11 and build a :class:`Request` with an empty body.

    h11 has already refused malformed request lines and header fields, a missing (HTTP/1.1) or repeated
    ``Host``, conflicting ``Content-Length`` values and transfer codings other than ``chunked``. This
    adds:

    - both ``Content-Length`` and ``Transfer-Encoding``: 400. RFC 9112 section 6.1 allows a server to
      accept it (Transfer-Encoding wins), but the pair is the classic request-smuggling vector; nginx and
      Node refuse it too.
    - a head (request line + fields) over ``max_head`` bytes: 431. h11 enforces its limit only while a
      head is incomplete; a 20 KiB head that arrives in one read would pass it.
    - ``Content-Length`` over ``max_body``: 413, before reading any of the body.
    - a target that is not origin-form (``/path?query``) or absolute-form (``http://host/path``, whose
      authority must then equal ``Host``), a malformed or encoded-slash percent-escape, a path that is not
      UTF-8, has control characters or dot segments, a malformed query: 400. (h11 already refuses
      non-ASCII bytes and spaces in the target.)

    Raises:
        HTTPError: the request is refused; the server answers and closes the connection.
    """
    head_size = len(event.method) + len(event.target) + 12  # "M T HTTP/1.1\r\n"
    items: list[tuple[str, str]] = []
    content_length: bytes | None = None
    chunked = False
    for name, value in event.headers:
        head_size += len(name) + len(value) + 4  # ": " and "\r\n"
        if name == b"content-length":
            content_length = value
        elif name == b"transfer-encoding":
            chunked = True
        # h11 has validated names as tokens (ASCII) and values as visible bytes or obs-text.
        items.append((name.decode("ascii"), value.decode("latin-1")))
    if head_size > max_head:
        raise HTTPError(431, "headers_too_large", f"The request head exceeds {max_head} bytes.")
    if chunked and content_length is not None:
        raise _bad_request("Both Content-Length and Transfer-Encoding are present.")
    if content_length is not None and int(content_length) > max_body:
        raise HTTPError(413, "payload_too_large", f"The request body exceeds {max_body} bytes.")

    headers = Headers._from_lowercase(items)
    target = event.target.decode("ascii")
    if target[0] != "/":
        match = _ABSOLUTE.match(target)
        if match is None:
            raise _bad_request("The request target must be a path ('/...') or an http:// URL.")
        authority, rest = match.groups()
        host = headers.get("host")
        if host is None or host.lower() != authority.lower():
            raise _bad_request("The authority of an absolute-form target must match the Host header.")
        rest = rest or "/"
        if rest[0] != "/":  # "http://host?x"
            rest = "/" + rest
    else:
        rest = target
    raw_path, _, raw_query = rest.partition("?")
    if "#" in rest:
        raise _bad_request("A request target cannot contain a fragment ('#').")
    path = _decode_path(raw_path)
    query = _parse_query(raw_query) if raw_query else {}
    return Request(event.method.decode("ascii"), target, path, query, headers, b"", peer)


# ----------------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------------

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")


@dataclass
class _Route:
    # segments: literal strings, or None for a parameter; names: the parameter names in order.
    segments: tuple[str | None, ...]
    names: tuple[str, ...]
    methods: dict[str, Handler]

    def match(self, parts: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        names = iter(self.names)
        for literal, part in zip(self.segments, parts, strict=True):
            if literal is None:
                if not part:
                    return None
                params[next(names)] = part
            elif literal != part:
                return None
        return params


class Router:
    """Maps ``(method, path)`` to a handler.

    Patterns are paths whose segments are literals or ``{name}`` parameters::

        router.add("GET", "/api/v1/projects/{id}/progress", handler)

    A parameter matches one non-empty path segment. :meth:`resolve` works on :attr:`Request.path`, which
    is already percent-decoded and can hold no encoded ``/`` (see :func:`parse_request`), so a parameter
    value never contains ``/``. Literal routes win over parameter routes; otherwise the first pattern
    added wins. ``HEAD`` is served only where it is registered.
    """

    def __init__(self) -> None:
        self._static: dict[str, dict[str, Handler]] = {}
        self._dynamic: dict[int, list[_Route]] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` (upper case) on ``pattern``.

        Raises:
            ValueError: a malformed pattern, or the same method and pattern added twice.
        """
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        method = method.upper()
        parts = pattern.split("/")
        segments: list[str | None] = []
        names: list[str] = []
        for part in parts:
            param = _PARAM.match(part)
            if param is not None:
                if param.group(1) in names:
                    raise ValueError(f"duplicate parameter {param.group(1)!r} in {pattern!r}")
                segments.append(None)
                names.append(param.group(1))
            elif "{" in part or "}" in part:
                raise ValueError(f"malformed parameter in route pattern {pattern!r}")
            else:
                segments.append(part)
        if not names:
            methods = self._static.setdefault(pattern, {})
        else:
            routes = self._dynamic.setdefault(len(segments), [])
            for route in routes:
                if route.segments == tuple(segments) and route.names == tuple(names):
                    methods = route.methods
                    break
            else:
                route = _Route(tuple(segments), tuple(names), {})
                routes.append(route)
                methods = route.methods
        if method in methods:
            raise ValueError(f"{method} {pattern} is already routed")
        methods[method] = handler

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """Find the handler for ``method`` on the decoded ``path``, with its path parameters.

        Raises:
            HTTPError: 404 ``not_found`` when no pattern matches the path; 405 ``method_not_allowed`` with
                an ``Allow`` header (sorted) when some do, but none for this method.
        """
        allowed: set[str] = set()
        methods = self._static.get(path)
        if methods is not None:
            handler = methods.get(method)
            if handler is not None:
                return handler, {}
            allowed.update(methods)
        routes = self._dynamic.get(path.count("/") + 1)
        if routes:
            parts = path.split("/")
            for route in routes:
                params = route.match(parts)
                if params is None:
                    continue
                handler = route.methods.get(method)
                if handler is not None:
                    return handler, params
                allowed.update(route.methods)
        if not allowed:
            raise HTTPError(404, "not_found", f"No such endpoint: {path}")
        allow = ", ".join(sorted(allowed))
        raise HTTPError(
            405, "method_not_allowed", f"{method} is not allowed here; use {allow}.", (("Allow", allow),)
        )


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter within ``lo``..``hi``; HTTPError 400 naming it otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, "bad_request", f"{name} must be a whole number.") from None
    if not lo <= value <= hi:
        raise HTTPError(400, "bad_request", f"{name} must be from {lo} to {hi}.")
    return value


def router_app(router: Router) -> App:
    """An app for :func:`~syncsnapd._http_server.serve_http` that dispatches through ``router``.

    :class:`HTTPError` from the router (404, 405) or from a handler becomes the JSON error response.
    """
    resolve = router.resolve

    async def app(request: Request) -> Response | StreamResponse | UpgradeResponse:
        handler, params = resolve(request.method, request.path)
        return await handler(request, params)

    return app


# ----------------------------------------------------------------------------------------------------
# Authorization
# ----------------------------------------------------------------------------------------------------

# Host names a browser uses for a loopback address. Checking Host defeats DNS rebinding: a page from
# evil.example whose name was re-pointed at 127.0.0.1 still sends "Host: evil.example" (the defence the
# Jupyter, Transmission and Syncthing GUIs use).
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_PORT = re.compile(r"[0-9]{1,5}\Z")


def _is_local_host(host: str) -> bool:
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, sep, port = host.partition(":")
        rest = sep + port
    if rest and (rest[0] != ":" or not _PORT.match(rest[1:])):
        return False
    return name in _LOCAL_HOSTS


def authorize(request: Request, *, token: str | None) -> Response | None:
    """Decide whether ``request``'s peer may be served; ``None`` means yes, else the refusal to send.

    - Unix socket: the peer's uid (``SO_PEERCRED``) must be ours or root's, else 403 ``forbidden``. The
      socket's mode (0600) already keeps others out; this holds even if the mode is loosened.
    - TCP: ``Host`` must be ``localhost``, ``127.0.0.1`` or ``[::1]``, with or without a port, else 403
      ``forbidden_host``; then ``Authorization: Bearer <token>`` must match, else 401 ``unauthorized``
      with ``WWW-Authenticate: Bearer``. With ``token=None`` every TCP request is refused (fail closed).

    No CORS header is ever produced: a browser page from another origin must not read our answers.
    """
    peer = request.peer
    if peer.transport == "unix":
        if peer.uid is not None and (peer.uid == 0 or peer.uid == os.getuid()):
            return None
        return error_response(403, "forbidden", "This socket serves only its owner and root.")
    host = request.headers.get("host")
    if host is None or not _is_local_host(host):
        return error_response(403, "forbidden_host", "The Host header must be localhost, 127.0.0.1 or [::1].")
    credentials = request.headers.get("authorization") or ""
    scheme, _, supplied = credentials.partition(" ")
    if (
        token is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(supplied.strip().encode("latin-1"), token.encode("latin-1"))
    ):
        return error_response(
            401,
            "unauthorized",
            "A valid 'Authorization: Bearer <token>' header is required (see the token file).",
            (("WWW-Authenticate", "Bearer"),),
        )
    return None


# ----------------------------------------------------------------------------------------------------
# Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html)
# ----------------------------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[str]:
    # The SSE parser ends a line at CR, LF or CRLF, and nothing else (unlike str.splitlines, which also
    # splits on \x0b, \x1c, \u2028, ... and would corrupt such data).
    if "\n" in text or "\r" in text:
        return _LINE_BREAK.split(text)
    return [text]


def sse_event(data: str, *, id: int | None = None, event: str | None = None) -> bytes:
    """One SSE event: optional ``id:`` and ``event:`` fields, one ``data:`` line per line of ``data``.

    Ends with the blank line that dispatches the event, so each call's bytes can be written alone.

    Raises:
        ValueError: ``event`` contains a line break (it would inject fields).
    """
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {int(id)}\n")
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot contain a line break")
        parts.append(f"event: {event}\n")
    for line in _lines(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def sse_comment(text: str) -> bytes:
    """An SSE comment (``: text``), e.g. a keep-alive; clients ignore it. Multi-line text is allowed."""
    return ("".join(f": {line}\n" for line in _lines(text)) + "\n").encode("utf-8")


def sse_retry(ms: int) -> bytes:
    """The ``retry:`` field: how many milliseconds a client waits before reconnecting."""
    if ms < 0:
        raise ValueError("retry must be >= 0 ms")
    return f"retry: {int(ms)}\n\n".encode("ascii")
