"""Reading files of the mount straight from the store's chunks, through a small bounded cache.

A file's chunks differ in size (content-defined); the index records each one's length, so
:func:`chunk_starts` gives the offset each chunk starts at (no data read) and a read at any offset finds
its chunk by bisection. FUSE asks for 128 KiB at a time, so one chunk (about 1 MiB) serves several reads:
:class:`ChunkCache` keeps the last chunks read, verified, up to :data:`CACHE_BYTES`, and a chunk asked for
by several reads at once is read from the store once. A read that reaches into a chunk starts reading the
next ones in the background (:meth:`ChunkCache.prefetch`): a sequential reader (``cat``, ``tar``) finds
them decompressed and verified when it gets there. The small files of a directory are read ahead in
batches (:meth:`ChunkCache.prefetch_many`: one worker-thread call, in pack order). Nothing is written
anywhere: no temporary copies.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import trio

from ..store import ChunkReader, CorruptDataError, Store, StoreError

__all__ = ["CACHE_BYTES", "ChunkCache", "chunk_index", "chunk_starts", "known_starts"]

# The most bytes of chunks kept in memory: a few chunks for each of several files read at once (chunks
# are 1 MiB on average, 8 MiB at most with the default chunker).
CACHE_BYTES = 48 * 1024 * 1024
# Worker threads reading chunks at once: enough to keep a disk or a bucket busy for a few readers,
# while a tree being read (its own limiter) is never queued behind them.
READ_THREADS = 4


def chunk_starts(store: Store, chunks: Sequence[str]) -> list[int]:
    """The offset each of ``chunks`` starts at, then the file's size, from the index (blocking).

    Raises:
        StoreError: a chunk is not in the store.
    """
    starts = [0]
    for chunk in chunks:
        loc = store.locate(chunk)
        if loc is None:
            raise StoreError(f"chunk {chunk} is not in the store")
        starts.append(starts[-1] + loc.raw_length)
    return starts


def known_starts(store: Store, chunks: Sequence[str]) -> list[int] | None:
    """:func:`chunk_starts` from the index as loaded (no disk access: fine on the event loop), or None
    when a chunk is not known yet (then :func:`chunk_starts`, in a worker thread, reads new index files)."""
    starts = [0]
    for chunk in chunks:
        loc = store.index.lookup(chunk)
        if loc is None:
            return None
        starts.append(starts[-1] + loc.raw_length)
    return starts


def chunk_index(starts: Sequence[int], offset: int) -> int:
    """Which chunk holds byte ``offset`` (``starts`` from :func:`chunk_starts`); len - 1 past the end."""
    return bisect_right(starts, offset) - 1


def _where(store: Store, chunk: str) -> tuple[str, int]:
    loc = store.index.lookup(chunk)
    return ("", 0) if loc is None else (loc.pack, loc.offset)


class ChunkCache:
    """Verified chunks by hash, the most recently used kept up to ``limit`` bytes."""

    def __init__(self, store: Store, limit: int = CACHE_BYTES, threads: int = READ_THREADS) -> None:
        self._store = store
        self._limit = limit
        self._size = 0
        self._chunks: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(threads)
        # Idle ChunkReaders (each keeps a few pack files open between reads), at most one per thread of the
        # limiter: a reader is taken for one read and given back, so worker threads that come and go (Trio
        # ends idle ones) leave no open files behind.
        self._readers: list[ChunkReader] = []
        self._readers_lock = threading.Lock()
        self.reads = 0  # chunks read from the store (the rest came from the cache)

    @contextmanager
    def _reader(self) -> Iterator[ChunkReader]:
        """An idle reader (a new one when none is), given back afterwards."""
        with self._readers_lock:
            reader = self._readers.pop() if self._readers else self._store.reader()
        try:
            yield reader
        finally:
            with self._readers_lock:
                self._readers.append(reader)

    def _read(self, chunk: str) -> bytes:
        with self._reader() as reader:
            return reader.read(chunk)

    def _read_many(self, chunks: Sequence[str]) -> list[bytes | None]:
        # In pack order, so that a disk reads forward; a chunk that cannot be read is None (left for the
        # read that wants it to meet and report).
        order = sorted(range(len(chunks)), key=lambda i: _where(self._store, chunks[i]))
        out: list[bytes | None] = [None] * len(chunks)
        with self._reader() as reader:
            for i in order:
                try:
                    out[i] = reader.read(chunks[i])
                except StoreError:
                    pass
        return out

    def _keep(self, chunk: str, data: bytes) -> None:
        if len(data) <= self._limit and chunk not in self._chunks:
            self._chunks[chunk] = data
            self._size += len(data)
            while self._size > self._limit:
                _, old = self._chunks.popitem(last=False)
                self._size -= len(old)

    def wanted(self, chunk: str) -> bool:
        """Whether ``chunk`` is neither cached nor being read (worth reading ahead)."""
        return chunk not in self._chunks and chunk not in self._pending

    async def prefetch(self, chunk: str, expected: int) -> None:
        """Read ``chunk`` into the cache ahead of the reads that will want it; a failure is left for them
        to meet (and report)."""
        try:
            await self.get(chunk, expected)
        except StoreError:
            pass

    async def prefetch_many(self, chunks: Sequence[tuple[str, int]]) -> dict[str, bytes]:
        """Read several chunks (hash, expected length) into the cache in one worker-thread call: the
        small files a ``tar`` or ``cp -r`` will open next, read ahead without a thread hop per file.
        Chunks cached or being read already are skipped; failures are left for the reads to meet.
        Returns the chunks read, verified."""
        todo = {c: n for c, n in chunks if self.wanted(c)}
        got: dict[str, bytes] = {}
        if not todo:
            return got
        events = {c: trio.Event() for c in todo}
        self._pending.update(events)
        try:
            names = list(todo)
            results = await trio.to_thread.run_sync(self._read_many, names, limiter=self._limiter)
            self.reads += len(names)
            for chunk, data in zip(names, results, strict=True):
                if data is not None and len(data) == todo[chunk]:
                    self._keep(chunk, data)
                    got[chunk] = data
        finally:
            for chunk, event in events.items():
                del self._pending[chunk]
                event.set()
        return got

    def peek(self, chunk: str) -> bytes | None:
        """The cached bytes of ``chunk``, or None (not counted as a use)."""
        return self._chunks.get(chunk)

    async def get(self, chunk: str, expected: int) -> bytes:
        """The bytes of ``chunk`` (``expected`` long, as the index said when the file was opened).

        Raises:
            StoreError: it cannot be read; CorruptDataError: it is damaged (or not ``expected`` long).
        """
        while True:
            data = self._chunks.get(chunk)
            if data is not None:
                self._chunks.move_to_end(chunk)
                return data
            pending = self._pending.get(chunk)
            if pending is None:
                break
            await pending.wait()  # read by another request: take it from the cache (or read it, if it failed)
        done = self._pending[chunk] = trio.Event()
        try:
            data = await trio.to_thread.run_sync(self._read, chunk, limiter=self._limiter)
            self.reads += 1
            if len(data) != expected:
                raise CorruptDataError(f"chunk {chunk} is {len(data)} bytes, not {expected}")
            self._keep(chunk, data)
            return data
        finally:
            del self._pending[chunk]
            done.set()

    def close(self) -> None:
        """Drop the cached chunks and close the readers' pack files."""
        self._chunks.clear()
        self._size = 0
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
