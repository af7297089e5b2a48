"""The history's records: a run as stored, a project's statistics (and the running totals they are
computed from), the writer's counters, and how rows and stored events become them. No I/O."""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core import Progress, SnapshotSummary


@dataclass(frozen=True)
class RunRecord:
    """One run as stored (``GET /api/v1/runs/{run}``)."""

    run: str
    project: str
    kind: str
    trigger: str | None
    attempt: int
    retry_of: str | None
    state: str
    started_at: str | None
    ended_at: str | None
    duration_seconds: float | None
    step_seconds: dict[str, float]
    error: dict[str, str] | None
    snapshot: dict[str, Any] | None
    # Seconds the run was held by a pause of its project (not in step_seconds).
    paused_seconds: float = 0.0
    # An operation run's outcome, from its terminal event (Progress.result); None for snapshot runs.
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "project": self.project or None, "kind": self.kind, "trigger": self.trigger,
            "attempt": self.attempt, "retry_of": self.retry_of, "state": self.state,
            "started_at": self.started_at, "ended_at": self.ended_at, "duration_seconds": self.duration_seconds,
            "step_seconds": self.step_seconds, "paused_seconds": self.paused_seconds, "error": self.error,
            "snapshot": self.snapshot, "result": self.result,
        }


@dataclass(frozen=True)
class ProjectStats:
    """Statistics of a project's finished snapshot runs."""

    runs: int
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None
    mean_seconds: float | None
    p95_seconds: float | None
    seconds_per_gib: float | None


@dataclass(frozen=True)
class HistoryStatistics:
    """The history writer's counters (see :meth:`History.statistics`).

    Attributes:
        events_pending: events received from the tracker and not yet written (in memory).
        events_written: events written since start.
        events_lost: events dropped unwritten because more than :data:`MAX_PENDING_EVENTS` were waiting.
        write_failures: write attempts that failed (each retried).
    """

    events_pending: int
    events_written: int
    events_lost: int
    write_failures: int


# A finished snapshot run as the totals see its row: (project, state, duration_seconds, bytes_total).
TotalsRow = tuple[str, str, float | None, int | None]
FINISHED = ("completed", "failed", "cancelled")


@dataclass
class _Totals:
    runs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISHED, 0))
    durations: list[float] = field(default_factory=list)  # of completed runs, sorted (for the p95)
    duration_ms: int = 0  # their sum; durations are stored in whole milliseconds, so it is exact
    per_gib: float = 0.0  # sum of seconds per GiB of completed runs of at least 1 MiB
    per_gib_runs: int = 0


class RunTotals:
    """Running totals of each project's finished snapshot runs, from which :class:`ProjectStats` is
    computed without reading the runs again (``GET /api/v1/projects/{id}/stats``).

    They are a function of the history's rows: the history loads them from its rows once, then tells
    each change of a finished snapshot run's row (:meth:`change`: the row before and after a write).
    Not thread-safe: the history holds a lock around it.
    """

    def __init__(self, rows: Iterable[TotalsRow] = ()) -> None:
        self._projects: dict[str, _Totals] = {}
        for row in rows:
            self._apply(row, 1)

    def change(self, old: TotalsRow | None, new: TotalsRow | None) -> None:
        """A run's row changed from ``old`` to ``new`` (None: not a finished snapshot run, or no row)."""
        if old == new:
            return
        if old is not None:
            self._apply(old, -1)
        if new is not None:
            self._apply(new, 1)

    def _apply(self, row: TotalsRow, sign: int) -> None:
        project, state, duration, nbytes = row
        t = self._projects.setdefault(project, _Totals())
        t.runs[state] = t.runs.get(state, 0) + sign
        if state != "completed" or duration is None:
            return
        ms = round(duration * 1000)
        if sign > 0:
            bisect.insort(t.durations, duration)
        else:
            i = bisect.bisect_left(t.durations, duration)
            if i < len(t.durations) and t.durations[i] == duration:
                del t.durations[i]
        t.duration_ms += sign * ms
        if nbytes and nbytes >= 2**20:
            t.per_gib += sign * duration / (nbytes / 2**30)
            t.per_gib_runs += sign
            if not t.per_gib_runs:
                t.per_gib = 0.0  # no drift left behind once the last one is gone

    def stats(self, project: str) -> ProjectStats:
        t = self._projects.get(project) or _Totals()
        completed, failed, cancelled = (t.runs.get(s, 0) for s in FINISHED)
        finished = completed + failed
        durations = t.durations
        return ProjectStats(
            runs=completed + failed + cancelled, completed=completed, failed=failed, cancelled=cancelled,
            success_rate=round(completed / finished, 4) if finished else None,
            mean_seconds=round(t.duration_ms / 1000 / len(durations), 3) if durations else None,
            p95_seconds=round(percentile(durations, 0.95), 3) if durations else None,
            seconds_per_gib=round(t.per_gib / t.per_gib_runs, 3) if t.per_gib_runs else None,
        )


def percentile(sorted_values: list[float], q: float) -> float:
    # Nearest-rank percentile, as Prometheus and most dashboards report it.
    k = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


RUN_COLUMNS = ("run, project, kind, trigger, attempt, retry_of, state, started_at, ended_at, duration_seconds, "
                "steps, error_code, error_message, snapshot, paused_seconds, result")


def run_from_row(r: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run=r[0], project=r[1], kind=r[2], trigger=r[3], attempt=r[4], retry_of=r[5], state=r[6],
        started_at=r[7], ended_at=r[8], duration_seconds=r[9], step_seconds=json.loads(r[10] or "{}"),
        error={"code": r[11], "message": r[12] or ""} if r[11] else None,
        snapshot=json.loads(r[13]) if r[13] else None, paused_seconds=r[14] or 0.0,
        result=json.loads(r[15]) if r[15] else None,
    )


def progress_from_json(d: dict[str, Any]) -> Progress:
    snap = d.get("snapshot")
    summary = None
    if snap:
        summary = SnapshotSummary(**{**snap, "warning_paths": tuple(snap.get("warning_paths") or ())})
    fields = {k: v for k, v in d.items() if k in Progress.__dataclass_fields__ and k != "snapshot"}
    fields["project"] = fields.get("project") or ""
    return Progress(**fields, snapshot=summary)

