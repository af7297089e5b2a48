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

T = TypeVar("T")


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
    project: str
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
            event_id=_field(d, "event_id", int, w), project=_field(d, "project", str, w),
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
