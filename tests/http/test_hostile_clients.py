"""Clients that pin connections, against a real daemon (issue 11, defect 1): a local user without the token
opens connections, pipelines requests on each and never reads. The owner on the Unix socket must still be
served, and the pinned connections must be closed once their writes stall for ``send_timeout`` (5 s).

Wall-clock bounds here are generous on purpose; the exact times are asserted in process, under
``autojump_clock``, in ``test_send_deadline.py``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers.daemon import DaemonProcess, make_tree

# max_connections 32: the Unix socket keeps 8, TCP may take 24, of them 12 without a token.
MAX_CONNECTIONS = 32
MAX_UNAUTHENTICATED = 12
ATTACKERS = 40
# A few thousand pipelined requests: their answers (401 or 200, 200-400 bytes each) are far more than the
# client's 2 KiB receive buffer and the daemon's send buffer hold, so the daemon's writes stall.
PIPELINED = 3000


def pinned_connections(address: str, count: int, request: bytes) -> Iterator[socket.socket]:
    """Open ``count`` TCP connections that each pipeline ``PIPELINED`` copies of ``request`` and never
    read (a small receive buffer makes the daemon's writes stall quickly)."""
    host, port = address.rsplit(":", 1)
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.connect((host, int(port)))
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.send(request * PIPELINED)
        yield s


def http_connections(d: DaemonProcess) -> int:
    """Open HTTP connections as the daemon's /metrics counts them (this request's own included)."""
    out = d.curl("-sS", "http://localhost/metrics").stdout
    line = next(line for line in out.splitlines() if line.startswith("syncsnap_http_connections "))
    return int(float(line.split()[1]))


def owner_status(d: DaemonProcess, path: str = "/api/v1/projects") -> int:
    r = d.curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://localhost{path}")
    return int(r.stdout or 0)


def tcp_status(d: DaemonProcess, token: str | None) -> int:
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *auth,
                        f"http://{d.tcp}/api/v1/health"], capture_output=True, text=True, timeout=30)
    return int(r.stdout or 0)


def wait_for(condition: Any, seconds: float) -> float:
    """Poll ``condition`` (a real daemon exposes no event to wait on) until true; return the time taken,
    or fail after ``seconds``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, "condition not met in time"
        time.sleep(0.1)
    return time.monotonic() - start


def test_pinned_tcp_connections_without_token_cannot_lock_out_the_owner(
    daemon_factory: Any, short_tmp: Path
) -> None:
    make_tree(short_tmp / "docs", files=3)
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs"},
                                      extra_daemon=f"max_connections = {MAX_CONNECTIONS}")
    request = b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n"  # no token: 401 each
    attackers = list(pinned_connections(d.tcp, ATTACKERS, request))
    try:
        wait_for(lambda: http_connections(d) >= MAX_UNAUTHENTICATED + 1, 10)
        # The owner is served, whatever the attackers hold; TCP without a token is over its budget.
        assert owner_status(d) == 200
        assert owner_status(d, "/api/v1/projects/docs/progress") == 200
        assert http_connections(d) == MAX_UNAUTHENTICATED + 1
        assert tcp_status(d, None) == 503
        # The pinned connections are closed once their writes stall for send_timeout (5 s).
        took = wait_for(lambda: http_connections(d) == 1, 30)
        assert took < 30
        assert tcp_status(d, d.token) == 200
    finally:
        for s in attackers:
            s.close()


def test_pinned_tcp_connections_with_the_token_leave_the_unix_socket_its_share(
    daemon_factory: Any, short_tmp: Path
) -> None:
    make_tree(short_tmp / "docs", files=3)
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs"},
                                      extra_daemon=f"max_connections = {MAX_CONNECTIONS}")
    request = f"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {d.token}\r\n\r\n".encode()
    tcp_share = MAX_CONNECTIONS - MAX_CONNECTIONS // 4
    attackers: list[socket.socket] = []
    try:
        # In batches smaller than the unauthenticated budget: each connection leaves that budget when its
        # first request (with the token) is answered.
        for _ in range(ATTACKERS // 6 + 1):
            attackers += pinned_connections(d.tcp, 6, request)
            expected = min(len(attackers), tcp_share) + 1
            wait_for(lambda: http_connections(d) >= expected, 10)  # noqa: B023 (used at once)
        assert owner_status(d) == 200
        assert http_connections(d) == tcp_share + 1
        wait_for(lambda: http_connections(d) == 1, 30)
    finally:
        for s in attackers:
            s.close()
