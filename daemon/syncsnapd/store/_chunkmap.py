"""A compact map from blob hash to :class:`ChunkLocation`: about 49 bytes per blob instead of the ~300
bytes of Python objects a dict of strings and named tuples costs.

Layout
======

The map holds no object per blob. Its bulk is a *table*: one buffer of 49-byte records, each the 32-byte
binary hash and ``<u32 pack number, u32 offset, u32 stored length, u32 raw length, u8 flags>`` (pack
numbers index a list of pack ids), grouped by *bucket* (the first 16 bits of the hash), in no particular
order within a bucket; and two arrays of 65,536 u32: records per bucket, and where each bucket begins.

A look-up converts the hex hash to 32 bytes and searches the bucket's stretch of the table with one
``find`` (C speed: a bucket holds ~16 records at a million blobs); a match at a position that is not the
start of a record is skipped. Additions go to a small dict of *recent* entries
(binary key -> packed value), merged into a new table once it holds more than 1/16 of the table (or
32,768 entries): the merge copies the table's buckets around the new entries (a memcpy of the table, about
0.8 KiB per blob added, amortized) and places the new ones. Entries removed (a prune) are marked dead in
place (key zeroed, which no look-up finds, and pack number ``0xFFFFFFFF``) and dropped by a merge once a
quarter of the table is dead. A key is never in the table twice, so the first match is the only one.

The big buffers are anonymous ``mmap``s: given back to the system as a whole when a merge replaces them,
never left as holes in the heap (the fragmentation that kept an idle daemon at several times its live
memory).

Concurrency: writes (everything but :meth:`ChunkMap.get` and :meth:`ChunkMap.contains`) must be serialized
by the caller (:class:`~syncsnapd.store._index.MasterIndex` holds its lock). Reads need no lock: a merge
builds the new table aside, publishes it in one assignment, and only then replaces the dict of recent
entries (a reader that finds a key in neither looked at the recent dict first, so it saw the new table),
and an in-place change of one value is one ``memcpy`` under the GIL.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from operator import add
from typing import Any

from ._format import ChunkLocation

__all__ = ["ChunkMap"]

_KEY = 32
_BUCKETS = 1 << 16
_VAL = struct.Struct("<IIIIB")
_REC = _KEY + _VAL.size  # a record: the key, then its value
_DEAD = 0xFFFFFFFF
_U32 = 0xFFFFFFFF
# Merge the recent entries into the table past this many, or past 1/_RECENT_SHARE of the table: the
# dict costs ~150 bytes per entry, a merge copies the table.
_RECENT_MIN = 32768  # half the buckets: a merge then moves about one stretch of the table per entry added
_RECENT_SHARE = 16
# Buffers from this size on are anonymous mmaps (returned whole to the system when dropped).
_MMAP_MIN = 64 << 10

Buffer = bytearray | mmap.mmap


class _Table:
    __slots__ = ("counts", "recs", "size", "starts")

    def __init__(self, recs: Buffer, counts: array[int], size: int) -> None:
        self.recs = recs  # size records of _REC bytes, grouped by bucket
        self.counts = counts  # records per bucket
        self.starts = array("I", accumulate(counts, initial=0))  # where each bucket begins
        self.size = size

    def index(self, key: bytes) -> int:
        """The position of ``key`` (alive or dead), or -1."""
        b = key[0] << 8 | key[1]
        starts = self.starts
        lo = starts[b] * _REC
        hi = starts[b + 1] * _REC
        recs = self.recs
        pos = recs.find(key, lo, hi)
        while pos >= 0 and (pos - lo) % _REC:
            pos = recs.find(key, pos + 1, hi)
        return -1 if pos < 0 else pos // _REC


_EMPTY = _Table(bytearray(), array("I", bytes(4 * _BUCKETS)), 0)


class ChunkMap:
    """Blob hash (32 bytes) -> :class:`ChunkLocation`, compact. See the module docstring."""

    def __init__(self) -> None:
        self._table = _EMPTY
        self._recent: dict[bytes, bytes] = {}
        self._dead = 0
        self._pack_ids: list[str] = []
        self._pack_numbers: dict[str, int] = {}

    # --- reads (no lock needed) -----------------------------------------------------------------------

    def __len__(self) -> int:
        return self._table.size - self._dead + len(self._recent)

    def _fields(self, key: bytes) -> tuple[int, int, int, int, int] | None:
        v = self._recent.get(key)
        if v is not None:
            return _VAL.unpack(v)
        t = self._table
        i = t.index(key)
        if i < 0:
            return None
        fields: tuple[int, int, int, int, int] = _VAL.unpack_from(t.recs, i * _REC + _KEY)
        return None if fields[0] == _DEAD else fields  # (only a look-up of the all-zero hash gets here)

    def get(self, key: bytes) -> ChunkLocation | None:
        """Where blob ``key`` (32 bytes) is, or None."""
        f = self._fields(key)
        if f is None:
            return None
        return ChunkLocation(self._pack_ids[f[0]], f[1], f[2], f[3], f[4])

    def contains(self, key: bytes) -> bool:
        return key in self._recent or (self._table.index(key) >= 0 and key != _ZERO)

    def nbytes(self) -> int:
        """Bytes held by the table (records and bucket counts), not counting the recent entries."""
        t = self._table
        return len(t.recs) + 8 * _BUCKETS

    def items(self) -> Iterator[tuple[bytes, ChunkLocation]]:
        """Every entry (for tests and checks; not safe against concurrent writes)."""
        for key in list(self._recent):
            loc = self.get(key)
            if loc is not None:
                yield key, loc
        t = self._table
        for i in range(t.size):
            pack, off, length, raw, flags = _VAL.unpack_from(t.recs, i * _REC + _KEY)
            if pack != _DEAD:
                loc = ChunkLocation(self._pack_ids[pack], off, length, raw, flags)
                yield bytes(t.recs[i * _REC:i * _REC + _KEY]), loc

    # --- writes (serialized by the caller) -------------------------------------------------------------

    def _pack_number(self, pack: str) -> int:
        n = self._pack_numbers.get(pack)
        if n is None:
            n = self._pack_numbers[pack] = len(self._pack_ids)
            self._pack_ids.append(pack)
        return n

    def put(self, key: bytes, loc: ChunkLocation, *, replace: bool) -> None:
        """Add ``key`` at ``loc``; a key already present keeps its location unless ``replace``."""
        pack, off, length, raw, flags = loc
        self._put(key, self._pack_number(pack), off, length, raw, flags, replace)

    def _put(self, key: bytes, pack: int, off: int, length: int, raw: int, flags: int, replace: bool) -> None:
        if off > _U32:  # packs are ~16 MiB; the format allows more, this map does not
            raise ValueError(f"pack offset {off} does not fit 32 bits")
        packed = _VAL.pack(pack, off, length, raw, flags)
        recent = self._recent
        if key in recent:
            if replace:
                recent[key] = packed
            return
        t = self._table
        i = t.index(key)
        if i >= 0:
            if replace:
                at = i * _REC + _KEY
                t.recs[at:at + _VAL.size] = packed
            return
        recent[key] = packed
        if len(recent) > max(_RECENT_MIN, t.size // _RECENT_SHARE):
            self.flush()

    def put_many(self, pack: str, records: Iterable[tuple[bytes, int, int, int, int]]) -> None:
        """Add the records of one pack (hash, offset, length, raw length, flags); known keys stay."""
        n, put = self._pack_number(pack), self._put
        for h, off, length, raw, flags in records:
            put(h, n, off, length, raw, flags, False)

    def remove(self, key: bytes, pack: str | None = None, offset: int | None = None) -> bool:
        """Forget ``key`` (only if it is at ``pack`` and ``offset``, when given). True if it was there."""
        loc = self.get(key)
        if loc is None or (pack is not None and (loc.pack != pack or loc.offset != offset)):
            return False
        if self._recent.pop(key, None) is None:
            t = self._table
            self._kill(t, t.index(key))
        return True

    def _kill(self, t: _Table, i: int) -> None:
        # A dead record: zero key (no blob hashes to it, so no look-up finds it) and pack number _DEAD.
        t.recs[i * _REC:i * _REC + _KEY + 4] = _DEAD_RECORD
        self._dead += 1

    def remove_packs(self, packs: set[str]) -> int:
        """Forget every entry in these packs; returns how many."""
        numbers = {self._pack_numbers[p] for p in packs if p in self._pack_numbers}
        if not numbers:
            return 0
        removed = 0
        for key, v in list(self._recent.items()):
            if _VAL.unpack(v)[0] in numbers:
                del self._recent[key]
                removed += 1
        t = self._table
        with memoryview(t.recs) as view:
            hits = [i for i, (p,) in enumerate(_REC_PACK.iter_unpack(view[:t.size * _REC])) if p in numbers]
        for i in hits:
            self._kill(t, i)
        return removed + len(hits)

    def flush(self) -> None:
        """Merge the recent entries into a new table (dropping the dead entries if many)."""
        t = self._table
        if self._dead * 4 > t.size:
            t = self._compacted(t)
        recent = self._recent
        if recent:
            t = _merged(t, [k + recent[k] for k in sorted(recent)])
        # Publish the table before the recent dict goes (see the module docstring).
        self._table = t
        self._recent = {}

    def _compacted(self, t: _Table) -> _Table:
        with memoryview(t.recs) as view:
            live = [bytes(view[i * _REC:(i + 1) * _REC]) for i, (p,) in
                    enumerate(_REC_PACK.iter_unpack(view[:t.size * _REC])) if p != _DEAD]
        self._dead = 0
        return _merged(_EMPTY, live)


_ZERO = bytes(_KEY)
_DEAD_RECORD = _ZERO + _DEAD.to_bytes(4, "little")
_REC_PACK = struct.Struct(f"<{_KEY}xI{_VAL.size - 4}x")  # a record's pack number


def _merged(t: _Table, new: list[bytes]) -> _Table:
    """A table with ``t``'s records and the ``new`` ones (sorted by key, none of them in ``t``)."""
    counts = array("I", bytes(4 * _BUCKETS))
    for r in new:
        counts[r[0] << 8 | r[1]] += 1
    size = t.size + len(new)
    out: Buffer
    if size * _REC >= _MMAP_MIN:
        out = mmap.mmap(-1, size * _REC)
        write: Callable[[Any], object] = out.write
    else:
        parts: list[Any] = []
        write = parts.append
    old_starts = t.starts
    done = 0  # records of the old table copied so far
    batch: list[Any] = []  # written a few hundred pieces at a time: one call instead of many
    with memoryview(t.recs) as old:
        j = 0
        while j < len(new):
            r = new[j]
            b = r[0] << 8 | r[1]
            end = old_starts[b + 1]  # the old table's records up to the end of this bucket come first
            if end > done:
                if end - done > 1024:  # a long stretch goes straight (no joined copy on the heap)
                    write(b"".join(batch))
                    batch.clear()
                    write(old[done * _REC:end * _REC])
                else:
                    batch.append(old[done * _REC:end * _REC])
                done = end
            n = counts[b]
            batch += new[j:j + n]
            j += n
            if len(batch) > 512:
                write(b"".join(batch))
                batch.clear()
        write(b"".join(batch))
        batch.clear()
        write(old[done * _REC:t.size * _REC])
        if size * _REC < _MMAP_MIN:
            out = bytearray(b"".join(parts))
    return _Table(out, array("I", map(add, t.counts, counts)), size)
