"""The projects and snapshots the mount shows, from one or several stores opened read-only, listed
again when a project's directory (or the root) is looked into and the last listing is older than
:data:`REFRESH_SECONDS`: a new snapshot appears without remounting.

A store opened read-only lists its ``snapshots/`` directory, where a snapshot file appears by a rename
once the snapshot is complete (its packs and indexes are durable before it: ``Store.commit_snapshot``);
a snapshot being written is not there, so the mount shows nothing of it until it is done. An S3 store's
lists are refreshed from the bucket (``Store.refresh``).

``by-date`` names: a snapshot's UTC start time to the minute (``2026-12-01T14:03``); when a minute has
several snapshots, the oldest keeps that name and the others add their seconds
(``2026-12-01T14:03:27``), then ``-2``, ``-3``... in id order: names are deterministic, and a snapshot's
name does not change when newer ones are taken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from ..store import SnapshotInfo, Store, StoreError

__all__ = ["REFRESH_SECONDS", "Catalog", "Listing", "date_names"]

log = logging.getLogger("syncsnapd.mount")

# How old a listing may be when a project's directory is looked into (seconds): `ls` twice a second does
# not list the store twice, and a new snapshot shows within this time.
REFRESH_SECONDS = 1.0


def date_names(infos: Sequence[SnapshotInfo]) -> dict[str, str]:
    """by-date name -> snapshot id for a project's snapshots (oldest first)."""
    out: dict[str, str] = {}
    for info in sorted(infos, key=lambda i: i.id):
        name = info.time[:16]
        if name in out:
            name = info.time[:19]
            base, n = name, 2
            while name in out:
                name = f"{base}-{n}"
                n += 1
        out[name] = info.id
    return out


@dataclass
class Listing:
    """One listing of the stores: each project's snapshots (oldest first) and where each snapshot is."""

    projects: dict[str, list[SnapshotInfo]] = field(default_factory=dict)
    stores: dict[str, Store] = field(default_factory=dict)
    dates: dict[str, dict[str, str]] = field(default_factory=dict)

    def snapshot(self, project: str, snapshot_id: str) -> SnapshotInfo | None:
        return next((i for i in self.projects.get(project, ()) if i.id == snapshot_id), None)


class Catalog:
    """The listing, refreshed at most every :data:`REFRESH_SECONDS`.

    Args:
        stores: the stores to show, opened read-only.
        project: only this project (None: every project with snapshots, and ``configured`` ones).
        configured: projects shown even before their first snapshot.
        clock: seconds (monotonic).
    """

    def __init__(self, stores: Sequence[Store], *, project: str | None = None, configured: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stores = list(stores)
        self._project = project
        self._configured = [p for p in configured if project is None or p == project]
        if project is not None and project not in self._configured:
            self._configured.append(project)
        self._clock = clock
        self._listed_at: float | None = None
        self._lock = trio.Lock()
        self.listing = Listing()

    def _list(self) -> Listing:
        listing = Listing(projects={p: [] for p in self._configured})
        for store in self._stores:
            try:
                store.refresh(REFRESH_SECONDS)  # an S3 store: what other machines added (local: nothing)
            except StoreError as exc:
                log.warning("cannot refresh the lists of %s: %s (showing what is known)", store.root, exc)
            for info in store.list_snapshots(self._project):
                if info.id in listing.stores:
                    continue
                listing.projects.setdefault(info.project, []).append(info)
                listing.stores[info.id] = store
        for pid, infos in listing.projects.items():
            infos.sort(key=lambda i: i.id)
            listing.dates[pid] = date_names(infos)
        return listing

    async def refresh(self) -> Listing:
        """The listing, listed again first when older than :data:`REFRESH_SECONDS`."""
        async with self._lock:
            now = self._clock()
            if self._listed_at is None or now - self._listed_at >= REFRESH_SECONDS:
                try:
                    self.listing = await trio.to_thread.run_sync(self._list)
                except StoreError as exc:
                    log.warning("cannot list the snapshots: %s (showing the last listing)", exc)
                self._listed_at = self._clock()
            return self.listing
