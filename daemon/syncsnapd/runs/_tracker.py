"""The progress tracker: latest state per project, one daemon-wide event sequence, replay, subscribers.

No I/O, and nothing about HTTP: an event carries its progress object and that object's JSON text (data);
the transports' framings (SSE, JSON bodies, WebSocket messages) belong to ``syncsnapd.http`` and are cached
per event in :attr:`Event.cache` by the API layer, so a fan-out encodes each event once.

``publish`` is synchronous and never waits on a subscriber: it stamps the next event id, keeps the event in
a bounded replay buffer, and offers it to every matching subscription. There are two kinds:

- A network client's subscription holds a bounded queue; when that queue is full, intermediate progress
  events are coalesced to the newest per project, terminal events (completed, failed, cancelled) are never
  dropped, and a subscription that still cannot keep up is closed (the reader resumes with
  ``Last-Event-ID``). The events replayed to a resuming reader are never coalesced: they wait apart (its
  *backlog*, at most the replay buffer's length, references to events the buffer holds anyway), so a resume
  within the replay window gets every missed event, however many.
- A *lossless* subscription (``subscribe(lossless=True)``) is for the daemon's own consumers (the history,
  the metrics, the systemd status): its queue is unbounded, never coalesced, never closed by the tracker.
  Such a consumer runs on the event loop and drains its queue without waiting on I/O (the history moves
  events into its own bounded, counted buffer: see ``_history.py``), so the queue stays short.

A transport may give a subscription a *fast path*: a callable that tries to hand an event straight to the
connection without blocking (see ``syncsnapd.api``: a non-blocking socket write). Only when it cannot does
the event wait in the queue for the subscriber's own task, which the fast path wakes.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import trio

from ..core import Progress

# Events kept for Last-Event-ID resume. At a few events per second per running project this covers
# minutes of history, enough for a client to reconnect after a network hiccup or a daemon restart.
DEFAULT_REPLAY_EVENTS = 4096
# Events a subscriber may have waiting before its intermediate progress events get coalesced.
DEFAULT_QUEUE_EVENTS = 256


@dataclass(frozen=True, eq=False)
class Event:
    """One published progress event.

    ``json_text`` (the progress object as compact JSON) is computed once and shared by every consumer.
    ``cache`` holds what other layers derive from the event (the API layer keeps its wire encodings there),
    so that each is computed once per event however many subscribers receive it; the tracker never reads it.
    """

    id: int
    progress: Progress
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def json_text(self) -> str:
        return json.dumps(self.progress.to_json(), separators=(",", ":"))


@dataclass
class TrackerStatistics:
    published: int = 0
    subscribers: int = 0
    coalesced: int = 0
    dropped_subscribers: int = 0
    fast_deliveries: int = 0
    queued_deliveries: int = 0


FastPath = Callable[[Event], bool]


class SubscriptionClosed(Exception):
    """:meth:`Subscription.wait` on a subscription that is closed and has nothing left to read.

    Waiting on it again could only return at once, forever (a consumer loop would spin), so it raises.
    ``reason`` is the subscription's ``close_reason`` ("overflow" for a reader that fell hopelessly behind).
    """

    def __init__(self, reason: str | None) -> None:
        super().__init__(f"the subscription is closed ({reason})")
        self.reason = reason


class Subscription:
    """A subscriber's view of the event sequence. Use as an async iterator, or drain with ``get_nowait``.

    ``gap`` is True when the subscriber asked to resume from an event that had left the replay buffer:
    it then received the current state instead of the missed events.

    ``maxlen`` None makes it lossless: every event is queued, none is coalesced, and the tracker never
    closes it (for the daemon's own consumers, which drain their queue on the event loop).
    """

    def __init__(self, tracker: Tracker, projects: frozenset[str] | None, maxlen: int | None,
                 transport: str = "internal") -> None:
        self._tracker = tracker
        self.transport = transport
        self.projects = projects
        self._maxlen = maxlen
        self._backlog: deque[Event] = deque()  # the replay on subscribe: read first, never coalesced
        self._queue: deque[Event] = deque()
        self._wakeup = trio.Event()
        self.fast_path: FastPath | None = None
        # Called once with the reason when the subscription closes: a transport whose reader was dropped
        # ("overflow") ends its connection at once instead of at its next write.
        self.on_close: Callable[[str], None] | None = None
        self.closed = False
        self.close_reason: str | None = None
        self.gap = False
        self.last_delivery = trio.current_time()

    @property
    def lossless(self) -> bool:
        return self._maxlen is None

    def matches(self, project: str) -> bool:
        return self.projects is None or project in self.projects

    # --- publisher side ----------------------------------------------------------------------------

    def _offer(self, event: Event, now: float) -> None:
        # ``now``: the publisher's clock, read once per event rather than once per subscriber.
        if self.closed:
            return
        stats = self._tracker.stats
        if not self._queue and not self._backlog and self.fast_path is not None and self.fast_path(event):
            stats.fast_deliveries += 1
            self.last_delivery = now
            return
        if self._maxlen is not None and len(self._queue) >= self._maxlen:
            self._coalesce()
            if len(self._queue) >= self._maxlen:
                self.close("overflow")
                stats.dropped_subscribers += 1
                return
        self._queue.append(event)
        stats.queued_deliveries += 1
        self.wake()

    def _coalesce(self) -> None:
        """Keep every terminal event and only the newest non-terminal event per project."""
        newest: dict[str, int] = {}
        for ev in self._queue:
            if not ev.progress.terminal:
                newest[ev.progress.project] = ev.id
        kept = deque(ev for ev in self._queue if ev.progress.terminal or newest[ev.progress.project] == ev.id)
        self._tracker.stats.coalesced += len(self._queue) - len(kept)
        self._queue = kept

    def wake(self) -> None:
        self._wakeup.set()

    def close(self, reason: str = "closed") -> None:
        """Stop receiving events; a waiting reader wakes and sees ``closed``."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._tracker._discard(self)
            self._wakeup.set()
            if self.on_close is not None:
                self.on_close(reason)

    # --- subscriber side ---------------------------------------------------------------------------

    def get_nowait(self) -> Event | None:
        if self._backlog:
            return self._backlog.popleft()
        return self._queue.popleft() if self._queue else None

    def pending(self) -> int:
        return len(self._backlog) + len(self._queue)

    async def wait(self) -> None:
        """Wait until an event is queued, the fast path asked for attention, or the subscription closed.

        Raises:
            SubscriptionClosed: it was already closed with nothing left to read (returning would make
                the caller's loop spin).
        """
        if self._queue or self._backlog:
            await trio.lowlevel.checkpoint()
            return
        if self.closed:
            await trio.lowlevel.checkpoint()
            raise SubscriptionClosed(self.close_reason)
        await self._wakeup.wait()
        self._wakeup = trio.Event()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            ev = self.get_nowait()
            if ev is not None:
                await trio.lowlevel.checkpoint()
                return ev
            if self.closed:
                raise StopAsyncIteration
            await self.wait()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Tracker:
    """Latest progress per project plus the daemon-wide event sequence.

    Args:
        replay_events: how many past events stay available for ``Last-Event-ID`` resume.
        queue_events: a subscriber's queue bound before coalescing starts.
        first_event_id: the id the next event gets (history may continue an earlier sequence).
    """

    replay_events: int = DEFAULT_REPLAY_EVENTS
    queue_events: int = DEFAULT_QUEUE_EVENTS
    first_event_id: int = 1
    stats: TrackerStatistics = field(default_factory=TrackerStatistics)

    def __post_init__(self) -> None:
        self._next_id = self.first_event_id
        self._replay: deque[Event] = deque(maxlen=self.replay_events)
        # The newest event per project (an idle one with id 0 for a project that never ran); its encodings
        # are cached, so answering a progress poll is a dictionary lookup.
        self._latest: dict[str, Event] = {}
        self._subscribers: set[Subscription] = set()

    def preload(self, events: list[Event], latest: dict[str, Progress]) -> None:
        """Continue an earlier sequence after a restart: persisted events fill the replay buffer (so
        ``Last-Event-ID`` resume works across the restart) and known projects get their last state."""
        self._replay.extend(ev for ev in events if ev.id < self._next_id)
        for project, progress in latest.items():
            if project in self._latest:
                self._latest[project] = Event(progress.event_id, progress)

    # --- projects ----------------------------------------------------------------------------------

    def add_project(self, project: str) -> None:
        self._latest.setdefault(project, Event(0, Progress(project=project)))

    def remove_project(self, project: str) -> None:
        self._latest.pop(project, None)

    def projects(self) -> list[str]:
        return list(self._latest)

    def latest(self, project: str) -> Progress:
        """The newest progress of ``project`` (idle with event_id 0 if it never ran). KeyError if unknown."""
        return self._latest[project].progress

    def latest_event(self, project: str) -> Event:
        """Like :meth:`latest`, with the cached JSON encoding. KeyError if unknown."""
        return self._latest[project]

    @property
    def last_event_id(self) -> int:
        return self._next_id - 1

    # --- publishing --------------------------------------------------------------------------------

    def publish(self, progress: Progress) -> Event:
        """Stamp ``progress`` with the next event id and deliver it. Never waits."""
        event = Event(self._next_id, replace(progress, event_id=self._next_id))
        self._next_id += 1
        if progress.kind == "snapshot":
            # A project's state is that of its snapshot runs. Restore runs (and store-wide check and prune
            # runs, project "") go out on the streams but do not replace it: see docs/api.md "Operations".
            self._latest[progress.project] = event
        self._replay.append(event)
        self.stats.published += 1
        # Subscribers exist only inside trio.run (a Subscription reads the clock): publishing works without.
        now = trio.current_time() if self._subscribers else 0.0
        project = progress.project
        for sub in list(self._subscribers):
            if sub.projects is None or project in sub.projects:
                sub._offer(event, now)
        return event

    # --- subscribing -------------------------------------------------------------------------------

    def subscribe(self, projects: Iterable[str] | None = None, *, last_event_id: int | None = None,
                  fast_path: FastPath | None = None, transport: str = "internal",
                  lossless: bool = False) -> Subscription:
        """Open a subscription; its queue starts with the replay or the current state.

        With ``last_event_id`` still covered by the replay buffer, exactly the later events are queued
        (no gap, no duplicate). Otherwise the current state of each project is queued, oldest event
        first, and ``gap`` is set if a resume was asked for but could not be honoured.

        ``lossless`` is for the daemon's own consumers (history, metrics, systemd status): an unbounded
        queue, never coalesced nor closed for falling behind. Network clients get the bounded queue
        (``queue_events``) so that a slow reader cannot make the daemon hold events without limit.
        """
        maxlen = None if lossless else self.queue_events
        sub = Subscription(self, None if projects is None else frozenset(projects), maxlen, transport)
        initial: list[Event]
        if last_event_id is not None and self._can_replay(last_event_id):
            initial = [ev for ev in self._replay if ev.id > last_event_id and sub.matches(ev.progress.project)]
        else:
            sub.gap = last_event_id is not None
            initial = sorted((ev for name, ev in self._latest.items() if sub.matches(name)), key=lambda ev: ev.id)
        # The replay (or the current states) waits apart from the bounded queue: a reader resuming within
        # the replay window gets every event it missed, however many, and only later events may coalesce.
        sub._backlog.extend(initial)
        self._subscribers.add(sub)
        self.stats.subscribers = len(self._subscribers)
        sub.fast_path = fast_path
        return sub

    def _can_replay(self, last_event_id: int) -> bool:
        if last_event_id >= self.last_event_id:
            return last_event_id == self.last_event_id  # an id from the future is not ours: reset
        oldest = self._replay[0].id if self._replay else self._next_id
        return last_event_id >= oldest - 1

    def _discard(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        self.stats.subscribers = len(self._subscribers)

    def subscribers_by_transport(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sub in self._subscribers:
            out[sub.transport] = out.get(sub.transport, 0) + 1
        return out

    def statistics(self) -> TrackerStatistics:
        return replace(self.stats, subscribers=len(self._subscribers))
