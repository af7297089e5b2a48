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
# Short names (at most 22 characters, to fit the live display; the daemon's message says more).
OPERATION_STEP_NAMES: dict[str, dict[int, str]] = {
    "restore": {1: "Reading the snapshot", 2: "Restoring files", 3: "Directory metadata"},
    "check": {1: "Reading indexes", 2: "Checking packs", 3: "Checking references"},
    "prune": {1: "Applying retention", 2: "Finding data in use", 3: "Repacking packs", 4: "Deleting unused packs"},
}
# What the files_* counters count, by kind and step (docs/api.md): shown as "3/40 packs".
COUNTED: dict[tuple[str, int], str] = {
    ("snapshot", 3): "found", ("snapshot", 4): "files", ("snapshot", 5): "objects",
    ("restore", 1): "files", ("restore", 2): "files", ("restore", 3): "directories",
    ("check", 2): "packs", ("check", 3): "snapshots",
    ("prune", 1): "snapshots", ("prune", 2): "snapshots", ("prune", 3): "packs", ("prune", 4): "packs",
}

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
    # What a finished restore, check or prune produced (docs/api.md, "Operations"): see RestoreResult,
    # CheckResult and PruneResult.
    result: dict[str, Any] | None = None
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
        """The step's name (docs/api.md: the snapshot model's, or another kind's own); at the end, the state."""
        if self.terminal or self.state == "idle":
            return self.state.capitalize()
        if self.kind == "snapshot":
            return STEP_NAMES.get(self.step, f"Step {self.step}")
        return OPERATION_STEP_NAMES.get(self.kind, {}).get(self.step) or self.state.capitalize()

    @property
    def counted(self) -> str:
        """What ``files_done``/``files_total`` count in this step: ``files``, ``packs``, ``objects``, ..."""
        return COUNTED.get((self.kind, self.step), "files" if self.kind == "snapshot" else "items")

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
            kind=_opt(d, "kind", str, w) or "snapshot", result=_opt(d, "result", dict, w), raw=d,
        )

    def to_json(self) -> dict[str, Any]:
        """The object as the daemon sent it (plus ``"gap": true`` when set), e.g. for NDJSON output."""
        if self.raw:
            d = dict(self.raw)
        else:
            d = asdict(self)
            del d["raw"], d["gap"]
            if d["result"] is None and self.kind == "snapshot":
                del d["result"]
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


# ----------------------------------------------------------------------------------------------------
# Operations (docs/api.md, "Operations"): diff, and the results of restore, check and prune runs
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffEntry:
    """An entry only on one side of a diff: ``kind`` is ``file``, ``dir``, ``symlink``, ...; ``size`` in bytes."""

    path: str
    kind: str
    size: int

    @classmethod
    def from_json(cls, obj: Any) -> DiffEntry:
        w = "a diff entry"
        d = _obj(obj, w)
        return cls(path=_field(d, "path", str, w), kind=_field(d, "kind", str, w), size=_field(d, "size", int, w))


@dataclass(frozen=True)
class DiffChange:
    """An entry on both sides that differs: ``change`` holds ``content``, ``mode`` and/or ``type``;
    modes are octal strings (``"0644"``)."""

    path: str
    change: tuple[str, ...]
    kind_before: str
    kind_after: str
    size_before: int
    size_after: int
    mode_before: str
    mode_after: str

    @classmethod
    def from_json(cls, obj: Any) -> DiffChange:
        w = "a diff change"
        d = _obj(obj, w)
        return cls(path=_field(d, "path", str, w), change=tuple(str(c) for c in _field(d, "change", list, w)),
                   kind_before=_field(d, "kind_before", str, w), kind_after=_field(d, "kind_after", str, w),
                   size_before=_field(d, "size_before", int, w), size_after=_field(d, "size_after", int, w),
                   mode_before=str(_field(d, "mode_before", (str, int), w)),
                   mode_after=str(_field(d, "mode_after", (str, int), w)))


@dataclass(frozen=True)
class DiffSummary:
    """Counts over the whole diff (the lists may be truncated; these never are); sizes are files' bytes."""

    added: int
    removed: int
    modified: int
    unchanged: int
    size_added: int
    size_removed: int
    size_before: int
    size_after: int

    @classmethod
    def from_json(cls, obj: Any) -> DiffSummary:
        w = "a diff summary"
        d = _obj(obj, w)
        return cls(**{k: _field(d, k, int, w) for k in ("added", "removed", "modified", "unchanged", "size_added",
                                                        "size_removed", "size_before", "size_after")})


@dataclass(frozen=True)
class Diff:
    """What changed from snapshot ``from_`` to snapshot ``to`` (or ``"live"``, the folder as it is now),
    each list sorted by path. ``truncated``: the lists stop at the requested limit."""

    from_: str
    to: str
    added: tuple[DiffEntry, ...]
    removed: tuple[DiffEntry, ...]
    modified: tuple[DiffChange, ...]
    truncated: bool
    summary: DiffSummary
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: Any) -> Diff:
        w = "a diff"
        d = _obj(obj, w)
        return cls(from_=_field(d, "from", str, w), to=_field(d, "to", str, w),
                   added=tuple(DiffEntry.from_json(x) for x in _field(d, "added", list, w)),
                   removed=tuple(DiffEntry.from_json(x) for x in _field(d, "removed", list, w)),
                   modified=tuple(DiffChange.from_json(x) for x in _field(d, "modified", list, w)),
                   truncated=bool(_opt(d, "truncated", bool, w)), summary=DiffSummary.from_json(d.get("summary")),
                   raw=d)


