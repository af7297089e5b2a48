"""A small HTTP/1.1 client for the daemon, on Trio and h11: JSON requests and an SSE reader.

Used by the driver, where correctness matters more than per-request cost; the load generators
(progress poller, SSE fan-out) use raw sockets instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import h11
import trio


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens: a Unix socket path, or a TCP host:port with a bearer token."""

    unix: str | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = None

    async def connect(self) -> trio.abc.Stream:
        if self.unix is not None:
            return await trio.open_unix_socket(self.unix)
        assert self.tcp is not None
        return await trio.open_tcp_stream(*self.tcp)

    def headers(self) -> list[tuple[str, str]]:
        h = [("Host", "127.0.0.1" if self.tcp else "localhost"), ("User-Agent", "syncsnap-bench")]
        if self.token:
            h.append(("Authorization", f"Bearer {self.token}"))
        return h


class HTTPError(RuntimeError):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


class _Closed(Exception):
    pass


class Connection:
    """One keep-alive connection; requests one at a time."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.stream: trio.abc.Stream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> Connection:
        self.stream = await self.endpoint.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def _next(self) -> Any:
        assert self.stream is not None
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                continue
            return ev

    async def _send_request(self, method: str, path: str, body: bytes | None,
                            extra: list[tuple[str, str]] | None = None) -> None:
        assert self.stream is not None
        headers = self.endpoint.headers() + (extra or [])
        if body is not None:
            headers.append(("Content-Type", "application/json"))
            headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=headers))
        if body is not None:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def _reconnect(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        self.stream = await self.endpoint.connect()
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One request; if the server had closed this keep-alive connection, retried once on a new one."""
        try:
            return await self._request(method, path, body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError,
                h11.RemoteProtocolError, _Closed):
            await self._reconnect()
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        raw = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        await self._send_request(method, path, raw)
        resp = await self._next()
        if isinstance(resp, h11.ConnectionClosed):
            raise _Closed()
        chunks: list[bytes] = []
        while True:
            ev = await self._next()
            if isinstance(ev, h11.Data):
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif isinstance(ev, h11.ConnectionClosed):
                break
        return resp.status_code, b"".join(chunks)

    async def json(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200,)) -> Any:
        status, raw = await self.request(method, path, body)
        if status not in expect:
            raise HTTPError(status, raw)
        return json.loads(raw)

    async def sse(self, path: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Open an SSE stream; yields (event name, parsed data) for each event. Comments are skipped."""
        await self._send_request("GET", path, None, [("Accept", "text/event-stream")])
        resp = await self._next()
        if not isinstance(resp, h11.Response) or resp.status_code != 200:
            raise HTTPError(getattr(resp, "status_code", 0), b"SSE stream refused")
        buf = b""
        while True:
            ev = await self._next()
            if isinstance(ev, h11.Data):
                buf += bytes(ev.data).replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    name, data = "message", []
                    for line in block.split(b"\n"):
                        if line.startswith(b"event:"):
                            name = line[6:].strip().decode()
                        elif line.startswith(b"data:"):
                            data.append(line[5:].lstrip(b" "))
                    if data:
                        yield name, json.loads(b"\n".join(data))
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                return


async def get_json(endpoint: Endpoint, path: str) -> Any:
    async with Connection(endpoint) as c:
        return await c.json("GET", path)
