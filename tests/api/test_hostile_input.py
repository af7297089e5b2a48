"""Hostile input against a real daemon (issue 11, "smaller ones"): every answer is a clean 4xx with a code
a client can act on, never 500, and a WebSocket protocol error gets a close frame with its code."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import wsproto
import wsproto.events

from helpers.daemon import DaemonProcess, make_tree


def _request(d: DaemonProcess, method: str, target: str, body: bytes = b"",
             headers: tuple[str, ...] = ()) -> tuple[int, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(d.socket)
        head = [f"{method} {target} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}",
                "Connection: close", *headers]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        deadline = time.monotonic() + 30  # a stream (wrongly accepted) would never end by itself
        while (chunk := s.recv(65536)) and time.monotonic() < deadline:
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.fixture
def daemon(daemon_factory: Any, short_tmp: Path) -> DaemonProcess:
    make_tree(short_tmp / "docs", files=3)
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs"})
    return d


def test_deeply_nested_json_bodies_get_400(daemon: DaemonProcess) -> None:
    for path in ("/api/v1/projects/docs/restore", "/api/v1/check", "/api/v1/prune"):
        status, body = _request(daemon, "POST", path, b"[" * 30000 + b"]" * 30000)
        assert (status, body["error"]["code"]) == (400, "bad_request"), path
        status, body = _request(daemon, "POST", path, b'{"a":' * 10000 + b"1" + b"}" * 10000)
        assert (status, body["error"]["code"]) == (400, "bad_request"), path


@pytest.mark.parametrize("value", ["%D9%A3", "1_0", "+3", "%203", "3%20", "-1", "9" * 19])
def test_integers_in_queries_and_last_event_id_are_ascii_digits_only(daemon: DaemonProcess, value: str) -> None:
    # limit=٣ (ARABIC-INDIC DIGIT THREE) was taken as 3.
    for target in (f"/api/v1/projects/docs/runs?limit={value}",
                   f"/api/v1/projects/docs/diff?from=latest&limit={value}",
                   f"/api/v1/events?last_event_id={value}"):
        status, body = _request(daemon, "GET", target)
        assert (status, body["error"]["code"]) == (400, "bad_request"), target


@pytest.mark.parametrize("field, value, code", [
    ("target", "/tmp/" + "a" * 5000, "target_invalid"),
    ("target", "/tmp/x/" + "a/" * 2500, "target_invalid"),
    ("target", "/tmp/\ud800", "target_invalid"),
    ("paths", ["a" * 5000], "path_invalid"),
    ("paths", ["\udbff\udbff"], "path_invalid"),
    ("snapshot", "\ud800", "bad_request"),
    ("snapshot", "a" * 5000, "bad_request"),
])
def test_restore_refuses_strings_no_file_system_can_take(daemon: DaemonProcess, field: str, value: object,
                                                          code: str) -> None:
    doc: dict[str, object] = {"snapshot": "latest", "target": "/tmp/never-written"}
    doc[field] = value
    body = json.dumps(doc).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    status, answer = _request(daemon, "POST", "/api/v1/projects/docs/restore", body)
    assert (status, answer["error"]["code"]) == (400, code)
    assert answer["error"]["message"]
    assert not os.path.exists("/tmp/never-written")


def _ws_frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    mask = b"\x01\x02\x03\x04"
    head = bytes([0x80 | opcode])
    n = len(payload)
    length = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536 else \
        bytes([127]) + n.to_bytes(8, "big")
    if not masked:
        return head + length + payload
    length = bytes([length[0] | 0x80]) + length[1:]
    return head + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_code_after(d: DaemonProcess, frame: bytes) -> int | None:
    """Open a WebSocket on the Unix socket, send ``frame``, read to EOF: the code of the server's close
    frame, or None when the connection closed without one."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(d.socket)
        s.sendall(ws.send(wsproto.events.Request(host="localhost", target="/api/v1/ws")))
        while not any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events()):
            data = s.recv(65536)
            assert data, "the daemon closed the connection during the handshake"
            ws.receive_data(data)
        s.sendall(frame)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    ws.receive_data(data)
    for event in ws.events():
        if isinstance(event, wsproto.events.CloseConnection):
            return event.code
    return None


@pytest.mark.parametrize("frame, code", [
    (_ws_frame(0x3, b""), 1002),  # a reserved opcode
    (_ws_frame(0x1, b"{}", masked=False), 1002),  # a client frame without mask
    (_ws_frame(0x1, b'{"op": "\xff\xfe"}'), 1007),  # a text frame that is not UTF-8
    (_ws_frame(0x1, b" " * 70000), 1009),  # over the 64 KiB message limit
], ids=["reserved-opcode", "unmasked", "invalid-utf8", "too-big"])
def test_websocket_protocol_errors_get_a_close_frame_with_their_code(daemon: DaemonProcess, frame: bytes,
                                                                     code: int) -> None:
    assert _close_code_after(daemon, frame) == code
