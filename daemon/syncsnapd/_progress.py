"""The 6-step progress model of a snapshot run, and the reporter the snapshot engine writes into.

No I/O and no HTTP here. A run's engine calls :class:`RunProgress` methods; the run publishes
:class:`Progress` values to the tracker. Counters may be advanced from worker threads; everything
else is called on the Trio thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

STEPS = 6

# step number -> (state, human name)
STEP_NAMES: dict[int, tuple[str, str]] = {
    0: ("idle", "Idle"),
    1: ("waiting", "Waiting for sync"),
    2: ("browsing", "Browsing folder status"),
    3: ("browsing", "Browsing files"),
    4: ("compressing", "Compressing"),
    5: ("uploading", "Uploading to the store"),
    6: ("completed", "Completed"),
}
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})

# Share of the overall percent that each step covers: (start, end). Reading and compressing content
# dominates a first snapshot, so step 4 gets most of the bar; a no-change run passes through quickly.
STEP_SPAN: dict[int, tuple[float, float]] = {
    1: (0.0, 2.0),
    2: (2.0, 5.0),
    3: (5.0, 20.0),
    4: (20.0, 90.0),
    5: (90.0, 100.0),
    6: (100.0, 100.0),
}


def utc_now() -> str:
    """RFC 3339 UTC timestamp with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    state: str = "idle"
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
    event_id: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.snapshot is not None:
            d["snapshot"]["warning_paths"] = list(self.snapshot.warning_paths)
        return d


class RunCancelled(Exception):
    """Raised inside worker threads when the run they serve has been cancelled."""


class RunProgress:
    """The mutable state of one run, written by the engine, read by the run's publisher.

    Step changes and messages are set on the Trio thread and published at once through ``publish``.
    ``add_done`` may be called from worker threads; the run's ticker publishes the counters a few times a
    second (see :data:`syncsnapd._scheduler.TICK_SECONDS`), so a run emits a handful of events per
    second, never one per file.
    """

    def __init__(self, project: str, run: str, publish: Callable[[Progress], None]) -> None:
        self.project = project
        self.run = run
        self._publish = publish
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.started_monotonic = time.monotonic()
        self._step_started = self.started_monotonic
        self._percent = 0.0
        self._custom_message: str | None = None
        self.warnings: list[str] = []
        self.warning_count = 0
        self._last: Progress = Progress(
            project=project, run=run, state="waiting", step=1, started_at=utc_now(), updated_at=utc_now(),
            message=STEP_NAMES[1][1],
        )
        self._files_done = 0
        self._bytes_done = 0
        self._dirty = False
        self._step_fraction_override: float | None = None

    # --- engine side -------------------------------------------------------------------------------

    def check_cancelled(self) -> None:
        """Raise :class:`RunCancelled` if the run was cancelled (for worker threads)."""
        if self._cancel.is_set():
            raise RunCancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def set_step(self, step: int, *, files_total: int = 0, bytes_total: int = 0, message: str | None = None,
                 state: str | None = None) -> None:
        """Enter ``step`` (1-5) with its totals; publishes immediately. Trio thread only."""
        assert 1 <= step <= 5
        with self._lock:
            self._files_done = 0
            self._bytes_done = 0
            self._custom_message = message
            self._step_started = time.monotonic()
            self._step_fraction_override = None
            self._last = replace(
                self._last, step=step, state=state or STEP_NAMES[step][0], files_total=files_total,
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
        lo, hi = STEP_SPAN[last.step]
        percent = max(self._percent, round(lo + (hi - lo) * frac, 1))
        self._percent = percent
        eta = self._eta_locked(last.step, frac)
        message = self._custom_message or self._generated_message(last.step, files_done, last.files_total,
                                                                  bytes_done, last.bytes_total)
        return replace(last, files_done=files_done, bytes_done=bytes_done, percent=percent, message=message,
                       eta_seconds=eta, updated_at=utc_now())

    def _eta_locked(self, step: int, frac: float) -> float | None:
        # Only the content step has a rate worth extrapolating; elsewhere the remaining time is unknown.
        if step != 4 or frac <= 0.02:
            return None
        elapsed = time.monotonic() - self._step_started
        if elapsed < 0.5:
            return None
        return round(elapsed * (1 - frac) / frac, 1)

    @staticmethod
    def _generated_message(step: int, files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> str:
        if step == 1:
            return "Waiting for the folder to settle"
        if step == 2:
            return "Browsing folder status"
        if step == 3:
            return f"Browsing files: {files_done:,} found"
        if step == 4:
            return (f"Compressing {files_done:,} of {files_total:,} files "
                    f"({human_bytes(bytes_done)} of {human_bytes(bytes_total)})")
        if step == 5:
            return (f"Uploading to the store: {files_done:,} of {files_total:,} objects "
                    f"({human_bytes(bytes_done)} of {human_bytes(bytes_total)})")
        return STEP_NAMES[step][1]

    def flush(self) -> None:
        """Publish the current state if anything changed since the last publish. Trio thread only."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            progress = self._build_locked()
        self._publish(progress)

    def finish(self, state: str, *, snapshot: SnapshotSummary | None = None,
               error: dict[str, str] | None = None, message: str) -> Progress:
        """Build the terminal progress object (the caller publishes it exactly once)."""
        with self._lock:
            last = self._last
            completed = state == "completed"
            return replace(
                last, state=state, step=6, percent=100.0 if completed else self._percent, message=message,
                files_done=last.files_total if completed else min(self._files_done, last.files_total),
                bytes_done=last.bytes_total if completed else min(self._bytes_done, last.bytes_total),
                eta_seconds=None if not completed else 0.0, error=error, snapshot=snapshot,
                updated_at=utc_now(),
            )

