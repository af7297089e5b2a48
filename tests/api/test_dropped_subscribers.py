"""A subscriber the tracker drops (it fell hopelessly behind) is disconnected at once, over SSE and over
WebSocket: its connection ends when the tracker closes the subscription, not at its next write (which,
for a client that stopped reading, would wait for a socket that never drains).

The real API, tracker and HTTP server, over a real socket pair whose buffers fill as a real client's do,
under ``autojump_clock``: times are exact.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing
import wsproto
import wsproto.events

from helpers.http import OWNER
from syncsnapd.api import Api
from syncsnapd.core import Progress, ProjectConfig
from syncsnapd.http import HttpConfig, HttpServer
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.store import Store


@asynccontextmanager
async def _api(tmp_path: Path) -> AsyncIterator[Api]:
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    try:
        tracker = Tracker(queue_events=4, replay_events=50)
        scheduler = Scheduler(store, tracker, [ProjectConfig("docs", tmp_path)])
        yield Api(scheduler, tracker, heartbeat=15)
    finally:
        store.close()


def _pair() -> tuple[trio.SocketStream, trio.socket.SocketType]:
    server_sock, client = socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return trio.SocketStream(trio.socket.from_stdlib_socket(server_sock)), trio.socket.from_stdlib_socket(client)


async def _publish_until_dropped(tracker: Tracker, done: trio.Event) -> float:
    # Terminal events are never coalesced: a reader that stopped reading overflows its queue of 4. Until
    # then its connection stays open. Between publishes every task runs until it blocks, so the
    # subscriber is dropped only once the socket is full and its sender stuck, as with a real client
    # that stopped reading.
    for run in range(2000):
        assert not done.is_set(), "the connection ended before its subscriber was dropped"
        tracker.publish(Progress(project="docs", run=f"r{run}", state="compressing", step=4, percent=1))
        tracker.publish(Progress(project="docs", run=f"r{run}", state="completed", step=6, percent=100))
        if tracker.statistics().dropped_subscribers:
            return trio.current_time()
        await trio.sleep(0.001)
    raise AssertionError("the subscriber was never dropped")


async def _run(server: HttpServer, stream: trio.SocketStream, ended: list[float], done: trio.Event) -> None:
    await server.serve_connection(stream, OWNER)
    ended.append(trio.current_time())
    done.set()


async def test_sse_subscriber_that_stopped_reading_is_disconnected_when_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _api(tmp_path) as api:
        server = HttpServer(api, HttpConfig())
        stream, client = _pair()
        ended: list[float] = []
        done = trio.Event()
        with client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run, server, stream, ended, done)
                await client.send(b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
                dropped_at = await _publish_until_dropped(api.tracker, done)
                with trio.fail_after(1):  # the send deadline (5 s) must not be what ends it
                    await done.wait()
        assert ended == [dropped_at]
        assert server.statistics().open_connections == 0


async def test_websocket_subscriber_that_stopped_reading_is_disconnected_when_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _api(tmp_path) as api:
        server = HttpServer(api, HttpConfig())
        stream, client = _pair()
        ended: list[float] = []
        done = trio.Event()
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        with client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_run, server, stream, ended, done)
                await client.send(ws.send(wsproto.events.Request(host="localhost", target="/api/v1/ws")))
                accepted = False
                while not accepted:
                    ws.receive_data(await client.recv(65536))
                    accepted = any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events())
                subscribe = json.dumps({"op": "subscribe", "projects": "*"})
                await client.send(ws.send(wsproto.events.Message(data=subscribe)))
                # From here on the client reads nothing.
                dropped_at = await _publish_until_dropped(api.tracker, done)
                with trio.fail_after(1):
                    await done.wait()
        assert ended == [dropped_at]
