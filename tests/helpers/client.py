"""Fixtures for the client, CLI and notifier tests.

- :class:`FakeDaemon`: a tiny in-process h11 server (a test double, see its docstring);
- :func:`progress_json`: progress objects shaped like the daemon's;
- :class:`LogTimes`: records the follower's log events with the (virtual) Trio time;
- :class:`PrivateBus` / :class:`Dunst`: a private D-Bus session bus and a real dunst under Xvfb.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import select
import shutil
import signal
import socket as stdsocket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket

# ----------------------------------------------------------------------------------------------------
# Progress objects
# ----------------------------------------------------------------------------------------------------

STATES = {1: "waiting", 2: "browsing", 3: "browsing", 4: "compressing", 5: "uploading"}


def progress_json(project: str | None = "docs", run: str | None = "r-19000000000-0001-abcd", *, step: int = 1,
                  state: str | None = None, percent: float = 0.0, event_id: int = 0,
                  snapshot: dict[str, Any] | None = None, error: dict[str, str] | None = None,
                  kind: str | None = None, steps: int = 6, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """A progress object; ``kind`` (restore, check, prune) makes it another kind of run's, with ``steps``."""
    if state is None:
        state = "idle" if step == 0 else STATES.get(step, "completed")
    p = {
        "event_id": event_id, "project": project, "run": run, "state": state, "step": step, "steps": steps,
        "percent": percent, "message": f"{state} {percent}", "files_done": 0, "files_total": 0,
        "bytes_done": 0, "bytes_total": 0, "started_at": None, "updated_at": None, "eta_seconds": None,
        "error": error, "snapshot": snapshot,
    }
    if kind is not None:
        p.update(kind=kind, result=result)
    return p


# ----------------------------------------------------------------------------------------------------
# The fake daemon
# ----------------------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One request the fake daemon received, at which (virtual) time."""

    time: float
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class _Stream:
    """One open stream of the fake: SSE bytes or WebSocket messages (``ws``), one per event."""

    project: str | None
    send: trio.MemorySendChannel[Any]
    ws: bool = False
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    socket: trio.abc.Stream | None = None  # under the WebSocket: closed when the stream is cut
    stalled: bool = False

    def encode(self, p: dict[str, Any]) -> Any:
        return json.dumps({"type": "progress", "progress": p}) if self.ws else _sse(p)


