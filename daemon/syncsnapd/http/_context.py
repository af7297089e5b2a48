"""What the connections of one server share (hypercorn's ``WorkerContext`` plays the same part).

:class:`~syncsnapd.http.HttpServer` owns one :class:`ServerContext` and hands it to every connection,
so that a connection depends on what it uses (the app, the settings, the Date header, the counters and
whether shutdown has begun) rather than on the server that accepted it.
"""

from __future__ import annotations

from ._config import HttpConfig
from ._heads import DateCache
from ._messages import App

__all__ = ["ServerContext"]


class ServerContext:
    """The app, the settings and the mutable state that a server's connections share.

    Attributes:
        app: what answers requests.
        config: the server's settings.
        date: the ``Date`` header's value, formatted at most once a second.
        by_status: responses sent since start, by status code.
        open_streams: streaming responses (and upgraded sessions) in progress.
        shutting_down: set once by :meth:`HttpServer.begin_shutdown`; connections read it to close.
        unauthenticated: open connections not yet authenticated (a connection removes itself when its
            first request passes authorization; the server counts them against their own budget).
    """

    __slots__ = ("app", "config", "date", "by_status", "open_streams", "shutting_down", "unauthenticated")

    def __init__(self, app: App, config: HttpConfig) -> None:
        self.app = app
        self.config = config
        self.date = DateCache()
        self.by_status: dict[int, int] = {}
        self.open_streams = 0
        self.shutting_down = False
        self.unauthenticated: set[object] = set()

    def count(self, status: int) -> None:
        """Count one response sent with ``status``."""
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
