"""The projects' own stores (``store = ...`` in ``[[projects]]``): opened at start beside the daemon's
(``_daemon.py`` opens that one), every distinct one once, writable and locked (two projects naming one
directory or URL share one ``Store``: one lock, one index, so dedup holds across them).

An S3 store's local directory is ``<state_dir>/s3/<bucket>-<prefix>`` (``core.staging_dir``), one per
URL; the loader refuses two URLs that would share one. A store that cannot be opened stops the start
with a :class:`StartupError` naming it, and the projects that use it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core import DaemonConfig, ProjectConfig, S3Options, store_location
from ..runs import Stores, location_of
from ..store import RemoteSpec, Store, StoreError, StoreKey, prepare, prepare_store
from ._listening import StartupError
from ._offline import daemon_new_store, store_key

__all__ = ["holding", "offline_stores", "open_stores", "reload_stores", "store_dirs"]

log = logging.getLogger("syncsnapd")


def store_dirs(config: DaemonConfig) -> tuple[Path, ...]:
    """The local directories of every configured store (never snapshotted, never restored into)."""
    return (config.store, *dict.fromkeys(p.store for p in config.projects if p.store is not None))


def _open(root: Path, url: str | None, s3: S3Options | None, key: StoreKey | None) -> Store:
    if url is not None:
        _mark(root, url, s3)
    # The daemon's key opens every store of it; a new one is made as the daemon's would be (encrypted on
    # S3); a bucket that is down: as the daemon's store.
    return Store.open(root, writable=True, key=key, create=daemon_new_store(key, s3=url is not None),
                      offline_ok=True)


def open_stores(config: DaemonConfig, default: Store) -> Stores:
    """Open the projects' own stores, beside ``default`` (the daemon's, open already) (blocking: run it in
    a worker thread).

    Raises:
        StartupError: a store cannot be opened; the message names it and the projects using it. Every
            store opened, ``default`` too, is closed then.
    """
    opened = {store_location(config.store, config.store_url): default}
    own: dict[str, Store] = {}
    try:
        for project in config.projects:
            if project.store is None:
                continue
            where = project.store_location(config)
            if where not in opened:
                try:
                    opened[where] = _open(project.store, project.store_url, config.s3, store_key(config.key_file))
                except Exception as exc:
                    raise StartupError(f"cannot open the store of {_users(config, where)} at {where}: {exc}") from exc
                log.info("store %s opened for %s", where, _users(config, where))
            own[project.id] = opened[where]
    except BaseException:
        for store in opened.values():
            store.close()
        raise
    return Stores(default, own)


def _users(config: DaemonConfig, where: str) -> str:
    ids = [p.id for p in config.projects if p.store is not None and p.store_location(config) == where]
    return ("project " if len(ids) == 1 else "projects ") + ", ".join(repr(i) for i in ids)


def reload_stores(stores: Stores, old: DaemonConfig, new: DaemonConfig) -> list[ProjectConfig]:
    """Apply a reloaded configuration's project stores as far as no store must be opened, and say in the
    log what needs a restart. Returns the projects to run: a project whose store changed keeps its open
    store until the restart; a new project whose store is not open is left out until then."""
    known = {p.id for p in old.projects}
    out: list[ProjectConfig] = []
    for project in new.projects:
        where = project.store_location(new)
        running = stores.of(project.id)
        if project.id in known:
            if where != (now := location_of(running)):
                log.warning("reload: the store of project %r changed (%s -> %s); restart syncsnapd to apply it "
                            "(its snapshots go to %s until then)", project.id, now, where, now)
            out.append(project)
            continue
        store = stores.at(where)
        if store is None:
            log.warning("reload: project %r uses the store %s, which is not open; restart syncsnapd to add it",
                        project.id, where)
            continue
        stores.assign(project.id, store)
        out.append(project)
    return out



def offline_stores(config: DaemonConfig, project: str | None) -> list[tuple[Path, str | None]]:
    """The stores an offline command works on, as (local directory, URL or None): with ``--project P``
    the store of P (the daemon's if P has none of its own, or is not configured); without, the daemon's
    and then each project's own, each once. S3 stores' directories are marked as such (``prepare``)."""
    wanted = [p for p in config.projects if p.id == project] if project is not None else list(config.projects)
    out: dict[str, tuple[Path, str | None]] = {}
    if project is None or not any(p.store is not None for p in wanted):
        out[store_location(config.store, config.store_url)] = (prepare_store(config), config.store_url)
    for p in wanted:
        if p.store is not None and (where := p.store_location(config)) not in out:
            if p.store_url is not None:
                _mark(p.store, p.store_url, config.s3)
            out[where] = (p.store, p.store_url)
    return list(out.values())


def _mark(root: Path, url: str, s3: S3Options | None) -> None:
    o = s3 or S3Options()
    prepare(root, RemoteSpec(url=url, endpoint=o.endpoint, region=o.region, path_style=o.path_style,
                             concurrency=o.concurrency))


def holding(stores: list[tuple[Path, str | None]], snapshot_id: str, key: StoreKey | None = None
            ) -> tuple[Path, str | None]:
    """The first of ``stores`` that has ``snapshot_id`` (the first of all for ``latest`` or when none has
    it: the command then says it is unknown there)."""
    if len(stores) > 1 and snapshot_id != "latest":
        for root, url in stores:
            try:
                with Store.open(root, writable=False, key=key) as store:
                    if any(s.id == snapshot_id for s in store.list_snapshots()):
                        return root, url
            except StoreError:
                continue
    return stores[0]