class _Gated(trio.abc.Stream):
    """The fake's side of a WebSocket: replays the request head, and once stalled moves no byte any more
    (so trio-websocket's reader does not answer pings either: a hung peer)."""

    def __init__(self, stream: trio.SocketStream, replay: bytes) -> None:
        self._stream = stream
        self._replay = replay
        self.stalled = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            data, self._replay = self._replay, b""
            await trio.lowlevel.checkpoint()
            return data
        data = bytes(await self._stream.receive_some(max_bytes))
        if self.stalled:
            await trio.sleep_forever()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.stalled:
            await trio.sleep_forever()
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class FakeDaemon:
    """A tiny h11 server speaking the subset of the daemon's API that ``follow`` uses, on a Unix socket:
    health, progress, projects, the SSE streams and the WebSocket (served by trio-websocket, as the
    daemon serves it: subscribe, snapshot).

    TEST DOUBLE, on purpose: it runs inside the test's own Trio run so that ``autojump_clock`` governs
    both sides and reconnect timings can be asserted to the exact virtual second, and it can be told to
    refuse streams with 503 while JSON works, or to stall, on demand; the real daemon (a subprocess on
    the real clock) cannot do either. Every other client test runs against a real syncsnapd. It follows
    docs/api.md: ``retry:``, ``id:``/``event: progress``/``data:``, replay from ``Last-Event-ID`` while the
    id is kept, otherwise ``event: gap`` and the current state.
    """

    def __init__(self, path: Path, projects: tuple[str, ...] = ("docs",)) -> None:
        self.path = path
        self.pid = 4242
        self.uptime = 100.0
        self.stream_status = 200
        self.hits: list[Hit] = []
        self.ws_messages: list[tuple[float, dict[str, Any]]] = []  # what WebSocket clients sent
        self.drop_snapshot_requests = False
        self.events: list[dict[str, Any]] = []
        self.replay_from = 1  # oldest event id still replayable
        self.latest: dict[str, dict[str, Any]] = {p: progress_json(p, None, step=0) for p in projects}
        self._next_id = 1
        self._streams: list[_Stream] = []
        self._scope: trio.CancelScope | None = None
        self._run_counter = 0

    # --- test controls -----------------------------------------------------------------------------

    def publish(self, **kw: Any) -> dict[str, Any]:
        p = progress_json(**{**kw, "event_id": self._next_id})
        self._next_id += 1
        self.events.append(p)
        if p.get("kind", "snapshot") == "snapshot":
            self.latest[p["project"]] = p  # other kinds of run do not replace a project's state
        for s in list(self._streams):
            if s.project in (None, p["project"]) and not s.stalled:
                try:
                    s.send.send_nowait(s.encode(p))
                except trio.WouldBlock:  # pragma: no cover
                    pass
        return p

    def resend(self, p: dict[str, Any]) -> None:
        """Send an event again on every open stream (a misbehaving transport)."""
        for s in self._streams:
            s.send.send_nowait(s.encode(p))

    def resume_ids(self) -> list[str | None]:
        """The resume point of each stream request: SSE ``Last-Event-ID``, WebSocket ``last_event_id``."""
        out: list[tuple[float, str | None]] = [
            (h.time, h.headers.get("last-event-id")) for h in self.hits
            if h.target.endswith("/stream") or h.target.startswith("/api/v1/events")]
        out += [(t, None if m.get("last_event_id") is None else str(m["last_event_id"]))
                for t, m in self.ws_messages if m.get("op") == "subscribe"]
        return [r for _, r in sorted(out, key=lambda x: x[0])]

    def cut_streams(self) -> None:
        for s in self._streams:
            s.cancel.cancel()

    def stall(self) -> None:
        """Freeze the open streams: still open, but nothing moves on them any more (a hung peer)."""
        for s in self._streams:
            s.stalled = True
            if isinstance(s.socket, _Gated):
                s.socket.stalled = True

    def restart(self) -> None:
        """Behave like a new daemon process: new pid, ids from 1, idle projects, streams cut."""
        self.cut_streams()
        self.pid += 1
        self.uptime = 0.0
        self._next_id = 1
        self.events.clear()
        self.replay_from = 1
        self.latest = {p: progress_json(p, None, step=0) for p in self.latest}

    def hits_of(self, kind: str) -> list[float]:
        """Times of the requests of one kind: ``stream``, ``poll``, ``operation`` or ``health``."""
        def kind_of(h: Hit) -> str:
            if h.target.endswith("/stream") or h.target.startswith(("/api/v1/events", "/api/v1/ws")):
                return "stream"
            if h.target.endswith("/health"):
                return "health"
            if h.target.startswith("/api/v1/operations/"):
                return "operation"
            return "poll"
        return [h.time for h in self.hits if kind_of(h) == kind]

    # --- serving -----------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Bound synchronously: trio binds Unix sockets in a worker thread, and autojump_clock would jump
        # ahead while that thread runs.
        raw = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        raw.bind(str(self.path))
        raw.listen(16)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        with trio.CancelScope() as self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    await trio.serve_listeners(self._handle, [listener], handler_nursery=nursery)
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
                    self.path.unlink(missing_ok=True)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await _next(conn, stream)
                if not isinstance(req, h11.Request):
                    return
                while not isinstance(await _next(conn, stream), h11.EndOfMessage):
                    pass
                target = req.target.decode()
                headers = {k.decode().lower(): v.decode() for k, v in req.headers}
                self.hits.append(Hit(trio.current_time(), req.method.decode(), target, headers))
                if target == "/api/v1/ws" and self.stream_status == 200:
                    head = b"%s %s HTTP/1.1\r\n" % (req.method, req.target)
                    head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in req.headers.raw_items())
                    await self._ws_session(_Gated(stream, head + b"\r\n" + conn.trailing_data[0]))
                    return
                if await self._respond(conn, stream, target, headers):
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await stream.aclose()

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, target: str,
                       headers: dict[str, str]) -> bool:
        """Answer one request; True when the connection is done."""
        path = target.split("?")[0]
        parts = path.strip("/").split("/")
        if path == "/api/v1/health":
            return await _json(conn, stream, 200, {"status": "ok", "version": "0.1.0", "pid": self.pid,
                                                   "uptime_seconds": self.uptime, "projects": len(self.latest)})
        if path == "/api/v1/projects":
            return await _json(conn, stream, 200, {"projects": [
                {"id": p, "path": f"/x/{p}", "state": v["state"], "progress": v, "last_snapshot": None}
                for p, v in self.latest.items()]})
        if len(parts) == 4 and parts[2] == "operations":
            mine = [e for e in self.events if e["run"] == parts[3] and e.get("kind", "snapshot") != "snapshot"]
            if not mine:
                return await _json(conn, stream, 404, {"error": {"code": "not_found",
                                                                 "message": f"No recent operation run {parts[3]!r}."}})
            return await _json(conn, stream, 200, mine[-1])
        if len(parts) == 5 and parts[4] == "progress":
            if parts[3] not in self.latest:
                return await _json(conn, stream, 404, {"error": {"code": "not_found", "message": "No project."}})
            return await _json(conn, stream, 200, self.latest[parts[3]])
        if path == "/api/v1/ws":  # refused (stream_status): the handshake gets the error answer
            await _json(conn, stream, self.stream_status,
                        {"error": {"code": "unavailable", "message": "Too many connections."}})
            return True
        if path == "/api/v1/events" or (len(parts) == 6 and parts[5] == "stream"):
            project = None if path == "/api/v1/events" else parts[3]
            if project is not None and project not in self.latest:
                await _json(conn, stream, 404, {"error": {"code": "not_found", "message": f"No project named {project!r}."}})
                return True
            if self.stream_status != 200:
                await _json(conn, stream, self.stream_status,
                            {"error": {"code": "unavailable", "message": "Too many connections."}})
                return True
            await self._stream(conn, stream, project, headers.get("last-event-id"))
            return True
        return await _json(conn, stream, 404, {"error": {"code": "not_found", "message": "No such path."}})

    async def _stream(self, conn: h11.Connection, stream: trio.SocketStream, project: str | None,
                      last_id: str | None) -> None:
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
            ("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")])))
        send, receive = trio.open_memory_channel[Any](1000)
        s = _Stream(project, send)
        head = b"retry: 2000\n\n"
        gap, initial = self._initial(project, last_id)
        if gap:
            head += f'event: gap\ndata: {{"last_event_id": {last_id}}}\n\n'.encode()
        await stream.send_all(conn.send(h11.Data(data=head + b"".join(_sse(e) for e in initial))))
        self._streams.append(s)
        try:
            with s.cancel:
                async for chunk in receive:
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
        finally:
            self._streams.remove(s)


    def _initial(self, project: str | None, last_id: str | None) -> tuple[bool, list[dict[str, Any]]]:
        """What a new stream starts with: (gap?, events), as docs/api.md says."""
        match = [e for e in self.events if project in (None, e["project"])]
        if last_id is not None and self.replay_from - 1 <= int(last_id) <= self._next_id - 1:
            return False, [e for e in match if e["event_id"] > int(last_id)]
        return last_id is not None, sorted((v for p, v in self.latest.items() if project in (None, p)),
                                           key=lambda v: v["event_id"])

    async def _ws_session(self, stream: _Gated) -> None:
        async with trio.open_nursery() as nursery:
            try:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                ws = await request.accept()
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):  # pragma: no cover
                nursery.cancel_scope.cancel()
                return
            current: _Stream | None = None
            try:
                while True:
                    msg = json.loads(await ws.get_message())
                    self.ws_messages.append((trio.current_time(), msg))
                    if msg["op"] == "subscribe":
                        projects = msg.get("projects", "*")
                        project = None if projects == "*" else projects[0]
                        if project is not None and project not in self.latest:
                            await ws.send_message(json.dumps({"type": "error", "op": "subscribe", "id": msg.get("id"),
                                                              "error": {"code": "not_found",
                                                                        "message": f"No project named {project!r}."}}))
                            continue
                        if current is not None:  # replaced, not cut
                            self._streams.remove(current)
                            current.cancel.cancel()
                        last = msg.get("last_event_id")
                        gap, initial = self._initial(project, None if last is None else str(last))
                        send, receive = trio.open_memory_channel[Any](1000)
                        current = _Stream(project, send, ws=True, socket=stream)
                        await ws.send_message(json.dumps({"type": "reply", "op": "subscribe", "id": msg.get("id"),
                                                          "ok": True}))
                        if gap:
                            await ws.send_message(json.dumps({"type": "gap", "last_event_id": last}))
                        for e in initial:
                            await ws.send_message(current.encode(e))
                        self._streams.append(current)
                        nursery.start_soon(self._ws_push, ws, current, receive)
                    elif msg["op"] == "snapshot":
                        if self.drop_snapshot_requests:  # the connection breaks before the answer
                            await stream.aclose()
                            return
                        self._run_counter += 1
                        run = f"r-{0x19000000100 + self._run_counter:x}-{self._run_counter:04d}-fake"
                        p = self.publish(project=msg["project"], run=run, step=1)
                        await ws.send_message(json.dumps({"type": "reply", "op": "snapshot", "id": msg.get("id"),
                                                          "ok": True, "run": run, "progress": p}))
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                pass
            finally:
                if current is not None and current in self._streams:
                    self._streams.remove(current)
                nursery.cancel_scope.cancel()

    async def _ws_push(self, ws: trio_websocket.WebSocketConnection, s: _Stream,
                       receive: trio.MemoryReceiveChannel[Any]) -> None:
        try:
            with s.cancel:
                async for text in receive:
                    await ws.send_message(text)
                return
            # Cut (cut_streams): the connection ends abruptly, as a crash or a dropped link would end it.
            if s in self._streams and s.socket is not None:
                await s.socket.aclose()
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
            pass
        finally:
            if s in self._streams:
                self._streams.remove(s)


