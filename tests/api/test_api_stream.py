"""The SSE endpoints through the real API and HTTP server over memory streams (timed under autojump_clock).

The tracker's ``publish`` is the real publisher; runs are represented by the progress objects they
publish, so every timing here is exact virtual time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio
import trio.lowlevel
import trio.testing

from helpers.http import H11Client, memory_server
from syncsnapd.api import Api
from syncsnapd.core import Progress, ProjectConfig
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.store import Store


@asynccontextmanager
async def api(tmp_path: Path, *, heartbeat: float = 15, queue_events: int = 256) -> AsyncIterator[Api]:
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    try:
        tracker = Tracker(queue_events=queue_events, replay_events=50)
        scheduler = Scheduler(store, tracker, [ProjectConfig("docs", tmp_path), ProjectConfig("pics", tmp_path)])
        yield Api(scheduler, tracker, heartbeat=heartbeat)
    finally:
        store.close()


class SseReader:
    def __init__(self, client: H11Client) -> None:
        self.client = client
        self.buffer = b""

    async def block(self) -> str:
        """The next SSE block (event or comment), without its blank line."""
        while b"\n\n" not in self.buffer:
            data = await self.client.data_event()
            assert data is not None, "stream ended"
            self.buffer += data
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return block.decode()

    async def event(self) -> dict[str, object]:
        while True:
            block = await self.block()
            if "event: progress" in block:
                lines = dict(line.split(": ", 1) for line in block.splitlines())
                data = json.loads(lines["data"])
                assert int(lines["id"]) == data["event_id"] if "id" in lines else data["event_id"] == 0
                return data  # type: ignore[no-any-return]


def _p(project: str, run: str, state: str = "compressing", percent: float = 10) -> Progress:
    return Progress(project=project, run=run, state=state, step=6 if state == "completed" else 4, percent=percent)


async def _open(client: H11Client, target: str, *headers: tuple[str, str]) -> SseReader:
    await client.stream.send_all(client.encode("GET", target, [("Host", "localhost"), *headers]))
    head = await client.head()
    assert head.status_code == 200
    assert dict(head.headers)[b"content-type"] == b"text/event-stream"
    return SseReader(client)


async def test_stream_starts_with_retry_and_current_state_then_keeps_alive(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with api(tmp_path, heartbeat=15) as a, memory_server(a) as (client_stream, _):
        a.tracker.publish(_p("docs", "r1", percent=40))
        reader = await _open(H11Client(client_stream), "/api/v1/projects/docs/progress/stream")
        assert (await reader.block()) == "retry: 2000"
        first = await reader.event()
        assert first["percent"] == 40 and first["event_id"] == 1
        t0 = trio.current_time()
        assert (await reader.block()) == ": keep-alive"
        assert trio.current_time() - t0 == 15
        # An event resets the heartbeat clock.
        await trio.sleep(10)
        a.tracker.publish(_p("docs", "r1", percent=50))
        assert (await reader.event())["percent"] == 50
        t1 = trio.current_time()
        assert (await reader.block()) == ": keep-alive"
        assert trio.current_time() - t1 == 15


async def test_stream_stays_open_across_runs_and_filters_projects(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with api(tmp_path) as a, memory_server(a) as (client_stream, _):
        reader = await _open(H11Client(client_stream), "/api/v1/projects/docs/progress/stream")
        await reader.block()
        assert (await reader.event())["state"] == "idle"
        for run in ("r1", "r2"):
            a.tracker.publish(_p("pics", "other"))
            a.tracker.publish(_p("docs", run))
            a.tracker.publish(_p("docs", run, "completed", 100))
        got = [(e["run"], e["state"]) for e in [await reader.event() for _ in range(4)]]
        assert got == [("r1", "compressing"), ("r1", "completed"), ("r2", "compressing"), ("r2", "completed")]


async def test_last_event_id_replays_exactly_and_a_stale_one_gets_a_gap(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with api(tmp_path) as a:
        for i in range(30):
            a.tracker.publish(_p("docs", "r1", percent=i))
        async with memory_server(a) as (client_stream, _):
            reader = await _open(H11Client(client_stream), "/api/v1/events", ("Last-Event-ID", "25"))
            await reader.block()
            assert [(await reader.event())["event_id"] for _ in range(5)] == [26, 27, 28, 29, 30]
        async with memory_server(a) as (client_stream, _):
            reader = await _open(H11Client(client_stream), "/api/v1/events?last_event_id=28")
            await reader.block()
            assert [(await reader.event())["event_id"] for _ in range(2)] == [29, 30]
        async with memory_server(a) as (client_stream, _):
            # The replay buffer holds 50 events; id 3 is gone after 60 more.
            for i in range(60):
                a.tracker.publish(_p("docs", "r1", percent=i))
            reader = await _open(H11Client(client_stream), "/api/v1/events", ("Last-Event-ID", "3"))
            assert (await reader.block()) == "retry: 2000"
            assert (await reader.block()) == 'event: gap\ndata: {"last_event_id": 3}'
            # The current state of every project instead: pics never ran (id 0), docs' newest is 90.
            assert [(await reader.event())["event_id"] for _ in range(2)] == [0, 90]
        async with memory_server(a) as (client_stream, _):
            reply = await H11Client(client_stream).request("GET", "/api/v1/events",
                                                           [("Host", "localhost"), ("Last-Event-ID", "abc")])
            assert reply.status == 400 and reply.json()["error"]["code"] == "bad_request"


async def test_a_reader_that_stops_reading_is_coalesced_then_disconnected(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with api(tmp_path, queue_events=4) as a, memory_server(a) as (client_stream, _):
        reader = await _open(H11Client(client_stream), "/api/v1/events")
        await reader.block()
        await reader.event()
        await reader.event()
        # The client stops reading; the publisher never waits, whatever the reader does.
        for run in range(400):
            a.tracker.publish(_p("docs", f"r{run}", percent=1))
            a.tracker.publish(_p("docs", f"r{run}", "completed", 100))
            await trio.lowlevel.checkpoint()
        stats = a.tracker.statistics()
        assert stats.dropped_subscribers == 1 and stats.subscribers == 0
        # What it does read is in order, then the connection ends at once: cut, without the final chunk
        # (its socket was full; the notice to resume goes out only when the socket takes it at once).
        ids = []
        text = ""
        with pytest.raises(h11.RemoteProtocolError, match="incomplete chunked read"):
            while (data := await reader.client.data_event()) is not None:
                text += data.decode()
        for block in text.split("\n\n"):
            if block.startswith("id: "):
                ids.append(int(block.split("\n", 1)[0][4:]))
        assert ids == sorted(ids)
