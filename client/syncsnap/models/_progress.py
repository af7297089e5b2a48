"""Progress events and what a project is: the objects ``follow`` yields and the project endpoints answer
(docs/api.md, "The progress object")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ._parse import as_object, number, optional, required

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

def step_names(kind: str) -> dict[int, str]:
    """Step number -> name for a kind of run (``snapshot``, ``restore``, ...); {} when unknown."""
    if kind == "snapshot":
        return {k: v for k, v in STEP_NAMES.items() if 1 <= k <= 5}
    return OPERATION_STEP_NAMES.get(kind, {})


@dataclass(frozen=True)
class ErrorInfo:
    """Why a run failed or was cancelled: ``code`` (``folder_missing``, ``store_error``, ...) and a sentence."""

    code: str
    message: str

    @classmethod
    def from_json(cls, obj: Any) -> ErrorInfo:
        d = as_object(obj, "an error")
        return cls(code=required(d, "code", str, "an error"), message=required(d, "message", str, "an error"))


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
        d = as_object(obj, w)
        return cls(
            id=required(d, "id", str, w), files=required(d, "files", int, w), bytes=required(d, "bytes", int, w),
            files_new=required(d, "files_new", int, w), files_changed=required(d, "files_changed", int, w),
            files_unchanged=required(d, "files_unchanged", int, w), bytes_added=required(d, "bytes_added", int, w),
            duration_seconds=number(d, "duration_seconds", w), warnings=required(d, "warnings", int, w),
            warning_paths=tuple(str(p) for p in (optional(d, "warning_paths", list, w) or [])),
            skipped=optional(d, "skipped", int, w) or 0,
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
    # True while the run is held by a pause of its project (False from daemons without pause).
    paused: bool = False
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
        d = as_object(obj, w)
        error = d.get("error")
        snapshot = d.get("snapshot")
        eta = optional(d, "eta_seconds", (int, float), w)
        return cls(
            # None for store-wide operations (check, prune).
            event_id=required(d, "event_id", int, w), project=optional(d, "project", str, w),
            run=optional(d, "run", str, w), state=required(d, "state", str, w), step=required(d, "step", int, w),
            steps=required(d, "steps", int, w), percent=number(d, "percent", w), message=required(d, "message", str, w),
            files_done=required(d, "files_done", int, w), files_total=required(d, "files_total", int, w),
            bytes_done=required(d, "bytes_done", int, w), bytes_total=required(d, "bytes_total", int, w),
            started_at=optional(d, "started_at", str, w), updated_at=optional(d, "updated_at", str, w),
            eta_seconds=None if eta is None else float(eta),
            error=None if error is None else ErrorInfo.from_json(error),
            snapshot=None if snapshot is None else SnapshotSummary.from_json(snapshot),
            # Newer daemons run other kinds of run (restore, check, ...) with their own steps.
            kind=optional(d, "kind", str, w) or "snapshot", result=optional(d, "result", dict, w),
            paused=optional(d, "paused", bool, w) or False, raw=d,
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
    # The machine that took it; None when its snapshot file does not say (older daemons and snapshots).
    host: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> SnapshotInfo:
        w = "a snapshot"
        d = as_object(obj, w)
        return cls(
            id=required(d, "id", str, w), project=required(d, "project", str, w), time=required(d, "time", str, w),
            files=required(d, "files", int, w), bytes=required(d, "bytes", int, w),
            files_new=required(d, "files_new", int, w), files_changed=required(d, "files_changed", int, w),
            files_unchanged=required(d, "files_unchanged", int, w), bytes_added=required(d, "bytes_added", int, w),
            duration_seconds=number(d, "duration_seconds", w), warnings=required(d, "warnings", int, w),
            host=optional(d, "host", str, w),
        )


@dataclass(frozen=True)
class Project:
    """A configured project: its folder, its latest progress and its newest snapshot."""

    id: str
    path: str
    state: str
    progress: Progress
    last_snapshot: SnapshotInfo | None
    # Paused by ``pause()``: no automatic snapshot starts, a running one is held (False from older daemons).
    paused: bool = False

    @classmethod
    def from_json(cls, obj: Any) -> Project:
        w = "a project"
        d = as_object(obj, w)
        last = d.get("last_snapshot")
        return cls(id=required(d, "id", str, w), path=required(d, "path", str, w), state=required(d, "state", str, w),
                   progress=Progress.from_json(d.get("progress")),
                   last_snapshot=None if last is None else SnapshotInfo.from_json(last),
                   paused=optional(d, "paused", bool, w) or False)


@dataclass(frozen=True)
class Health:
    """``GET /api/v1/health``: the daemon is up; its version, pid, uptime and number of projects, and the
    warnings it has for its user (``no projects configured: ...``; empty from daemons that send none)."""

    status: str
    version: str
    uptime_seconds: float
    pid: int
    projects: int
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any) -> Health:
        w = "a health answer"
        d = as_object(obj, w)
        return cls(status=required(d, "status", str, w), version=required(d, "version", str, w),
                   uptime_seconds=number(d, "uptime_seconds", w), pid=required(d, "pid", int, w),
                   projects=required(d, "projects", int, w),
                   warnings=tuple(str(x) for x in optional(d, "warnings", list, w) or ()))


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
        d = as_object(obj, w)
        return cls(run=required(d, "run", str, w), progress=Progress.from_json(d.get("progress")),
                   stream=required(d, "stream", str, w))
