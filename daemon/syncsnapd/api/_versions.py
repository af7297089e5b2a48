"""Every version of a path, and find (docs/api.md, "Versions and find"): ``GET /projects/{id}/versions``
and ``GET /projects/{id}/find``, answered from each store's versions cache (``store.VersionIndex``).

A project's snapshots may lie in several stores (a project whose ``store =`` changed): each snapshot is
looked up in the store that holds it (the project's own first, as ``Stores.list_snapshots`` counts it),
each store's cache brought up to date first. Everything runs in a worker thread; an S3 store's snapshot
lists are refreshed first, as a listing does.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..http import Request, Response, Router, json_response, parse_decimal
from ..runs import Scheduler
from ..store import Record, SnapshotInfo, Store, Version, VersionIndex, merge_lookups, versions_of
from ._browse import read_store, snapshot_path
from ._endpoints import known_project
from ._errors import api_error
from ._store_view import SnapshotLists

__all__ = ["register_versions"]

log = logging.getLogger("syncsnapd.api")

API = "/api/v1"
# ?depth= of a directory's versions: 1 (its own entries) by default, at most this (deeper trees are
# asked for one directory at a time).
DEFAULT_DEPTH = 1
MAX_DEPTH = 64
# The most entries a directory's answer lists (then "truncated": true): an answer stays a few MB.
MAX_ENTRIES = 10_000
# ?limit= of find: the most matching paths in one answer.
DEFAULT_FIND_LIMIT = 1000
MAX_FIND_LIMIT = 100_000
# The longest ?pattern= (bytes of UTF-8, as a path).
MAX_PATTERN = 4095
_GLOB = frozenset("*?[]")


def _mtime(ns: int) -> str | None:
    try:
        return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def version_json(v: Version, infos: dict[str, SnapshotInfo]) -> dict[str, Any]:
    """One version as the API shows it (docs/api.md)."""
    rec = v.record
    return {
        "content_id": v.content_id, "kind": v.kind,
        "size": None if rec is None or v.kind == "dir" else rec[2],
        "mtime": None if rec is None else _mtime(rec[3]),
        "mode": None if rec is None else f"{rec[4]:04o}",
        "target": None if rec is None else rec[6],
        "first_snapshot": {"id": v.first, "time": infos[v.first].time},
        "last_snapshot": {"id": v.last, "time": infos[v.last].time},
        "count": v.count,
    }


class _Project:
    """A project's snapshots (oldest first), each with the store that holds it: computed in a thread."""

    def __init__(self, scheduler: Scheduler, pid: str) -> None:
        stores = scheduler.stores
        own = stores.of(pid)
        order = [own, *(s for s in stores.all() if s is not own)]
        where: dict[str, Store] = {}
        infos: dict[str, SnapshotInfo] = {}
        for store in order:
            for info in store.list_snapshots(pid):
                if info.id not in where:
                    where[info.id], infos[info.id] = store, info
        for store in {id(s): s for s in where.values()}.values():
            VersionIndex.of(store).update()
        # A snapshot whose list of files is damaged is left out (named in the answer): its files are
        # neither versions nor deletions.
        self.damaged = sorted(sid for sid in where if sid in VersionIndex.of(where[sid]).damaged)
        self.ids = sorted(sid for sid in where if sid not in self.damaged)
        self.infos = infos
        self.by_store: dict[int, tuple[Store, list[str]]] = {}
        for sid in self.ids:
            store = where[sid]
            self.by_store.setdefault(id(store), (store, []))[1].append(sid)

    def paths(self, match: Callable[[str], bool]) -> list[str]:
        found: set[str] = set()
        for store, _ in self.by_store.values():
            found.update(VersionIndex.of(store).paths(match))
        return sorted(found)

    def lookup(self, paths: list[str], ids: list[str] | None = None) -> dict[str, dict[str, Record]]:
        keep = None if ids is None else set(ids)
        out: dict[str, dict[str, Record]] = {}
        for store, sids in self.by_store.values():
            chosen = sids if keep is None else [s for s in sids if s in keep]
            if chosen:
                merge_lookups(VersionIndex.of(store).lookup(chosen, paths), out)
        return out

    def noted(self, answer: dict[str, Any]) -> dict[str, Any]:
        """``answer`` with the snapshots left out as damaged, when there are any."""
        if self.damaged:
            answer["damaged_snapshots"] = self.damaged
        return answer

    def versions(self, held: dict[str, Record], ids: list[str], before: str | None = None) -> list[dict[str, Any]]:
        """The path's versions over ``ids``, newest first; ``before``: the snapshot just before them (a
        path it held and ``ids`` lack was deleted within them)."""
        found = versions_of([(sid, held.get(sid)) for sid in ids], held_before=before is not None and before in held)
        return [version_json(v, self.infos) for v in reversed(found)]


