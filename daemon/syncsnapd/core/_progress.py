"""The 6-step progress model of a snapshot run, and the reporter the snapshot engine writes into.

No I/O and no HTTP here. A run's engine calls :class:`RunProgress` methods; the run publishes
:class:`Progress` values to the tracker. Counters may be advanced from worker threads; everything
else is called on the Trio thread.

A run can be paused (:meth:`RunProgress.pause`): its worker threads then wait in
:meth:`RunProgress.check_cancelled`, which they call between files and between chunks, until it is
resumed or cancelled, so no bytes are read while paused. Paused time counts in no step's time nor in
the ETA. A thread that waits there tells its ``held`` callback, so that what it holds (a token of a thread
limiter) can be lent to others meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import trio

TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class Step:
    """One working step of a run: its state name, human name, and the share of the overall percent it
    covers (start, end)."""

    state: str
    name: str
    span: tuple[float, float]


@dataclass(frozen=True)
class Plan:
    """The steps of one kind of run; the last step (``len(steps) + 1``) is the terminal one."""

    kind: str
    steps: tuple[Step, ...]

    @property
    def total(self) -> int:
        return len(self.steps) + 1

    def step(self, n: int) -> Step:
        return self.steps[n - 1]


# The 6-step snapshot model. Reading and compressing content dominates a first snapshot, so step 4 gets
# most of the bar; a no-change run passes through quickly.
SNAPSHOT_PLAN = Plan("snapshot", (
    Step("waiting", "Waiting for sync", (0.0, 2.0)),
    Step("browsing", "Browsing folder status", (2.0, 5.0)),
    Step("browsing", "Browsing files", (5.0, 20.0)),
    Step("compressing", "Compressing", (20.0, 90.0)),
    Step("uploading", "Uploading to the store", (90.0, 100.0)),
))
STEPS = SNAPSHOT_PLAN.total


def utc_now() -> str:
    """RFC 3339 UTC timestamp with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> float | None:
    """Seconds since the epoch from an RFC 3339 timestamp as :func:`utc_now` writes them (None stays None)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def count_of(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``, ``1,234 directories``: a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; exact bytes below 1 KiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SnapshotSummary:
    """What a completed run produced; carried as `snapshot` in the final progress object."""

    id: str
    files: int
    bytes: int
    files_new: int
    files_changed: int
    files_unchanged: int
    bytes_added: int
    duration_seconds: float
    warnings: int
    warning_paths: tuple[str, ...] = ()
    skipped: int = 0


@dataclass(frozen=True)
class Progress:
    """One progress object, as polled and as carried by every event (docs/api.md)."""

    project: str
    run: str | None = None
    kind: str = "snapshot"
    trigger: str | None = None
    attempt: int = 1
    retry_of: str | None = None
    state: str = "idle"
    # True while the run is held by a pause of its project (docs/api.md "Pause and resume").
    paused: bool = False
    step: int = 0
    steps: int = STEPS
    percent: float = 0.0
    message: str = "Idle"
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    started_at: str | None = None
    updated_at: str | None = None
    eta_seconds: float | None = None
    error: dict[str, str] | None = None
    snapshot: SnapshotSummary | None = None
    # The outcome of a finished restore, check or prune run (docs/api.md "Operations"); None otherwise.
    result: dict[str, Any] | None = None
    event_id: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.project:
            d["project"] = None  # a store-wide operation (check, prune)
        if self.snapshot is not None:
            d["snapshot"]["warning_paths"] = list(self.snapshot.warning_paths)
        return d


class RunCancelled(Exception):
    """Raised inside worker threads when the run they serve has been cancelled."""


# How often a worker thread held by a pause looks at its ``poll`` (trio's cancellation, which cannot wake
# it): a cancelled paused run ends within this much, plus the run's own cancel flag wakes it at once.
PAUSE_POLL_SECONDS = 0.1


class RunProgress:
    """The mutable state of one run, written by the engine, read by the run's publisher.

    Step changes and messages are set on the Trio thread and published at once through ``publish``.
    ``add_done`` may be called from worker threads; the run's ticker publishes the counters a few times a
    second (see :data:`syncsnapd.runs.TICK_SECONDS`), so a run emits a handful of events per
    second, never one per file.
    """

    def __init__(self, project: str, run: str, publish: Callable[[Progress], object], *,
                 plan: Plan = SNAPSHOT_PLAN, trigger: str | None = None, attempt: int = 1,
                 retry_of: str | None = None, expected_seconds: float | None = None) -> None:
        self.project = project
        # From history: how long runs of this project usually take, for an ETA before the rate is known.
        self.expected_seconds = expected_seconds
        self.run = run
        self.plan = plan
        self._publish = publish
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.started_monotonic = time.monotonic()
        self._step_started = self.started_monotonic
        self._percent = 0.0
        self._custom_message: str | None = None
        self.warnings: list[str] = []
        self.warning_count = 0
        first = plan.step(1)
        self._last: Progress = Progress(
            project=project, run=run, kind=plan.kind, trigger=trigger, attempt=attempt, retry_of=retry_of,
            state=first.state, step=1, steps=plan.total,
            started_at=utc_now(), updated_at=utc_now(), message=first.name,
        )
        self._files_done = 0
        self._bytes_done = 0
        self._dirty = False
        self._step_fraction_override: float | None = None
        # The pause gate: worker threads wait on it (under _lock) while _paused_since is set.
        self._gate = threading.Condition(self._lock)
        self._paused_since: float | None = None  # monotonic time of the pause, while paused
        self._paused_total = 0.0  # seconds paused before the current pause, whole run
        self._step_paused = 0.0  # the same, within the current step
        self._resumed: trio.Event | None = None  # for the Trio side (wait_resumed), while paused
        self._ended = False  # finish() was called: nothing more is published

    # --- engine side -------------------------------------------------------------------------------

    def check_cancelled(self, poll: Callable[[], None] | None = None,
                        held: Callable[[bool], None] | None = None) -> None:
        """Raise :class:`RunCancelled` if the run was cancelled (for worker threads); while the run is
        paused, first wait until it is resumed or cancelled.

        ``poll`` is called every :data:`PAUSE_POLL_SECONDS` while waiting, and may raise to stop waiting
        (``trio.from_thread.check_cancelled``). ``held(True)`` is called before waiting and, if it
        returned, ``held(False)`` exactly once after, however the wait ends (resumed, cancelled, ``poll``
        raising); both without any lock of this object held, so they may block on the Trio thread (the
        snapshot engine lends the thread's limiter token meanwhile).
        """
        if self._paused_since is not None:  # a plain read: the fast path takes no lock
            if held is not None:
                held(True)
            try:
                with self._gate:
                    while self._paused_since is not None and not self._cancel.is_set():
                        if poll is not None:
                            self._gate.release()
                            try:
                                poll()
                            finally:
                                self._gate.acquire()
                        self._gate.wait(PAUSE_POLL_SECONDS)
            finally:
                if held is not None:
                    held(False)
        if self._cancel.is_set():
            raise RunCancelled()

    async def wait_resumed(self) -> None:
        """Wait while the run is paused (for the Trio side, between steps). Trio thread only."""
        while self._resumed is not None:
            await self._resumed.wait()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()
        with self._gate:
            self._gate.notify_all()  # a worker held by a pause ends at once

    # --- pause and resume (Trio thread) ---------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    @property
    def paused_seconds(self) -> float:
        """Seconds this run has been paused so far (the current pause included)."""
        with self._lock:
            return self._paused_total + self._open_pause_locked()

    def _open_pause_locked(self) -> float:
        return 0.0 if self._paused_since is None else time.monotonic() - self._paused_since

    def pause(self) -> bool:
        """Hold the run: its workers wait at their next check (between files or chunks), the step and
        counters stay, and a progress event with ``paused: true`` is published now. False if it was
        already paused."""
        with self._lock:
            if self._paused_since is not None:
                return False
            self._paused_since = time.monotonic()
            self._resumed = trio.Event()
            self._dirty = True
        if not self._ended:
            self.flush()
        return True

    def resume(self) -> bool:
        """Let the run go on where it stopped; publishes a progress event with ``paused: false`` now.
        False if it was not paused."""
        with self._gate:
            if self._paused_since is None:
                return False
            held = time.monotonic() - self._paused_since
            self._paused_total += held
            self._step_paused += held
            self._paused_since = None
            resumed, self._resumed = self._resumed, None
            self._dirty = True
            self._gate.notify_all()
        if resumed is not None:
            resumed.set()
        if not self._ended:
            self.flush()
        return True

    def set_step(self, step: int, *, files_total: int = 0, bytes_total: int = 0, message: str | None = None,
                 state: str | None = None) -> None:
        """Enter a working ``step`` (1 to steps-1) with its totals; publishes immediately. Trio thread only."""
        assert 1 <= step < self.plan.total
        with self._lock:
            self._files_done = 0
            self._bytes_done = 0
            self._custom_message = message
            self._step_started = time.monotonic()
            # A step entered while paused starts its clock at the resume.
            self._step_paused = -self._open_pause_locked()
            self._step_fraction_override = None
            self._last = replace(
                self._last, step=step, state=state or self.plan.step(step).state, files_total=files_total,
                bytes_total=bytes_total, files_done=0, bytes_done=0,
            )
            self._dirty = True
        self.flush()

    def set_totals(self, *, files_total: int | None = None, bytes_total: int | None = None) -> None:
        with self._lock:
            self._last = replace(
                self._last,
                files_total=self._last.files_total if files_total is None else files_total,
                bytes_total=self._last.bytes_total if bytes_total is None else bytes_total,
            )
            self._dirty = True

    def set_message(self, message: str | None, *, fraction: float | None = None) -> None:
        """Replace the generated message of the current step (e.g. Syncthing's own progress).

        ``fraction`` (0-1) sets the position within the step when counters do not apply.
        """
        with self._lock:
            self._custom_message = message
            if fraction is not None:
                self._step_fraction_override = max(0.0, min(1.0, fraction))
            self._dirty = True

    def add_done(self, files: int = 0, nbytes: int = 0) -> None:
        """Advance the current step's counters. Thread-safe; publishes on the next tick."""
        with self._lock:
            self._files_done += files
            self._bytes_done += nbytes
            self._dirty = True

    def warn(self, path: str, reason: str) -> None:
        """Record a file that could not be captured as it was (changed, vanished, unreadable)."""
        with self._lock:
            self.warning_count += 1
            if len(self.warnings) < 10:
                self.warnings.append(f"{path}: {reason}")

    # --- publisher side ----------------------------------------------------------------------------

    def current(self) -> Progress:
        """Build the current progress object from the counters (does not publish)."""
        with self._lock:
            return self._build_locked()

    def _build_locked(self) -> Progress:
        last = self._last
        files_done = min(self._files_done, last.files_total) if last.files_total else self._files_done
        bytes_done = min(self._bytes_done, last.bytes_total) if last.bytes_total else self._bytes_done
        override = self._step_fraction_override
        if override is not None:
            frac = override
        elif last.bytes_total:
            frac = bytes_done / last.bytes_total
        elif last.files_total:
            frac = files_done / last.files_total
        else:
            frac = 0.0
        lo, hi = self.plan.step(last.step).span
        percent = max(self._percent, round(lo + (hi - lo) * frac, 1))
        self._percent = percent
        eta = self._eta_locked(last.step, frac)
        message = self._custom_message or self._generated_message(files_done, last.files_total, bytes_done,
                                                                  last.bytes_total)
        paused = self._paused_since is not None
        if paused:
            message = f"Paused: resume to continue (was: {message})"
        return replace(last, files_done=files_done, bytes_done=bytes_done, percent=percent, message=message,
                       eta_seconds=None if paused else eta, paused=paused, updated_at=utc_now())

    def _eta_locked(self, step: int, frac: float) -> float | None:
        # The content step has a rate worth extrapolating once it is under way; before that, the history
        # of this project's runs (expected_seconds) is the best guess. Paused time is no one's work.
        now, paused = time.monotonic(), self._open_pause_locked()
        elapsed = now - self._step_started - self._step_paused - paused
        if step == 4 and frac > 0.02 and elapsed >= 0.5:
            return round(elapsed * (1 - frac) / frac, 1)
        if self.expected_seconds is not None:
            worked = now - self.started_monotonic - self._paused_total - paused
            return round(max(0.0, self.expected_seconds - worked), 1)
        return None

    def _generated_message(self, files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> str:
        step = self._last.step
        if self.plan is not SNAPSHOT_PLAN:
            name = self.plan.step(step).name
            if files_total or bytes_total:
                return (f"{name}: {files_done:,} of {files_total:,} "
                        f"({human_bytes(bytes_done)} of {human_bytes(bytes_total)})")
            return name
        if step == 1:
            return "Waiting for the folder to settle"
        if step == 2:
            return "Browsing folder status"
        if step == 3:
            return f"Browsing files: {files_done:,} found"
        if step == 4:
            return (f"Compressing {files_done:,} of {count_of(files_total, 'file')} "
                    f"({human_bytes(bytes_done)} of {human_bytes(bytes_total)})")
        if step == 5:
            return (f"Uploading to the store: {files_done:,} of {count_of(files_total, 'object')} "
                    f"({human_bytes(bytes_done)} of {human_bytes(bytes_total)})")
        return self.plan.step(step).name

    def flush(self) -> None:
        """Publish the current state if anything changed since the last publish. Trio thread only."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            progress = self._build_locked()
        self._publish(progress)

    def finish(self, state: str, *, snapshot: SnapshotSummary | None = None,
               error: dict[str, str] | None = None, message: str, result: dict[str, Any] | None = None) -> Progress:
        """Build the terminal progress object (the caller publishes it exactly once).

        A run that made a snapshot ends with that snapshot's totals as its counters (``files_*``: the files
        in it, ``bytes_*``: their bytes), not the last step's; any other end keeps the counters of the step
        it ended in (docs/api.md, "The progress object").
        """
        with self._lock:
            self._ended = True
            last = self._last
            completed = state == "completed"
            if snapshot is not None:
                last = replace(last, files_total=snapshot.files, bytes_total=snapshot.bytes)
            return replace(
                last, state=state, step=self.plan.total, percent=100.0 if completed else self._percent, message=message,
                files_done=last.files_total if completed else min(self._files_done, last.files_total),
                bytes_done=last.bytes_total if completed else min(self._bytes_done, last.bytes_total),
                eta_seconds=None if not completed else 0.0, error=error, snapshot=snapshot, result=result,
                paused=False, updated_at=utc_now(),
            )

