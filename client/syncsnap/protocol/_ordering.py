"""Which events a follower yields, in which order, and when it is done. Sans-I/O: progress objects in,
progress objects out (:meth:`EventOrder.next_event`).

Every transport carries the same daemon-wide event ids, so one rule keeps the output clean: an event is
yielded only if its id is above the last one yielded (never twice, never out of order). Ids restart when
a daemon that does not keep its event log restarts (it then answers our resume with its ``gap`` event, as
for any resume it cannot honour); that, and a run that ended unseen between two polls, are *gaps*: the
next event of each affected lane is its current state, with ``gap=True``.

Runs of other kinds than snapshots (restore, check, prune) go out on the same streams without replacing
the project's state, so the bookkeeping is kept per *lane* (:attr:`Progress.lane`): a project's snapshot
runs form one lane, and each operation run its own.

Following one run, the follower stops after that run's terminal event, and raises :class:`RunLost` when
the run's end can no longer be seen (a later run of its project showed up, or the daemon forgot it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import NoReturn

from .._errors import RunLost
from ..models import Health, Progress, RunStarted
from ._policy import FollowStatistics

# A health answer whose uptime is this much below the last one we saw comes from a new daemon process.
UPTIME_SLACK_SECONDS = 1.0
# Events remembered after they were offered, so that after a new epoch (ids may start again) an event seen
# already is still recognised: a daemon whose history lost its newest events in a crash answers a poll
# with an older state again, which is not a new daemon's sequence. About 1 MiB at most.
REMEMBERED_EVENTS = 4096


def run_time(run: str) -> tuple[int, str] | None:
    """Run ids sort by start time (``r-<ms in hex>-<counter>-<random>``); None if not that shape."""
    parts = run.split("-")
    if len(parts) < 3 or parts[0] != "r":
        return None
    try:
        return int(parts[1], 16), parts[2]
    except ValueError:
        return None


class EventOrder:
    """The ordering, gap and run-following state of one follower.

    Feed it what the transports bring (:meth:`offer`, :meth:`offer_polled`, :meth:`gap`,
    :meth:`health`, :meth:`operation_state`); take what is to be yielded with :meth:`next_event`.

    Args:
        project: the followed project (None: every project).
        run: the followed run (None: every run).
        kind: the followed run's kind.
        last_event_id: resume after this event.
        stats: the follower's counters (``gaps``, ``restarts``, ``duplicates_dropped``, ``last_event_id``).
    """

    def __init__(self, project: str | None, run: str | None, kind: str, last_event_id: int | None,
                 stats: FollowStatistics) -> None:
        self.project = project
        self.run = run
        self.kind = kind
        self._stats = stats
        self.last_id: int | None = last_event_id
        self._zero_seen: set[str | None] = set()
        self._last_by_lane: dict[str, Progress] = {}
        self._gap_all = False
        self._gap_marked: set[str] = set()
        self._run_seen = False
        self._run_ended = False  # the followed run's terminal event is kept: what comes after is not ours
        self._run_floor = -1  # events up to this id came before the followed run began
        self._daemon: tuple[int, float] | None = None
        # An operation run's state is asked of its own endpoint (GET /operations/{run}): at the start when
        # there is no resume point (a fresh stream does not replay operations), and after a gap or a restart.
        self.check_run = self._follows_operation and last_event_id is None
        self._check_initial = self.check_run
        self._ready: deque[Progress] = deque()
        self._seen: dict[int, Progress] = {}  # the last REMEMBERED_EVENTS offered, by id
        self.finished = False

    @property
    def _follows_operation(self) -> bool:
        return self.run is not None and self.kind != "snapshot"

    @property
    def checking_initially(self) -> bool:
        """The operation run's state is still to be asked for the first time."""
        return self._check_initial

    # --- out ---------------------------------------------------------------------------------------

    @property
    def has_events(self) -> bool:
        return bool(self._ready)

    def next_event(self) -> Progress | None:
        """The next event to yield (None: none yet). After the followed run's terminal event,
        :attr:`finished` is set and nothing more comes."""
        if not self._ready:
            return None
        p = self._ready.popleft()
        if self.run is not None and p.run == self.run and p.terminal:
            self.finished = True
            self._ready.clear()
        return p

    # --- in ----------------------------------------------------------------------------------------

    def health(self, health: Health) -> int | None:
        """A ``/health`` answer, asked on every new connection. When it comes from a new daemon process (a
        new pid, or a smaller uptime), returns the previous one's pid; else None."""
        restarted: int | None = None
        if self._daemon is not None:
            pid, uptime = self._daemon
            if health.pid != pid or health.uptime_seconds + UPTIME_SLACK_SECONDS < uptime:
                # Resuming still sends Last-Event-ID: a daemon that keeps its event log replays what we
                # missed; one that starts its ids again answers with its `gap` event (that id is not its).
                self._stats.restarts += 1
                restarted = pid
                if self._follows_operation:
                    self.check_run = True  # an operation run does not survive its daemon
        self._daemon = (health.pid, health.uptime_seconds)
        return restarted

    def gap(self) -> None:
        """The daemon could not replay from our last event id (its ``gap`` event)."""
        self._new_epoch()

    def offer(self, p: Progress, *, polled: int | None = None) -> None:
        """An event from a stream, or from a poll (``polled``: the last event id seen before that poll):
        kept to be yielded, or dropped as already seen."""
        eid = p.event_id
        if self.last_id is not None and eid <= self.last_id and not (eid == 0 and p.project not in self._zero_seen):
            self._stats.duplicates_dropped += 1
            return
        if eid and self._seen.get(eid) == p:
            # The very event offered before a new epoch: an old state, not a new daemon's event (its lane
            # needs no gap mark: nothing newer of it is known).
            if self._gap_all:
                self._gap_marked.add(p.lane)
            self._stats.duplicates_dropped += 1
            return
        self._seen[eid] = p
        if len(self._seen) > REMEMBERED_EVENTS:
            del self._seen[next(iter(self._seen))]
        # A project's idle state (id 0) is yielded only before anything else of that project: once it ran,
        # a late idle state from an older connection is stale.
        self._zero_seen.add(p.project)
        self.last_id = eid if self.last_id is None else max(eid, self.last_id)
        self._stats.last_event_id = self.last_id

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
        elif (not gap and polled is not None and prev is not None and p.run is not None and p.run != prev.run
              and eid > polled + 2):
            # A poll shows a run we have not seen yet, and two events or more were missed since the last
            # one we saw: whole runs (a first event and an end, at least) may have come and gone meanwhile,
            # and a poll cannot tell.
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
            self._run_ended = self._run_ended or p.terminal
        self._ready.append(p)

    def offer_polled(self, items: list[Progress]) -> None:
        """The current states a poll answered: offered in id order, after a new epoch if ids went back."""
        items.sort(key=lambda p: p.event_id)
        for p in items:
            prev = self._last_by_lane.get(p.lane)
            if prev is not None and p.event_id < prev.event_id:
                # Ids of one lane only grow within one daemon: these come from a new one.
                self._new_epoch()
                break
        before = -1 if self.last_id is None else self.last_id
        for p in items:
            self.offer(p, polled=before)

    def poll_not_found(self) -> None:
        """The polled endpoint answered 404: a followed operation run is unknown to the daemon now."""
        if self._follows_operation:
            self.run_lost(self.project)

    def operation_state(self, p: Progress) -> None:
        """The followed operation run's state from its own endpoint: kept to be yielded if it is new (with
        ``gap=True`` unless it is the first look)."""
        initial, self.check_run, self._check_initial = self._check_initial, False, False
        prev = self._last_by_lane.get(p.lane)
        if prev is not None and p.event_id <= prev.event_id:
            return  # nothing new: the streams carry on from there
        # Yield it even when other events with higher ids came meanwhile: this run's own events stay in
        # order, and its end must not be lost because it was not replayed.
        self._last_by_lane[p.lane] = p
        self._gap_marked.add(p.lane)
        if self.last_id is None or p.event_id > self.last_id:
            self.last_id = p.event_id  # a stream opened from here replays everything after it
            self._stats.last_event_id = p.event_id
        self._run_seen = True
        self._ready.append(p if initial else replace(p, gap=True))

    def run_started(self, started: RunStarted) -> None:
        """The follower started the run it now follows (over its own subscribed WebSocket)."""
        self.run = started.run
        # Events read before the answer: keep the new run's (it may have begun already), drop the others.
        # The subscription's first event (the project's state before the run) may still be on its way: it
        # says nothing about this run.
        self._ready = deque(p for p in self._ready if p.run == started.run)
        self._run_seen = bool(self._ready)
        self._run_floor = started.progress.event_id - (started.progress.run == started.run)

    # --- gaps and lost runs ------------------------------------------------------------------------

    def _new_epoch(self) -> None:
        """Events were missed and ids may restart: the next event of each lane is a marked gap."""
        self.last_id = None
        self._zero_seen.clear()
        self._gap_all = True
        self._gap_marked.clear()
        self._stats.gaps += 1
        self._run_floor = -1
        if self._follows_operation:
            # The daemon's current states are its projects'; an operation's end may be among the missed.
            self.check_run = True

    def _check_run_lost(self, p: Progress) -> None:
        """While following snapshot run X, another snapshot run's event (or idle) of its project arrived:
        is X over, unseen? (Operation runs are checked at their own endpoint instead.)"""
        assert self.run is not None
        if self._run_ended:
            return  # its end came in the same read as this later event: it is yielded, then the follower ends
        if self.kind != "snapshot" or p.kind != "snapshot" or p.project != self.project or p.event_id <= self._run_floor:
            return
        lost = self._run_seen or p.run is None
        if not lost and p.run is not None:
            mine, theirs = run_time(self.run), run_time(p.run)
            lost = mine is not None and theirs is not None and theirs > mine
        if lost:
            self.run_lost(p.project)

    def run_lost(self, project: str | None) -> NoReturn:
        """Raise :class:`RunLost` for the followed run, with what the user can do."""
        if self.kind == "snapshot":
            hint = f"`syncsnap snapshots {project}` shows whether a snapshot was made."
        else:
            hint = f"`syncsnap run {self.run}` shows how it ended."
        where = f" of {project}" if project else ""
        raise RunLost(f"Run {self.run}{where} ended without this client seeing how (the daemon restarted, or the "
                      f"run finished while the connection was down); {hint}")
