"""``follow``: every progress event, in order, once, across dropped connections and daemon restarts.

The transport is the daemon's SSE stream (``/api/v1/events`` or a project's ``.../progress/stream``),
or with ``transport="ws"`` its WebSocket (``/api/v1/ws``, a ``subscribe`` with ``last_event_id``); both
carry the same events with the same ids, and everything below holds for both. When the stream is lost, :class:`Follower` reconnects with ``Last-Event-ID`` (the daemon then replays
exactly what was missed), waiting 1, 2, 4, 8, 16 s before the successive attempts (doubling up to
``backoff_max``, each stretched by a little random jitter). When the 5th attempt in a row fails it falls
back to polling the JSON progress endpoint every second, tries the stream again every 30 s (and at once
when the daemon answers again after polls failed), and goes back to streaming as soon as that works.

Both transports carry the same daemon-wide event ids, so one rule keeps the output clean: an event is
yielded only if its id is above the last one yielded (never twice, never out of order). Ids restart when
a daemon that does not keep its event log restarts (it then answers our resume with its ``gap`` event, as
for any resume it cannot honour); that, and a run that ended unseen between two polls, are *gaps*: the
next event of each affected project is its current state, with ``gap=True``.

The follower is a plain async iterator with no background task: each ``__anext__`` does the reads,
waits and reconnects needed for the next event, so cancelling the caller cancels everything.

Runs of other kinds than snapshots (restore, check, prune) go out on the same streams without replacing
the project's state, so the ordering bookkeeping is kept per *lane*: a project's snapshot runs form one
lane, and each operation run its own.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import quote

import trio

from ._errors import (
    ConnectionLost,
    DaemonError,
    DaemonNotRunning,
    NotFound,
    ProtocolError,
    RunLost,
    SyncsnapError,
)
from ._http import HttpConnection, SseComment, SseParser, error_for_response
from ._models import Health, Progress, Project, RunStarted, parse_list

if TYPE_CHECKING:
    from ._client import AsyncClient
    from ._ws import WsConnection

log = logging.getLogger("syncsnap.follow")

API = "/api/v1"
WS_TARGET = f"{API}/ws"
# The daemon's close code for a WebSocket reader too slow to keep up (policy violation).
CLOSE_POLICY = 1008
Transport = Literal["sse", "ws"]
TRANSPORTS: tuple[Transport, ...] = ("sse", "ws")
# A health answer whose uptime is this much below the last one we saw comes from a new daemon process.
UPTIME_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class FollowPolicy:
    """Timing of :meth:`AsyncClient.follow` (all in seconds).

    Attributes:
        backoff_initial: wait before the first reconnect attempt after the stream was lost; each further
            failed attempt doubles it (1, 2, 4, 8, 16 s).
        backoff_max: the doubling stops here.
        jitter: each wait is stretched by up to this fraction, at random (0 in tests: exact times).
        attempts_before_polling: consecutive failed stream attempts before falling back to polling.
        poll_interval: how often the JSON progress endpoint is polled while the stream is down.
        stream_retry_interval: while polling, how often the stream is tried again.
        stall_timeout: a stream silent for this long is dead. The daemon sends a keep-alive comment every
            ``heartbeat`` seconds (15 by default) on SSE, so three missed heartbeats. On the WebSocket the
            follower sends a ping after a third of it without a message (the daemon answers with a pong),
            so a quiet but healthy connection is never taken for dead.
        random: the jitter's random source, returning floats in [0, 1).
    """

    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    jitter: float = 0.1
    attempts_before_polling: int = 5
    poll_interval: float = 1.0
    stream_retry_interval: float = 30.0
    stall_timeout: float = 45.0
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    @property
    def ping_interval(self) -> float:
        """WebSocket only: a ping goes out after this long without anything received."""
        return self.stall_timeout / 3

    def delay(self, attempt: int) -> float:
        """The wait before reconnect attempt ``attempt`` (1-based) of a series."""
        base = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return float(base * (1 + self.jitter * self.random()))


@dataclass
class FollowStatistics:
    """Counters of one follower (for tests, logs and a CLI status line)."""

    mode: Literal["stream", "poll"] = "stream"
    transport: Transport = "sse"
    streams_opened: int = 0
    stream_attempts_failed: int = 0
    streams_lost: int = 0
    polls: int = 0
    polls_failed: int = 0
    gaps: int = 0
    restarts: int = 0
    duplicates_dropped: int = 0
    pings: int = 0
    last_event_id: int | None = None


# Errors after which trying again may help. Unauthorized / NotFound are the caller's to fix: raised.
_TRANSIENT = (DaemonNotRunning, ConnectionLost, DaemonError, ProtocolError)


def _run_time(run: str) -> tuple[int, str] | None:
    """Run ids sort by start time (``r-<ms in hex>-<counter>-<random>``); None if not that shape."""
    parts = run.split("-")
    if len(parts) < 3 or parts[0] != "r":
        return None
    try:
        return int(parts[1], 16), parts[2]
    except ValueError:
        return None


class _Gap:
    """The daemon could not resume from our last event id (SSE ``event: gap``, WebSocket ``type: gap``)."""


class _TooSlow:
    """The daemon is about to drop this reader for falling behind: resuming at once loses nothing."""


@dataclass(frozen=True)
class _Reply:
    """A WebSocket answer to one of our commands (``type`` ``reply`` or ``error``)."""

    msg: dict[str, Any]

    @property
    def id(self) -> Any:
        return self.msg.get("id")


_Item = Progress | _Gap | _TooSlow | _Reply


class _SseStream:
    """An open ``text/event-stream`` answer."""

    pings = False

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self._parser = SseParser()

    async def receive(self) -> list[_Item] | None:
        """What the next read brought (maybe nothing whole yet); None when the stream ended."""
        data = await self._conn.receive_body()
        if data is None:
            return None
        items: list[_Item] = []
        for item in self._parser.feed(data):
            if isinstance(item, SseComment):
                if item.text.startswith("too slow"):
                    items.append(_TooSlow())
            elif item.event == "gap":
                items.append(_Gap())
            elif item.event == "progress":
                items.append(_parse_progress(item.data))
        return items

    async def ping(self) -> None:  # pragma: no cover - SSE streams are kept alive by the daemon
        pass

    def end_reason(self) -> str:
        return "the daemon ended the stream"

    async def aclose(self) -> None:
        await self._conn.aclose()


class _WsStream:
    """A subscribed WebSocket."""

    pings = True

    def __init__(self, ws: WsConnection) -> None:
        self.ws = ws
        self.backlog: list[_Item] = []

    async def receive(self) -> list[_Item] | None:
        if self.backlog:
            items, self.backlog = self.backlog, []
            return items
        if self.ws.closed:
            return None
        items = []
        for msg in await self.ws.receive():
            kind = msg.get("type")
            if kind == "progress":
                if not isinstance(msg.get("progress"), dict):
                    raise ProtocolError("The daemon sent a progress message without a progress object; is "
                                        "syncsnapd the same version as this client?")
                items.append(Progress.from_json(msg["progress"]))
            elif kind == "gap":
                items.append(_Gap())
            elif kind == "error" and isinstance(msg.get("error"), dict) and msg["error"].get("code") == "too_slow":
                items.append(_TooSlow())
            elif kind in ("reply", "error"):
                items.append(_Reply(msg))
        return items

    async def ping(self) -> None:
        await self.ws.ping()

    def end_reason(self) -> str:
        code = self.ws.close_code
        if code == CLOSE_POLICY:
            return "the daemon dropped this slow reader"
        return "the daemon closed the WebSocket" + (f" (code {code})" if code not in (None, 1006) else "")

    async def aclose(self) -> None:
        await self.ws.aclose()


def _parse_progress(data: str) -> Progress:
    try:
        return Progress.from_json(json.loads(data))
    except ValueError as exc:
        raise ProtocolError(f"The daemon sent a progress event that is not JSON ({exc}).") from None


def _ws_error(endpoint_desc: str, msg: dict[str, Any]) -> SyncsnapError:
    err = msg.get("error")
    if not isinstance(err, dict):
        err = {}
    code = str(err.get("code", ""))
    message = str(err.get("message", "")) or "no reason given"
    if code == "not_found":
        if message.startswith("No project named"):
            message += " (`syncsnap projects` lists the configured projects.)"
        return NotFound(message, code=code)
    return DaemonError(f"syncsnapd at {endpoint_desc} refused {msg.get('op')!r} on the WebSocket ({code}): "
                       f"{message}", code=code)


class Follower:
    """The async iterator returned by :meth:`AsyncClient.follow`. Use it in ``async with`` or close it
    with :meth:`aclose` to release its connection at once."""

    def __init__(self, client: AsyncClient, project: str | None, run: str | None, *,
                 kind: str = "snapshot", last_event_id: int | None = None, wait: bool = False,
                 transport: Transport = "sse") -> None:
        if run is not None and project is None and kind == "snapshot":
            raise ValueError("follow(run=...) needs the run's project too")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)} (got {transport!r})")
        self._client = client
        self._endpoint = client.endpoint
        self._policy = client.policy
        self.project = project
        self.run = run
        self.kind = kind
        self.transport: Transport = transport
        self._wait = wait
        if project is None:
            self._stream_target = f"{API}/events"
            self._poll_target = f"{API}/projects"
        else:
            self._stream_target = f"{API}/projects/{quote(project, safe='')}/progress/stream"
            self._poll_target = f"{API}/projects/{quote(project, safe='')}/progress"
        if run is not None and kind != "snapshot":
            # An operation's events do not replace its project's state: its own endpoint has them.
            self._poll_target = f"{API}/operations/{quote(run, safe='')}"
        self._stats = FollowStatistics(last_event_id=last_event_id, transport=transport)
        # Transport state.
        self._stream: _SseStream | _WsStream | None = None
        self._poll_conn: HttpConnection | None = None
        self._too_slow = False
        self._ever_connected = False
        self._failures = 0
        self._next_attempt = -math.inf
        self._next_poll = 0.0
        self._next_stream_try = 0.0
        self._polls_failing = False
        self._daemon: tuple[int, float] | None = None
        self._last_rx = 0.0
        self._next_ping = math.inf
        self._replies: dict[Any, dict[str, Any]] = {}
        self._busy = False
        # Ordering state.
        self._last_id: int | None = last_event_id
        self._zero_seen: set[str | None] = set()
        self._last_by_lane: dict[str, Progress] = {}
        self._gap_all = False
        self._gap_marked: set[str] = set()
        self._run_seen = False
        self._run_floor = -1  # events up to this id came before the followed run began
        # An operation run's state is asked of its own endpoint (GET /operations/{run}): at the start when
        # there is no resume point (a fresh stream does not replay operations), and after a gap or a restart.
        self._check_run = run is not None and kind != "snapshot" and last_event_id is None
        self._check_initial = self._check_run
        self._check_at = -math.inf
        self._check_failures = 0
        self._ready: deque[Progress] = deque()
        self._finished = False

    # --- public ------------------------------------------------------------------------------------

    def statistics(self) -> FollowStatistics:
        return replace(self._stats)

    @property
    def _handshake_timeout(self) -> float:
        # Opening a stream or polling waits no longer than a silent stream would be tolerated.
        return min(self._client.request_timeout, self._policy.stall_timeout)

    @property
    def last_event_id(self) -> int | None:
        """The id of the last event yielded: pass it as ``last_event_id`` to resume later."""
        return self._last_id

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> Progress:
        self._enter()
        try:
            while not self._ready:
                if self._finished:
                    raise StopAsyncIteration
                await self._step()
        finally:
            self._busy = False
        p = self._ready.popleft()
        if self.run is not None and p.run == self.run and p.terminal:
            self._finished = True
            self._ready.clear()
            await self.aclose()
        return p

    def _enter(self) -> None:
        if self._busy:
            raise trio.BusyResourceError("another task is already reading this follower")
        self._busy = True

    async def aclose(self) -> None:
        """Close the connections. Idempotent; the follower ends."""
        self._finished = True
        stream, poll = self._stream, self._poll_conn
        self._stream = self._poll_conn = None
        if stream is not None:
            await stream.aclose()
        if poll is not None:
            await poll.aclose()

    async def __aenter__(self) -> Follower:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start_snapshot(self) -> RunStarted:
        """Start a snapshot of the followed project over this follower's WebSocket (``transport="ws"``).

        The follower is subscribed before the request goes out, so the run is seen from its very first
        event, whenever it starts. From then on the follower follows that run: iteration yields its
        events (a run it queued behind shows up when it starts) and stops after its terminal one.
        Call it before iterating, or between two events; never while another task iterates.

        Raises :class:`~syncsnap.NotFound` for an unknown project, :class:`~syncsnap.ConnectionLost` if
        the connection broke before the daemon answered (the request is never resent: whether the run
        started is unknown), and any error of the first connection.
        """
        if self.transport != "ws":
            raise ValueError("start_snapshot() on a follower needs transport='ws'; otherwise use "
                             "AsyncClient.start_snapshot()")
        if self.project is None or self.run is not None:
            raise ValueError("start_snapshot() needs a follower of one project, not yet following a run")
        self._enter()
        try:
            if self._finished:
                raise ValueError("this follower is closed")
            if not isinstance(self._stream, _WsStream):
                await self._open_stream()  # one attempt: its error is the caller's
                await self._close_poll_conn()
            ws = self._stream
            assert isinstance(ws, _WsStream)
            rid = await ws.ws.send({"op": "snapshot", "project": self.project})
            while rid not in self._replies:
                if self._stream is not ws:
                    raise ConnectionLost(f"The WebSocket to syncsnapd at {self._endpoint.describe()} broke before "
                                         "the daemon answered the snapshot request; whether it started is "
                                         f"unknown (`syncsnap runs {self.project}` shows it).")
                await self._read_step()
            msg = self._replies.pop(rid)
        finally:
            self._busy = False
        if msg.get("type") == "error":
            raise _ws_error(self._endpoint.describe(), msg)
        started = RunStarted.from_json({**msg, "stream": WS_TARGET})
        self.run = started.run
        # Events read before the answer: keep the new run's (it may have begun already), drop the others.
        # The subscription's first event (the project's state before the run) may still be on its way: it
        # says nothing about this run.
        self._ready = deque(p for p in self._ready if p.run == started.run)
        self._run_seen = bool(self._ready)
        self._run_floor = started.progress.event_id - (started.progress.run == started.run)
        return started

    # --- the state machine -------------------------------------------------------------------------

    async def _step(self) -> None:
        """Do one unit of work: wait, connect, read a chunk, or poll."""
        if self._check_run and trio.current_time() >= self._check_at:
            await self._check_operation_run()
        elif self._stats.mode == "poll":
            await self._poll_step()
        elif self._stream is None:
            await self._stream_attempt_step()
        else:
            await self._read_step()

    async def _stream_attempt_step(self) -> None:
        now = trio.current_time()
        if now < self._next_attempt:
            await trio.sleep_until(self._next_attempt)
            return
        try:
            await self._open_stream()
        except _TRANSIENT as exc:
            if not self._ever_connected and not self._wait and isinstance(exc, DaemonNotRunning):
                raise
            now = trio.current_time()
            if not self._ever_connected and self._failures == 0 and self._next_attempt == -math.inf:
                # The first connection failed: like a lost stream, reconnect attempts follow.
                self._next_attempt = now + self._policy.delay(1)
                log.warning("cannot follow syncsnapd (%s); retrying in %.1f s", exc,
                            self._next_attempt - now, extra={"follow_event": "first_failed"})
                return
            self._failures += 1
            self._stats.stream_attempts_failed += 1
            if self._failures >= self._policy.attempts_before_polling:
                self._start_polling(now, exc)
            else:
                self._next_attempt = now + self._policy.delay(self._failures + 1)
                log.info("stream attempt %d failed (%s); next in %.1f s", self._failures, exc,
                         self._next_attempt - now, extra={"follow_event": "attempt_failed"})

    def _start_polling(self, now: float, exc: BaseException) -> None:
        self._stats.mode = "poll"
        self._next_poll = now
        self._next_stream_try = now + self._policy.stream_retry_interval
        self._polls_failing = False
        log.warning("the progress stream failed %d times in a row (last: %s); polling every %g s and "
                    "retrying the stream every %g s", self._failures, exc, self._policy.poll_interval,
                    self._policy.stream_retry_interval, extra={"follow_event": "polling"})

    async def _open_stream(self) -> None:
        conn = await self._connect()
        stream: _SseStream | _WsStream
        try:
            with trio.fail_after(self._handshake_timeout):
                if self.transport == "ws":
                    stream = await self._open_ws(conn)
                else:
                    stream = await self._open_sse(conn)
        except trio.TooSlowError:
            await conn.aclose()
            raise ConnectionLost(f"syncsnapd at {self._endpoint.describe()} did not answer the stream request "
                                 f"within {self._handshake_timeout:g} s.") from None
        except BaseException:
            await conn.aclose()
            raise
        self._stream = stream
        self._too_slow = False
        self._ever_connected = True
        self._failures = 0
        self._stats.streams_opened += 1
        self._stats.mode = "stream"
        now = trio.current_time()
        self._last_rx = now
        self._next_ping = now + self._policy.ping_interval if stream.pings else math.inf
        log.info("following %s (Last-Event-ID %s)", WS_TARGET if self.transport == "ws" else self._stream_target,
                 self._last_id, extra={"follow_event": "connected"})

    async def _open_sse(self, conn: HttpConnection) -> _SseStream:
        headers = []
        if self._last_id is not None:
            headers.append(("Last-Event-ID", str(self._last_id)))
        headers.append(("Accept", "text/event-stream"))
        resp = await conn.start_stream(self._stream_target, headers)
        if resp.status != 200:
            raise error_for_response(self._endpoint, "GET", self._stream_target, resp.status, resp.body)
        ctype = (resp.header(b"content-type") or b"").decode("latin-1")
        if not ctype.startswith("text/event-stream"):
            raise ProtocolError(f"The daemon answered {self._stream_target} with {ctype or 'no content type'} "
                                "instead of an event stream; is it syncsnapd?")
        return _SseStream(conn)

    async def _open_ws(self, conn: HttpConnection) -> _WsStream:
        from ._ws import WsConnection  # wsproto: imported by WebSocket followers only (about 12 ms)

        ws = await WsConnection.handshake(conn.detach(), self._endpoint)
        stream = _WsStream(ws)
        try:
            sub: dict[str, Any] = {"op": "subscribe", "projects": "*" if self.project is None else [self.project]}
            if self._last_id is not None:
                sub["last_event_id"] = self._last_id
            rid = await ws.send(sub)
            while True:
                items = await stream.receive()
                if items is None:
                    raise ConnectionLost(f"syncsnapd at {self._endpoint.describe()} closed the WebSocket before "
                                         "answering the subscription.")
                for i, item in enumerate(items):
                    if isinstance(item, _Reply) and item.id == rid:
                        if item.msg.get("type") == "error":
                            raise _ws_error(self._endpoint.describe(), item.msg)
                        stream.backlog = items[:i] + items[i + 1:]
                        return stream
        except BaseException:
            await ws.aclose()
            raise

    async def _connect(self) -> HttpConnection:
        """A new connection, checked with ``/health`` (which tells whether the daemon restarted)."""
        conn = await HttpConnection.open(self._endpoint)
        try:
            with trio.fail_after(self._handshake_timeout):
                resp = await conn.request("GET", f"{API}/health")
            if resp.status != 200:
                raise error_for_response(self._endpoint, "GET", f"{API}/health", resp.status, resp.body)
            self._check_daemon(Health.from_json(resp.json()))
        except trio.TooSlowError:
            await conn.aclose()
            raise ConnectionLost(f"syncsnapd at {self._endpoint.describe()} did not answer within "
                                 f"{self._handshake_timeout:g} s.") from None
        except BaseException:
            await conn.aclose()
            raise
        return conn

    def _check_daemon(self, health: Health) -> None:
        if self._daemon is not None:
            pid, uptime = self._daemon
            if health.pid != pid or health.uptime_seconds + UPTIME_SLACK_SECONDS < uptime:
                # Resuming still sends Last-Event-ID: a daemon that keeps its event log replays what we
                # missed; one that starts its ids again answers with its `gap` event (that id is not its).
                self._stats.restarts += 1
                log.info("syncsnapd restarted (pid %d -> %d)", pid, health.pid, extra={"follow_event": "restarted"})
                if self.run is not None and self.kind != "snapshot":
                    self._check_run = True  # an operation run does not survive its daemon
        self._daemon = (health.pid, health.uptime_seconds)

    async def _read_step(self) -> None:
        stream = self._stream
        assert stream is not None
        items: list[_Item] | None = None
        reason = ""
        now = trio.current_time()
        dead_at = self._last_rx + self._policy.stall_timeout
        if now >= self._next_ping and now < dead_at:
            # Quiet for a while: ask the daemon for a pong (WebSocket), which proves the connection lives.
            self._next_ping = now + self._policy.ping_interval
            self._stats.pings += 1
            try:
                await stream.ping()
            except ConnectionLost as exc:
                await self._lost(str(exc))
            return
        with trio.move_on_at(min(dead_at, self._next_ping)) as waiting:
            try:
                items = await stream.receive()
            except (ConnectionLost, ProtocolError) as exc:
                reason = str(exc)
            else:
                if items is None:
                    reason = stream.end_reason()
        if waiting.cancelled_caught:
            if trio.current_time() >= dead_at:
                await self._lost(f"nothing received for {self._policy.stall_timeout:g} s")
            return  # time to ping
        if items is None:
            await self._lost(reason)
            return
        now = trio.current_time()
        self._last_rx = now
        if stream.pings:
            self._next_ping = now + self._policy.ping_interval
        for item in items:
            if isinstance(item, _TooSlow):
                self._too_slow = True
            elif isinstance(item, _Gap):
                self._on_gap()
            elif isinstance(item, _Reply):
                self._replies[item.id] = item.msg
            else:
                self._offer(item)

    async def _lost(self, reason: str) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            if isinstance(stream, _WsStream) and stream.ws.close_code == CLOSE_POLICY:
                self._too_slow = True
            await stream.aclose()
        self._stats.streams_lost += 1
        now = trio.current_time()
        self._failures = 0
        self._next_ping = math.inf
        if self._too_slow:
            # The daemon dropped us for reading too slowly; resuming at once loses nothing.
            self._next_attempt = now
            log.info("the daemon dropped this slow reader; resuming from event %s", self._last_id,
                     extra={"follow_event": "lost"})
        else:
            self._next_attempt = now + self._policy.delay(1)
            log.info("progress stream lost (%s); reconnecting in %.1f s", reason, self._next_attempt - now,
                     extra={"follow_event": "lost"})

    # --- polling -----------------------------------------------------------------------------------

    async def _poll_step(self) -> None:
        now = trio.current_time()
        if now >= self._next_stream_try:
            try:
                await self._open_stream()
            except _TRANSIENT as exc:
                self._next_stream_try = now + self._policy.stream_retry_interval
                log.info("stream retry failed (%s); polling on", exc, extra={"follow_event": "retry_failed"})
            else:
                await self._close_poll_conn()
                log.info("back to streaming", extra={"follow_event": "streaming"})
                return
        if now >= self._next_poll:
            self._next_poll += self._policy.poll_interval
            if self._next_poll <= now:
                self._next_poll = now + self._policy.poll_interval
            await self._poll_once(now)
            return
        await trio.sleep_until(min(self._next_poll, self._next_stream_try))

    async def _get(self, target: str) -> Any:
        """One JSON GET on the polling connection (opened, and checked with /health, when needed)."""
        if self._poll_conn is None or not self._poll_conn.reusable:
            await self._close_poll_conn()
            self._poll_conn = await self._connect()
        try:
            with trio.fail_after(self._handshake_timeout):
                resp = await self._poll_conn.request("GET", target)
        except trio.TooSlowError:
            raise ConnectionLost("no answer to a progress poll") from None
        if resp.status != 200:
            raise error_for_response(self._endpoint, "GET", target, resp.status, resp.body)
        return resp.json()

    async def _poll_once(self, now: float) -> None:
        self._stats.polls += 1
        try:
            try:
                doc = await self._get(self._poll_target)
            except NotFound:
                if self.run is not None and self.kind != "snapshot":
                    self._run_lost(self.project)
                raise
            if self.project is None and (self.run is None or self.kind == "snapshot"):
                items = [p.progress for p in parse_list(doc, "projects", Project, "a project list")]
            else:
                items = [Progress.from_json(doc)]
        except _TRANSIENT as exc:
            self._stats.polls_failed += 1
            await self._close_poll_conn()
            if not self._polls_failing:
                log.info("progress poll failed (%s)", exc, extra={"follow_event": "poll_failed"})
            self._polls_failing = True
            return
        if self._polls_failing:
            # The daemon answers again (it probably restarted): its stream likely works too.
            self._polls_failing = False
            self._next_stream_try = now
        log.debug("polled %d progress object(s)", len(items), extra={"follow_event": "poll"})
        self._offer_polled(items)

    async def _close_poll_conn(self) -> None:
        if self._poll_conn is not None:
            await self._poll_conn.aclose()
            self._poll_conn = None

    def _offer_polled(self, items: list[Progress]) -> None:
        items.sort(key=lambda p: p.event_id)
        for p in items:
            prev = self._last_by_lane.get(p.lane)
            if prev is not None and p.event_id < prev.event_id:
                # Ids of one lane only grow within one daemon: these come from a new one.
                self._new_epoch()
                break
        for p in items:
            self._offer(p)

    async def _check_operation_run(self) -> None:
        """The followed operation run's state now, from its own endpoint (RunLost if the daemon no longer
        knows it): at the start, and after a gap or a restart (its end may be among what was missed)."""
        assert self.run is not None
        try:
            doc = await self._get(self._poll_target)
            p = Progress.from_json(doc)
        except NotFound:
            self._run_lost(self.project)
        except _TRANSIENT as exc:
            await self._close_poll_conn()
            if self._check_initial and not self._ever_connected and not self._wait and \
                    isinstance(exc, DaemonNotRunning):
                raise
            # The stream's attempts go on meanwhile; ask again later.
            self._check_failures += 1
            self._check_at = trio.current_time() + self._policy.delay(self._check_failures)
            return
        self._ever_connected = True
        initial, self._check_run, self._check_initial, self._check_failures = self._check_initial, False, False, 0
        prev = self._last_by_lane.get(p.lane)
        if prev is not None and p.event_id <= prev.event_id:
            return  # nothing new: the streams carry on from there
        # Yield it even when other events with higher ids came meanwhile: this run's own events stay in
        # order, and its end must not be lost because it was not replayed.
        self._last_by_lane[p.lane] = p
        self._gap_marked.add(p.lane)
        if self._last_id is None or p.event_id > self._last_id:
            self._last_id = p.event_id  # a stream opened from here replays everything after it
            self._stats.last_event_id = p.event_id
        self._run_seen = True
        self._ready.append(p if initial else replace(p, gap=True))

    # --- ordering, gaps, runs ----------------------------------------------------------------------

    def _new_epoch(self) -> None:
        """Events were missed and ids may restart: the next event of each lane is a marked gap."""
        self._last_id = None
        self._zero_seen.clear()
        self._gap_all = True
        self._gap_marked.clear()
        self._stats.gaps += 1
        self._run_floor = -1
        if self.run is not None and self.kind != "snapshot":
            # The daemon's current states are its projects'; an operation's end may be among the missed.
            self._check_run = True

    def _on_gap(self) -> None:
        log.info("the daemon could not replay from event %s: following on from the current state",
                 self._last_id, extra={"follow_event": "gap"})
        self._new_epoch()

    def _offer(self, p: Progress) -> None:
        eid = p.event_id
        if self._last_id is not None and eid <= self._last_id and not (eid == 0 and p.project not in self._zero_seen):
            self._stats.duplicates_dropped += 1
            return
        if eid == 0:
            self._zero_seen.add(p.project)
        self._last_id = eid if self._last_id is None else max(eid, self._last_id)
        self._stats.last_event_id = self._last_id

        gap = False
        lane = p.lane
        prev = self._last_by_lane.get(lane)
        if self._gap_all and lane not in self._gap_marked:
            self._gap_marked.add(lane)
            if prev == p:
                # The lane's current state is the very event we yielded last: nothing was missed here.
                self._stats.duplicates_dropped += 1
                return
            gap = True
        if not gap and prev is not None and not prev.terminal and prev.run is not None and p.run != prev.run:
            # A run ended and we never saw its terminal event (it fell between two polls).
            gap = True
            self._stats.gaps += 1
        self._last_by_lane[lane] = p
        if gap:
            p = replace(p, gap=True)

        if self.run is not None:
            if p.run != self.run:
                self._check_run_lost(p)
                return
            self._run_seen = True
        self._ready.append(p)

    def _check_run_lost(self, p: Progress) -> None:
        """While following snapshot run X, another snapshot run's event (or idle) of its project arrived:
        is X over, unseen? (Operation runs are checked at their own endpoint instead.)"""
        assert self.run is not None
        if self.kind != "snapshot" or p.kind != "snapshot" or p.project != self.project or p.event_id <= self._run_floor:
            return
        lost = self._run_seen or p.run is None
        if not lost and p.run is not None:
            mine, theirs = _run_time(self.run), _run_time(p.run)
            lost = mine is not None and theirs is not None and theirs > mine
        if lost:
            self._run_lost(p.project)

    def _run_lost(self, project: str | None) -> NoReturn:
        if self.kind == "snapshot":
            hint = f"`syncsnap snapshots {project}` shows whether a snapshot was made."
        else:
            hint = f"`syncsnap run {self.run}` shows how it ended."
        where = f" of {project}" if project else ""
        raise RunLost(f"Run {self.run}{where} ended without this client seeing how (the daemon restarted, or the "
                      f"run finished while the connection was down); {hint}")
