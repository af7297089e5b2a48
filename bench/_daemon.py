"""Starting syncsnapd as a subprocess on a temporary configuration, and timing snapshots through its API.

A snapshot is timed from just before the ``POST /api/v1/projects/{id}/snapshots`` request is sent to the
receipt of that run's terminal event on ``/api/v1/projects/{id}/progress/stream`` (opened first, and
known to be subscribed once its first event arrived).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._http import Connection, Endpoint, get_json
from ._proc import status_bytes

TERMINAL = frozenset({"completed", "failed", "cancelled"})
# BENCH_SYNCSNAPD: another executable speaking the same API (for testing the harness itself).
SYNCSNAPD = Path(os.environ.get("BENCH_SYNCSNAPD") or Path(sys.executable).parent / "syncsnapd")


class DaemonError(RuntimeError):
    pass


def _toml_str(v: str) -> str:
    return json.dumps(v)  # a JSON string is a valid TOML basic string for our paths


def _parse_tcp(v: Any) -> tuple[str, int] | None:
    if not v:
        return None
    if isinstance(v, str):
        host, _, port = v.rpartition(":")
        return host.strip("[]"), int(port)
    if isinstance(v, (list, tuple)):
        return str(v[0]), int(v[1])
    if isinstance(v, dict):
        return str(v.get("host", "127.0.0.1")), int(v["port"])
    raise DaemonError(f"cannot parse tcp address {v!r}")


@dataclass
class Daemon:
    """One syncsnapd process with its own store, state, runtime and config dirs under ``work``."""

    work: Path
    projects: dict[str, Path]
    tcp: bool = True
    proc: subprocess.Popen[bytes] | None = None
    unix: Endpoint | None = None
    http: Endpoint | None = None
    token: str | None = None
    runtime: Path | None = None
    log_path: Path | None = None
    started_seconds: float = 0.0
    discovery: dict[str, Any] = field(default_factory=dict)
    # Extra [daemon] keys to try (e.g. max_connections for 1,000 subscribers). A daemon that rejects one
    # (configuration error, exit 2, naming the key) is started again without it; `dropped` lists those.
    extra: dict[str, int | str | bool] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    # `syncsnapd init` arguments (e.g. ("--encrypt",)) run on the configuration before the daemon starts.
    init_args: tuple[str, ...] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        while True:
            try:
                return self._start(timeout)
            except DaemonError as exc:
                bad = [k for k in self.extra if f"daemon.{k}:" in str(exc)]
                if self.proc is None or self.proc.returncode != 2 or not bad:
                    raise
                for k in bad:
                    del self.extra[k]
                    self.dropped.append(k)

    def _start(self, timeout: float) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        # Unix socket paths are limited to 107 bytes: keep the runtime dir short, under /tmp.
        self.runtime = Path(tempfile.mkdtemp(prefix="ssb-"))
        os.chmod(self.runtime, 0o700)
        for d in ("config", "data", "state"):
            (self.work / d).mkdir()
        conf = self.work / "syncsnapd.toml"
        lines = [
            "[daemon]",
            f"socket = {_toml_str(str(self.runtime / 'syncsnap' / 'syncsnapd.sock'))}",
            f"tcp = {_toml_str('127.0.0.1:0' if self.tcp else '')}",
            f"store = {_toml_str(str(self.work / 'store'))}",
            f"state_dir = {_toml_str(str(self.work / 'state'))}",
            f"token_file = {_toml_str(str(self.work / 'config' / 'token'))}",
        ]
        lines += [f"{k} = {json.dumps(v).replace('{work}', str(self.work))}" for k, v in self.extra.items()]
        for pid, path in self.projects.items():
            lines += ["", "[[projects]]", f"id = {_toml_str(pid)}", f"path = {_toml_str(str(path))}"]
        conf.write_text("\n".join(lines) + "\n")
        env = dict(
            os.environ,
            XDG_RUNTIME_DIR=str(self.runtime),
            XDG_CONFIG_HOME=str(self.work / "config"),
            XDG_DATA_HOME=str(self.work / "data"),
            XDG_STATE_HOME=str(self.work / "state"),
        )
        self.log_path = self.work / "syncsnapd.log"
        if self.init_args is not None:
            init = subprocess.run([str(SYNCSNAPD), "init", *self.init_args, "--config", str(conf)], env=env,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if init.returncode != 0:
                raise DaemonError(f"syncsnapd init {' '.join(self.init_args)}: {init.stdout[-600:]}{init.stderr[-600:]}")
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen([str(SYNCSNAPD), "--config", str(conf)], env=env,
                                         stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        disc = self.runtime / "syncsnap" / "syncsnapd.json"
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise DaemonError(f"syncsnapd exited {self.proc.returncode} at start: {self.log_tail()}")
            if time.perf_counter() > deadline:
                self.stop()
                raise DaemonError(f"syncsnapd did not write {disc} within {timeout:.0f} s: {self.log_tail()}")
            try:
                self.discovery = json.loads(disc.read_text())
                if self.discovery.get("socket"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        self.unix = Endpoint(unix=str(self.discovery["socket"]))
        tcp = _parse_tcp(self.discovery.get("tcp"))
        if tcp is not None:
            token_file = Path(self.discovery.get("token_file") or self.work / "config" / "token")
            self.token = token_file.read_text().strip()
            self.http = Endpoint(tcp=tcp, token=self.token)
        while True:
            try:
                health = trio.run(get_json, self.unix, "/api/v1/health")
                if health.get("status") == "ok":
                    break
            except (OSError, ValueError, RuntimeError):
                pass
            if time.perf_counter() > deadline:
                self.stop()
                raise DaemonError(f"GET /api/v1/health never answered ok: {self.log_tail()}")
            time.sleep(0.02)
        self.started_seconds = time.perf_counter() - t0

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    def status(self, key: str) -> int | None:
        """A ``VmRSS``/``VmHWM`` style line of /proc/PID/status, in bytes."""
        return status_bytes(self.pid, key)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM and wait (the daemon promises exit within 5 s). Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)
        return self.proc.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class Terminals:
    """Terminal events seen on a stream, by run id; ``wait_for`` wakes when a given run's arrives."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, int, dict[str, Any]]] = {}
        self._changed = trio.Event()

    def add(self, run: str, t: float, tn: int, obj: dict[str, Any]) -> None:
        self.seen[run] = (t, tn, obj)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, run: str) -> tuple[float, int, dict[str, Any]]:
        while run not in self.seen:
            await self._changed.wait()
        return self.seen[run]


