"""Writing blobs: :class:`PackBuilder` (one pack being filled in ``tmp/``, then made durable and indexed)
and :class:`StoreWriter` (the blobs of one snapshot run, packed and sealed on a background thread).

Concurrency: several writers (one per snapshot run) may write at once; each keeps its unsealed blobs to
itself, so a cancelled run can never leave another run referencing data that was not made durable. A
pack's index is written only once the pack is durable, and ``Store.commit_snapshot`` writes a snapshot
file only once every pack and index it needs is.

Writes: a pack's blobs are gathered in memory and written :data:`FLUSH_BYTES` at a time with one
``pwritev`` at their offset, by the worker whose blob filled the batch and outside the writer's lock (the
lock covers only placing a blob: its offset, its index record, a reference to its buffers); the seal
waits for such writes in flight, then writes the rest with the footer in one call, fsyncs and renames. A
16 MiB pack is five writes instead of one per blob (a small file's blob is ~3-60 KB). A blob's buffers
are kept as they are, never copied into a pack buffer: zstd's output, or the sealed parts, are new
objects; only a blob stored raw (not encrypted) is copied out of the reader's reused buffer, outside the
lock. Nothing changes for crash safety: a pack is only ever read once installed, after its fsync
(``_format.py``); a buffer lost in a crash belonged to a file in ``tmp/``, which the next writable open
removes.

Encryption (an encrypted store, see ``_crypto.py``): a blob is sealed right after it is compressed, in the
same worker thread and outside the lock, so sealing runs on every core as compression does; the index
(and the pack's copy of it) is sealed when the pack is installed.

Compression, chosen by measurement (CPU seconds of one thread over every chunk of the benchmark tree,
``bench/_tree.py``: 1.55 GiB, 20,948 chunks; and of 32,744 small files, 1-64 KiB, 1,039 MiB; stored MiB)::

    codec                         20k tree: s    MiB   ratio   small files: s   MiB   ratio
    zstd 3                                3.7   1009   1.58
    zstd 1 (before)                       2.8   1025   1.55                2.2    632   1.64
    zstd -1 (--fast=1, chosen)            2.5   1032   1.54                1.9    637   1.63
    zstd -3                               2.4   1038   1.53                1.9    643   1.62
    zstd -5                               2.4   1050   1.52                1.9    654   1.59
    zstd 1, skip if 4 KiB probe > 95%     2.5   1089   1.46                2.1    647   1.61
    lz4 block (lz4 4.4.5)                 1.4   1153   1.38                1.0    721   1.44

zstd already detects incompressible input quickly, so a probe (compress the first 4 KiB, skip the rest
when it does not shrink) saves at most 9% and stores 6% more: not kept. Negative levels take ~12% off
zstd's time for <1% more store; past -1 they store more for no further gain. lz4 halves the time for
13-14% more store (the best time x size product, but a new dependency, a new blob flag and a format
version; see the report of issue 14). A blob is stored raw when compressing does not make it smaller;
any zstd decoder reads every level (``FLAG_ZSTD``), so stores written with level 1 and -1 mix freely.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._early_upload import EarlyUploads
from ._errors import StoreError
from ._files import StoreFiles
from ._format import (
    COMPRESSION_LEVEL,
    FLAG_ZSTD,
    PACK_MAGIC,
    IndexRecord,
    compressor,
    encode_index,
    hash_bytes,
    pack_tail,
)
from ._index import Claims, MasterIndex

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["FLUSH_BYTES", "MAX_PENDING_SEALS", "PackBuilder", "StoreWriter"]

# Unsealed packs waiting for their fsync; a writer that gets further ahead waits (bounds dirty data).
MAX_PENDING_SEALS = 2
# A pack's buffer is written out once it holds this much: one system call per few MiB, and at most this
# much memory per pack being filled (plus the writes in flight, one per worker).
FLUSH_BYTES = 4 << 20

# zstd level for new blobs: ``--fast=1`` (``_format.COMPRESSION_LEVEL``, recorded in config.json; see
# the module docstring for the measurement).
ZSTD_LEVEL = COMPRESSION_LEVEL


# A blob's bytes as stored, or the buffers that make them up, in order.
Blob = bytes | bytearray | memoryview
# Buffers handed out to be written: (offset in the pack file, the buffers, in order).
Flush = tuple[int, list[Blob]]
# Buffers one pwritev takes at most (Linux: 1024).
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def _pwrite_all(fd: int, parts: list[Blob], offset: int) -> None:
    """Write ``parts`` one after the other at ``offset``: one ``pwritev`` per :data:`IOV_MAX` buffers,
    again from where a short write stopped."""
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i:i + IOV_MAX], offset)
        offset += n
        while n:
            head = views[i]
            if n >= head.nbytes:
                n -= head.nbytes
                i += 1
            else:
                views[i] = head[n:]
                n = 0


class PackBuilder:
    """A pack being filled in ``tmp/``. Its owner places blobs (:meth:`place`, one thread at a time);
    the buffers it hands out may be written (:meth:`write`) from any thread meanwhile."""

    def __init__(self, files: StoreFiles) -> None:
        self._files = files
        self.tmp = files.tmp_name("pack")
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._parts: list[Blob] = [PACK_MAGIC]  # placed, not handed out yet
        self._parts_bytes = len(PACK_MAGIC)
        self._parts_at = 0  # where they go in the file
        self.size = len(PACK_MAGIC)
        self.records: list[IndexRecord] = []
        self.hashes: list[str] = []
        self._writes = threading.Condition()
        self._in_flight = 0  # buffers handed out and not written yet
        self._failed: OSError | None = None

    def place(self, chunk: str, parts: tuple[Blob, ...], length: int, raw_length: int,
              flags: int) -> Flush | None:
        """Add one blob as stored (compressed or not, sealed or not), given as the buffers that make it up,
        in order, ``length`` bytes in all. They are kept until written, not copied: the caller must not
        change them afterwards. When :data:`FLUSH_BYTES` are placed, returns them for the caller to
        :meth:`write` (outside any lock of its own)."""
        self.records.append((bytes.fromhex(chunk), self.size, length, raw_length, flags))
        self.hashes.append(chunk)
        self._parts += parts
        self._parts_bytes += length
        self.size += length
        if self._parts_bytes < FLUSH_BYTES:
            return None
        out = (self._parts_at, self._parts)
        self._parts, self._parts_bytes, self._parts_at = [], 0, self.size
        with self._writes:
            self._in_flight += 1
        return out

    def write(self, flush: Flush) -> None:
        """Write a buffer :meth:`place` handed out. Raises OSError (and the pack can no longer be
        installed)."""
        offset, data = flush
        try:
            _pwrite_all(self.fd, data, offset)
        except OSError as exc:
            self._failed = exc
            raise
        finally:
            with self._writes:
                self._in_flight -= 1
                self._writes.notify_all()

    def _wait_writes(self) -> None:
        with self._writes:
            self._writes.wait_for(lambda: self._in_flight == 0)

    def append(self, chunk: str, stored: bytes, raw_length: int, flags: int) -> None:
        """Place one blob and write what is placed once it is :data:`FLUSH_BYTES` (for a single-threaded
        owner). Raises OSError."""
        flush = self.place(chunk, (stored,), len(stored), raw_length, flags)
        if flush is not None:
            self.write(flush)

    def install(self, index: MasterIndex, claims: Claims | None = None) -> str:
        """Make the pack durable and indexed: footer, fsync, rename into place, fsync the directory, then
        its index file. Returns the pack id; ``claims`` get it before the pack becomes visible, so a
        collector never takes it for an unreferenced pack. The caller then makes its blobs known to the
        index. Raises OSError."""
        files = self._files
        index_bytes = files.seal_index(encode_index(self.records))
        self._wait_writes()
        if self._failed is not None:
            raise self._failed
        self._parts.append(pack_tail(index_bytes))
        _pwrite_all(self.fd, self._parts, self._parts_at)
        self._parts = []
        files.step("pack:written")
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        files.step("pack:fsynced")
        pack_id = hash_bytes(index_bytes)
        index.claim_pack(pack_id, claims)
        files.install(self.tmp, files.pack_path(pack_id), "pack")
        files.write_durable(files.index_path(pack_id), index_bytes, "index")
        return pack_id

    def discard(self) -> None:
        self._wait_writes()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class StoreWriter:
    """Adds blobs for one snapshot run; thread-safe (several worker threads may add at once).

    Full packs are sealed (made durable and indexed) on a background thread while the workers go on
    hashing: fsync of a 16 MiB pack is disk-bound and overlaps with CPU work that way. Call
    :meth:`finish` (via :meth:`Store.commit_snapshot`) or :meth:`abort` exactly once. Use
    :meth:`Store.begin_write` to make one.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._files = store.files
        self._index = store.index
        self._pack_size = store.pack_size
        self._crypto = store.files.crypto
        self._lock = threading.Lock()
        self._pending: dict[str, PackBuilder] = {}  # blobs not durable yet: visible to this run only
        self._current: PackBuilder | None = None
        self._unsealed: list[PackBuilder] = []
        self._seals: list[concurrent.futures.Future[int]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncsnap-seal")
        self._done = False
        self._early: EarlyUploads | None = None  # an S3 store: packs sent as they are sealed
        self.data_bytes_added = 0  # stored bytes of new file content
        self.meta_bytes_added = 0  # stored bytes of new tree groups
        self.packs_written = 0
        # What a prune running meanwhile must not delete: blobs this run found already stored and did
        # not store again, and the packs it wrote (see _index.py).
        self._claims = self._index.open_claims()

    def upload_early(self) -> None:
        """An S3 store: send each pack to the bucket once sealed, during step 4 (``_early_upload.py``).
        Only while the run holds its shared lock in the bucket."""
        if self._store.remote is not None and self._early is None:
            self._early = EarlyUploads(self._store.remote)

    def stop_early_uploads(self) -> None:
        """Send no more packs early; wait for those in flight (before step 5 counts what is left)."""
        if self._early is not None:
            self._early.stop()

    def check_early_uploads(self) -> None:
        """Raise what ended early sending when the run cannot succeed anyway: the bucket refused the
        credentials (``store_auth``) or has no room (``store_full``). The run then ends in step 4 instead
        of after reading everything; an unreachable bucket is for step 5 to wait for."""
        failure = None if self._early is None else self._early.failure
        if failure is not None and failure.code in ("store_auth", "store_full"):
            raise StoreError(failure.message, code=failure.code)

    @property
    def sent_early(self) -> int:
        """Bytes of this run's packs (and their indexes) sent to the bucket during step 4."""
        return 0 if self._early is None else self._early.sent_bytes

    def has_chunk(self, chunk: str) -> bool:
        """Whether the blob is durable in the store or already added by this writer. A True answer for a
        blob of the store means this run relies on it: a prune running meanwhile keeps it."""
        return chunk in self._pending or self._index.use(chunk, self._claims)

    def add_chunk(self, chunk: str, data: bytes | bytearray | memoryview, *, metadata: bool = False) -> int:
        """Store ``data`` under its hash ``chunk`` unless already present.

        Compresses with zstd (:data:`ZSTD_LEVEL`) and keeps the raw bytes when that is not smaller; then,
        in an encrypted store, seals them. Returns the stored bytes added (0 for a duplicate). ``data`` may
        be reused by the caller after the call.
        """
        if self.has_chunk(chunk):
            return 0
        raw_length = len(data)
        compressed = compressor().compress(data)  # outside the lock: zstd releases the GIL
        flags = FLAG_ZSTD if len(compressed) < raw_length else 0
        stored: Blob = compressed if flags else data
        parts: tuple[Blob, ...]
        if self._crypto is not None:
            parts = self._crypto.seal_blob(chunk, stored)  # outside the lock too
        else:
            # The pack keeps the buffers until written: ``data`` is the caller's, to be reused.
            parts = (compressed,) if flags else (bytes(data),)
        stored_length = sum(memoryview(p).nbytes for p in parts)
        full: PackBuilder | None = None
        flush: Flush | None = None
        with self._lock:
            if self._done:
                raise StoreError("writer already finished or aborted")
            if self.has_chunk(chunk):
                return 0  # another worker stored the same data meanwhile
            pack = self._current
            try:
                if pack is None:
                    pack = self._current = PackBuilder(self._files)
                    self._unsealed.append(pack)
                flush = pack.place(chunk, parts, stored_length, raw_length, flags)
            except OSError as exc:
                raise StoreError(f"cannot write to store {self._files.root}: {exc.strerror}") from exc
            self._pending[chunk] = pack
            if metadata:
                self.meta_bytes_added += stored_length
            else:
                self.data_bytes_added += stored_length
            if pack.size >= self._pack_size:
                full = pack
                self._current = None
        if flush is not None:
            try:
                pack.write(flush)  # outside the lock: the other workers go on placing blobs meanwhile
            except OSError as exc:
                raise StoreError(f"cannot write to store {self._files.root}: {exc.strerror}") from exc
        if full is not None:
            self._submit_seal(full)
        return stored_length

    def _submit_seal(self, pack: PackBuilder) -> None:
        future = self._executor.submit(self._seal, pack)
        with self._lock:
            self._seals.append(future)
            seals = list(self._seals)
        for f in seals:
            if f.done() and f.exception() is not None:
                f.result()  # raise a failed seal's error in this worker now, not only at the end
        waiting = [f for f in seals if not f.done()]
        # Back-pressure: do not run further ahead of the disk than a few packs.
        if len(waiting) > MAX_PENDING_SEALS:
            waiting[0].result()

    def _seal(self, pack: PackBuilder) -> int:
        try:
            pack_id = pack.install(self._index, self._claims)
        except OSError as exc:
            raise StoreError(f"cannot write to store {self._files.root}: {exc.strerror or exc}") from exc
        self._index.add_pack(pack_id, pack.records)
        with self._lock:
            for h in pack.hashes:
                self._pending.pop(h, None)
            self._unsealed.remove(pack)
            self.packs_written += 1
        if self._early is not None:
            self._early.submit(pack_id)
        return pack.size

    def unsealed(self) -> tuple[int, int]:
        """(packs, bytes) not yet durable: what :meth:`finish` still has to write."""
        with self._lock:
            return len(self._unsealed), sum(p.size for p in self._unsealed)

    def finish(self, *, on_written: Callable[[int, int], None] | None = None,
               check: Callable[[], None] | None = None) -> None:
        """Seal the last pack and wait until every pack of this writer is durable and indexed; then send
        no more packs early (waiting for those in flight), so that step 5 counts and sends the rest."""
        with self._lock:
            last, self._current = self._current, None
            seals = list(self._seals)
        if last is not None:
            if check is not None:
                check()
            seals.append(self._executor.submit(self._seal, last))
        try:
            for f in seals:
                size = f.result()
                if on_written is not None:
                    on_written(1, size)
        finally:
            with self._lock:
                self._done = True
            self._executor.shutdown(wait=True)
            self.stop_early_uploads()
        if check is not None:
            check()

    def relied_missing(self) -> list[str]:
        """Blobs this writer found stored and relied on that the index no longer has (a prune on another
        machine deleted them while this run held no lock: see ``engine/_writing_lock.py``)."""
        return [c for c in list(self._claims.relied) if not self._index.has(c)]

    def committed(self) -> None:
        """The snapshot file is durable: this run's claims end (see :meth:`MasterIndex.close_claims`)."""
        self._index.close_claims(self._claims)

    def abort(self) -> None:
        """Give up: discard unsealed packs. Packs already sealed stay (unreferenced, re-used later)."""
        with self._lock:
            self._done = True
            self._current = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.stop_early_uploads()
        with self._lock:
            for pack in self._unsealed:
                pack.discard()
            self._unsealed.clear()
            self._pending.clear()
        self._index.close_claims(self._claims)
