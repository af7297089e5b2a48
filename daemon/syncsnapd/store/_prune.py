"""Pruning: :func:`forget` (delete snapshot files) and :class:`GarbageCollector` (delete unreferenced data).

:func:`forget` deletes snapshot files (never a pinned one, never a project's newest);
:class:`GarbageCollector` then deletes the blobs no snapshot references: whole packs when nothing in them
is used, and packs with at least :data:`REPACK_MIN_UNUSED` of unused bytes are *repacked* (their used
blobs copied, verified, into new packs). New packs and their indexes are durable before anything is
deleted; then all the old packs' index files are deleted (directory fsynced), then the pack files. A
crash at any point loses nothing a snapshot references: at worst a pack without index, which the next
writable open re-indexes (its blobs are then stored twice until the next prune).

Pruning is safe while snapshots are written, within this process (see "Pruning while writing" in
``_index.py``). Unchanged files a snapshot takes from the project's previous snapshot are covered by that
snapshot, which is never forgotten. Other processes cannot prune a local store: a prune needs the writable
open, which the daemon holds. Readers (restores, read-only opens) that looked a blob up in a pack deleted
since look it up again in the new indexes.

On an S3 store (and a local one on a network filesystem) forget and prune hold the store's exclusive lock
(``_locks.py``: taken here unless the caller holds it already, and refused while another process writes a
snapshot), having brought the cached metadata up to date with the bucket. The same order, in the bucket:
forgotten snapshot files are deleted; the packs a repack writes are uploaded, each before its index (steps
``gc:pack-uploaded``, ``gc:index-uploaded``), and so is any pack still staged here (left by a crashed prune
or a failed run, it may hold the only copy of blobs in use), before anything is deleted; then the old packs' index objects
are deleted (``gc:index-deleted``), then the packs (``gc:pack-deleted``). A crash between the two leaves
packs without index in the bucket: the next prune re-indexes them from their footers (uploading the index)
and so deletes them in due order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import CorruptDataError, StoreError
from ._files import fsync_dir
from ._format import (
    PACK_FOOTER,
    ChunkLocation,
    IndexRecord,
    decode_tree_group,
    footer_index_length,
    hash_bytes,
)
from ._locks import HeldLock, pruning_lock
from ._writer import PackBuilder

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["REPACK_MIN_UNUSED", "GarbageCollector", "PruneStats", "forget"]

# A pack that still holds blobs in use is rewritten (its used blobs copied to a new pack, then deleted)
# once at least this share of its bytes is unused: rewriting a mostly-used 16 MiB pack to free a few
# hundred KiB costs more disk writes than it saves. So at most about this share of the store is dead
# weight after a prune (restic's default `--max-unused` is 5% of the repository, for the same trade-off).
REPACK_MIN_UNUSED = 0.10


def forget(store: Store, snapshot_ids: Iterable[str]) -> list[str]:
    """Delete these snapshots' files (their data stays until a garbage collection). See
    :meth:`Store.forget`."""
    if not store.writable:
        raise StoreError(f"store {store.root} is open read-only")
    with pruning_lock(store) as held:
        return _forget(store, snapshot_ids, held)


def _forget(store: Store, snapshot_ids: Iterable[str], held: HeldLock | None) -> list[str]:
    infos = store.catalog.scan()
    newest: dict[str, str] = {}
    for sid in sorted(infos):
        newest[infos[sid].project] = sid
    keep = set(newest.values())
    gone: list[str] = []
    if held is not None:
        held.verify()
    try:
        for sid in sorted(set(snapshot_ids)):
            if sid in keep or sid not in infos:
                continue
            if not store.catalog.remove_unless_pinned(sid):
                continue
            gone.append(sid)
            store.files.step("forget:unlinked")
            if store.remote is not None:
                store.remote.delete_snapshot(sid)
                store.files.step("forget:deleted")
        if gone:
            fsync_dir(store.files.snapshot_dir)
            store.files.step("forget:dirsynced")
    except OSError as exc:
        raise StoreError(f"cannot write to store {store.root}: {exc.strerror or exc}") from exc
    return gone


@dataclass
class PruneStats:
    """What a garbage collection found and did (planned only, for a dry run)."""

    snapshots: int = 0  # snapshots whose data is kept
    packs: int = 0  # packs looked at
    chunks_used: int = 0
    chunks_unused: int = 0
    packs_deleted: int = 0  # wholly unused packs
    packs_repacked: int = 0  # partly used packs rewritten
    packs_written: int = 0  # new packs holding the used blobs of repacked packs
    bytes_repacked: int = 0  # stored bytes copied
    bytes_deleted: int = 0  # size of the pack and index files deleted
    bytes_written: int = 0  # size of the pack and index files written
    missing_chunks: int = 0  # referenced by a snapshot but in no pack (`check` says which)

    @property
    def bytes_freed(self) -> int:
        return self.bytes_deleted - self.bytes_written

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_freed": self.bytes_freed}


class GarbageCollector:
    """Deletes the blobs no snapshot references, safely while snapshots are being written.

    Phases (a caller may report each as a step; ``check()`` is called often and may raise to stop):

    1. :meth:`mark`: list the packs' indexes, then read every snapshot's list of entries: the blobs
       they reference are *used*. A snapshot that cannot be read stops the prune (what it references is
       unknown). Writers finishing meanwhile stay protected (see :meth:`MasterIndex.close_claims`).
    2. :meth:`plan`: in one step with the writers' claims (:meth:`MasterIndex.sweep`), decide per pack
       (delete if nothing in it is used; repack if at least :data:`REPACK_MIN_UNUSED` of it is unused),
       and remove the unused blobs of those packs from the index. From then on no writer can find them:
       it stores its own copy instead.
    3. :meth:`repack`: copy the used blobs of the packs to repack into new packs (verified against their
       hash, stored bytes copied as they are), made durable and indexed like any pack.
    4. :meth:`delete`: delete the old packs: all their index files first (then fsync the directory), then
       the pack files. A crash in between leaves packs without index, which the next writable open
       re-indexes (their blobs are then stored twice, and the next prune removes the extra copies).

    A crash or a stop at any point loses nothing a snapshot references. Use as a context manager: leaving
    early puts back in the index what was not deleted.
    """

    def __init__(self, store: Store, *, dry_run: bool = False, exclude: Iterable[str] = (),
                 check: Callable[[], None] | None = None) -> None:
        if not store.writable and not dry_run:
            raise StoreError(f"store {store.root} is open read-only")
        # The exclusive lock of a store with lock objects (released by close()); a dry run only reads.
        self._lock_stack = contextlib.ExitStack()
        self._held: HeldLock | None = None
        if not dry_run:
            self._held = self._lock_stack.enter_context(pruning_lock(store))
        self._store = store
        self._files = store.files
        self._index = store.index
        self.dry_run = dry_run
        self._exclude = set(exclude)
        self._check = check or (lambda: None)
        self.stats = PruneStats()
        self._registered = False
        self._records: dict[str, list[IndexRecord]] = {}
        self._used: set[str] = set()
        self.delete_packs: list[str] = []
        self.repack_packs: dict[str, list[tuple[str, ChunkLocation]]] = {}
        self._hidden: dict[str, list[IndexRecord]] = {}
        self._deleted: set[str] = set()
        self._open: PackBuilder | None = None
        self._written: list[str] = []  # packs written by repack()
        self._sizes: dict[str, int] = {}  # S3: the bucket's packs and their sizes, listed by mark()

    def __enter__(self) -> GarbageCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mark(self, progress: Callable[[int], None] | None = None) -> int:
        """Phase 1. Returns the number of snapshots; ``progress(1)`` per snapshot read."""
        store = self._store
        if not self.dry_run:
            self._index.begin_collection()
            self._registered = True
        if store.remote is not None:
            self._sizes = store.remote.pack_sizes()
            if not self.dry_run:
                self._reindex_orphans()
        for pack in self._files.indexed_packs():
            try:
                self._records[pack] = self._files.index_records(self._files.index_path(pack).read_bytes())
            except (OSError, CorruptDataError):
                continue  # its blobs are unknown: this pack is never deleted
        infos = store.catalog.scan()
        used = self._used
        seen: set[str] = set()
        count = 0
        with store.reader() as reader:
            for sid in sorted(infos):
                if sid in self._exclude:
                    continue
                self._check()
                try:
                    record = store.catalog.read(sid)
                except FileNotFoundError:
                    continue
                except (OSError, CorruptDataError) as exc:
                    raise StoreError(f"snapshot {sid} cannot be read ({exc}); prune would not know which data "
                                     "it needs: run `syncsnapd check`") from exc
                for th in record.tree:
                    used.add(th)
                    if th in seen:
                        continue
                    seen.add(th)
                    try:
                        group = decode_tree_group(reader.read(th))
                    except (StoreError, ValueError, TypeError) as exc:
                        raise StoreError(f"the list of entries of snapshot {sid} cannot be read ({exc}); prune "
                                         "would not know which data it needs: run `syncsnapd check`") from exc
                    for e in group:
                        if e.kind == "file":
                            used.update(e.chunks)
                count += 1
                if progress is not None:
                    progress(1)
        self.stats.snapshots = count
        return count

    def _reindex_orphans(self) -> None:
        """S3: give the packs in the bucket that have no index one again, from their footers (uploaded,
        then cached), as a writable open does for a local store. This prune then treats them as any pack."""
        remote = self._store.remote
        assert remote is not None
        for pack in remote.orphan_packs(self._sizes):
            self._check()
            size = self._sizes[pack]
            try:
                tail = remote.read_range(pack, size - PACK_FOOTER.size, PACK_FOOTER.size)
                length = footer_index_length(tail, size)
                index_bytes = remote.read_range(pack, size - PACK_FOOTER.size - length, length)
                self._files.index_records(index_bytes)  # sealed in an encrypted store
            except (OSError, CorruptDataError):
                continue  # not readable: `check` reports it; no snapshot can reference it
            if hash_bytes(index_bytes) != pack:
                continue
            remote.upload_index(pack, index_bytes)
            self._files.step("gc:reindexed")
        self._index.refresh()

    def plan(self) -> PruneStats:
        """Phase 2: decide, and (unless a dry run) hide the unused blobs of the packs to delete or repack."""
        stats = self.stats
        sweep = self._index.sweep(self._records, self._used, min_unused=REPACK_MIN_UNUSED,
                                  hide=not self.dry_run)
        self.delete_packs = sweep.delete
        self.repack_packs = sweep.repack
        self._hidden = sweep.hidden
        stats.packs = sweep.packs
        stats.chunks_used = sweep.chunks_used
        stats.chunks_unused = sweep.chunks_unused
        stats.bytes_repacked = sweep.bytes_repacked
        stats.missing_chunks = sweep.missing_chunks
        stats.packs_deleted = len(self.delete_packs)
        stats.packs_repacked = len(self.repack_packs)
        for pack in self._hidden:
            stats.bytes_deleted += self._file_sizes(pack)
        if self.repack_packs:
            # Estimate for a dry run; repack() counts what it actually writes.
            stats.bytes_written = stats.bytes_repacked
        return stats

    def _file_sizes(self, pack: str) -> int:
        size = 0
        for path in (self._files.pack_path(pack), self._files.index_path(pack)):
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:
                if path.suffix == ".pack":
                    size += self._sizes.get(pack, 0)  # S3: in the bucket, not staged here
        return size

    def repack(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Phase 3: copy the used blobs of partly used packs into new packs. ``progress(packs, nbytes)``."""
        if self.dry_run:
            return
        store = self._store
        self.stats.bytes_written = 0
        try:
            with store.reader() as reader:
                for src in sorted(self.repack_packs):
                    for h, loc in self.repack_packs[src]:
                        self._check()
                        try:
                            stored = reader.read_stored(h, loc)
                        except StoreError as exc:
                            raise StoreError(f"cannot repack: {exc}; nothing was deleted, run `syncsnapd check`"
                                             ) from exc
                        pack = self._open
                        if pack is None:
                            pack = self._open = PackBuilder(self._files)
                        pack.append(h, stored, loc.raw_length, loc.flags)
                        if progress is not None:
                            progress(0, loc.length)
                        if pack.size >= store.pack_size:
                            self._install()
                    if progress is not None:
                        progress(1, 0)
                if self._open is not None:
                    self._install()
            if store.remote is not None and self._written:
                # In the bucket, each pack before its index, before anything is deleted.
                store.remote.upload_repacked(self._written, self._files.step)
        except OSError as exc:
            raise StoreError(f"cannot write to store {store.root}: {exc.strerror or exc}") from exc

    def _install(self) -> None:
        pack, self._open = self._open, None
        assert pack is not None
        pack_id = pack.install(self._index)
        self._index.relocate(pack_id, pack.records)
        self._written.append(pack_id)
        self.stats.packs_written += 1
        self.stats.bytes_written += self._file_sizes(pack_id)

    def delete(self, progress: Callable[[int], None] | None = None) -> None:
        """Phase 4: delete the packs decided on (indexes first). Quick; not interrupted by ``check``."""
        if self.dry_run:
            return
        files, index, remote = self._files, self._index, self._store.remote
        unindexed: list[str] = []
        self.stats.bytes_deleted = 0
        if self._held is not None:
            self._held.verify()
        if remote is not None:
            # Every pack staged here in the bucket with its index first: a pack a crashed prune or a failed
            # run left staged may hold the only copy, once the old packs are gone, of blobs in use.
            remote.upload_staged()
        try:
            for pack in sorted(self._hidden):
                size = self._file_sizes(pack)
                if not index.unlink_index_file(pack):
                    continue  # written again meanwhile by a snapshot (same blobs): it stays
                self.stats.bytes_deleted += size
                unindexed.append(pack)
                files.step("gc:index-unlinked")
                if remote is not None:
                    remote.delete_index(pack)
                    files.step("gc:index-deleted")
            if unindexed:
                fsync_dir(files.index_dir)
                files.step("gc:indexdir-synced")
            dirs: set[Path] = set()
            for pack in unindexed:
                path = files.pack_path(pack)
                if not index.unlink_pack_file(pack, path):
                    continue
                if remote is not None:
                    remote.delete_pack(pack)
                    files.step("gc:pack-deleted")
                self._deleted.add(pack)
                if remote is None or path.parent.is_dir():
                    dirs.add(path.parent)
                files.step("gc:pack-unlinked")
                if progress is not None:
                    progress(1)
            for d in sorted(dirs):
                fsync_dir(d)
            if dirs:
                files.step("gc:packdir-synced")
        except OSError as exc:
            raise StoreError(f"cannot delete from store {self._store.root}: {exc.strerror or exc}") from exc
        # Nothing should still point at a deleted pack (used blobs were moved, unused ones hidden).
        index.forget_packs(self._deleted)
        self.stats.packs_deleted = len(self._deleted - set(self.repack_packs))
        self.stats.packs_repacked = len(self._deleted & set(self.repack_packs))

    def close(self) -> None:
        """End the collection: put what was hidden but not deleted back into the index. Idempotent."""
        if self._open is not None:
            self._open.discard()
            self._open = None
        if not self.dry_run and self._hidden:
            self._index.restore({p: d for p, d in self._hidden.items() if p not in self._deleted})
            self._hidden = {p: d for p, d in self._hidden.items() if p in self._deleted}
        if self._registered:
            self._index.end_collection()
            self._registered = False
        self._lock_stack.close()