def _sse(p: dict[str, Any]) -> bytes:
    return f"id: {p['event_id']}\nevent: progress\ndata: {json.dumps(p)}\n\n".encode()


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return ev


async def _json(conn: h11.Connection, stream: trio.SocketStream, status: int, obj: Any) -> bool:
    body = json.dumps(obj).encode()
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
        ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]))
        + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    return False


# ----------------------------------------------------------------------------------------------------
# The console script, as users run it
# ----------------------------------------------------------------------------------------------------

SYNCSNAP = str(Path(sys.executable).parent / "syncsnap")


def cli(d: Any, *args: str, env: dict[str, str] | None = None, timeout: float = 30,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``syncsnap ARGS`` with the daemon ``d``'s environment (its discovery file), output captured (a pipe)."""
    env = env if env is not None else (d.env if d else dict(os.environ))
    return subprocess.run([SYNCSNAP, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


class Pty:
    """The command in a pseudo-terminal of 80x30, as a person at a terminal runs it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 80, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env={**env, "TERM": "xterm-256color"})
        os.close(slave)
        self.out = b""

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; output: {self.out[-2000:]!r}")
            if not self._read(left):
                raise AssertionError(f"EOF before {needle!r}; output: {self.out[-2000:]!r}")
        return self.out

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        self.out += chunk
        return bool(chunk)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
            pass
        code = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        os.close(self.master)
        return code

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")


# ----------------------------------------------------------------------------------------------------
# Log events with virtual times
# ----------------------------------------------------------------------------------------------------


class LogTimes(logging.Handler):
    """Collects ``(trio time, follow_event)`` from the ``syncsnap.follow`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "follow_event", None)
        if event is not None:
            self.records.append((trio.current_time(), event))

    def times(self, event: str) -> list[float]:
        return [t for t, e in self.records if e == event]


@pytest.fixture
def follow_log() -> Iterator[LogTimes]:
    handler = LogTimes()
    logger = logging.getLogger("syncsnap.follow")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


# ----------------------------------------------------------------------------------------------------
# A fault-injecting proxy in front of a real daemon
# ----------------------------------------------------------------------------------------------------


class FaultyProxy:
    """Forwards a Unix socket to the real daemon's, and breaks connections on demand.

    Not a daemon double: every byte comes from the real syncsnapd. The proxy only plays the network's
    part: ``cut()`` closes every open connection at once (as a crash or a dropped link would), and
    ``stall()`` stops moving bytes on the open connections while keeping them open (a hung peer).
    New connections after either are forwarded normally.
    """

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        self.connections = 0
        self._scopes: list[trio.CancelScope] = []
        self._stalled: list[trio.Event] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raw = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        raw.bind(str(self.path))
        raw.listen(64)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, [listener], handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_unix_socket(self.target)
        except OSError:
            await client.aclose()
            return
        stall = trio.Event()
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            self._stalled.append(stall)
            async with client, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, stall, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, stall, nursery.cancel_scope)
        self._scopes.remove(scope)
        self._stalled.remove(stall)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, stall: trio.Event,
                    done: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                if stall.is_set():
                    # Hold the bytes, but still notice the peer closing (EOF ends the connection).
                    while await src.receive_some(65536):
                        pass
                    break
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()

    def cut(self) -> int:
        """Close every open connection; returns how many."""
        live = [scope for scope in self._scopes if not scope.cancel_called]
        for scope in live:
            scope.cancel()
        return len(live)

    def stall(self) -> int:
        """Freeze every open connection (no byte moves any more, none is closed); returns how many."""
        live = [ev for ev in self._stalled if not ev.is_set()]
        for ev in live:
            ev.set()
        return len(live)


# ----------------------------------------------------------------------------------------------------
# curl as an independent reference reader of a stream
# ----------------------------------------------------------------------------------------------------


class CurlEvents:
    """``curl -N`` on the daemon's ``/api/v1/events``: the reference every event is compared with."""

    def __init__(self, socket: str, target: str = "/api/v1/events") -> None:
        self.argv = ["curl", "-sS", "-N", "--unix-socket", socket, f"http://localhost{target}"]
        self.events: list[dict[str, Any]] = []
        self.changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs curl; started once the first event (the current state) arrived."""
        proc = await trio.lowlevel.open_process(self.argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        buf = b""
        started = False
        try:
            async for chunk in proc.stdout:
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                                  if line and not line.startswith(":") and ": " in line)
                    if fields.get("event") == "progress":
                        self.events.append(json.loads(fields["data"]))
                        self.changed.set()
                        self.changed = trio.Event()
                        if not started:
                            started = True
                            task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                proc.kill()
                await proc.wait()

    async def wait_for(self, pred: Any) -> dict[str, Any]:
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            await self.changed.wait()


# ----------------------------------------------------------------------------------------------------
# A private D-Bus session bus, and dunst under Xvfb
# ----------------------------------------------------------------------------------------------------

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# Every urgency gets its own message format, so `dunstctl history` shows the urgency dunst applied;
# timeout 0 keeps notifications displayed until the test closes them (nothing expires mid-test).
DUNSTRC = """[global]
    format = "%s\\n%b"
[urgency_low]
    format = "LOW %s\\n%b"
    timeout = 0
[urgency_normal]
    format = "NORMAL %s\\n%b"
    timeout = 0
[urgency_critical]
    format = "CRITICAL %s\\n%b"
    timeout = 0
"""


@dataclass
class PrivateBus:
    """``dbus-daemon`` with its own config and socket under the test's temp dir (no service files)."""

    address: str
    pid: int

    @classmethod
    def start(cls, base: Path) -> PrivateBus:
        sock = base / "bus.sock"
        conf = base / "bus.conf"
        conf.write_text(BUS_CONFIG.format(path=sock))
        out = subprocess.run(["dbus-daemon", f"--config-file={conf}", "--fork", "--print-address=1",
                              "--print-pid=1", "--nopidfile"], capture_output=True, text=True, check=True,
                             timeout=10).stdout.split()
        return cls(address=f"unix:path={sock}", pid=int(out[1]))

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "DBUS_SESSION_BUS_ADDRESS": self.address}

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


class Dunst:
    """A real notification server: dunst on a private Xvfb display, on the given bus."""

    def __init__(self, base: Path, bus: PrivateBus) -> None:
        self.env = bus.env({k: v for k, v in os.environ.items() if k not in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS")})
        read, write = os.pipe()
        self.xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-nolisten", "tcp", "-nolisten", "unix",
                                      "-screen", "0", "800x600x24"], pass_fds=(write,),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write)
        with os.fdopen(read) as f:
            display = f.readline().strip()
        if not display:
            self.xvfb.kill()
            raise RuntimeError("Xvfb did not start")
        self.env["DISPLAY"] = f":{display}"
        rc = base / "dunstrc"
        rc.write_text(DUNSTRC)
        self.proc = subprocess.Popen(["dunst", "-config", str(rc)], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(base / "dunst.log", "wb"))
        deadline = time.monotonic() + 10
        while self.ctl("count", "displayed", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"dunst did not start: {(base / 'dunst.log').read_text()}")
            time.sleep(0.02)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["dunstctl", *args], env=self.env, capture_output=True, text=True, check=check,
                              timeout=10)

    def displayed(self) -> int:
        return int(self.ctl("count", "displayed").stdout.strip())

    def close_all_and_history(self) -> list[dict[str, Any]]:
        """Close what is displayed (so it moves to the history), then the history, oldest first."""
        self.ctl("close-all")
        entries = json.loads(self.ctl("history").stdout)["data"][0]
        return sorted(({k: v["data"] for k, v in e.items()} for e in entries), key=lambda e: e["timestamp"])

    def stop(self) -> None:
        for p in (self.proc, self.xvfb):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def private_bus(short_tmp: Path) -> Iterator[PrivateBus]:
    bus = PrivateBus.start(short_tmp)
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture
def dunst(short_tmp: Path, private_bus: PrivateBus) -> Iterator[Dunst]:
    if not (shutil.which("dunst") and shutil.which("Xvfb") and shutil.which("dunstctl")):
        pytest.fail("dunst, dunstctl and Xvfb are needed (scripts/install-system-deps.sh installs them)")
    d = Dunst(short_tmp, private_bus)
    try:
        yield d
    finally:
        d.stop()
