"""Helpers for the HTTP layer's tests: a real h11 client, a test app, and servers over memory streams."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio
import trio.testing

from syncsnapd.http import (
    BodyWriter,
    HttpConfig,
    HTTPError,
    HttpServer,
    Peer,
    Request,
    Response,
    Router,
    StreamResponse,
    json_response,
    router_app,
    sse_event,
    sse_retry,
)

OWNER = Peer("unix", os.getuid(), os.getpid())
MemoryPair = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]
TOKEN = "test-token-0123456789"


@dataclass
class Reply:
    """One response as a client sees it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class H11Client:
    """An HTTP/1.1 client on any trio stream, with a real ``h11.Connection(h11.CLIENT)``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    def encode(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> bytes:
        fields = [("Host", "localhost")] if headers is None else list(headers)
        if body:
            fields.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            data += self.conn.send(h11.Data(data=body))
        return data + self.conn.send(h11.EndOfMessage())

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> Reply:
        await self.stream.send_all(self.encode(method, target, headers, body))
        return await self.response()

    async def _event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            assert event is not h11.PAUSED
            return event  # type: ignore[return-value]

    async def head(self) -> h11.Response:
        event = await self._event()
        assert type(event) is h11.Response, event
        return event

    async def response(self) -> Reply:
        head = await self.head()
        body = b""
        while True:
            event = await self._event()
            if type(event) is h11.EndOfMessage:
                break
            assert type(event) is h11.Data, event
            body += event.data
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = {name.decode().lower(): value.decode() for name, value in head.headers}
        return Reply(head.status_code, headers, body)

    async def data_event(self) -> bytes | None:
        """The next piece of a streaming body, or None at its end."""
        event = await self._event()
        if type(event) is h11.EndOfMessage:
            return None
        assert type(event) is h11.Data, event
        return bytes(event.data)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition the server exposes no event for (real sockets, real time); use under fail_after."""
    while True:
        if condition():
            return
        await trio.sleep(0.005)


def parse_raw(data: bytes) -> Reply:
    """Parse one complete raw response (as read to EOF) with h11."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    head = client.next_event()
    assert type(head) is h11.Response, (head, data)
    body = b""
    while type(event := client.next_event()) is h11.Data:
        body += event.data
    headers = {name.decode().lower(): value.decode() for name, value in head.headers}
    return Reply(head.status_code, headers, body)


@dataclass
class AppState:
    """What the test app records, for the tests to look at."""

    stream_started: trio.Event = field(default_factory=trio.Event)
    stream_cancelled: trio.Event = field(default_factory=trio.Event)
    stream_ended: trio.Event = field(default_factory=trio.Event)
    writer: BodyWriter | None = None
    requests: list[Request] = field(default_factory=list)


def make_app(state: AppState | None = None) -> Any:
    """A small app over a Router: /ok (GET, HEAD), /echo (POST), /items/{id}, /boom, /teapot, /stream."""
    state = state if state is not None else AppState()
    router = Router()

    async def ok(request: Request, params: dict[str, str]) -> Response:
        state.requests.append(request)
        return json_response(200, {"ok": True, "path": request.path, "query": request.query})

    async def echo(request: Request, params: dict[str, str]) -> Response:
        return json_response(200, {"length": len(request.body), "body": request.body.decode()})

    async def item(request: Request, params: dict[str, str]) -> Response:
        return json_response(200, {"id": params["id"]})

    async def boom(request: Request, params: dict[str, str]) -> Response:
        raise RuntimeError("secret detail /etc/shadow")

    async def teapot(request: Request, params: dict[str, str]) -> Response:
        raise HTTPError(418, "teapot", "Short and stout.")

    async def stream(request: Request, params: dict[str, str]) -> StreamResponse:
        count = int(request.query.get("count", "-1"))

        async def body(writer: BodyWriter) -> None:
            state.writer = writer
            try:
                await writer.send(sse_retry(2000))
                state.stream_started.set()
                if count < 0:
                    await trio.sleep_forever()
                for i in range(count):
                    writer.write_nowait(sse_event(json.dumps({"n": i}), id=i, event="progress"))
                    await trio.sleep(0.01)
            except trio.Cancelled:
                state.stream_cancelled.set()
                raise
            finally:
                state.stream_ended.set()

        return StreamResponse(200, "text/event-stream", (("Cache-Control", "no-store"),), body)

    router.add("GET", "/ok", ok)
    router.add("HEAD", "/ok", ok)
    router.add("POST", "/echo", echo)
    router.add("GET", "/items/{id}", item)
    router.add("GET", "/boom", boom)
    router.add("GET", "/teapot", teapot)
    router.add("GET", "/stream", stream)
    return router_app(router)


@asynccontextmanager
async def memory_server(
    app: Any, config: HttpConfig | None = None, peer: Peer = OWNER
) -> AsyncIterator[tuple[MemoryPair, HttpServer]]:
    """Serve one connection over a memory stream pair; yields the client's end and the server."""
    server = HttpServer(app, config or HttpConfig(token=TOKEN))
    client, server_end = trio.testing.memory_stream_pair()
    # A guard against hangs: a test that waits for something the server never does fails instead.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_connection, server_end, peer)
            try:
                yield client, server
            finally:
                nursery.cancel_scope.cancel()
