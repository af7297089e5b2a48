"""The daemon's history of runs (docs/api.md, "Runs"): run records, pages of them, statistics, cancels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .._errors import ProtocolError
from ._parse import as_object, optional, parse_list, required
from ._progress import TERMINAL_STATES, ErrorInfo, SnapshotSummary


@dataclass(frozen=True)
class RunInfo:
    """One run from the daemon's history (``GET /api/v1/runs/{run}``), finished or not.

    ``step_seconds`` maps step numbers to the time spent in each; ``snapshot`` is set for a completed
    snapshot run, ``result`` for a finished restore, check or prune (the daemon's object, as sent).
    """

    run: str
    project: str | None
    kind: str
    trigger: str | None
    attempt: int
    retry_of: str | None
    state: str
    started_at: str | None
    ended_at: str | None
    duration_seconds: float | None
    step_seconds: dict[int, float]
    error: ErrorInfo | None
    snapshot: SnapshotSummary | None
    result: dict[str, Any] | None = None
    # Seconds the run was held by a pause (not in step_seconds; 0 from daemons without pause).
    paused_seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, obj: Any) -> RunInfo:
        w = "a run"
        d = as_object(obj, w)
        steps = optional(d, "step_seconds", dict, w) or {}
        try:
            step_seconds = {int(k): float(v) for k, v in steps.items()}
        except (TypeError, ValueError):
            raise ProtocolError("The daemon sent a run whose step_seconds are not numbers by step; is syncsnapd "
                                "the same version as this client?") from None
        error, snapshot = d.get("error"), d.get("snapshot")
        duration = optional(d, "duration_seconds", (int, float), w)
        return cls(
            run=required(d, "run", str, w), project=optional(d, "project", str, w) or None,
            kind=optional(d, "kind", str, w) or "snapshot", trigger=optional(d, "trigger", str, w),
            attempt=optional(d, "attempt", int, w) or 1, retry_of=optional(d, "retry_of", str, w),
            state=required(d, "state", str, w), started_at=optional(d, "started_at", str, w),
            ended_at=optional(d, "ended_at", str, w), duration_seconds=None if duration is None else float(duration),
            step_seconds=dict(sorted(step_seconds.items())),
            error=None if error is None else ErrorInfo.from_json(error),
            snapshot=None if snapshot is None else SnapshotSummary.from_json(snapshot),
            result=optional(d, "result", dict, w),
            paused_seconds=float(optional(d, "paused_seconds", (int, float), w) or 0.0), raw=d,
        )

    def to_json(self) -> dict[str, Any]:
        """The run as the daemon sent it."""
        return dict(self.raw) if self.raw else asdict(self)


@dataclass(frozen=True)
class RunList:
    """A page of a project's runs, newest first; ``next`` is the ``before`` of the next page (None: last)."""

    runs: list[RunInfo]
    next: str | None

    @classmethod
    def from_json(cls, obj: Any) -> RunList:
        w = "a run list"
        d = as_object(obj, w)
        return cls(runs=parse_list(d, "runs", RunInfo, w), next=optional(d, "next", str, w))


@dataclass(frozen=True)
class ProjectStats:
    """``GET /api/v1/projects/{id}/stats``: over the project's finished snapshot runs (None: no data)."""

    project: str
    runs: int
    completed: int
    failed: int
    cancelled: int
    success_rate: float | None
    mean_seconds: float | None
    p95_seconds: float | None
    seconds_per_gib: float | None

    @classmethod
    def from_json(cls, obj: Any) -> ProjectStats:
        w = "project statistics"
        d = as_object(obj, w)

        def num(key: str) -> float | None:
            v = optional(d, key, (int, float), w)
            return None if v is None else float(v)

        return cls(project=required(d, "project", str, w), runs=required(d, "runs", int, w),
                   completed=required(d, "completed", int, w), failed=required(d, "failed", int, w),
                   cancelled=required(d, "cancelled", int, w), success_rate=num("success_rate"),
                   mean_seconds=num("mean_seconds"), p95_seconds=num("p95_seconds"),
                   seconds_per_gib=num("seconds_per_gib"))


@dataclass(frozen=True)
class Cancelling:
    """The answer to a cancel request: the run being cancelled (it ends ``cancelled`` promptly)."""

    run: str
    state: str

    @classmethod
    def from_json(cls, obj: Any) -> Cancelling:
        w = "a cancel answer"
        d = as_object(obj, w)
        return cls(run=required(d, "run", str, w), state=required(d, "state", str, w))
