"""When a follower reads, pings, reconnects, polls and retries: a state machine with no I/O and no clock.

:class:`Schedule` is told what happened (a stream opened or was lost, an attempt, a poll or a check
failed or worked) with the time it happened, and answers what to do next (:meth:`Schedule.next_action`):
an :class:`Action`. The follower (``_follow.py``) does it with Trio and reports back. With the default
:class:`FollowPolicy`:

- a lost stream is reopened 1 s later, then after failed attempts 2, 4, 8, 16 s apart (doubling up to
  ``backoff_max``, each stretched by a little random jitter);
- when the 5th attempt in a row fails, the JSON progress endpoint is polled every second, the stream is
  tried again every 30 s (and at once when polls work again after failing: the daemon is back), and
  streaming resumes as soon as that works;
- a stream silent for 45 s is dead; on a stream that needs it (the WebSocket) a ping goes out after 15 s
  without anything received;
- a stream the daemon dropped for reading too slowly is reopened at once (the resume loses nothing).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .._errors import ConnectionLost, DaemonError, DaemonNotRunning, ProtocolError
from ._messages import Transport

# Errors after which trying again may help. Unauthorized / NotFound are the caller's to fix: raised.
TRANSIENT = (DaemonNotRunning, ConnectionLost, DaemonError, ProtocolError)


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


# --- what to do next -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sleep:
    """Nothing to do before ``until``."""

    until: float


@dataclass(frozen=True)
class OpenStream:
    """Open the stream (a reconnect attempt, or while polling a retry): report with
    :meth:`Schedule.stream_opened`, :meth:`Schedule.stream_attempt_failed` or :meth:`Schedule.stream_retry_failed`."""


@dataclass(frozen=True)
class Read:
    """Read the open stream, waiting no later than ``until``; report :meth:`Schedule.received`, or on
    timeout ask :meth:`Schedule.stalled`."""

    until: float


@dataclass(frozen=True)
class Ping:
    """The stream has been quiet: send a ping (its pong proves the connection lives)."""


@dataclass(frozen=True)
class Poll:
    """Poll the JSON endpoint once: report :meth:`Schedule.poll_succeeded` or :meth:`Schedule.poll_failed`."""


@dataclass(frozen=True)
class CheckRun:
    """Ask the followed operation run's own endpoint: report :meth:`Schedule.check_succeeded` or
    :meth:`Schedule.check_failed`."""


Action = Sleep | OpenStream | Read | Ping | Poll | CheckRun


@dataclass(frozen=True)
class AttemptFailed:
    """What follows a failed stream attempt (outside polling).

    ``outcome``: ``give_up`` (raise the error: no daemon, and the caller does not wait for one),
    ``first`` (the very first connection failed: reconnect attempts follow, the first at ``retry_at``),
    ``retry`` (attempt ``failures`` failed; the next at ``retry_at``), ``poll`` (too many in a row:
    polling starts now).
    """

    outcome: Literal["give_up", "first", "retry", "poll"]
    failures: int = 0
    retry_at: float = math.inf


class Schedule:
    """The reconnect, polling and keep-alive state of one follower. Pure: every input carries its time.

    Args:
        policy: the timings.
        stats: the follower's counters (``mode``, ``streams_*``, ``stream_attempts_failed``, ``polls*``,
            ``pings``).
        wait: keep trying when no daemon answers the very first connection (else give up at once).
    """

    def __init__(self, policy: FollowPolicy, stats: FollowStatistics, *, wait: bool = False) -> None:
        self.policy = policy
        self._stats = stats
        self.wait = wait
        self.streaming = False  # a stream is open
        self.ever_connected = False
        self.too_slow = False  # the daemon said it drops this reader: resume at once
        self.failures = 0  # failed stream attempts in a row
        self.next_attempt = -math.inf
        self.next_poll = 0.0
        self.next_stream_try = 0.0
        self._polls_failing = False
        self._last_rx = 0.0
        self._next_ping = math.inf
        self._check_at = -math.inf
        self._check_failures = 0

    @property
    def polling(self) -> bool:
        return self._stats.mode == "poll"

    def next_action(self, now: float, *, check_run: bool = False) -> Action:
        """What to do at ``now``. A :class:`Poll` or :class:`Ping` returned is taken as done (the next
        one is scheduled). ``check_run``: the followed operation run's state is wanted."""
        if check_run and now >= self._check_at:
            return CheckRun()
        if self.polling:
            if now >= self.next_stream_try:
                return OpenStream()
            if now >= self.next_poll:
                self.next_poll += self.policy.poll_interval
                if self.next_poll <= now:
                    self.next_poll = now + self.policy.poll_interval
                self._stats.polls += 1
                return Poll()
            return Sleep(min(self.next_poll, self.next_stream_try))
        if not self.streaming:
            if now < self.next_attempt:
                return Sleep(self.next_attempt)
            return OpenStream()
        dead_at = self._last_rx + self.policy.stall_timeout
        if self._next_ping <= now < dead_at:
            # Quiet for a while: ask the daemon for a pong (WebSocket), which proves the connection lives.
            self._next_ping = now + self.policy.ping_interval
            self._stats.pings += 1
            return Ping()
        return Read(min(dead_at, self._next_ping))

    # --- the stream --------------------------------------------------------------------------------

    def stream_opened(self, now: float, *, pings: bool) -> None:
        """A stream is open (``pings``: it needs our pings to show it lives)."""
        self.streaming = True
        self.too_slow = False
        self.ever_connected = True
        self.failures = 0
        self._stats.streams_opened += 1
        self._stats.mode = "stream"
        self._last_rx = now
        self._next_ping = now + self.policy.ping_interval if pings else math.inf

    def received(self, now: float, *, pings: bool) -> None:
        """Something arrived on the open stream."""
        self._last_rx = now
        if pings:
            self._next_ping = now + self.policy.ping_interval

    def stalled(self, now: float) -> bool:
        """A read waited until its deadline: True when the stream is dead (silent for ``stall_timeout``),
        False when it is only time to ping."""
        return now >= self._last_rx + self.policy.stall_timeout

    def stream_lost(self, now: float) -> float:
        """The open stream ended, broke or stalled; returns when to reconnect."""
        self.streaming = False
        self._stats.streams_lost += 1
        self.failures = 0
        self._next_ping = math.inf
        # Dropped for reading too slowly: resuming at once loses nothing.
        self.next_attempt = now if self.too_slow else now + self.policy.delay(1)
        return self.next_attempt

    def gives_up(self, daemon_not_running: bool) -> bool:
        """Whether a failure to connect is the caller's: no daemon at the very start, and no ``wait``."""
        return daemon_not_running and not self.ever_connected and not self.wait

    def stream_attempt_failed(self, now: float, *, daemon_not_running: bool) -> AttemptFailed:
        """A stream attempt (outside polling) failed with a transient error at ``now``."""
        if self.gives_up(daemon_not_running):
            return AttemptFailed("give_up")
        if not self.ever_connected and self.failures == 0 and self.next_attempt == -math.inf:
            # The first connection failed: like a lost stream, reconnect attempts follow.
            self.next_attempt = now + self.policy.delay(1)
            return AttemptFailed("first", 0, self.next_attempt)
        self.failures += 1
        self._stats.stream_attempts_failed += 1
        if self.failures >= self.policy.attempts_before_polling:
            self._stats.mode = "poll"
            self.next_poll = now
            self.next_stream_try = now + self.policy.stream_retry_interval
            self._polls_failing = False
            return AttemptFailed("poll", self.failures)
        self.next_attempt = now + self.policy.delay(self.failures + 1)
        return AttemptFailed("retry", self.failures, self.next_attempt)

    # --- polling -----------------------------------------------------------------------------------

    def stream_retry_failed(self, now: float) -> None:
        """While polling, the stream tried at ``now`` (the :class:`OpenStream`'s time) failed."""
        self.next_stream_try = now + self.policy.stream_retry_interval

    def poll_failed(self) -> bool:
        """A poll failed; True if it is the first of a series (worth a log line)."""
        self._stats.polls_failed += 1
        first = not self._polls_failing
        self._polls_failing = True
        return first

    def poll_succeeded(self, now: float) -> None:
        """A poll (the :class:`Poll` decided at ``now``) worked."""
        if self._polls_failing:
            # The daemon answers again (it probably restarted): its stream likely works too.
            self._polls_failing = False
            self.next_stream_try = now

    # --- the followed operation run ----------------------------------------------------------------

    def check_failed(self, now: float) -> None:
        """Asking the operation run's endpoint failed: the streams' attempts go on; ask again later."""
        self._check_failures += 1
        self._check_at = now + self.policy.delay(self._check_failures)

    def check_succeeded(self) -> None:
        self.ever_connected = True
        self._check_failures = 0
