"""Operations (docs/api.md, "Operations"): diff, and the results of restore, check and prune runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._parse import as_object, optional, required


@dataclass(frozen=True)
class DiffEntry:
    """An entry only on one side of a diff: ``kind`` is ``file``, ``dir``, ``symlink``, ...; ``size`` in bytes."""

    path: str
    kind: str
    size: int

    @classmethod
    def from_json(cls, obj: Any) -> DiffEntry:
        w = "a diff entry"
        d = as_object(obj, w)
        return cls(path=required(d, "path", str, w), kind=required(d, "kind", str, w), size=required(d, "size", int, w))


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
        d = as_object(obj, w)
        return cls(path=required(d, "path", str, w), change=tuple(str(c) for c in required(d, "change", list, w)),
                   kind_before=required(d, "kind_before", str, w), kind_after=required(d, "kind_after", str, w),
                   size_before=required(d, "size_before", int, w), size_after=required(d, "size_after", int, w),
                   mode_before=str(required(d, "mode_before", (str, int), w)),
                   mode_after=str(required(d, "mode_after", (str, int), w)))


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
        d = as_object(obj, w)
        return cls(**{k: required(d, k, int, w) for k in ("added", "removed", "modified", "unchanged", "size_added",
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
        d = as_object(obj, w)
        return cls(from_=required(d, "from", str, w), to=required(d, "to", str, w),
                   added=tuple(DiffEntry.from_json(x) for x in required(d, "added", list, w)),
                   removed=tuple(DiffEntry.from_json(x) for x in required(d, "removed", list, w)),
                   modified=tuple(DiffChange.from_json(x) for x in required(d, "modified", list, w)),
                   truncated=bool(optional(d, "truncated", bool, w)), summary=DiffSummary.from_json(d.get("summary")),
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
        d = as_object(obj, w)
        return cls(snapshot=required(d, "snapshot", str, w), target=required(d, "target", str, w),
                   paths=tuple(str(p) for p in (optional(d, "paths", list, w) or [])), files=required(d, "files", int, w),
                   dirs=required(d, "dirs", int, w), symlinks=required(d, "symlinks", int, w),
                   bytes=required(d, "bytes", int, w))


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
        d = as_object(obj, w)
        return cls(snapshot=required(d, "snapshot", str, w), files=required(d, "files", int, w),
                   paths=tuple(str(p) for p in (optional(d, "paths", list, w) or [])),
                   listing=bool(optional(d, "listing", bool, w)))


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
        d = as_object(obj, w)
        return cls(kind=required(d, "kind", str, w), object=required(d, "object", str, w), id=required(d, "id", str, w),
                   pack=optional(d, "pack", str, w), detail=optional(d, "detail", str, w) or "",
                   damages=tuple(DamagedSnapshot.from_json(x) for x in (optional(d, "damages", list, w) or [])))

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
        d = as_object(obj, w)
        return cls(ok=required(d, "ok", bool, w), read_data=bool(optional(d, "read_data", bool, w)),
                   snapshots=required(d, "snapshots", int, w), packs=required(d, "packs", int, w),
                   chunks=required(d, "chunks", int, w), bytes_read=optional(d, "bytes_read", int, w) or 0,
                   problems=tuple(StoreProblem.from_json(x) for x in required(d, "problems", list, w)),
                   damaged=tuple(DamagedSnapshot.from_json(x) for x in (optional(d, "damaged", list, w) or [])))


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
        d = as_object(obj, w)
        projects: dict[str, tuple[int, int]] = {}
        for pid, counts in (optional(d, "projects", dict, w) or {}).items():
            c = as_object(counts, w)
            projects[str(pid)] = (required(c, "kept", int, w), required(c, "removed", int, w))
        return cls(dry_run=bool(optional(d, "dry_run", bool, w)),
                   snapshots_removed=tuple(str(x) for x in (optional(d, "snapshots_removed", list, w) or [])),
                   projects=projects, packs_deleted=optional(d, "packs_deleted", int, w) or 0,
                   packs_repacked=optional(d, "packs_repacked", int, w) or 0,
                   bytes_freed=optional(d, "bytes_freed", int, w) or 0)
