"""A snapshot run's per-file data in a few large buffers instead of Python objects per file.

Why (issue 14, item 3, docs/memory.md): a run of 100k files used to keep one ``Entry`` (its path string,
chunk list and hex strings) and one work item per file until the commit. Those small objects filled
pymalloc arenas interleaved with the few objects that outlive a run (index and cache additions, events),
so after the run the daemon kept the arenas, mostly empty, as RSS: the idle daemon grew with the tree.
Here each file is a binary record appended to an anonymous mmap that grows by ``mremap`` and is unmapped
whole at the end of the run, so nothing per file is left in the heap.

:class:`Records` is that buffer: append-only, records addressed by offset, safe to append to from several
threads. :class:`EntryLog` is the new snapshot's entry list in walk order: a table of record offsets (8
bytes per position, also an mmap) where a position is reserved by the walk and filled by a reader of step
4, or left empty (the file was omitted). :meth:`EntryLog.entries` gives the list for the commit as a
read-only sequence that decodes :class:`~syncsnapd.store.Entry` objects as the commit asks for them (the
store groups the tree a group at a time), so at most a tree group of them exists at once.

The files step 4 is to read are records too (:func:`pack_work`), kept in a :class:`Records` buffer while
step 4's batches hold their offsets in arrays (one object per batch of files).

Record of an entry: ``<BHqqQII`` (kind, mode, size, mtime_ns, inode, path length, data length), then the
path (UTF-8 with ``surrogatepass``: every ``str`` comes back exactly), then the data: a file's chunk
hashes as 32 raw bytes each, a symlink's target like the path, nothing for a directory.
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import overload

from ..store import Entry

__all__ = ["EntryLog", "Records", "Table", "Work", "pack_entry", "pack_work", "unpack_work", "work_size"]

_HEADER = struct.Struct("<BHqqQII")
_KINDS = ("file", "dir", "symlink")
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}
_U64 = struct.Struct("<Q")
EMPTY = (1 << 64) - 1  # a position with no entry (yet, or omitted)
_START = 1 << 20
_CACHE_MAX = 8192


def _anonymous(size: int) -> mmap.mmap:
    # Private: a shared anonymous map cannot grow (pages past its first size fault with SIGBUS).
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def pack_entry(path: str, kind: str, size: int, mtime_ns: int, mode: int, inode: int,
               data: bytes | str | list[str] | None) -> bytes:
    """One entry as a record. ``data``: a file's chunk hashes (hex strings, or already as raw bytes), a
    symlink's target, None for a directory."""
    p = _encode(path)
    if isinstance(data, list):
        d = bytes.fromhex("".join(data))
    elif isinstance(data, str):
        d = _encode(data)
    else:
        d = data or b""
    return _HEADER.pack(_KIND_CODE[kind], mode, size, mtime_ns, inode, len(p), len(d)) + p + d


class Records:
    """Append-only byte records in one anonymous mmap, grown by doubling (``mremap``: no copy, and pages
    never written cost no RSS). :meth:`append` may be called from several threads."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = _anonymous(_START)
        self._end = 0
        self._lock = threading.Lock()

    @property
    def buffer(self) -> mmap.mmap:
        """The mmap itself (its size is not the used length); valid until the next append."""
        assert self._map is not None, "closed"
        return self._map

    def append(self, record: bytes) -> int:
        """Store ``record``; returns its offset."""
        n = len(record)
        with self._lock:
            m = self.buffer
            at = self._end
            if at + n > len(m):
                size = len(m)
                while at + n > size:
                    size *= 2
                m.resize(size)
            m[at:at + n] = record
            self._end = at + n
        return at

    def close(self) -> None:
        m, self._map = self._map, None
        if m is not None:
            m.close()


class Table:
    """A growable array of unsigned 64-bit numbers in an anonymous mmap."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = _anonymous(_START)
        self.length = 0

    def append(self, value: int) -> int:
        m = self._map
        assert m is not None, "closed"
        i = self.length
        if (i + 1) * 8 > len(m):
            m.resize(len(m) * 2)
        _U64.pack_into(m, i * 8, value)
        self.length = i + 1
        return i

    def __setitem__(self, i: int, value: int) -> None:
        assert self._map is not None and 0 <= i < self.length
        _U64.pack_into(self._map, i * 8, value)

    def __getitem__(self, i: int) -> int:
        assert self._map is not None and 0 <= i < self.length
        return int(_U64.unpack_from(self._map, i * 8)[0])

    def close(self) -> None:
        m, self._map = self._map, None
        if m is not None:
            m.close()


def _decode(buf: mmap.mmap, at: int) -> Entry:
    code, mode, size, mtime, inode, plen, dlen = _HEADER.unpack_from(buf, at)
    at += _HEADER.size
    path = buf[at:at + plen].decode("utf-8", "surrogatepass")
    at += plen
    kind = _KINDS[code]
    data: list[str] | str | None
    if kind == "file":
        h = buf[at:at + dlen].hex()
        data = [h[i:i + 64] for i in range(0, len(h), 64)]
    elif kind == "symlink":
        data = buf[at:at + dlen].decode("utf-8", "surrogatepass")
    else:
        data = None
    return Entry(path, kind, size, mtime, mode, inode, data)


