"""The SSE fan-out's direct send: the publisher writes each event straight to every subscriber's socket,
and only a subscriber whose socket is full falls back to its queue and its own task (where slow readers
are coalesced as before). Readers see the same stream either way: every event in order, and the newest
state in the end.

The real API, tracker and HTTP server over real socket pairs (the direct send needs a descriptor), with a
client that really stops reading.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from helpers.http import OWNER, H11Client
from syncsnapd.api import Api
from syncsnapd.core import Progress, ProjectConfig
from syncsnapd.http import HttpConfig, HttpServer
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.store import Store

# No disconnection for a reader that is merely paused by the test.
CONFIG = HttpConfig(send_timeout=600.0)


@asynccontextmanager
async def _served(tmp_path: Path, readers: int, *, small_buffer: int = 0
                  ) -> AsyncIterator[tuple[Api, list[H11Client]]]:
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    try:
        tracker = Tracker(queue_events=128, replay_events=50)
        api = Api(Scheduler(store, tracker, [ProjectConfig("docs", tmp_path)]), tracker, heartbeat=600)
        server = HttpServer(api, CONFIG)
        async with trio.open_nursery() as nursery:
            clients = []
            for i in range(readers):
                server_sock, client_sock = socket.socketpair()
                if small_buffer and i == 0:  # the first reader's socket fills fast
                    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small_buffer)
                    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small_buffer)
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(server_sock))
                nursery.start_soon(server.serve_connection, stream, OWNER)
                client = H11Client(trio.SocketStream(trio.socket.from_stdlib_socket(client_sock)))
                await client.stream.send_all(client.encode("GET", "/api/v1/events"))
                assert (await client.head()).status_code == 200
                clients.append(client)
            # Each reader has its current state (the idle project) before anything is published.
            for client in clients:
                assert [e["state"] for e in await _events(client, 1)] == ["idle"]
            with trio.fail_after(60):
                yield api, clients
            nursery.cancel_scope.cancel()
    finally:
        store.close()


_buffers: dict[int, bytes] = {}


async def _events(client: H11Client, n: int) -> list[dict[str, object]]:
    """The next ``n`` progress events the client reads."""
    out: list[dict[str, object]] = []
    buf = _buffers.get(id(client), b"")
    while len(out) < n:
        while b"\n\n" not in buf:
            data = await client.data_event()
            assert data is not None, "the stream ended"
            buf += data
        block, buf = buf.split(b"\n\n", 1)
        for line in block.decode().splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    _buffers[id(client)] = buf
    return out


def _p(run: str, state: str = "compressing", files: int = 0) -> Progress:
    return Progress(project="docs", run=run, state=state, step=6 if state == "completed" else 4,
                    files_done=files)


async def test_the_publisher_writes_each_event_to_every_reader_directly_in_order(tmp_path: Path) -> None:
    async with _served(tmp_path, 3) as (api, clients):
        before = api.tracker.statistics()
        # Published without a checkpoint in between: no subscriber task runs, so whatever arrives was
        # written by the publisher itself.
        for i in range(40):
            api.tracker.publish(_p("r1", files=i))
        api.tracker.publish(_p("r1", "completed", 40))
        after = api.tracker.statistics()
        assert after.fast_deliveries - before.fast_deliveries == 41 * 3
        assert after.queued_deliveries == before.queued_deliveries
        for client in clients:
            got = await _events(client, 41)
            assert [e["files_done"] for e in got] == list(range(41))
            ids = [e["event_id"] for e in got]
            assert ids == sorted(ids) and len(set(ids)) == 41
            assert got[-1]["state"] == "completed"


async def test_a_reader_that_does_not_read_falls_back_and_still_gets_the_newest_state(tmp_path: Path) -> None:
    async with _served(tmp_path, 2, small_buffer=4096) as (api, (stuck, live)):
        # The first reader reads nothing while runs publish; the second reads along.
        published = 0
        fallback_at = None
        for run in range(60):
            for i in range(10):
                api.tracker.publish(_p(f"r{run}", files=i))
            api.tracker.publish(_p(f"r{run}", "completed", 10))
            published += 11
            assert [e["files_done"] for e in await _events(live, 11)] == [*range(10), 10]
            if fallback_at is None and api.tracker.statistics().queued_deliveries:
                fallback_at = run
        assert fallback_at is not None, "the stuck reader's socket never filled"
        api.tracker.publish(_p("r-last", files=123))  # the newest state
        newest = (await _events(live, 1))[0]
        # The stuck reader now reads: the same order, every run's terminal event, nothing after the newest
        # state, and intermediate events coalesced only where it lagged.
        got: list[dict[str, object]] = []
        while not got or got[-1]["event_id"] != newest["event_id"]:
            got += await _events(stuck, 1)
        ids = [e["event_id"] for e in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert [e["run"] for e in got if e["state"] == "completed"] == [f"r{run}" for run in range(60)]
        assert got[-1]["files_done"] == 123
        assert len(got) < published + 1  # it fell behind, so some intermediate events were coalesced
        stats = api.tracker.statistics()
        assert stats.dropped_subscribers == 0 and stats.coalesced > 0
