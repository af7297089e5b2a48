"""A fan-out encodes each event once: the API layer caches the wire encodings on the event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

import syncsnapd.api._encodings as encodings
from helpers.http import OWNER, TOKEN, H11Client
from syncsnapd.api import Api
from syncsnapd.core import Progress, ProjectConfig
from syncsnapd.http import HttpConfig, HttpServer
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.store import Store

SUBSCRIBERS = 200


async def test_an_event_sent_to_many_sse_subscribers_and_pollers_is_encoded_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoders are wrapped only to count their calls; they still produce the real bytes."""
    calls = {"sse": 0, "json": 0}
    real_sse, real_json = encodings.sse_progress, encodings.json_body

    def counting_sse(event_id: int, json_text: str) -> bytes:
        calls["sse"] += 1
        return real_sse(event_id, json_text)

    def counting_json(json_text: str) -> bytes:
        calls["json"] += 1
        return real_json(json_text)

    monkeypatch.setattr(encodings, "sse_progress", counting_sse)
    monkeypatch.setattr(encodings, "json_body", counting_json)
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    try:
        tracker = Tracker()
        api = Api(Scheduler(store, tracker, [ProjectConfig("docs", tmp_path)]), tracker, heartbeat=15)
        server = HttpServer(api, HttpConfig(token=TOKEN))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                clients = []
                for _ in range(SUBSCRIBERS):
                    client_end, server_end = trio.testing.memory_stream_pair()
                    nursery.start_soon(server.serve_connection, server_end, OWNER)
                    client = H11Client(client_end)
                    await client_end.send_all(client.encode("GET", "/api/v1/events?last_event_id=0"))
                    assert (await client.head()).status_code == 200
                    clients.append(client)
                await trio.testing.wait_all_tasks_blocked()
                ev = tracker.publish(Progress(project="docs", run="r1", state="compressing", step=4, percent=50))
                for client in clients:
                    received = b""
                    while b"event: progress" not in received:
                        data = await client.data_event()
                        assert data is not None
                        received += data
                    assert f"id: {ev.id}\n".encode() in received
                for _ in range(3):
                    poller_end, server_end = trio.testing.memory_stream_pair()
                    nursery.start_soon(server.serve_connection, server_end, OWNER)
                    reply = await H11Client(poller_end).request("GET", "/api/v1/projects/docs/progress")
                    assert reply.status == 200 and json.loads(reply.body)["event_id"] == ev.id
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert calls == {"sse": 1, "json": 1}
