"""``follow``: every progress event, in order, once, across dropped connections and daemon restarts.

The transport is the daemon's SSE stream (``/api/v1/events`` or a project's ``.../progress/stream``),
or with ``transport="ws"`` its WebSocket (``/api/v1/ws``, a ``subscribe`` with ``last_event_id``); both
carry the same events with the same ids, and everything below holds for both. When the stream is lost,
:class:`Follower` reconnects with ``Last-Event-ID`` (the daemon then replays exactly what was missed), and
falls back to polling the JSON progress endpoint when the stream keeps failing.

This module is the driver only: *when* to read, reconnect, poll or retry is
``syncsnap.protocol``'s :class:`~syncsnap.protocol.Schedule`, *which* events are yielded (order, dedup,
gaps, the followed run's end) its :class:`~syncsnap.protocol.EventOrder`, and the bytes move through
``syncsnap.transport``. The follower asks the schedule what to do, does it with Trio, reports back, and
logs each transition on the ``syncsnap.follow`` logger.

The follower is a plain async iterator with no background task: each ``__anext__`` does the reads,
waits and reconnects needed for the next event, so cancelling the caller cancels everything.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Protocol

import trio

from ._endpoint import Endpoint
from ._errors import ConnectionLost, DaemonNotRunning, NotFound, ProtocolError
from .models import Health, Progress, RunStarted
from .protocol import (
    TRANSIENT,
    TRANSPORTS,
    WS_TARGET,
    CheckRun,
    EventOrder,
    FollowPolicy,
    FollowStatistics,
    FollowTargets,
    Gap,
    OpenStream,
    Ping,
    Poll,
    Read,
    Reply,
    Schedule,
    Sleep,
    TooSlow,
    Transport,
    ws_error,
)
from .transport import HttpConnection, Poller, Stream, WsStream, ask_health, open_stream

log = logging.getLogger("syncsnap.follow")


class FollowSource(Protocol):
    """What a follower needs of its client (:class:`~syncsnap.AsyncClient`)."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def policy(self) -> FollowPolicy: ...
    @property
    def request_timeout(self) -> float: ...