def _bounded(request: Request, name: str, default: int, top: int) -> int:
    """Query parameter ``name``: a whole number from 1 to ``top`` (``default`` when absent or empty)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = parse_decimal(raw)
    if value is None or not 1 <= value <= top:
        raise api_error("bad_request", f"{name} must be a whole number from 1 to {top}.")
    return value


def parse_since(raw: str | None) -> datetime | None:
    """``?since=``: an ISO 8601 date or time (UTC unless it says otherwise); else 400 bad_request."""
    if raw is None or raw == "":
        return None
    try:
        when = datetime.fromisoformat(raw) if len(raw) <= 64 else None
    except ValueError:
        when = None
    if when is None:
        raise api_error("bad_request", "since must be an ISO 8601 date or time, e.g. 2026-12-01 or "
                                       "2026-12-01T14:03:00Z.")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """A glob (with ``*``, ``?``, ``[...]``) matched against the whole path and against its base name;
    anything else: a substring of the path. Case-sensitive, as the file names are."""
    if _GLOB.isdisjoint(pattern):
        return lambda path: pattern in path
    return lambda path: (fnmatch.fnmatchcase(path, pattern)
                         or fnmatch.fnmatchcase(path.rpartition("/")[2], pattern))


def _under(directory: str, depth: int) -> Callable[[str], bool]:
    prefix = directory + "/" if directory else ""
    base = directory.count("/") + 1 if directory else 0

    def match(path: str) -> bool:
        return path.startswith(prefix) and path != directory and path.count("/") + 1 - base <= depth
    return match


def register_versions(router: Router, scheduler: Scheduler, lists: SnapshotLists | None = None) -> None:
    """Add the versions and find endpoints to ``router``; ``lists`` refreshes an S3 store's snapshot
    lists (another machine's snapshots) first."""

    async def in_thread(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if lists is not None:
            await lists.refresh()
        return await read_store(fn)

    async def versions(request: Request, params: dict[str, str]) -> Response:
        pid = known_project(scheduler, params["id"])
        path = snapshot_path(request.query.get("path", ""))
        depth = _bounded(request, "depth", DEFAULT_DEPTH, MAX_DEPTH)

        def work() -> dict[str, Any]:
            project = _Project(scheduler, pid)
            ids = project.ids
            if path != "":
                held = project.lookup([path]).get(path)
                if not held:
                    raise api_error("path_unknown", f"No snapshot of project {pid!r} holds {path!r}.")
                newest = held[max(held)]
                if newest[1] != "dir":
                    return project.noted({"project": pid, "path": path, "kind": newest[1], "snapshots": len(ids),
                                          "versions": project.versions(held, ids)})
            names = project.paths(_under(path, depth))
            truncated = len(names) > MAX_ENTRIES
            found = project.lookup(names[:MAX_ENTRIES])
            entries = []
            for name in sorted(found):
                held = found[name]
                entries.append({"path": name, "kind": held[max(held)][1], "versions": project.versions(held, ids)})
            answer: dict[str, Any] = {"project": pid, "path": path, "kind": "dir", "snapshots": len(ids),
                                      "depth": depth, "entries": entries}
            if truncated:
                answer["truncated"] = True
            return project.noted(answer)

        return json_response(200, await in_thread(work))

    async def find(request: Request, params: dict[str, str]) -> Response:
        pid = known_project(scheduler, params["id"])
        pattern = request.query.get("pattern", "")
        if pattern == "" or len(pattern.encode("utf-8", "surrogateescape")) > MAX_PATTERN or "\0" in pattern:
            raise api_error("bad_request", f"pattern must be 1 to {MAX_PATTERN} bytes without NUL: a glob "
                                           "(* ? [...]) or a part of a path.")
        since = parse_since(request.query.get("since"))
        limit = _bounded(request, "limit", DEFAULT_FIND_LIMIT, MAX_FIND_LIMIT)
        match = pattern_matcher(pattern)

        def work() -> dict[str, Any]:
            project = _Project(scheduler, pid)
            ids = project.ids
            before: str | None = None
            if since is not None:
                earlier = [sid for sid in ids if _when(project.infos[sid].time) < since]
                before = earlier[-1] if earlier else None
                ids = ids[len(earlier):]
            matches: list[dict[str, Any]] = []
            names = project.paths(match) if ids else []
            truncated = False
            # In batches: a pattern matching most paths costs what `limit` matches cost.
            at = 0
            while at < len(names) and not truncated:
                batch = names[at:at + limit + 1]
                at += len(batch)
                found = project.lookup(batch, ids if before is None else [before, *ids])
                for name in batch:
                    held = found.get(name)
                    versions = project.versions(held, ids, before) if held else []
                    if not versions:
                        continue
                    if len(matches) == limit:
                        truncated = True
                        break
                    matches.append({"path": name, "kind": versions[0]["kind"], "versions": versions})
            return project.noted({"project": pid, "pattern": pattern, "since": request.query.get("since") or None,
                                  "snapshots": len(ids), "limit": limit, "truncated": truncated,
                                  "matches": matches})

        return json_response(200, await in_thread(work))

    router.add("GET", f"{API}/projects/{{id}}/versions", versions)
    router.add("GET", f"{API}/projects/{{id}}/find", find)


def _when(iso: str) -> datetime:
    when = datetime.fromisoformat(iso)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
