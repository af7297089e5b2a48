"""The send deadline and the connection budgets, in process, over real socket pairs (the kernel's buffers
fill as they do for a real client) and under ``autojump_clock``, so every time asserted is exact.

The end-to-end versions against a real daemon are in ``test_hostile_clients.py``.
"""

from __future__ import annotations

import socket

import trio
import trio.testing

from helpers.http import OWNER
from syncsnapd.http import (
    HttpConfig,
    HttpServer,
    Request,
    Response,
    Router,
    router_app,
)

SEND_TIMEOUT = 5.0
BIG = 4 * 1024 * 1024  # far more than a socket pair's buffers hold


def _app() -> object:
    router = Router()

    async def big(request: Request, params: dict[str, str]) -> Response:
        return Response(200, b"x" * BIG, "application/octet-stream")

    router.add("GET", "/big", big)
    return router_app(router)


def _pair() -> tuple[trio.SocketStream, socket.socket]:
    server_sock, client = socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    client.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(server_sock)), client


async def _serve(server: HttpServer, stream: trio.SocketStream, ended: list[float]) -> None:
    await server.serve_connection(stream, OWNER)
    ended.append(trio.current_time())


async def test_a_response_the_client_never_reads_ends_at_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = HttpServer(_app(), HttpConfig(send_timeout=SEND_TIMEOUT))  # type: ignore[arg-type]
    stream, client = _pair()
    ended: list[float] = []
    with client:
        client.send(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        start = trio.current_time()
        with trio.fail_after(10 * SEND_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve, server, stream, ended)
        # The first write filled the buffers at once; nothing moved afterwards.
        assert ended == [start + SEND_TIMEOUT]
        assert server.statistics().open_connections == 0


async def test_a_slow_reader_keeps_its_connection_the_deadline_counts_from_the_last_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = HttpServer(_app(), HttpConfig(send_timeout=SEND_TIMEOUT))  # type: ignore[arg-type]
    stream, client = _pair()
    ended: list[float] = []
    received = 0
    with client:
        client.send(b"GET /big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, server, stream, ended)
            # Reads everything there is, every 4 s (less than send_timeout): slow, but reading.
            while not ended:
                await trio.sleep(SEND_TIMEOUT - 1)
                while True:
                    try:
                        data = client.recv(1 << 20)
                    except BlockingIOError:
                        break
                    received += len(data)
                    if not data:
                        break
    assert received > BIG  # the whole response arrived
    assert ended[0] - start > 3 * SEND_TIMEOUT  # it took many deadlines' worth of time, and was not cut


def test_the_budgets_stated_in_docs_api_md() -> None:
    # max_connections 16: the Unix socket keeps 4, TCP may take 12, of them 6 without a token; the
    # daemon's default of 4,096: 1,024 kept for the Unix socket, 64 unauthenticated.
    small = HttpConfig(max_connections=16)
    assert (small.max_tcp, small.max_unauthenticated_tcp) == (12, 6)
    default = HttpConfig(max_connections=4096)
    assert (default.max_tcp, default.max_unauthenticated_tcp, default.send_timeout) == (3072, 64, 5.0)