@dataclass
class SnapshotRun:
    seconds: float
    run: str
    final: dict[str, Any]
    events: int
    rss_samples: list[int] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)  # monotonic ns at POST and at terminal receipt
    # (seconds since the POST was sent, state, step, files_done, bytes_done) of each event received
    timeline: list[tuple[float, str, int, int, int]] = field(default_factory=list)


async def timed_snapshot(endpoint: Endpoint, project: str, *, limit_seconds: float = 600.0,
                         rss_of: Daemon | None = None, rss_every: float = 0.02) -> SnapshotRun:
    """POST a snapshot and wait for its terminal event; optionally sample the daemon's VmRSS meanwhile."""
    stream_path = f"/api/v1/projects/{project}/progress/stream"
    first = trio.Event()
    terminal = Terminals()
    count = [0]
    samples: list[int] = []
    seen: list[tuple[float, dict[str, Any]]] = []
    busy_run: list[str] = []

    async with Connection(endpoint) as sse, Connection(endpoint) as post, trio.open_nursery() as nursery:

        async def reader() -> None:
            async for _name, obj in sse.sse(stream_path):
                t, tn = time.perf_counter(), time.monotonic_ns()
                count[0] += 1
                seen.append((t, obj))
                if not first.is_set() and obj.get("state") not in TERMINAL | {"idle"}:
                    busy_run.append(obj.get("run") or "")
                first.set()
                if obj.get("state") in TERMINAL and obj.get("run"):
                    terminal.add(obj["run"], t, tn, obj)

        async def sampler() -> None:
            assert rss_of is not None
            while True:
                v = rss_of.status("VmRSS")
                if v is not None:
                    samples.append(v)
                await trio.sleep(rss_every)

        nursery.start_soon(reader)
        with trio.fail_after(30):
            await first.wait()
        if busy_run:
            # A run the bench did not ask for (a watcher, a start-up check) is in progress: let it end.
            with trio.fail_after(limit_seconds):
                await terminal.wait_for(busy_run[0])
        if rss_of is not None:
            nursery.start_soon(sampler)
        count[0] = 0
        seen.clear()
        t0, t0n = time.perf_counter(), time.monotonic_ns()
        resp = await post.json("POST", f"/api/v1/projects/{project}/snapshots", expect=(202,))
        run = resp["run"]
        # The receipt time is taken by the reader when the event arrives.
        with trio.fail_after(limit_seconds):
            t1, t1n, final = await terminal.wait_for(run)
        nursery.cancel_scope.cancel()
    timeline = [(round(t - t0, 4), o.get("state", ""), o.get("step", 0), o.get("files_done", 0),
                 o.get("bytes_done", 0)) for t, o in seen if o.get("run") == run]
    return SnapshotRun(t1 - t0, run, final, count[0], samples, (t0n, t1n), timeline)