@dataclass(frozen=True)
class RestoreResult:
    """What a completed restore wrote (``Progress.result`` of its last event)."""

    snapshot: str
    target: str
    paths: tuple[str, ...]
    files: int
    dirs: int
    symlinks: int
    bytes: int

    @classmethod
    def from_json(cls, obj: Any) -> RestoreResult:
        w = "a restore result"
        d = _obj(obj, w)
        return cls(snapshot=_field(d, "snapshot", str, w), target=_field(d, "target", str, w),
                   paths=tuple(str(p) for p in (_opt(d, "paths", list, w) or [])), files=_field(d, "files", int, w),
                   dirs=_field(d, "dirs", int, w), symlinks=_field(d, "symlinks", int, w),
                   bytes=_field(d, "bytes", int, w))


@dataclass(frozen=True)
class DamagedSnapshot:
    """A snapshot that cannot be fully restored: ``files`` affected, the first few ``paths``; ``listing``
    when part of its list of entries itself is lost."""

    snapshot: str
    files: int
    paths: tuple[str, ...]
    listing: bool

    @classmethod
    def from_json(cls, obj: Any) -> DamagedSnapshot:
        w = "a damaged snapshot"
        d = _obj(obj, w)
        return cls(snapshot=_field(d, "snapshot", str, w), files=_field(d, "files", int, w),
                   paths=tuple(str(p) for p in (_opt(d, "paths", list, w) or [])),
                   listing=bool(_opt(d, "listing", bool, w)))


@dataclass(frozen=True)
class StoreProblem:
    """One missing or corrupt object found by a check (``kind`` ``missing`` / ``corrupt``; ``object``
    ``pack``, ``index``, ``chunk`` or ``snapshot``), with the snapshots it damages."""

    kind: str
    object: str
    id: str
    pack: str | None
    detail: str
    damages: tuple[DamagedSnapshot, ...]

    @classmethod
    def from_json(cls, obj: Any) -> StoreProblem:
        w = "a store problem"
        d = _obj(obj, w)
        return cls(kind=_field(d, "kind", str, w), object=_field(d, "object", str, w), id=_field(d, "id", str, w),
                   pack=_opt(d, "pack", str, w), detail=_opt(d, "detail", str, w) or "",
                   damages=tuple(DamagedSnapshot.from_json(x) for x in (_opt(d, "damages", list, w) or [])))

    def __str__(self) -> str:
        where = f" in pack {self.pack}" if self.pack else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.object} {self.id}{where}{detail}"


@dataclass(frozen=True)
class CheckResult:
    """What a check found (``Progress.result`` of its last event, completed or ``problems_found``)."""

    ok: bool
    read_data: bool
    snapshots: int
    packs: int
    chunks: int
    bytes_read: int
    problems: tuple[StoreProblem, ...]
    damaged: tuple[DamagedSnapshot, ...]

    @classmethod
    def from_json(cls, obj: Any) -> CheckResult:
        w = "a check result"
        d = _obj(obj, w)
        return cls(ok=_field(d, "ok", bool, w), read_data=bool(_opt(d, "read_data", bool, w)),
                   snapshots=_field(d, "snapshots", int, w), packs=_field(d, "packs", int, w),
                   chunks=_field(d, "chunks", int, w), bytes_read=_opt(d, "bytes_read", int, w) or 0,
                   problems=tuple(StoreProblem.from_json(x) for x in _field(d, "problems", list, w)),
                   damaged=tuple(DamagedSnapshot.from_json(x) for x in (_opt(d, "damaged", list, w) or [])))


@dataclass(frozen=True)
class PruneResult:
    """What a prune removed (or, with ``dry_run``, would remove): the snapshots its retention policies
    forgot, the kept/removed counts per project, and what garbage collection deleted and repacked."""

    dry_run: bool
    snapshots_removed: tuple[str, ...]
    projects: dict[str, tuple[int, int]]  # project -> (kept, removed)
    packs_deleted: int
    packs_repacked: int
    bytes_freed: int

    @classmethod
    def from_json(cls, obj: Any) -> PruneResult:
        w = "a prune result"
        d = _obj(obj, w)
        projects: dict[str, tuple[int, int]] = {}
        for pid, counts in (_opt(d, "projects", dict, w) or {}).items():
            c = _obj(counts, w)
            projects[str(pid)] = (_field(c, "kept", int, w), _field(c, "removed", int, w))
        return cls(dry_run=bool(_opt(d, "dry_run", bool, w)),
                   snapshots_removed=tuple(str(x) for x in (_opt(d, "snapshots_removed", list, w) or [])),
                   projects=projects, packs_deleted=_opt(d, "packs_deleted", int, w) or 0,
                   packs_repacked=_opt(d, "packs_repacked", int, w) or 0,
                   bytes_freed=_opt(d, "bytes_freed", int, w) or 0)
