"""Typed results: frozen dataclasses built from the daemon's JSON (docs/api.md).

Parsing is strict about the fields this client uses (a missing or mistyped one raises
:class:`~syncsnap.ProtocolError`) and ignores fields it does not know, so a newer daemon still works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from ._errors import ProtocolError

TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})

# Step number -> human name, as the daemon's progress model names them (docs/api.md, "step").
STEP_NAMES: dict[int, str] = {
    0: "Idle",
    1: "Waiting for sync",
    2: "Browsing folder status",
    3: "Browsing files",
    4: "Compressing",
    5: "Uploading to the store",
    6: "Finished",
}

# Other kinds of run have their own steps (docs/api.md, "Operations").
OPERATION_STEP_NAMES: dict[str, dict[int, str]] = {}

T = TypeVar("T")


def step_names(kind: str) -> dict[int, str]:
    """Step number -> name for a kind of run (``snapshot``, ``restore``, ...); {} when unknown."""
    if kind == "snapshot":
        return {k: v for k, v in STEP_NAMES.items() if 1 <= k <= 5}
    return OPERATION_STEP_NAMES.get(kind, {})


def _field(obj: dict[str, Any], key: str, kind: type[T] | tuple[type, ...], what: str) -> T:
    try:
        value = obj[key]
    except KeyError:
        raise ProtocolError(f"The daemon sent {what} without {key!r}; is syncsnapd the same version "
                            f"as this client?") from None
    # bool is an int in Python; JSON numbers are never booleans.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise ProtocolError(f"The daemon sent {what} with a {type(value).__name__} for {key!r}; "
                            f"is syncsnapd the same version as this client?")
    return value  # type: ignore[return-value]


def _opt(obj: dict[str, Any], key: str, kind: type[T] | tuple[type, ...], what: str) -> T | None:
    if obj.get(key) is None:
        return None
    return _field(obj, key, kind, what)


def _num(obj: dict[str, Any], key: str, what: str) -> float:
    return float(_field(obj, key, (int, float), what))


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"The daemon sent {what} that is not a JSON object.")
    return value


@dataclass(frozen=True)
class ErrorInfo:
    """Why a run failed or was cancelled: ``code`` (``folder_missing``, ``store_error``, ...) and a sentence."""

    code: str
    message: str

    @classmethod
    def from_json(cls, obj: Any) -> ErrorInfo:
        d = _obj(obj, "an error")
        return cls(code=_field(d, "code", str, "an error"), message=_field(d, "message", str, "an error"))


@dataclass(frozen=True)
class SnapshotSummary:
    """What a completed run produced (the ``snapshot`` of its final progress event)."""

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

    @classmethod
    def from_json(cls, obj: Any) -> SnapshotSummary:
        w = "a snapshot summary"
        d = _obj(obj, w)
        return cls(
            id=_field(d, "id", str, w), files=_field(d, "files", int, w), bytes=_field(d, "bytes", int, w),
            files_new=_field(d, "files_new", int, w), files_changed=_field(d, "files_changed", int, w),
            files_unchanged=_field(d, "files_unchanged", int, w), bytes_added=_field(d, "bytes_added", int, w),
            duration_seconds=_num(d, "duration_seconds", w), warnings=_field(d, "warnings", int, w),
            warning_paths=tuple(str(p) for p in (_opt(d, "warning_paths", list, w) or [])),
            skipped=_opt(d, "skipped", int, w) or 0,
        )


@dataclass(frozen=True)
class Progress:
    """One progress event of a project (docs/api.md, "The progress object").

    ``gap`` is set by :meth:`AsyncClient.follow`, never by the daemon: True on the first event of a
    project after events were missed (the daemon's replay buffer no longer had them, the daemon
    restarted, or a whole run ended between two polls). That event is the project's current state.
    """

    event_id: int
    project: str | None
    run: str | None
    state: str
    step: int
    steps: int
    percent: float
    message: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    started_at: str | None
    updated_at: str | None
    eta_seconds: float | None
    error: ErrorInfo | None
    snapshot: SnapshotSummary | None
    kind: str = "snapshot"
    gap: bool = False
    # The object as the daemon sent it, fields this client does not know included (for to_json).
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        """True for ``completed``, ``failed`` and ``cancelled``: the run is over."""
        return self.state in TERMINAL_STATES

    @property
    def label(self) -> str:
        """What the run is about, for people: the project, or ``store`` for a store-wide operation."""
        return self.project if self.project is not None else "store"

    @property
    def lane(self) -> str:
        """Events that replace one another: those of a project's snapshot runs, or of one other run."""
        if self.kind == "snapshot":
            return f"project:{self.project or ''}"
        return f"run:{self.run or ''}"

    @property
    def step_name(self) -> str:
        """The step's name: the snapshot model's names (docs/api.md); other kinds of run, by state."""
        if self.terminal or self.kind != "snapshot":
            return self.state.capitalize()
        return STEP_NAMES.get(self.step, f"Step {self.step}")

    @classmethod
    def from_json(cls, obj: Any) -> Progress:
        w = "a progress object"
        d = _obj(obj, w)
        error = d.get("error")
        snapshot = d.get("snapshot")
        eta = _opt(d, "eta_seconds", (int, float), w)
        return cls(
            # None for store-wide operations (check, prune).
            event_id=_field(d, "event_id", int, w), project=_opt(d, "project", str, w),
            run=_opt(d, "run", str, w), state=_field(d, "state", str, w), step=_field(d, "step", int, w),
            steps=_field(d, "steps", int, w), percent=_num(d, "percent", w), message=_field(d, "message", str, w),
            files_done=_field(d, "files_done", int, w), files_total=_field(d, "files_total", int, w),
            bytes_done=_field(d, "bytes_done", int, w), bytes_total=_field(d, "bytes_total", int, w),
            started_at=_opt(d, "started_at", str, w), updated_at=_opt(d, "updated_at", str, w),
            eta_seconds=None if eta is None else float(eta),
            error=None if error is None else ErrorInfo.from_json(error),
            snapshot=None if snapshot is None else SnapshotSummary.from_json(snapshot),
            # Newer daemons run other kinds of run (restore, check, ...) with their own steps.
            kind=_opt(d, "kind", str, w) or "snapshot", raw=d,
        )

    def to_json(self) -> dict[str, Any]:
        """The object as the daemon sent it (plus ``"gap": true`` when set), e.g. for NDJSON output."""
        if self.raw:
            d = dict(self.raw)
        else:
            d = asdict(self)
            del d["raw"], d["gap"]
            if self.snapshot is not None:
                d["snapshot"]["warning_paths"] = list(self.snapshot.warning_paths)
        if self.gap:
            d["gap"] = True
        return d


