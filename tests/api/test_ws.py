"""The WebSocket endpoint against the real daemon, with trio-websocket as the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from helpers.daemon import DaemonProcess, make_tree

TERMINAL = ("completed", "failed", "cancelled")


async def _unix_ws(d: DaemonProcess, nursery: trio.Nursery) -> trio_websocket.WebSocketConnection:
    stream = await trio.open_unix_socket(d.socket)
    return await trio_websocket.wrap_client_stream(nursery, stream, "localhost", "/api/v1/ws")


async def _recv(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(30):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def test_subscribe_snapshot_and_progress_over_the_unix_socket(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=20)
    d: DaemonProcess = daemon_factory({"docs": folder})
    async with trio.open_nursery() as nursery:
        ws = await _unix_ws(d, nursery)
        await ws.send_message(json.dumps({"op": "subscribe", "projects": ["docs"], "id": 1}))
        assert await _recv(ws) == {"type": "reply", "op": "subscribe", "id": 1, "ok": True}
        current = await _recv(ws)
        assert current["type"] == "progress" and current["progress"]["state"] == "idle"
        await ws.send_message(json.dumps({"op": "snapshot", "project": "docs", "id": 2}))
        events = []
        reply = None
        while True:
            msg = await _recv(ws)
            if msg["type"] == "reply":
                reply = msg
                continue
            events.append(msg["progress"])
            if msg["progress"]["state"] in TERMINAL:
                break
        assert reply is not None and reply["id"] == 2 and reply["run"] == events[-1]["run"]
        assert events[-1]["state"] == "completed" and events[-1]["step"] == 6
        ids = [e["event_id"] for e in events]
        assert ids == sorted(set(ids))
        # The same events, with the same ids, as the daemon's SSE replay gives.
        sse = d.curl("-N", "-m", "2", "-H", f"Last-Event-ID: {ids[0] - 1}",
                     "http://localhost/api/v1/projects/docs/progress/stream")
        sse_ids = [int(line[4:]) for line in sse.stdout.splitlines() if line.startswith("id: ")]
        assert sse_ids[:len(ids)] == ids

        # Bad input gets an error reply and the connection stays usable.
        await ws.send_message("not json")
        assert (await _recv(ws))["error"]["code"] == "bad_request"
        await ws.send_message(json.dumps({"op": "subscribe", "projects": ["nope"], "id": 3}))
        assert (await _recv(ws))["error"]["code"] == "not_found"
        await ws.send_message(json.dumps({"op": "dance", "id": 4}))
        assert (await _recv(ws))["error"]["code"] == "bad_request"

        # Resume from an id still in the buffer: exactly the later events.
        await ws.send_message(json.dumps({"op": "subscribe", "projects": "*", "last_event_id": ids[-3], "id": 5}))
        assert (await _recv(ws))["id"] == 5
        replay = [(await _recv(ws))["progress"]["event_id"] for _ in range(2)]
        assert replay == ids[-2:]
        await ws.send_message(json.dumps({"op": "unsubscribe", "id": 6}))
        assert (await _recv(ws))["id"] == 6
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_websocket_needs_the_token_and_a_loopback_host(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=2)
    d: DaemonProcess = daemon_factory({"p": folder})
    host, port = d.tcp.rsplit(":", 1)
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket(host, int(port), "/api/v1/ws", use_ssl=False):
            pass
    assert refused.value.status_code == 401
    auth = [("Authorization", f"Bearer {d.token}")]
    async with trio_websocket.open_websocket(host, int(port), "/api/v1/ws", use_ssl=False,
                                             extra_headers=auth) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "projects": "*"}))
        assert (await _recv(ws))["ok"] is True
        assert (await _recv(ws))["progress"]["project"] == "p"
    # A page from evil.example re-pointed at 127.0.0.1 (DNS rebinding) sends its own Host: refused.
    rejected: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            stream = await trio.open_tcp_stream(host, int(port))
            await trio_websocket.wrap_client_stream(nursery, stream, "evil.example", "/api/v1/ws",
                                                    extra_headers=auth)
    except* trio_websocket.ConnectionRejected as group:
        rejected = [e.status_code for e in group.exceptions]  # type: ignore[attr-defined]
    assert rejected == [403]


def test_plain_get_on_the_websocket_endpoint_is_426(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=1)
    d: DaemonProcess = daemon_factory({"p": folder})
    out = d.curl("-i", "http://localhost/api/v1/ws").stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 426") and "upgrade: websocket" in head.lower()
    assert json.loads(body)["error"]["code"] == "upgrade_required"
