"""Settings of the HTTP server: :class:`HttpConfig`, what a deployment tunes, and the fixed I/O values
that more than one module of the Trio adapter uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._sessions import SessionStore
from ._validation import DEFAULT_MAX_BODY, DEFAULT_MAX_HEAD

__all__ = ["LINGER_SECONDS", "MAX_RECV", "HttpConfig", "RATE_LIMITED_CODE"]

# How long a write may go without the client taking a single byte before the connection is closed. The
# timer restarts whenever bytes move, so a slow reader is fine and only one that stopped reading is cut
# (nginx's send_timeout has the same meaning, "between two successive write operations", default 60 s).
# Ours is short: our clients are local, and a live local reader takes bytes within milliseconds, while
# each pinned connection holds a slot that the owner may need.
DEFAULT_SEND_TIMEOUT = 5.0

# TCP connections that have not yet sent a request with a valid token (anyone on the machine can open
# them) may hold at most this many slots, and never more than half of TCP's share, so that a local user
# without the token cannot take the connections of those who have it. Real clients authenticate with
# their first request, within milliseconds; 64 leaves room for a browser's handful of parallel
# connections many times over (sshd's MaxStartups defaults to 10 unauthenticated connections).
DEFAULT_MAX_UNAUTHENTICATED = 64

# The share of max_connections only the Unix socket may use: however many TCP connections are open, the
# owner (peer credentials at accept) still gets in. A quarter: the Unix socket serves the CLI, the
# notifier and a few followers, TCP mostly browsers and scripts.
DEFAULT_UNIX_RESERVED_SHARE = 0.25

# The request rate bound of one connection: a token bucket of DEFAULT_REQUEST_BURST requests refilled at
# DEFAULT_REQUEST_RATE per second. A request beyond it gets 429 `rate_limited` with `Retry-After: 1`, and
# the connection reads nothing more for that second: a client that ignores Retry-After and asks back to
# back gets a burst, then waits, about DEFAULT_REQUEST_BURST requests a second in all. Why: the serving
# loop runs in the same interpreter as the engine's worker threads and holds the GIL for each request
# (~100-150 us of CPU); one client polling back to back (3,700-5,000 req/s) held the GIL more than half of
# the time (py-spy --gil) and made an initial snapshot 3x slower (docs/benchmarks.md, "Fairness").
# Answering faster cannot help: a back-to-back client only asks faster. Every real client stays far below
# the bound: the CLI and the dashboard poll about once a second and load a page with a few dozen requests
# over several connections, and `wrk -c32` against the JSON endpoint runs each connection at ~300 req/s,
# under the sustained rate, so its bucket never empties.
DEFAULT_REQUEST_RATE = 500.0
DEFAULT_REQUEST_BURST = 100
RATE_LIMITED_CODE = "rate_limited"

# Bytes asked of the kernel per read; h11's example and hypercorn use the same.
MAX_RECV = 2**16

# After a response with "Connection: close" we shut down our sending side and read (and drop) what the
# client still sends for up to this many seconds before closing: closing a socket with unread data makes
# the kernel send a reset, which can destroy the response before the client reads it (h11's trio example
# does the same; nginx calls it lingering_close, default 5 s, lingering_time 30 s).
LINGER_SECONDS = 1.0


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
        send_timeout: a write during which the client takes no byte for this long closes the connection
            (every write: responses, streams, WebSocket sessions; the timer restarts when bytes move).
        max_unauthenticated: connections not yet authenticated (TCP: no request with a valid token yet)
            beyond this, or beyond half of TCP's share, get 503.
        unix_reserved_share: this share of ``max_connections`` (at least one) only the Unix socket may
            use; TCP connections beyond the rest get 503.
        request_rate: requests per second one connection may sustain (``math.inf``: no bound); beyond it
            and ``request_burst``, 429 ``rate_limited`` with ``Retry-After``, and the connection is paused
            until then.
        request_burst: requests one connection may make at once before the rate applies.
        sessions: the dashboard's logins; with them, TCP requests may also authenticate with a session
            cookie, and the dashboard's pages are public (see :func:`~syncsnapd.http.check_access`).
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
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_unauthenticated: int = DEFAULT_MAX_UNAUTHENTICATED
    unix_reserved_share: float = DEFAULT_UNIX_RESERVED_SHARE
    request_rate: float = DEFAULT_REQUEST_RATE
    request_burst: int = DEFAULT_REQUEST_BURST
    sessions: SessionStore | None = None

    @property
    def max_tcp(self) -> int:
        """Open TCP connections at most: ``max_connections`` less the Unix socket's reserved share."""
        reserved = max(1, int(self.max_connections * self.unix_reserved_share))
        return max(0, self.max_connections - reserved)

    @property
    def max_unauthenticated_tcp(self) -> int:
        """Open connections not yet authenticated at most: ``max_unauthenticated``, and at most half of
        :attr:`max_tcp` (at least one)."""
        return max(1, min(self.max_unauthenticated, self.max_tcp // 2))
