"""``follow``: every progress event, in order, once, across dropped connections and daemon restarts.

The transport is the daemon's SSE stream (``/api/v1/events`` or a project's ``.../progress/stream``).
When the stream is lost, :class:`Follower` reconnects with ``Last-Event-ID`` (the daemon then replays
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
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import trio

from ._errors import (
    ConnectionLost,
    DaemonError,
    DaemonNotRunning,
    ProtocolError,
    RunLost,
)
from ._http import HttpConnection, SseComment, SseEvent, SseParser, error_for_response
from ._models import Health, Progress, Project, parse_list

if TYPE_CHECKING:
    from ._client import AsyncClient

log = logging.getLogger("syncsnap.follow")

API = "/api/v1"
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
            ``heartbeat`` seconds (15 by default), so three missed heartbeats.
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

    def delay(self, attempt: int) -> float:
        """The wait before reconnect attempt ``attempt`` (1-based) of a series."""
        base = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return float(base * (1 + self.jitter * self.random()))


@dataclass
class FollowStatistics:
    """Counters of one follower (for tests, logs and a CLI status line)."""

    mode: Literal["stream", "poll"] = "stream"
    streams_opened: int = 0
    stream_attempts_failed: int = 0
    streams_lost: int = 0
    polls: int = 0
    polls_failed: int = 0
    gaps: int = 0
    restarts: int = 0
    duplicates_dropped: int = 0
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


class Follower:
    """The async iterator returned by :meth:`AsyncClient.follow`. Use it in ``async with`` or close it
    with :meth:`aclose` to release its connection at once."""

    def __init__(self, client: AsyncClient, project: str | None, run: str | None, *,
                 last_event_id: int | None = None, wait: bool = False) -> None:
        if run is not None and project is None:
            raise ValueError("follow(run=...) needs the run's project too")
        self._client = client
        self._endpoint = client.endpoint
        self._policy = client.policy
        self.project = project
        self.run = run
        self._wait = wait
        if project is None:
            self._stream_target = f"{API}/events"
            self._poll_target = f"{API}/projects"
        else:
            self._stream_target = f"{API}/projects/{quote(project, safe='')}/progress/stream"
            self._poll_target = f"{API}/projects/{quote(project, safe='')}/progress"
        self._stats = FollowStatistics(last_event_id=last_event_id)
        # Transport state.
        self._conn: HttpConnection | None = None
        self._poll_conn: HttpConnection | None = None
        self._parser = SseParser()
        self._too_slow = False
        self._ever_connected = False
        self._failures = 0
        self._next_attempt = -math.inf
        self._next_poll = 0.0
        self._next_stream_try = 0.0
        self._polls_failing = False
        self._daemon: tuple[int, float] | None = None
        # Ordering state.
        self._last_id: int | None = last_event_id
        self._zero_seen: set[str] = set()
        self._last_by_project: dict[str, Progress] = {}
        self._gap_all = False
        self._gap_marked: set[str] = set()
        self._run_seen = False
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
        while not self._ready:
            if self._finished:
                raise StopAsyncIteration
            await self._step()
        p = self._ready.popleft()
        if self.run is not None and p.run == self.run and p.terminal:
            self._finished = True
            self._ready.clear()
            await self.aclose()
        return p

    async def aclose(self) -> None:
        """Close the connections. Idempotent; the follower ends."""
        self._finished = True
        for conn in (self._conn, self._poll_conn):
            if conn is not None:
                await conn.aclose()
        self._conn = self._poll_conn = None

    async def __aenter__(self) -> Follower:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the state machine -------------------------------------------------------------------------

    async def _step(self) -> None:
        """Do one unit of work: wait, connect, read a chunk, or poll."""
        if self._stats.mode == "poll":
            await self._poll_step()
        elif self._conn is None:
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
        try:
            headers = []
            if self._last_id is not None:
                headers.append(("Last-Event-ID", str(self._last_id)))
            headers.append(("Accept", "text/event-stream"))
            with trio.fail_after(self._handshake_timeout):
                resp = await conn.start_stream(self._stream_target, headers)
            if resp.status != 200:
                raise error_for_response(self._endpoint, "GET", self._stream_target, resp.status, resp.body)
            ctype = (resp.header(b"content-type") or b"").decode("latin-1")
            if not ctype.startswith("text/event-stream"):
                raise ProtocolError(f"The daemon answered {self._stream_target} with {ctype or 'no content type'} "
                                    "instead of an event stream; is it syncsnapd?")
        except trio.TooSlowError:
            await conn.aclose()
            raise ConnectionLost(f"syncsnapd at {self._endpoint.describe()} did not answer the stream request "
                                 f"within {self._handshake_timeout:g} s.") from None
        except BaseException:
            await conn.aclose()
            raise
        self._conn = conn
        self._parser = SseParser()
        self._too_slow = False
        self._ever_connected = True
        self._failures = 0
        self._stats.streams_opened += 1
        self._stats.mode = "stream"
        log.info("following %s (Last-Event-ID %s)", self._stream_target, self._last_id,
                 extra={"follow_event": "connected"})

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
        self._daemon = (health.pid, health.uptime_seconds)

    async def _read_step(self) -> None:
        assert self._conn is not None
        data: bytes | None = None
        reason = ""
        with trio.move_on_after(self._policy.stall_timeout) as stall:
            try:
                data = await self._conn.receive_body()
            except (ConnectionLost, ProtocolError) as exc:
                reason = str(exc)
        if stall.cancelled_caught:
            reason = f"nothing received for {self._policy.stall_timeout:g} s"
        elif data is None and not reason:
            reason = "the daemon ended the stream"
        if data is None:
            await self._lost(reason)
            return
        try:
            items = self._parser.feed(data)
        except ProtocolError as exc:
            await self._lost(str(exc))
            return
        for item in items:
            if isinstance(item, SseComment):
                if item.text.startswith("too slow"):
                    self._too_slow = True
            elif item.event == "gap":
                self._on_gap(item)
            elif item.event == "progress":
                try:
                    progress = Progress.from_json(json.loads(item.data))
                except (ValueError, ProtocolError) as exc:
                    await self._lost(f"bad progress event: {exc}")
                    return
                self._offer(progress)

    async def _lost(self, reason: str) -> None:
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None
        self._stats.streams_lost += 1
        now = trio.current_time()
        self._failures = 0
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

    async def _poll_once(self, now: float) -> None:
        self._stats.polls += 1
        try:
            if self._poll_conn is None or not self._poll_conn.reusable:
                await self._close_poll_conn()
                self._poll_conn = await self._connect()
            try:
                with trio.fail_after(self._handshake_timeout):
                    resp = await self._poll_conn.request("GET", self._poll_target)
            except trio.TooSlowError:
                raise ConnectionLost("no answer to a progress poll") from None
            if resp.status != 200:
                raise error_for_response(self._endpoint, "GET", self._poll_target, resp.status, resp.body)
            if self.project is None:
                items = [p.progress for p in parse_list(resp.json(), "projects", Project, "a project list")]
            else:
                items = [Progress.from_json(resp.json())]
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
            prev = self._last_by_project.get(p.project)
            if prev is not None and p.event_id < prev.event_id:
                # Ids of one project only grow within one daemon: these come from a new one.
                self._new_epoch()
                break
        for p in items:
            self._offer(p)

    # --- ordering, gaps, runs ----------------------------------------------------------------------

    def _new_epoch(self) -> None:
        """Events were missed and ids may restart: the next event of each project is a marked gap."""
        self._last_id = None
        self._zero_seen.clear()
        self._gap_all = True
        self._gap_marked.clear()
        self._stats.gaps += 1

    def _on_gap(self, event: SseEvent) -> None:
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
        prev = self._last_by_project.get(p.project)
        if self._gap_all and p.project not in self._gap_marked:
            self._gap_marked.add(p.project)
            if prev == p:
                # The project's current state is the very event we yielded last: nothing was missed here.
                self._stats.duplicates_dropped += 1
                return
            gap = True
        if not gap and prev is not None and not prev.terminal and prev.run is not None and p.run != prev.run:
            # A run ended and we never saw its terminal event (it fell between two polls).
            gap = True
            self._stats.gaps += 1
        self._last_by_project[p.project] = p
        if gap:
            p = replace(p, gap=True)

        if self.run is not None:
            if p.run != self.run:
                self._check_run_lost(p)
                return
            self._run_seen = True
        self._ready.append(p)

    def _check_run_lost(self, p: Progress) -> None:
        """While following run X, another run's event (or idle) arrived: is X over, unseen?"""
        assert self.run is not None
        lost = self._run_seen or p.run is None
        if not lost and p.run is not None:
            mine, theirs = _run_time(self.run), _run_time(p.run)
            lost = mine is not None and theirs is not None and theirs > mine
        if lost:
            raise RunLost(f"Run {self.run} of {p.project} ended without this client seeing how (the daemon "
                          f"restarted, or the run finished while the connection was down); "
                          f"`syncsnap snapshots {p.project}` shows whether a snapshot was made.")
