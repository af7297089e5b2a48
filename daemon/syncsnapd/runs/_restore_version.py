"""Restoring one version of one path (issue 13): ``POST /api/v1/projects/{id}/restore`` with ``path`` and
``version``. Unlike a restore of a snapshot into a directory this is no run: one file is written in a
worker thread and the answer says where it went (``engine/_restore_version.py`` says how and where).

The project's snapshots come from every store of the daemon (``_stores.py``), newest first, its own store
winning for an id held twice; the snapshot holding the version is pinned while it is read, so a prune
cannot take its data meanwhile. A version found in none of them (an unknown content id, or a snapshot id
not listed) may be another machine's, taken since the S3 stores' lists were last refreshed: the lists are
brought up to date with their buckets once, and the version looked for again, before it is called unknown
(as a restore or diff naming an unseen snapshot id does, ``Operations._resolve``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..engine import FoundVersion, RestoreError, find_version, normalize_path, restore_version
from ..store import SNAPSHOT_ID_RE, Store, StoreError

if TYPE_CHECKING:
    from ._operations import Operations

__all__ = ["restore_one_version"]


def _snapshots(ops: Operations, project: str) -> list[tuple[str, str, Store]]:
    own = ops.stores.of(project)
    seen: dict[str, tuple[str, str, Store]] = {}
    for store in [own, *(s for s in ops.stores.all() if s is not own)]:
        for info in store.list_snapshots(project):
            seen.setdefault(info.id, (info.id, info.time, store))
    return [seen[sid] for sid in sorted(seen, reverse=True)]


def _not_seen(exc: RestoreError, version: str) -> bool:
    """Whether ``exc`` may only mean the version was not listed here yet: no listed snapshot holds it, or
    it is a well-formed snapshot id of no listed snapshot."""
    return exc.code == "version_unknown" or (exc.code == "version_invalid" and bool(SNAPSHOT_ID_RE.match(version)))


async def _find(ops: Operations, project: str, wanted: str, version: str) -> FoundVersion:
    """``find_version`` among the project's snapshots; if the version was not seen here, again once the S3
    stores' lists are refreshed (when that brought anything new)."""
    check = trio.from_thread.check_cancelled

    def find() -> FoundVersion:
        return find_version(_snapshots(ops, project), wanted, version, check)

    found: FoundVersion
    try:
        found = await ops._thread(find)
    except RestoreError as exc:
        if not _not_seen(exc, version) or not await ops._thread(ops._refresh_buckets):
            raise
        found = await ops._thread(find)
    return found


async def restore_one_version(ops: Operations, project: str, path: str, version: str, *, to: str | None = None,
                              overwrite: bool = False) -> dict[str, Any]:
    """Restore version ``version`` of ``path`` of ``project`` next to the live file, or to ``to``.

    Returns the answer: the version found (content id, snapshot, kind, size) and ``restored_to``.

    Raises:
        OperationError: ``not_found`` (project), ``path_invalid``, ``target_invalid``, ``target_forbidden``,
            ``version_invalid``, ``version_ambiguous`` (400), ``version_unknown``, ``path_unknown`` (404),
            ``not_a_file``, ``target_exists`` (409), ``snapshot_damaged``, ``data_damaged``, ``io_error``.
    """
    from ._operations import OperationError

    ops._known(project)
    config = ops.scheduler.project(project)
    target: Path | None = None
    if to is not None:
        if not to.startswith("/") or "\0" in to:
            raise OperationError("target_invalid", "to must be an absolute path.")
        target = chosen = Path(to)
        if await ops._thread(lambda: ops._forbidden_target(chosen)):
            raise OperationError("target_forbidden", f"{target} is inside the daemon's store or state directory.")
    try:
        wanted = normalize_path(path)
    except RestoreError as exc:
        raise OperationError(exc.code, exc.message) from None
    check = trio.from_thread.check_cancelled
    try:
        found = await _find(ops, project, wanted, version)
        with found.store.pinned([found.snapshot_id]):
            where = await ops._thread(functools.partial(restore_version, found, wanted, folder=Path(config.path),
                                                        to=target, overwrite=overwrite, tz=ops._tz, check=check))
    except RestoreError as exc:
        raise OperationError(exc.code, exc.message) from None
    except StoreError as exc:
        raise OperationError("store_error", f"The snapshots cannot be read: {exc}") from exc
    e = found.entry
    return {"project": project, "path": wanted, "version": version, "content_id": found.content_id,
            "snapshot": {"id": found.snapshot_id, "time": found.time}, "kind": e.kind,
            "size": e.size if e.kind == "file" else None, "mode": f"{e.mode:04o}",
            "target": e.target if e.kind == "symlink" else None, "restored_to": str(where)}
