"""A follower's connections: the health check, its two kinds of event stream, and the polling GETs.

Each stream reads what its socket has and hands back protocol *items* (``syncsnap.protocol``:
progress, gap, too slow, reply); a follower drives them with its schedule. wsproto is imported by
WebSocket followers only (about 12 ms). Nothing here has a timeout: the follower's cancel scopes are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._endpoint import Endpoint
from .._errors import ConnectionLost, ProtocolError
from ..models import Health
from ..protocol import (
    API,
    CLOSE_POLICY,
    Item,
    Reply,
    SseParser,
    Transport,
    error_for_response,
    sse_items,
    subscribe_command,
    ws_end_reason,
    ws_error,
    ws_items,
)
from ._http import HttpConnection

if TYPE_CHECKING:
    from ._ws import WsConnection


class SseStream:
    """An open ``text/event-stream`` answer."""

    pings = False

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self._parser = SseParser()

    @property
    def dropped_as_slow(self) -> bool:
        return False  # the daemon says so with a comment first (an item)

    async def receive(self) -> list[Item] | None:
        """What the next read brought (maybe nothing whole yet); None when the stream ended."""
        data = await self._conn.receive_body()
        if data is None:
            return None
        return sse_items(self._parser.feed(data))

    async def ping(self) -> None:  # pragma: no cover - SSE streams are kept alive by the daemon
        pass

    def end_reason(self) -> str:
        return "the daemon ended the stream"

    async def aclose(self) -> None:
        await self._conn.aclose()


class WsStream:
    """A subscribed WebSocket."""

    pings = True

    def __init__(self, ws: WsConnection) -> None:
        self.ws = ws
        self.backlog: list[Item] = []

    @property
    def dropped_as_slow(self) -> bool:
        return self.ws.close_code == CLOSE_POLICY

    async def receive(self) -> list[Item] | None:
        """What the next read brought (maybe nothing whole yet); None when the WebSocket closed."""
        if self.backlog:
            items, self.backlog = self.backlog, []
            return items
        if self.ws.closed:
            return None
        return ws_items(await self.ws.receive())

    async def send(self, command: dict[str, Any]) -> int:
        """Send one command; returns its id (the daemon's reply carries it)."""
        return await self.ws.send(command)

    async def ping(self) -> None:
        await self.ws.ping()

    def end_reason(self) -> str:
        return ws_end_reason(self.ws.close_code)

    async def aclose(self) -> None:
        await self.ws.aclose()


Stream = SseStream | WsStream


async def ask_health(conn: HttpConnection) -> Health:
    """``GET /health`` on a new connection (it tells whether the daemon restarted)."""
    resp = await conn.request("GET", f"{API}/health")
    if resp.status != 200:
        raise error_for_response(conn.endpoint, "GET", f"{API}/health", resp.status, resp.body)
    return Health.from_json(resp.json())


async def open_stream(conn: HttpConnection, transport: Transport, *, target: str, project: str | None,
                      last_event_id: int | None) -> Stream:
    """Turn a checked connection into an event stream (SSE ``target``, or the WebSocket subscribed to
    ``project``), resuming after ``last_event_id``. The connection is closed on failure (cancellation
    included: the caller's cancel scope is the timeout)."""
    try:
        if transport == "ws":
            return await _open_ws(conn, project, last_event_id)
        return await _open_sse(conn, target, last_event_id)
    except BaseException:
        await conn.aclose()
        raise


async def _open_sse(conn: HttpConnection, target: str, last_event_id: int | None) -> SseStream:
    headers = []
    if last_event_id is not None:
        headers.append(("Last-Event-ID", str(last_event_id)))
    headers.append(("Accept", "text/event-stream"))
    resp = await conn.start_stream(target, headers)
    if resp.status != 200:
        raise error_for_response(conn.endpoint, "GET", target, resp.status, resp.body)
    ctype = (resp.header(b"content-type") or b"").decode("latin-1")
    if not ctype.startswith("text/event-stream"):
        raise ProtocolError(f"The daemon answered {target} with {ctype or 'no content type'} "
                            "instead of an event stream; is it syncsnapd?")
    return SseStream(conn)


async def _open_ws(conn: HttpConnection, project: str | None, last_event_id: int | None) -> WsStream:
    from ._ws import WsConnection  # wsproto: imported by WebSocket followers only (about 12 ms)

    endpoint = conn.endpoint
    ws = await WsConnection.handshake(conn.detach(), endpoint)
    stream = WsStream(ws)
    try:
        rid = await ws.send(subscribe_command(project, last_event_id))
        while True:
            items = await stream.receive()
            if items is None:
                raise ConnectionLost(f"syncsnapd at {endpoint.describe()} closed the WebSocket before "
                                     "answering the subscription.")
            for i, item in enumerate(items):
                if isinstance(item, Reply) and item.id == rid:
                    if item.msg.get("type") == "error":
                        raise ws_error(endpoint.describe(), item.msg)
                    stream.backlog = items[:i] + items[i + 1:]
                    return stream
    except BaseException:
        await ws.aclose()
        raise


class Poller:
    """The JSON GETs of a follower while its stream is down, on one keep-alive connection that the
    follower opens (and checks with ``/health``) when :attr:`connected` is False."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._conn: HttpConnection | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.reusable

    def use(self, conn: HttpConnection) -> None:
        self._conn = conn

    async def get(self, target: str) -> Any:
        """One JSON GET; the daemon's error answers raise as for any request."""
        assert self._conn is not None
        resp = await self._conn.request("GET", target)
        if resp.status != 200:
            raise error_for_response(self._endpoint, "GET", target, resp.status, resp.body)
        return resp.json()

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.aclose()