@dataclass(frozen=True)
class SnapshotInfo:
    """A stored snapshot, as listed by ``snapshots()`` and as a project's ``last_snapshot``."""

    id: str
    project: str
    time: str
    files: int
    bytes: int
    files_new: int
    files_changed: int
    files_unchanged: int
    bytes_added: int
    duration_seconds: float
    warnings: int

    @classmethod
    def from_json(cls, obj: Any) -> SnapshotInfo:
        w = "a snapshot"
        d = _obj(obj, w)
        return cls(
            id=_field(d, "id", str, w), project=_field(d, "project", str, w), time=_field(d, "time", str, w),
            files=_field(d, "files", int, w), bytes=_field(d, "bytes", int, w),
            files_new=_field(d, "files_new", int, w), files_changed=_field(d, "files_changed", int, w),
            files_unchanged=_field(d, "files_unchanged", int, w), bytes_added=_field(d, "bytes_added", int, w),
            duration_seconds=_num(d, "duration_seconds", w), warnings=_field(d, "warnings", int, w),
        )


@dataclass(frozen=True)
class Project:
    """A configured project: its folder, its latest progress and its newest snapshot."""

    id: str
    path: str
    state: str
    progress: Progress
    last_snapshot: SnapshotInfo | None

    @classmethod
    def from_json(cls, obj: Any) -> Project:
        w = "a project"
        d = _obj(obj, w)
        last = d.get("last_snapshot")
        return cls(id=_field(d, "id", str, w), path=_field(d, "path", str, w), state=_field(d, "state", str, w),
                   progress=Progress.from_json(d.get("progress")),
                   last_snapshot=None if last is None else SnapshotInfo.from_json(last))