class EntryLog:
    """The new snapshot's entries in walk order (see the module docstring). Positions are appended by one
    thread (the walk); :meth:`fill` may be called from several (step 4's readers), each for its own
    positions. :meth:`close` frees everything (also after :meth:`entries`)."""

    def __init__(self) -> None:
        self._records = Records()
        self._table = Table()

    def __len__(self) -> int:
        return self._table.length

    def add(self, path: str, kind: str, size: int, mtime_ns: int, mode: int, inode: int,
            data: bytes | str | list[str] | None) -> int:
        """Append an entry; returns its position."""
        return self._table.append(self._records.append(pack_entry(path, kind, size, mtime_ns, mode, inode, data)))

    def reserve(self) -> int:
        """Append an empty position (filled later by :meth:`fill`, or left out of the snapshot)."""
        return self._table.append(EMPTY)

    def fill(self, position: int, record: bytes) -> None:
        """Put the entry ``record`` (:func:`pack_entry`) at a reserved position."""
        self._table[position] = self._records.append(record)

    def drop(self, position: int) -> None:
        """Leave the entry at ``position`` out of the snapshot."""
        self._table[position] = EMPTY

    def get(self, position: int) -> Entry | None:
        at = self._table[position]
        return None if at == EMPTY else _decode(self._records.buffer, at)

    def entries(self) -> Sequence[Entry]:
        """The entries present, in walk order, decoded on demand. Drops the empty positions (so call it
        once, after the last :meth:`fill`)."""
        table = self._table
        n = 0
        for i in range(table.length):
            at = table[i]
            if at != EMPTY:
                table[n] = at
                n += 1
        table.length = n
        return _Entries(self)

    def close(self) -> None:
        self._records.close()
        self._table.close()


class _Entries(Sequence[Entry]):
    """The read-only sequence of :meth:`EntryLog.entries`. Iterating decodes each entry once and keeps
    the entries from the last slice taken on, so that the store's tree grouping (iterate, then slice the
    group just iterated) decodes each entry once and holds one group."""

    def __init__(self, log: EntryLog) -> None:
        self._log = log
        self._cache: dict[int, Entry] = {}

    def __len__(self) -> int:
        return len(self._log)

    def _at(self, i: int) -> Entry:
        e = self._cache.get(i)
        if e is None:
            e = self._log.get(i)
            assert e is not None
        return e

    @overload
    def __getitem__(self, i: int) -> Entry: ...

    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...

    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        n = len(self)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            out = [self._at(j) for j in range(start, stop, step)]
            if step == 1:  # what the grouping slices: the entries before it are not asked for again
                for j in [j for j in self._cache if j < stop]:
                    del self._cache[j]
            return out
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._at(i)

    def __iter__(self) -> Iterator[Entry]:
        cache = self._cache
        for i in range(len(self)):
            e = self._at(i)
            cache[i] = e
            if len(cache) > _CACHE_MAX:  # iterated without slicing: forget the oldest (decoded again if asked)
                del cache[next(iter(cache))]
            yield e


# A file to read in step 4, as the walk found it: its position in the entry list, relative path, the
# previous snapshot's entry of it (size, mtime and chunk hashes as raw bytes, or None), and the walk's
# lstat of it (size, inode, ctime). Kept as a record (:func:`pack_work`) until a reader takes it.
Prev = tuple[int, int, bytes]
Work = tuple[int, str, Prev | None, int, int, int]
# position, size, inode, ctime, has previous, previous size, previous mtime, path length, previous data length
_WORK = struct.Struct("<QqQqBqqII")
_WORK_SIZE = struct.Struct("<q")  # the size, 8 bytes into a work record


def pack_work(position: int, rel: str, prev: Entry | None, size: int, ino: int, ctime: int) -> bytes:
    path = rel.encode("utf-8", "surrogatepass")
    pdata = bytes.fromhex("".join(prev.chunks)) if prev is not None else b""
    return _WORK.pack(position, size, ino, ctime, prev is not None, prev.size if prev is not None else 0,
                      prev.mtime_ns if prev is not None else 0, len(path), len(pdata)) + path + pdata


def unpack_work(buf: Records, at: int) -> Work:
    m = buf.buffer
    position, size, ino, ctime, has_prev, psize, pmtime, plen, dlen = _WORK.unpack_from(m, at)
    at += _WORK.size
    rel = m[at:at + plen].decode("utf-8", "surrogatepass")
    prev = (psize, pmtime, m[at + plen:at + plen + dlen]) if has_prev else None
    return position, rel, prev, size, ino, ctime


def work_size(buf: mmap.mmap, at: int) -> int:
    """The size the walk saw of the file of the work record at ``at``."""
    return int(_WORK_SIZE.unpack_from(buf, at + 8)[0])
