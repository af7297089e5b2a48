"""Serving benchmarks: wrk against the daemon's JSON endpoint and against hypercorn (Trio worker)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._proc import terminate

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class WrkResult:
    target: str
    req_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int

    @property
    def ok(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(target: str, text: str) -> WrkResult:
    req_s = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    serr = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        target, req_s,
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        int(total.group(1)) if total else 0,
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(x) for x in serr.groups()) if serr else 0,
    )


def run_wrk(target: str, url: str, token: str, *, threads: int = 2, conns: int = 32,
            seconds: int = 10) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            "-H", f"Authorization: Bearer {token}", "-H", "Host: 127.0.0.1", url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if r.returncode != 0 or "Requests/sec" not in r.stdout:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    return parse_wrk(target, r.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hypercorn:
    """``hypercorn --worker-class trio`` serving :mod:`bench._hypercorn_app` on a loopback port."""

    def __init__(self, body: bytes, token: str, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.body_file = work / "body.json"
        self.body_file.write_bytes(body)
        self.token = token
        self.port = free_port()
        self.log = work / "hypercorn.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/projects/bench/progress"

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ, BENCH_BODY_FILE=str(self.body_file), BENCH_TOKEN=self.token,
                   PYTHONPATH=str(REPO))
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--workers", "1",
                 "--bind", f"127.0.0.1:{self.port}", "bench._hypercorn_app:app"],
                env=env, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        req = (f"GET /api/v1/projects/bench/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {self.token}\r\nConnection: close\r\n\r\n").encode()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hypercorn exited: {self.log.read_text()[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(req)
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                if data.startswith(b"HTTP/1.1 200") and data.endswith(self_body_tail(self.body_file)):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("hypercorn did not answer in time")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)


def self_body_tail(p: Path) -> bytes:
    return p.read_bytes()[-16:]
