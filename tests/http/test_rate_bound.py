"""The per-connection rate bound: a client asking faster than ``HttpConfig.request_rate`` gets 429 with
Retry-After, is held back until its next request is allowed, and keeps its connection; one within the
bound never notices it.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from helpers.http import TOKEN, H11Client, make_app, memory_server
from syncsnapd.http import HttpConfig, open_unix_listener, serve_http

BOUND = HttpConfig(token=TOKEN, request_rate=10.0, request_burst=3)


async def test_beyond_the_bound_a_request_gets_429_with_retry_after_and_the_connection_stays_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_server(make_app(), BOUND) as (stream, _server):
        client = H11Client(stream)
        t0 = trio.current_time()
        burst = [await client.request("GET", "/ok") for _ in range(3)]
        refused = await client.request("GET", "/ok")
        after = await client.request("GET", "/ok")
        assert [r.status for r in burst] == [200, 200, 200]
        assert refused.status == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "connection" not in refused.headers  # kept alive
        # The next request is read once Retry-After has passed, not before.
        assert after.status == 200
        assert trio.current_time() - t0 == pytest.approx(1.0)


async def test_a_client_within_the_bound_never_sees_429(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_server(make_app(), BOUND) as (stream, _server):
        client = H11Client(stream)
        statuses = []
        for _ in range(3):  # a burst, then requests at the bound's rate
            statuses.append((await client.request("GET", "/ok")).status)
        for _ in range(30):
            await trio.sleep(0.1)
            statuses.append((await client.request("GET", "/ok")).status)
        assert statuses == [200] * 33


async def test_the_default_bound_lets_a_page_load_burst_through(autojump_clock: trio.testing.MockClock) -> None:
    # A dashboard opening a page, then polling once a second: never near the bound.
    async with memory_server(make_app(), HttpConfig(token=TOKEN)) as (stream, _server):
        client = H11Client(stream)
        statuses = [(await client.request("GET", "/ok")).status for _ in range(60)]
        for _ in range(30):
            await trio.sleep(1.0)
            statuses.append((await client.request("GET", "/ok")).status)
        assert statuses == [200] * 90


async def test_a_pipelining_client_over_a_real_socket_is_paced_not_cut(tmp_path: Path) -> None:
    # Five requests sent at once over a Unix socket, burst 2 at 10/s: two answered, one refused, then
    # (once its Retry-After has passed) the last two answered; every answer arrives, in order, on the
    # same connection.
    path = tmp_path / "s.sock"
    config = HttpConfig(token=TOKEN, request_rate=10.0, request_burst=2)
    listener = await open_unix_listener(path)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, make_app(), [(listener, "unix")], config)

        def client() -> list[int]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(path))
                s.sendall(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n" * 4
                          + b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return [int(code) for code in re.findall(rb"^HTTP/1\.1 (\d{3}) ", data, re.M)]

        statuses = await trio.to_thread.run_sync(client)
        server.begin_shutdown()
    assert statuses == [200, 200, 429, 200, 200]


async def test_the_429_body_says_what_happened(autojump_clock: trio.testing.MockClock) -> None:
    config = HttpConfig(token=TOKEN, request_rate=1.0, request_burst=1)
    async with memory_server(make_app(), config) as (stream, _server):
        client = H11Client(stream)
        await client.request("GET", "/ok")
        refused = await client.request("GET", "/ok")
        assert refused.status == 429
        error = json.loads(refused.body)["error"]
        assert "requests per second" in error["message"]
        assert refused.headers["retry-after"] == "1"


async def test_a_back_to_back_client_is_held_to_the_default_bound(autojump_clock: trio.testing.MockClock) -> None:
    # The benchmark's hammering poller: requests back to back, whatever the answers.
    async with memory_server(make_app(), HttpConfig(token=TOKEN)) as (stream, _server):
        client = H11Client(stream)
        t0 = trio.current_time()
        statuses = [(await client.request("GET", "/ok")).status for _ in range(400)]
        seconds = trio.current_time() - t0
    assert statuses[:100] == [200] * 100  # the burst
    assert statuses[100] == 429
    # From then on it is held to the sustained rate (500/s) however fast it asks: each 429 costs it a
    # second, in which its bucket refills to the burst.
    assert statuses.count(200) <= 100 + 500 * seconds
    assert seconds >= 1.0


def test_the_bound_is_configured_by_request_rate_and_request_burst(short_tmp: Path) -> None:
    """A user's `request_rate`/`request_burst` reach the real daemon: curl asking three times on one
    connection, with a burst of 2, gets 200, 200, then 429 `rate_limited`."""
    from helpers.daemon import start_daemon

    d = start_daemon(short_tmp, {}, extra_daemon="request_rate = 1\nrequest_burst = 2")
    try:
        url = "http://localhost/api/v1/health"
        out = d.curl("-w", "%{http_code} %{num_connects}\\n", *["-o", "/dev/null"] * 3, url, url, url).stdout.split()
        codes, connects = out[0::2], out[1::2]
        assert codes == ["200", "200", "429"]
        assert connects == ["1", "0", "0"]  # one connection, reused
    finally:
        assert d.stop() == 0
