"""Progress poller, run as its own process: ``python -m bench._poller HOST PORT TOKEN PATH OUT INTERVAL_MS``.

One keep-alive TCP connection, one request at a time, a blocking socket and minimal parsing, so the
client adds little to what it measures. Each request is recorded as (send time, latency) in monotonic
ns, written to OUT as an array of signed 64-bit pairs when the process gets SIGTERM (or after
MAX_SECONDS). With INTERVAL_MS > 0 requests start on a fixed schedule (a late one starts at once);
0 means back to back. Prints "ready" once the first response arrived.
"""

from __future__ import annotations

import array
import signal
import socket
import sys
import time

MAX_SECONDS = 900  # bounded even if the parent never signals


def main() -> None:
    host, port, token, path, out, interval_ms = sys.argv[1:7]
    interval = int(float(interval_ms) * 1e6)
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
           f"User-Agent: syncsnap-bench\r\n\r\n").encode()
    stop = [False]

    def on_term(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    rec = array.array("q")
    errors = reconnects = 0

    def connect() -> socket.socket:
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    sock = connect()
    end = time.monotonic() + MAX_SECONDS
    next_at = time.monotonic_ns()
    ready = False
    while not stop[0] and time.monotonic() < end:
        if interval:
            now = time.monotonic_ns()
            if now < next_at:
                time.sleep((next_at - now) / 1e9)
            next_at = max(next_at + interval, time.monotonic_ns())
        t0 = time.monotonic_ns()
        try:
            sock.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                body += chunk
            t1 = time.monotonic_ns()
        except (OSError, ValueError):
            if stop[0]:
                break
            errors += 1
            reconnects += 1
            sock.close()
            time.sleep(0.01)
            sock = connect()
            continue
        if status != 200:
            errors += 1
        rec.append(t0)
        rec.append(t1 - t0)
        if not ready:
            print("ready", flush=True)
            ready = True
        if close:
            reconnects += 1
            sock.close()
            sock = connect()
    with open(out, "wb") as f:
        rec.tofile(f)
    print(f"done {len(rec) // 2} {errors} {reconnects}", flush=True)


if __name__ == "__main__":
    main()
