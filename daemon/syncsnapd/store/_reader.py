"""Reading blobs: :class:`ChunkReader`, one per thread, keeping a few pack files open."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING

import zstandard

from ._errors import CorruptDataError, PackMissing, StoreError
from ._format import FLAG_ZSTD, ChunkLocation, decompressor

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["ChunkReader"]


class ChunkReader:
    """Reads blobs for one thread, keeping a few pack files open. Not thread-safe; close when done.

    A pack deleted by a prune after its location was looked up (its blobs moved to a new pack) is
    looked up again once: readers never see a prune's repacking. Packs of an S3 store that are not
    staged locally are read from the bucket.
    """

    _MAX_OPEN = 8

    def __init__(self, store: Store) -> None:
        self._store = store
        self._fds: OrderedDict[str, int] = OrderedDict()

    def _fd(self, pack: str) -> int:
        fd = self._fds.pop(pack, None)
        if fd is None:
            try:
                fd = os.open(self._store.pack_path(pack), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise PackMissing(pack) from None
            if len(self._fds) >= self._MAX_OPEN:
                _, old = self._fds.popitem(last=False)
                os.close(old)
        self._fds[pack] = fd
        return fd

    def read(self, chunk: str) -> bytes:
        """Return the uncompressed bytes of blob ``chunk``, verified against its hash (and, encrypted,
        authenticated first).

        Raises:
            StoreError: the blob is not in the store or its pack is missing.
            CorruptDataError: the stored bytes do not decode to data with that hash.
        """
        loc = self._store.locate(chunk)
        if loc is None:
            raise StoreError(f"chunk {chunk} is not in the store")
        try:
            return self.read_at(chunk, loc)
        except PackMissing:
            moved = self._store.locate_moved(loc.pack, chunk)
            if moved is None or moved.pack == loc.pack:
                raise
            return self.read_at(chunk, moved)

    def read_at(self, chunk: str, loc: ChunkLocation) -> bytes:
        """The verified bytes of ``chunk`` stored at ``loc`` (no index look-up).

        Raises:
            PackMissing: the pack is not there (a :class:`StoreError`).
            CorruptDataError: the stored bytes do not decode to data with that hash.
        """
        return self._read_verified(chunk, loc)[1]

    def read_stored(self, chunk: str, loc: ChunkLocation) -> bytes:
        """The bytes of ``chunk`` as stored at ``loc`` (compressed or not), after verifying that they
        decode to data with that hash (for copying a blob to another pack as it is)."""
        return self._read_verified(chunk, loc)[0]

    def _read_verified(self, chunk: str, loc: ChunkLocation) -> tuple[bytes, bytes]:
        raw = self._pread(loc)
        if len(raw) != loc.length:
            raise CorruptDataError(f"chunk {chunk} in pack {loc.pack} is truncated")
        crypto = self._store.files.crypto
        plain = raw
        if crypto is not None:
            # A blob that fails authentication is never decompressed, let alone used.
            plain = crypto.open_blob(chunk, raw, f"chunk {chunk} in pack {loc.pack}")
        if loc.flags & FLAG_ZSTD:
            try:
                data = decompressor().decompress(plain, max_output_size=loc.raw_length)
            except zstandard.ZstdError as exc:
                raise CorruptDataError(f"chunk {chunk} in pack {loc.pack} does not decompress") from exc
        else:
            data = plain
        if len(data) != loc.raw_length or self._store.chunk_id(data) != chunk:
            raise CorruptDataError(f"chunk {chunk} in pack {loc.pack} does not match its hash")
        return raw, bytes(data)

    def _pread(self, loc: ChunkLocation) -> bytes:
        try:
            fd = self._fd(loc.pack)
        except PackMissing:
            remote = self._store.remote
            if remote is None:
                raise
            try:
                return remote.read_range(loc.pack, loc.offset, loc.length)
            except FileNotFoundError:
                raise PackMissing(loc.pack) from None
        return os.pread(fd, loc.length, loc.offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