@dataclass(frozen=True)
class Health:
    """``GET /api/v1/health``: the daemon is up; its version, pid, uptime and number of projects."""

    status: str
    version: str
    uptime_seconds: float
    pid: int
    projects: int

    @classmethod
    def from_json(cls, obj: Any) -> Health:
        w = "a health answer"
        d = _obj(obj, w)
        return cls(status=_field(d, "status", str, w), version=_field(d, "version", str, w),
                   uptime_seconds=_num(d, "uptime_seconds", w), pid=_field(d, "pid", int, w),
                   projects=_field(d, "projects", int, w))


@dataclass(frozen=True)
class RunStarted:
    """The answer to ``start_snapshot``: the run id to follow, and the project's progress right then.

    When the project was busy, ``run`` is the queued follow-up run and ``progress`` belongs to the
    running one.
    """

    run: str
    progress: Progress
    stream: str

    @classmethod
    def from_json(cls, obj: Any) -> RunStarted:
        w = "a snapshot request answer"
        d = _obj(obj, w)
        return cls(run=_field(d, "run", str, w), progress=Progress.from_json(d.get("progress")),
                   stream=_field(d, "stream", str, w))


def parse_list(obj: Any, key: str, item: Any, what: str) -> list[Any]:
    """``{"key": [..]}`` -> ``[item.from_json(..), ...]``."""
    d = _obj(obj, what)
    return [item.from_json(x) for x in _field(d, key, list, what)]


# ----------------------------------------------------------------------------------------------------
# History (docs/api.md, "Runs")
# ----------------------------------------------------------------------------------------------------


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
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, obj: Any) -> RunInfo:
        w = "a run"
        d = _obj(obj, w)
        steps = _opt(d, "step_seconds", dict, w) or {}
        try:
            step_seconds = {int(k): float(v) for k, v in steps.items()}
        except (TypeError, ValueError):
            raise ProtocolError("The daemon sent a run whose step_seconds are not numbers by step; is syncsnapd "
                                "the same version as this client?") from None
        error, snapshot = d.get("error"), d.get("snapshot")
        duration = _opt(d, "duration_seconds", (int, float), w)
        return cls(
            run=_field(d, "run", str, w), project=_opt(d, "project", str, w) or None,
            kind=_opt(d, "kind", str, w) or "snapshot", trigger=_opt(d, "trigger", str, w),
            attempt=_opt(d, "attempt", int, w) or 1, retry_of=_opt(d, "retry_of", str, w),
            state=_field(d, "state", str, w), started_at=_opt(d, "started_at", str, w),
            ended_at=_opt(d, "ended_at", str, w), duration_seconds=None if duration is None else float(duration),
            step_seconds=dict(sorted(step_seconds.items())),
            error=None if error is None else ErrorInfo.from_json(error),
            snapshot=None if snapshot is None else SnapshotSummary.from_json(snapshot),
            result=_opt(d, "result", dict, w), raw=d,
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
        d = _obj(obj, w)
        return cls(runs=parse_list(d, "runs", RunInfo, w), next=_opt(d, "next", str, w))


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
        d = _obj(obj, w)

        def num(key: str) -> float | None:
            v = _opt(d, key, (int, float), w)
            return None if v is None else float(v)

        return cls(project=_field(d, "project", str, w), runs=_field(d, "runs", int, w),
                   completed=_field(d, "completed", int, w), failed=_field(d, "failed", int, w),
                   cancelled=_field(d, "cancelled", int, w), success_rate=num("success_rate"),
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
        d = _obj(obj, w)
        return cls(run=_field(d, "run", str, w), state=_field(d, "state", str, w))
