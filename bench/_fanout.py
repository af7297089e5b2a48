"""SSE fan-out subscribers, run as their own process: ``python -m bench._fanout SOCKET N OUT``.

Opens N connections to ``GET /api/v1/events`` on the daemon's Unix socket and reads them with one epoll
loop over non-blocking raw sockets (no event-loop library: its per-read cost would be measured as
latency). Parses only what it needs: the response head, chunked framing, and from each SSE event its
``event_id`` and ``updated_at``. The receipt time of an event is the wall time at which ``epoll_wait``
returned with its bytes readable. Prints ``ready OK FAILED`` once every connection got its first event
(or failed), then runs until SIGTERM (or MAX_SECONDS) and writes a JSON result to OUT.
"""

from __future__ import annotations

import array
import json
import re
import resource
import select
import signal
import socket
import sys
import time
from datetime import datetime

MAX_SECONDS = 300
# "ready" is printed once every connection got its first event or failed, or after this long (then the
# connections still silent are counted in `silent`).
READY_SECONDS = 20
_UPDATED = re.compile(rb'"updated_at"\s*:\s*"([^"]+)"')
_EVENT_ID = re.compile(rb'"event_id"\s*:\s*(\d+)')


def parse_ts(raw: bytes) -> float:
    """RFC 3339 with 'Z' -> epoch seconds."""
    return datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()


class Sub:
    __slots__ = ("sock", "buf", "head_done", "chunked", "body", "events", "first", "closed", "status",
                 "latencies", "last_id", "in_window")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""  # raw bytes not yet de-framed
        self.body = b""  # de-chunked SSE text not yet split into events
        self.head_done = False
        self.chunked = False
        self.status = 0
        self.events = 0
        self.first = False
        self.closed = False
        self.last_id = 0
        self.in_window = 0


def dechunk(sub: Sub) -> None:
    """Move complete chunks from ``sub.buf`` to ``sub.body``."""
    buf = sub.buf
    pos = 0
    out = []
    while True:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            break
        size = int(buf[pos:nl].split(b";", 1)[0], 16)
        start = nl + 2
        if len(buf) < start + size + 2:
            break
        out.append(buf[start : start + size])
        pos = start + size + 2
        if size == 0:
            sub.closed = True
            break
    sub.buf = buf[pos:]
    if out:
        sub.body += b"".join(out)


def _events(sub: Sub, ts_cache: dict[bytes, float]) -> list[tuple[int, float]]:
    """De-frame what ``sub`` has buffered; returns (event_id, updated_at or NaN) of each complete event."""
    if sub.chunked:
        dechunk(sub)
    else:
        sub.body += sub.buf
        sub.buf = b""
    body = sub.body.replace(b"\r\n", b"\n") if b"\r" in sub.body else sub.body
    if b"\n\n" not in body:
        sub.body = body
        return []
    *blocks, rest = body.split(b"\n\n")
    sub.body = rest
    out = []
    for block in blocks:
        if b"data:" not in block:
            continue  # retry:, comments
        m = _UPDATED.search(block)
        ts = float("nan")  # an idle project's current state has "updated_at": null
        if m is not None:
            raw = m.group(1)
            ts = ts_cache.get(raw) or ts_cache.setdefault(raw, parse_ts(raw))
        mid = _EVENT_ID.search(block)
        out.append((int(mid.group(1)) if mid else 0, ts))
    return out


def main() -> None:
    path, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    stop = [False]

    def on_term(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    ep = select.epoll()
    subs: dict[int, Sub] = {}
    failed = 0
    req = b"GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(req)
        except OSError:
            failed += 1
            s.close()
            continue
        s.setblocking(False)
        subs[s.fileno()] = Sub(s)
        ep.register(s.fileno(), select.EPOLLIN)

    ts_cache: dict[bytes, float] = {}
    fast: dict[bytes, list[tuple[int, float]]] = {}
    lat = array.array("d")  # (receipt - updated_at) seconds, per delivery
    recv_at = array.array("d")  # receipt wall time per delivery
    ids = array.array("q")
    stamps = array.array("d")  # updated_at of each delivery, epoch seconds
    refused = 0
    disconnected = 0
    ready_printed = False
    started = time.monotonic()
    first_pending = len(subs)
    while not stop[0] and time.monotonic() - started < MAX_SECONDS:
        try:
            ready = ep.poll(0.5)
        except InterruptedError:
            continue
        now = time.time()
        for fd, _mask in ready:
            sub = subs.get(fd)
            if sub is None:
                continue
            try:
                data = sub.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                sub.sock.close()
                del subs[fd]
                disconnected += 1
                if not sub.first:
                    first_pending -= 1
                continue
            sub.buf += data
            if not sub.head_done:
                end = sub.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = sub.buf[:end].lower()
                sub.status = int(head[9:12])
                sub.chunked = b"transfer-encoding: chunked" in head
                sub.buf = sub.buf[end + 4 :]
                sub.head_done = True
                if sub.status != 200:
                    refused += 1
                    ep.unregister(fd)
                    sub.sock.close()
                    del subs[fd]
                    first_pending -= 1
                    continue
            fresh = len(sub.buf) == len(data) and not sub.body
            got = fast.get(data) if fresh else None
            if got is None:
                got = _events(sub, ts_cache)
                if fresh and not sub.buf and not sub.body:
                    # Every subscriber receives the same bytes for an event: parse them once.
                    if len(fast) > 4096:
                        fast.clear()
                    fast[data] = got
            else:
                sub.buf = b""
            for eid, ts in got:
                sub.events += 1
                if not sub.first:
                    sub.first = True
                    first_pending -= 1
                    continue  # the current state sent on connect, not a publication
                if ts != ts:
                    continue  # no timestamp (another project's idle state)
                lat.append(now - ts)
                recv_at.append(now)
                ids.append(eid)
                stamps.append(ts)
        if not ready_printed and (first_pending <= 0 or time.monotonic() - started > READY_SECONDS):
            silent = sum(1 for x in subs.values() if not x.first)
            print(f"ready {len(subs) - silent} {failed + refused + silent}", flush=True)
            ready_printed = True
    if not ready_printed:
        print(f"ready {len(subs)} {failed + refused}", flush=True)
    with open(out, "w") as f:
        json.dump({"connected": n - failed, "refused": refused, "failed": failed,
                   "disconnected": disconnected, "open_at_end": len(subs),
                   "silent": sum(1 for x in subs.values() if not x.first),
                   "lat": lat.tolist(), "recv_at": recv_at.tolist(), "ids": ids.tolist(), "ts": stamps.tolist()}, f)
    print("done", flush=True)


if __name__ == "__main__":
    main()
