"""The SSE stream cap (config ``max_streams``) through the real API and HTTP server over memory streams: a slot
is taken when a stream is accepted and given back however the stream ends, also when the client is gone
before the response head could be sent (end to end with curl: tests/api/test_browse.py)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from helpers.http import H11Client, memory_server
from syncsnapd.api import Api
from syncsnapd.core import ProjectConfig
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.store import Store


async def test_a_client_gone_before_the_head_gives_its_slot_back(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    try:
        tracker = Tracker()
        a = Api(Scheduler(store, tracker, [ProjectConfig("docs", tmp_path)]), tracker, heartbeat=15, max_streams=1)
        for _ in range(3):
            async with memory_server(a) as (client_stream, _server):
                client = H11Client(client_stream)
                await client_stream.send_all(client.encode("GET", "/api/v1/events", [("Host", "localhost")]))
                await client_stream.aclose()  # gone before the daemon answers
                await trio.testing.wait_all_tasks_blocked()
            assert a.open_streams == 0
        # The one slot is free: a stream is accepted, and a second one is refused while it lasts.
        async with memory_server(a) as (first, _server):
            c1 = H11Client(first)
            await first.send_all(c1.encode("GET", "/api/v1/events", [("Host", "localhost")]))
            assert (await c1.head()).status_code == 200
            async with memory_server(a) as (second, _server2):
                c2 = H11Client(second)
                await second.send_all(c2.encode("GET", "/api/v1/events", [("Host", "localhost")]))
                head = await c2.head()
                assert head.status_code == 503 and (b"retry-after", b"5") in list(head.headers)
        await trio.testing.wait_all_tasks_blocked()
        assert a.open_streams == 0
    finally:
        store.close()
