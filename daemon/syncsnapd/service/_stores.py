"""The projects' own stores (``store = ...`` in ``[[projects]]``): opened at start beside the daemon's
(``_daemon.py`` opens that one), every distinct one once, writable and locked (two projects naming one
directory or URL share one ``Store``: one lock, one index, so dedup holds across them).

A project's store is reached with its own ``s3`` table and opened with its own ``key_file`` when it has
them, else with the daemon's (``ProjectConfig.store_s3``, ``store_key_file``); the loader refuses two
projects that name one store with different ones. The offline commands and the mount open each store
the same way (:func:`offline_stores`).

An S3 store's local directory is ``<state_dir>/s3/<bucket>-<prefix>`` (``core.staging_dir``), one per
URL; the loader refuses two URLs that would share one. A store that cannot be opened stops the start
with a :class:`StartupError` naming it, and the projects that use it (a :class:`ConfigError` when its key
cannot be read or does not open it, as for the daemon's store).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from ..core import ConfigError, DaemonConfig, ProjectConfig, S3Options, store_location
from ..runs import Stores, location_of
from ..store import Store, StoreError, StoreKey, StoreKeyError, prepare, prepare_store, spec_from
from ._listening import StartupError
from ._offline import daemon_new_store, store_key

__all__ = ["OfflineStore", "holding", "offline_stores", "open_stores", "reload_stores", "store_dirs"]

log = logging.getLogger("syncsnapd")


def store_dirs(config: DaemonConfig) -> tuple[Path, ...]:
    """The local directories of every configured store (never snapshotted, never restored into)."""
    return (config.store, *dict.fromkeys(p.store for p in config.projects if p.store is not None))


def _open(root: Path, url: str | None, s3: S3Options | None, key: StoreKey | None) -> Store:
    if url is not None:
        prepare(root, spec_from(url, s3))
    # A new one is made as the daemon's would be (encrypted on S3, with this store's key); a bucket that
    # is down: as the daemon's store.
    store = Store.open(root, writable=True, key=key, create=daemon_new_store(key, s3=url is not None),
                       offline_ok=True)
    _bound_staging(store, s3)
    return store


def _bound_staging(store: Store, s3: S3Options | None) -> None:
    if store.remote is not None and s3 is not None:
        store.remote.staging_max = s3.staging_max


def open_stores(config: DaemonConfig, default: Store) -> Stores:
    """Open the projects' own stores, beside ``default`` (the daemon's, open already) (blocking: run it in
    a worker thread).

    Each store is reached with its projects' ``s3`` settings and opened with their ``key_file`` (the
    daemon's where they have none); every S3 store's staging is bounded by its ``staging_max``.

    Raises:
        StartupError: a store cannot be opened; the message names it and the projects using it. Every
            store opened, ``default`` too, is closed then.
        ConfigError: the key of a store cannot be read, or does not open it (named the same way).
    """
    opened = {store_location(config.store, config.store_url): default}
    _bound_staging(default, config.s3)
    own: dict[str, Store] = {}
    try:
        for project in config.projects:
            if project.store is None:
                continue
            where = project.store_location(config)
            if where not in opened:
                what = f"the store of {_users(config, where)} at {where}"
                try:
                    key = store_key(project.store_key_file(config))
                    opened[where] = _open(project.store, project.store_url, project.store_s3(config), key)
                except StoreKeyError as exc:  # no key, or a wrong one: nothing written (exit 2)
                    raise ConfigError(f"cannot open {what}: {exc}") from exc
                except Exception as exc:
                    raise StartupError(f"cannot open {what}: {exc}") from exc
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
            elif _way(old, project.id) != _way(new, project.id):
                log.warning("reload: the s3 settings or key_file of the store of project %r changed; restart "
                            "syncsnapd to apply them", project.id)
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



def _way(config: DaemonConfig, project_id: str) -> tuple[S3Options | None, Path | None]:
    """How the store of ``project_id`` is reached (S3 settings, for a bucket only) and opened."""
    p = next(p for p in config.projects if p.id == project_id)
    if p.store is None:
        return (config.s3 if config.store_url is not None else None), config.key_file
    return (p.store_s3(config) if p.store_url is not None else None), p.store_key_file(config)


class OfflineStore(NamedTuple):
    """A configured store as an offline command opens it: its local directory, its URL (None: a local
    store) and the master key file that opens it (None: the passphrase, as for the daemon's store)."""

    root: Path
    url: str | None
    key_file: Path | None


def offline_stores(config: DaemonConfig, project: str | None) -> list[OfflineStore]:
    """The stores an offline command works on: with ``--project P`` the store of P (the daemon's if P has
    none of its own, or is not configured); without, the daemon's and then each project's own, each once.
    S3 stores' directories are marked as such (``prepare``), with their projects' ``s3`` settings."""
    wanted = [p for p in config.projects if p.id == project] if project is not None else list(config.projects)
    out: dict[str, OfflineStore] = {}
    if project is None or not any(p.store is not None for p in wanted):
        out[store_location(config.store, config.store_url)] = OfflineStore(
            prepare_store(config), config.store_url, config.key_file)
    for p in wanted:
        if p.store is not None and (where := p.store_location(config)) not in out:
            if p.store_url is not None:
                prepare(p.store, spec_from(p.store_url, p.store_s3(config)))
            out[where] = OfflineStore(p.store, p.store_url, p.store_key_file(config))
    return list(out.values())


def holding(stores: list[tuple[Path, str | None, StoreKey | None]], snapshot_id: str
            ) -> tuple[Path, str | None, StoreKey | None]:
    """The first of ``stores`` (local directory, URL, key) that has ``snapshot_id`` (the first of all for
    ``latest`` or when none has it: the command then says it is unknown there)."""
    if len(stores) > 1 and snapshot_id != "latest":
        for root, url, key in stores:
            try:
                with Store.open(root, writable=False, key=key) as store:
                    if any(s.id == snapshot_id for s in store.list_snapshots()):
                        return root, url, key
            except StoreError:
                continue
    return stores[0]
