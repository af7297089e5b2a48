"""Writing blobs: :class:`PackBuilder` (one pack being filled in ``tmp/``, then made durable and indexed)
and :class:`StoreWriter` (the blobs of one snapshot run, packed and sealed on a background thread).

Concurrency: several writers (one per snapshot run) may write at once; each keeps its unsealed blobs to
itself, so a cancelled run can never leave another run referencing data that was not made durable. A
pack's index is written only once the pack is durable, and ``Store.commit_snapshot`` writes a snapshot
file only once every pack and index it needs is.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import StoreError
from ._files import StoreFiles, write_all
from ._format import FLAG_ZSTD, PACK_MAGIC, IndexRecord, compressor, encode_index, hash_bytes, pack_tail
from ._index import Claims, MasterIndex

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["MAX_PENDING_SEALS", "PackBuilder", "StoreWriter"]

# Unsealed packs waiting for their fsync; a writer that gets further ahead waits (bounds dirty data).
MAX_PENDING_SEALS = 2


class PackBuilder:
    """A pack being filled in ``tmp/``. Only its owner touches it."""

    def __init__(self, files: StoreFiles) -> None:
        self._files = files
        self.tmp = files.tmp_name("pack")
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        write_all(self.fd, PACK_MAGIC)
        self.size = len(PACK_MAGIC)
        self.records: list[IndexRecord] = []
        self.hashes: list[str] = []

    def append(self, chunk: str, stored: bytes | bytearray | memoryview, raw_length: int, flags: int) -> None:
        """Append one blob as stored (compressed or not). Raises OSError."""
        write_all(self.fd, stored)
        self.records.append((bytes.fromhex(chunk), self.size, len(stored), raw_length, flags))
        self.hashes.append(chunk)
        self.size += len(stored)

    def install(self, index: MasterIndex, claims: Claims | None = None) -> str:
        """Make the pack durable and indexed: footer, fsync, rename into place, fsync the directory, then
        its index file. Returns the pack id; ``claims`` get it before the pack becomes visible, so a
        collector never takes it for an unreferenced pack. The caller then makes its blobs known to the
        index. Raises OSError."""
        files = self._files
        index_bytes = encode_index(self.records)
        write_all(self.fd, pack_tail(index_bytes))
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
        self._lock = threading.Lock()
        self._pending: dict[str, PackBuilder] = {}  # blobs not durable yet: visible to this run only
        self._current: PackBuilder | None = None
        self._unsealed: list[PackBuilder] = []
        self._seals: list[concurrent.futures.Future[int]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncsnap-seal")
        self._done = False
        self.data_bytes_added = 0  # stored bytes of new file content
        self.meta_bytes_added = 0  # stored bytes of new tree groups
        self.packs_written = 0
        # What a prune running meanwhile must not delete: blobs this run found already stored and did
        # not store again, and the packs it wrote (see _index.py).
        self._claims = self._index.open_claims()

    def has_chunk(self, chunk: str) -> bool:
        """Whether the blob is durable in the store or already added by this writer. A True answer for a
        blob of the store means this run relies on it: a prune running meanwhile keeps it."""
        return chunk in self._pending or self._index.use(chunk, self._claims)

    def add_chunk(self, chunk: str, data: bytes | bytearray | memoryview, *, metadata: bool = False) -> int:
        """Store ``data`` under its hash ``chunk`` unless already present.

        Compresses with zstd (level 1) and keeps the raw bytes when that is not smaller. Returns the
        stored bytes added (0 for a duplicate). ``data`` may be reused by the caller after the call.
        """
        if self.has_chunk(chunk):
            return 0
        raw_length = len(data)
        compressed = compressor().compress(data)  # outside the lock: zstd releases the GIL
        if len(compressed) < raw_length:
            stored: bytes | bytearray | memoryview = compressed
            flags = FLAG_ZSTD
        else:
            stored, flags = data, 0
        full: PackBuilder | None = None
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
                pack.append(chunk, stored, raw_length, flags)
            except OSError as exc:
                raise StoreError(f"cannot write to store {self._files.root}: {exc.strerror}") from exc
            self._pending[chunk] = pack
            if metadata:
                self.meta_bytes_added += len(stored)
            else:
                self.data_bytes_added += len(stored)
            if pack.size >= self._pack_size:
                full = pack
                self._current = None
        if full is not None:
            self._submit_seal(full)
        return len(stored)

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
        return pack.size

    def unsealed(self) -> tuple[int, int]:
        """(packs, bytes) not yet durable: what :meth:`finish` still has to write."""
        with self._lock:
            return len(self._unsealed), sum(p.size for p in self._unsealed)

    def finish(self, *, on_written: Callable[[int, int], None] | None = None,
               check: Callable[[], None] | None = None) -> None:
        """Seal the last pack and wait until every pack of this writer is durable and indexed."""
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
        if check is not None:
            check()

    def committed(self) -> None:
        """The snapshot file is durable: this run's claims end (see :meth:`MasterIndex.close_claims`)."""
        self._index.close_claims(self._claims)

    def abort(self) -> None:
        """Give up: discard unsealed packs. Packs already sealed stay (unreferenced, re-used later)."""
        with self._lock:
            self._done = True
            self._current = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for pack in self._unsealed:
                pack.discard()
            self._unsealed.clear()
            self._pending.clear()
        self._index.close_claims(self._claims)