class Follower:
    """The async iterator returned by :meth:`AsyncClient.follow`. Use it in ``async with`` or close it
    with :meth:`aclose` to release its connection at once."""

    def __init__(self, client: FollowSource, project: str | None, run: str | None, *,
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
        self.kind = kind
        self.transport: Transport = transport
        self._targets = FollowTargets(project, run, kind)
        self._stats = FollowStatistics(last_event_id=last_event_id, transport=transport)
        self._schedule = Schedule(self._policy, self._stats, wait=wait)
        self._order = EventOrder(project, run, kind, last_event_id, self._stats)
        self._stream: Stream | None = None
        self._poller = Poller(self._endpoint)
        self._replies: dict[Any, dict[str, Any]] = {}
        self._busy = False
        self._closed = False

    # --- public ------------------------------------------------------------------------------------

    @property
    def run(self) -> str | None:
        """The followed run (None: every run)."""
        return self._order.run

    def statistics(self) -> FollowStatistics:
        return replace(self._stats)

    @property
    def _handshake_timeout(self) -> float:
        # Opening a stream or polling waits no longer than a silent stream would be tolerated.
        return min(self._client.request_timeout, self._policy.stall_timeout)

    @property
    def last_event_id(self) -> int | None:
        """The id of the last event yielded: pass it as ``last_event_id`` to resume later."""
        return self._order.last_id

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> Progress:
        self._enter()
        try:
            while not self._order.has_events:
                if self._closed or self._order.finished:
                    raise StopAsyncIteration
                await self._step()
        finally:
            self._busy = False
        p = self._order.next_event()
        assert p is not None
        if self._order.finished:
            await self.aclose()
        return p

    def _enter(self) -> None:
        if self._busy:
            raise trio.BusyResourceError("another task is already reading this follower")
        self._busy = True

    async def aclose(self) -> None:
        """Close the connections. Idempotent; the follower ends."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()
        await self._poller.aclose()

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
            if self._closed or self._order.finished:
                raise ValueError("this follower is closed")
            if not isinstance(self._stream, WsStream):
                await self._open_stream()  # one attempt: its error is the caller's
                await self._poller.aclose()
            ws = self._stream
            assert isinstance(ws, WsStream)
            rid = await ws.send({"op": "snapshot", "project": self.project})
            while rid not in self._replies:
                if self._stream is not ws:
                    raise ConnectionLost(f"The WebSocket to syncsnapd at {self._endpoint.describe()} broke before "
                                         "the daemon answered the snapshot request; whether it started is "
                                         f"unknown (`syncsnap runs {self.project}` shows it).")
                action = self._schedule.next_action(trio.current_time())
                assert isinstance(action, Ping | Read)  # a stream is open
                await self._read(action)
            msg = self._replies.pop(rid)
        finally:
            self._busy = False
        if msg.get("type") == "error":
            raise ws_error(self._endpoint.describe(), msg)
        started = RunStarted.from_json({**msg, "stream": WS_TARGET})
        self._order.run_started(started)
        return started

    # --- driving the schedule ----------------------------------------------------------------------

    async def _step(self) -> None:
        """Do one unit of work: wait, connect, read a chunk, ping, poll or check the followed run."""
        now = trio.current_time()
        action = self._schedule.next_action(now, check_run=self._order.check_run)
        if isinstance(action, OpenStream) and self._schedule.polling:
            if await self._retry_stream(now):
                return
            action = self._schedule.next_action(now)  # the retry failed: poll on, as at `now`
        if isinstance(action, CheckRun):
            await self._check_operation_run()
        elif isinstance(action, OpenStream):
            await self._stream_attempt()
        elif isinstance(action, Poll):
            await self._poll_once(now)
        elif isinstance(action, Sleep):
            await trio.sleep_until(action.until)
        else:
            await self._read(action)

    async def _stream_attempt(self) -> None:
        try:
            await self._open_stream()
        except TRANSIENT as exc:
            now = trio.current_time()
            failed = self._schedule.stream_attempt_failed(now, daemon_not_running=isinstance(exc, DaemonNotRunning))
            if failed.outcome == "give_up":
                raise
            wait = failed.retry_at - now
            if failed.outcome == "first":
                log.warning("cannot follow syncsnapd (%s); retrying in %.1f s", exc, wait,
                            extra={"follow_event": "first_failed"})
            elif failed.outcome == "poll":
                log.warning("the progress stream failed %d times in a row (last: %s); polling every %g s and "
                            "retrying the stream every %g s", failed.failures, exc, self._policy.poll_interval,
                            self._policy.stream_retry_interval, extra={"follow_event": "polling"})
            else:
                log.info("stream attempt %d failed (%s); next in %.1f s", failed.failures, exc, wait,
                         extra={"follow_event": "attempt_failed"})

    async def _retry_stream(self, now: float) -> bool:
        """While polling: try the stream again; True if it is open (polling stops)."""
        try:
            await self._open_stream()
        except TRANSIENT as exc:
            self._schedule.stream_retry_failed(now)
            log.info("stream retry failed (%s); polling on", exc, extra={"follow_event": "retry_failed"})
            return False
        await self._poller.aclose()
        log.info("back to streaming", extra={"follow_event": "streaming"})
        return True

    async def _connect(self) -> HttpConnection:
        """A new connection, checked with ``/health`` (which tells whether the daemon restarted)."""
        conn = await HttpConnection.open(self._endpoint)
        try:
            with trio.fail_after(self._handshake_timeout):
                health = await ask_health(conn)
        except trio.TooSlowError:
            await conn.aclose()
            raise ConnectionLost(f"syncsnapd at {self._endpoint.describe()} did not answer within "
                                 f"{self._handshake_timeout:g} s.") from None
        except BaseException:
            await conn.aclose()
            raise
        self._on_health(health)
        return conn

    async def _open_stream(self) -> None:
        conn = await self._connect()
        try:
            with trio.fail_after(self._handshake_timeout):
                stream = await open_stream(conn, self.transport, target=self._targets.stream,
                                           project=self.project, last_event_id=self._order.last_id)
        except trio.TooSlowError:  # open_stream closed the connection
            raise ConnectionLost(f"syncsnapd at {self._endpoint.describe()} did not answer the stream request "
                                 f"within {self._handshake_timeout:g} s.") from None
        self._stream = stream
        self._schedule.stream_opened(trio.current_time(), pings=stream.pings)
        log.info("following %s (Last-Event-ID %s)", WS_TARGET if self.transport == "ws" else self._targets.stream,
                 self._order.last_id, extra={"follow_event": "connected"})

    def _on_health(self, health: Health) -> None:
        previous_pid = self._order.health(health)
        if previous_pid is not None:
            log.info("syncsnapd restarted (pid %d -> %d)", previous_pid, health.pid,
                     extra={"follow_event": "restarted"})

    async def _read(self, action: Ping | Read) -> None:
        """Read the open stream once (or ping it), as the schedule said."""
        stream = self._stream
        assert stream is not None
        if isinstance(action, Ping):
            try:
                await stream.ping()
            except ConnectionLost as exc:
                await self._lost(str(exc))
            return
        items = None
        reason = ""
        with trio.move_on_at(action.until) as waiting:
            try:
                items = await stream.receive()
            except (ConnectionLost, ProtocolError) as exc:
                reason = str(exc)
            else:
                if items is None:
                    reason = stream.end_reason()
        if waiting.cancelled_caught:
            if self._schedule.stalled(trio.current_time()):
                await self._lost(f"nothing received for {self._policy.stall_timeout:g} s")
            return  # time to ping
        if items is None:
            await self._lost(reason)
            return
        self._schedule.received(trio.current_time(), pings=stream.pings)
        for item in items:
            if isinstance(item, TooSlow):
                self._schedule.too_slow = True
            elif isinstance(item, Gap):
                log.info("the daemon could not replay from event %s: following on from the current state",
                         self._order.last_id, extra={"follow_event": "gap"})
                self._order.gap()
            elif isinstance(item, Reply):
                self._replies[item.id] = item.msg
            else:
                self._order.offer(item)

    async def _lost(self, reason: str) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            if stream.dropped_as_slow:
                self._schedule.too_slow = True
            await stream.aclose()
        now = trio.current_time()
        too_slow = self._schedule.too_slow
        retry_at = self._schedule.stream_lost(now)
        if too_slow:
            log.info("the daemon dropped this slow reader; resuming from event %s", self._order.last_id,
                     extra={"follow_event": "lost"})
        else:
            log.info("progress stream lost (%s); reconnecting in %.1f s", reason, retry_at - now,
                     extra={"follow_event": "lost"})

    # --- polling -----------------------------------------------------------------------------------

    async def _get(self, target: str) -> Any:
        """One JSON GET on the polling connection (opened, and checked with /health, when needed)."""
        if not self._poller.connected:
            await self._poller.aclose()
            self._poller.use(await self._connect())
        try:
            with trio.fail_after(self._handshake_timeout):
                return await self._poller.get(target)
        except trio.TooSlowError:
            raise ConnectionLost("no answer to a progress poll") from None

    async def _poll_once(self, now: float) -> None:
        try:
            try:
                doc = await self._get(self._targets.poll)
            except NotFound:
                self._order.poll_not_found()
                raise
            items = self._targets.parse_poll(doc)
        except TRANSIENT as exc:
            first = self._schedule.poll_failed()
            await self._poller.aclose()
            if first:
                log.info("progress poll failed (%s)", exc, extra={"follow_event": "poll_failed"})
            return
        self._schedule.poll_succeeded(now)
        log.debug("polled %d progress object(s)", len(items), extra={"follow_event": "poll"})
        self._order.offer_polled(items)

    async def _check_operation_run(self) -> None:
        """The followed operation run's state now, from its own endpoint (RunLost if the daemon no longer
        knows it): at the start, and after a gap or a restart (its end may be among what was missed)."""
        try:
            doc = await self._get(self._targets.poll)
            p = Progress.from_json(doc)
        except NotFound:
            self._order.run_lost(self.project)
        except TRANSIENT as exc:
            await self._poller.aclose()
            if self._order.checking_initially and self._schedule.gives_up(isinstance(exc, DaemonNotRunning)):
                raise
            # The stream's attempts go on meanwhile; ask again later.
            self._schedule.check_failed(trio.current_time())
            return
        self._schedule.check_succeeded()
        self._order.operation_state(p)
