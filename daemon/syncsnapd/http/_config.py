"""Settings of the HTTP server: :class:`HttpConfig`, what a deployment tunes, and the fixed I/O values
that more than one module of the Trio adapter uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._validation import DEFAULT_MAX_BODY, DEFAULT_MAX_HEAD

__all__ = ["LINGER_SECONDS", "MAX_RECV", "HttpConfig"]

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
