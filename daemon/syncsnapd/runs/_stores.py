"""The daemon's open stores, and which project writes to which (``store = ...`` in a ``[[projects]]``
table overrides ``daemon.store``).

Every distinct store is opened once, writable and locked, at start (``service/_daemon.py``); projects
that name the same directory or URL share that one :class:`~syncsnapd.store.Store` (one lock, one index:
dedup holds across them). New snapshots of a project go to its store (:meth:`Stores.of`). Reads look in
every open store: a project's snapshots are those of every store (its own first), so snapshots taken
before its store was changed stay listed, browsable and restorable while their store is in use, and a
snapshot id is found in whichever store holds it (:meth:`Stores.find`). Blocking methods (listing) run
in worker threads, as the store's own do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..store import SnapshotInfo, Store

__all__ = ["Stores", "location_of"]


def location_of(store: Store) -> str:
    """A store as users name it, and the key that tells stores apart: an S3 store's URL, else its directory
    (as ``core.store_location`` names a configured one)."""
    remote = store.remote
    return remote.spec.url if remote is not None else os.path.realpath(store.root)


class Stores:
    """The open stores of one daemon: the daemon's own (``default``) and the projects' own.

    Args:
        default: the store of ``daemon.store``, used by every project without a store of its own.
        projects: project id -> its own store (the same object for projects that share one).
    """

    def __init__(self, default: Store, projects: Mapping[str, Store] | None = None) -> None:
        self.default = default
        self._projects = dict(projects or {})

    def of(self, project: str) -> Store:
        """The store new snapshots of ``project`` go to (the daemon's for a project without its own)."""
        return self._projects.get(project, self.default)

    def assign(self, project: str, store: Store) -> None:
        """Make ``store`` (one of :meth:`all`) the store of ``project`` (a project added by a reload)."""
        if store is self.default:
            self._projects.pop(project, None)
        else:
            self._projects[project] = store

    def at(self, location: str) -> Store | None:
        """The open store at ``location`` (see :func:`location_of`), if any."""
        return next((s for s in self.all() if location_of(s) == location), None)

    def all(self) -> list[Store]:
        """Every distinct open store, the daemon's first."""
        out = [self.default]
        for store in self._projects.values():
            if all(store is not s for s in out):
                out.append(store)
        return out

    def projects_of(self, store: Store, project_ids: list[str]) -> list[str]:
        """Which of ``project_ids`` write to ``store``."""
        return [p for p in project_ids if self.of(p) is store]

    def _search_order(self, project: str | None) -> list[Store]:
        stores = self.all()
        if project is not None:
            own = self.of(project)
            stores = [own, *(s for s in stores if s is not own)]
        return stores

    def list_snapshots(self, project: str | None = None) -> list[SnapshotInfo]:
        """The snapshots of ``project`` (None: of all projects) in every store, oldest first; an id held by
        two stores counts once (the project's own store wins). Blocking."""
        seen: dict[str, SnapshotInfo] = {}
        for store in self._search_order(project):
            for info in store.list_snapshots(project):
                seen.setdefault(info.id, info)
        return sorted(seen.values(), key=lambda i: i.id)

    def find(self, snapshot_id: str, project: str | None = None) -> Store | None:
        """The store holding ``snapshot_id`` (of ``project``, if given), its project's own first. Blocking."""
        for store in self._search_order(project):
            if any(i.id == snapshot_id for i in store.list_snapshots(project)):
                return store
        return None

    def latest(self, project: str) -> tuple[Store, SnapshotInfo] | None:
        """The newest snapshot of ``project`` in any store, with that store. Blocking."""
        best: tuple[Store, SnapshotInfo] | None = None
        for store in self._search_order(project):
            info = store.latest(project)
            if info is not None and (best is None or info.id > best[1].id):
                best = (store, info)
        return best

    def close(self) -> None:
        """Close every store (releases their locks)."""
        for store in self.all():
            store.close()
