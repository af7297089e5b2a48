"""The master index: where every durable blob is, and what a prune must leave alone.

:class:`MasterIndex` (after restic's ``MasterIndex`` in ``internal/repository``) merges the index files of
all packs into one map from blob hash to :class:`ChunkLocation` (a compact :class:`ChunkMap`, about 49
bytes per blob: ``_chunkmap.py``), and is the only holder of the lock that
guards it. Everything else calls its methods: look-ups (:meth:`~MasterIndex.lookup`), loading index files
(:meth:`~MasterIndex.refresh`, :meth:`~MasterIndex.add_pack`), and the bookkeeping that lets a prune run
beside snapshot writers.

Pruning while writing
=====================

Every snapshot writer holds :class:`Claims`: the blobs it found already stored and relied on (recorded by
:meth:`~MasterIndex.use` under the lock, so the check and the record are one step) and the packs it
wrote (recorded by :meth:`~MasterIndex.claim_pack` before the pack becomes visible). The collector decides
under the same lock (:meth:`~MasterIndex.sweep`): it keeps everything any running writer (or one that
finished while the collector was reading the snapshots) wrote or relied on, and removes the blobs it will
delete from the index there and then, so a writer coming later cannot find them and stores its own copy.
A pack written again with the very same content (and so the same id) as one about to be deleted is taken
back from the collector (:meth:`~MasterIndex.claim_pack` un-dooms it; the collector's
:meth:`~MasterIndex.unlink_pack_file` then leaves it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._chunkmap import ChunkMap
from ._errors import CorruptDataError, StoreError
from ._format import ChunkLocation, IndexRecord, decode_index

__all__ = ["Claims", "MasterIndex", "Sweep"]


class Claims:
    """What one snapshot writer relies on: blobs it found stored, packs it wrote. A ticket the writer
    holds and passes to :class:`MasterIndex`; only the index reads or changes it, under its lock."""

    __slots__ = ("packs", "relied")

    def __init__(self) -> None:
        self.relied: set[str] = set()
        self.packs: set[str] = set()


@dataclass
class Sweep:
    """What :meth:`MasterIndex.sweep` decided: packs to ``delete`` (nothing in them is live), packs to
    ``repack`` (with their live blobs), and for both the index records removed from the index."""

    delete: list[str] = field(default_factory=list)
    repack: dict[str, list[tuple[str, ChunkLocation]]] = field(default_factory=dict)
    hidden: dict[str, list[IndexRecord]] = field(default_factory=dict)
    packs: int = 0
    chunks_used: int = 0
    chunks_unused: int = 0
    bytes_repacked: int = 0
    missing_chunks: int = 0


class MasterIndex:
    """Blob hash -> location, for every index file in ``index_dir`` loaded so far. Thread-safe."""

    def __init__(self, index_dir: Path,
                 decode: Callable[[bytes], list[IndexRecord]] = decode_index) -> None:
        self._dir = index_dir
        # An index file's bytes -> its records (an encrypted store's opens them first: StoreFiles.index_records).
        self._decode = decode
        self._lock = threading.Lock()
        self._locs = ChunkMap()
        self._loaded: set[str] = set()
        # Under self._lock: the claims of running writers, those of writers that finished while a
        # collector was marking, and whether one is.
        self._claims: set[Claims] = set()
        self._retired: list[Claims] = []
        self._collecting = False
        self._marking = False
        # Packs a prune is about to delete. Under self._pack_lock, which also covers each deletion.
        self._doomed: set[str] = set()
        self._pack_lock = threading.Lock()

    # --- look-ups and loading -------------------------------------------------------------------------

    def lookup(self, chunk: str) -> ChunkLocation | None:
        """Where the blob is, as last loaded (no disk access)."""
        # Reads need no lock (see _chunkmap.py); every change happens under self._lock.
        key = _key(chunk)
        return None if key is None else self._locs.get(key)

    def has(self, chunk: str) -> bool:
        """Whether a durable blob with this hash is known (no disk access)."""
        key = _key(chunk)
        return key is not None and self._locs.contains(key)

    def __len__(self) -> int:
        """How many blobs are known."""
        return len(self._locs)

    def statistics(self) -> dict[str, int]:
        """Blobs known, and the bytes their table holds (for the memory benchmark)."""
        return {"chunks": len(self._locs), "table_bytes": self._locs.nbytes()}

    def is_loaded(self, pack: str) -> bool:
        return pack in self._loaded

    def add_pack(self, pack: str, records: Iterable[IndexRecord]) -> None:
        """Make the blobs of a durable, indexed pack known (a blob already known keeps its location)."""
        with self._lock:
            self._locs.put_many(pack, records)
            self._loaded.add(pack)

    def refresh(self) -> None:
        """Load the index files not loaded yet (written by this process or, read-only, by the daemon)."""
        try:
            names = [n for n in os.listdir(self._dir) if n.endswith(".idx")]
        except FileNotFoundError:
            return
        for name in names:
            pack = name[:-4]
            if pack in self._loaded:
                continue
            try:
                records = self._decode((self._dir / name).read_bytes())
            except (OSError, CorruptDataError):
                continue  # `check` reports it; its blobs count as missing meanwhile
            self.add_pack(pack, records)

    def drop_missing(self) -> None:
        """Forget the packs whose index file is gone: deleted by a prune of another process (a lock
        holder brings an S3 store's cached indexes up to date, then calls this; see ``_locks.py``)."""
        try:
            present = {n[:-4] for n in os.listdir(self._dir) if n.endswith(".idx")}
        except FileNotFoundError:
            return
        with self._lock:
            gone = self._loaded - present
            if gone:
                self._locs.remove_packs(gone)
                self._loaded -= gone

    def drop_pack(self, pack: str, chunk: str) -> None:
        """A pack named by the index is gone from disk: unless ``chunk`` was moved meanwhile, forget every
        location in it, and forget that its index was loaded if the index file is gone too (a prune
        writes the blobs it moves into new packs, with their indexes, before it deletes the old ones)."""
        gone = not (self._dir / f"{pack}.idx").exists()
        key = _key(chunk)
        with self._lock:
            loc = None if key is None else self._locs.get(key)
            if loc is not None and loc.pack == pack:
                self._locs.remove_packs({pack})
                if gone:
                    self._loaded.discard(pack)

    # --- writers --------------------------------------------------------------------------------------

    def open_claims(self) -> Claims:
        """Register a new snapshot writer; a prune keeps whatever its claims name."""
        claims = Claims()
        with self._lock:
            self._claims.add(claims)
        return claims

    def use(self, chunk: str, claims: Claims) -> bool:
        """Whether the blob is durable in the store; if so, record that ``claims``' writer relies on it.

        Under the lock, so that a collector deciding what to delete either sees the record, or has already
        removed the blob from the index and the writer stores its own copy.
        """
        key = _key(chunk)
        if key is None:
            return False
        with self._lock:
            if self._locs.contains(key):
                claims.relied.add(chunk)
                return True
            return False

    def claim_pack(self, pack: str, claims: Claims | None) -> None:
        """A pack is about to be renamed into place: ``claims`` (if any) gets it first, so a collector
        never takes it for an unreferenced pack, and a pack of the same id (same bytes) that a prune is
        about to delete stays."""
        if claims is not None:
            with self._lock:
                claims.packs.add(pack)
        with self._pack_lock:
            self._doomed.discard(pack)

    def close_claims(self, claims: Claims) -> None:
        """A writer committed its snapshot (its file is durable) or gave up. A collector that is still
        marking may have listed the snapshots before that file existed: it keeps protecting what this
        writer wrote and relied on until it has decided what to delete."""
        with self._lock:
            if claims in self._claims:
                self._claims.discard(claims)
                if self._marking:
                    self._retired.append(claims)
            if not self._claims and not self._collecting:
                # No writer left: merge the recent entries into the table now, so that their small
                # objects, made among the run's short-lived ones, do not pin the heap's arenas (the
                # idle daemon's fragmentation).
                self._locs.flush()

    # --- the collector --------------------------------------------------------------------------------

    def begin_collection(self) -> None:
        """A collector starts marking. Raises :class:`StoreError` if another one is running."""
        with self._lock:
            if self._collecting:
                raise StoreError("another prune of this store is running")
            self._collecting = self._marking = True

    def end_collection(self) -> None:
        with self._lock:
            self._collecting = self._marking = False
            self._retired.clear()

    def sweep(self, packs: Mapping[str, Sequence[IndexRecord]], used: set[str], *, min_unused: float,
              hide: bool) -> Sweep:
        """Decide, in one step with every writer's claims, what a prune does with ``packs`` (their
        records as read from their index files). A blob is live if a snapshot ``used`` it or a writer
        relied on it, and its copy is the one the index points at (other copies are extra). A pack with
        nothing live is deleted; one with at least ``min_unused`` of its bytes not live is repacked;
        packs written by writers are left out. With ``hide`` (the collector of :meth:`begin_collection`;
        not a dry run), the blobs of those packs that are not live are removed from the index (no writer
        finds them from now on), the packs are doomed, and marking ends."""
        out = Sweep()
        with self._lock:
            claims = [*self._claims, *self._retired]
            protected = set().union(*(c.packs for c in claims))
            relied = set().union(*(c.relied for c in claims))
            locs = self._locs
            present: set[str] = set()
            for pack in sorted(packs):
                if pack in protected:
                    continue
                out.packs += 1
                keep: list[tuple[str, ChunkLocation]] = []
                drop: list[IndexRecord] = []
                total = unused = 0
                for rec in packs[pack]:
                    hb, off, length, raw, flags = rec
                    h = hb.hex()
                    total += length
                    loc = locs.get(hb)
                    canonical = loc is None or (loc.pack == pack and loc.offset == off)
                    if canonical and (h in used or h in relied):
                        keep.append((h, ChunkLocation(pack, off, length, raw, flags)))
                        present.add(h)
                    else:
                        drop.append(rec)
                        unused += length
                out.chunks_used += len(keep)
                out.chunks_unused += len(drop)
                if not keep:
                    out.delete.append(pack)
                elif unused and unused >= min_unused * total:
                    out.repack[pack] = keep
                    out.bytes_repacked += total - unused
                else:
                    continue
                out.hidden[pack] = drop
            out.missing_chunks = sum(1 for h in used - present - relied
                                     if (k := _key(h)) is None or not locs.contains(k))
            if hide:
                for pack, drop in out.hidden.items():
                    for hb, off, *_ in drop:
                        locs.remove(hb, pack, off)
                # The collector has decided: writers finishing from now on need no protection.
                self._marking = False
                self._retired.clear()
        if hide:
            with self._pack_lock:
                self._doomed.update(out.hidden)
        return out

    def relocate(self, pack: str, records: Iterable[IndexRecord]) -> None:
        """Point the index at the copies of blobs a prune has just made durable in ``pack``."""
        with self._lock:
            for h, off, length, raw, flags in records:
                self._locs.put(h, ChunkLocation(pack, off, length, raw, flags), replace=True)
            self._loaded.add(pack)

    def unlink_index_file(self, pack: str) -> bool:
        """Delete the index file of a doomed pack. False (nothing done) if a writer took it back."""
        with self._pack_lock:
            if pack not in self._doomed:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / f"{pack}.idx")
            with self._lock:
                self._loaded.discard(pack)
        return True

    def unlink_pack_file(self, pack: str, path: Path) -> bool:
        """Delete a doomed pack's file (its index file first). False if a writer took it back."""
        with self._pack_lock:
            if pack not in self._doomed:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._doomed.discard(pack)
        return True

    def forget_packs(self, packs: set[str]) -> None:
        """Drop every location still in these deleted packs."""
        with self._lock:
            self._locs.remove_packs(packs)

    def restore(self, hidden: Mapping[str, Sequence[IndexRecord]]) -> None:
        """A collector ends early: put back the hidden blobs of the packs it did not delete."""
        with self._pack_lock:
            back = [p for p in hidden if p in self._doomed]
            self._doomed.difference_update(back)
        for pack in back:
            self.add_pack(pack, hidden[pack])


def _key(chunk: str) -> bytes | None:
    """The 32 bytes of a hex blob hash; None for anything that is not one (no blob has that name)."""
    if len(chunk) != 64:
        return None
    try:
        key = bytes.fromhex(chunk)
    except ValueError:
        return None
    # fromhex skips spaces (so fewer bytes) and takes upper case (the blob's own name, in other digits).
    return key if len(key) == 32 else None
