"""The content-addressed store: pack files of compressed chunks, per-pack indexes, snapshot files.

On-disk format (version 1)
==========================

::

    store/
      config.json                  {"format": "syncsnap-store", "version": 1, "chunk_size": 1048576,
                                    "hash": "blake3", "compression": "zstd", "compression_level": 1,
                                    "pack_size": 16777216}
      lock                         flock'ed by the one writable opener; holds its pid (for the error message)
      tmp/                         temporary files; emptied by every writable open
      packs/<2hex>/<packid>.pack   chunks ("blobs"), back to back, plus a copy of the pack's index
      index/<packid>.idx           which blobs a pack holds, where, and how they are stored
      snapshots/<id>.json          one small file per snapshot; written last

**Blobs.** Every piece of stored data is a blob keyed by the blake3-256 hash (64 hex digits) of its
*uncompressed* bytes, so equal data is stored once, across files, snapshots and projects. A blob is
stored zstd-compressed (level 1) unless compression does not make it smaller; then it is stored raw
(flag bit 0 clear). File content is split into fixed 1 MiB chunks, so a large file changed in place only
stores the chunks that changed. The list of entries of a snapshot (its "tree") is stored as blobs too
(see below), in the same packs.

**Packs.** Blobs are appended to a pack of about 16 MiB (``pack_size``), so durability costs one fsync
per pack instead of one per file (an fsync of file + directory costs ~0.5 ms here; restic and borg pack
for the same reason). Layout::

    b"SYNPACK1" | blob | blob | ... | index copy (as in the .idx file) | u64 LE length of the copy | b"SYNPKEND"

The copy of the index at the end makes a pack self-describing: a writable open re-creates a missing
``.idx`` from it (the crash window between renaming a pack and writing its index).

**Index files** (little-endian)::

    b"SYNIDX01" | records of <32s hash, u64 offset, u32 stored length, u32 raw length, u8 flags> | blake3 of all before (32 bytes)

flags bit 0: zstd-compressed. The pack id is the blake3 hex digest of the index bytes: it is derived from
the hashes of everything the pack holds, so it names the content without hashing the whole pack.

**Trees.** A snapshot's entries are a list of ``[path, kind, size, mtime_ns, mode, inode, data]`` (see
:class:`Entry`), in walk order (a directory before its contents), cut into groups where the crc32 of a
path ends in 8 zero bits (about 256 entries per group). Each group is stored as a blob holding its JSON
(``ensure_ascii``, so names that are not UTF-8, held as ``surrogateescape`` strings, round-trip). Cuts
depend only on paths, so a snapshot where few files changed re-uses most groups of the previous one,
and an unchanged folder adds no tree data at all.

**Snapshot files** ``snapshots/<id>.json``: ``{"format": 1, "id", "project", "time", "root", "tree":
[group hashes], "stats": {...}, "checksum"}``, where ``checksum`` is the blake3 of the canonical JSON of
the rest. Ids sort by time: ``20261128T170102.123Z-a1b2c3`` (UTC start time, random suffix); they are safe
as file names and URL path segments.

Crash safety
============

Every pack, index and snapshot file is written under ``tmp/``, fsynced, renamed into place, and its
directory fsynced. A pack's index is written only once the pack is durable, and a snapshot file only once
every pack and index it needs is durable, so a snapshot exists exactly when its file does, and then all
of its data does. What a crash can leave: temporary files (removed by the next writable open), a pack
without index (re-indexed from its footer by the next writable open, which also re-creates a damaged
index file the same way), and packs no snapshot references (harmless; the next snapshot re-uses their
blobs, the next prune reclaims them).

Pruning
=======

:meth:`Store.forget` deletes snapshot files (never a pinned one, never a project's newest);
:class:`GarbageCollector` then deletes the blobs no snapshot references: whole packs when nothing in them
is used, and packs with at least :data:`REPACK_MIN_UNUSED` of unused bytes are *repacked* (their used
blobs copied, verified, into new packs). New packs and their indexes are durable before anything is
deleted; then all the old packs' index files are deleted (directory fsynced), then the pack files. A
crash at any point loses nothing a snapshot references: at worst a pack without index, which the next
writable open re-indexes (its blobs are then stored twice until the next prune).

Pruning is safe while snapshots are written, within this process: every :class:`StoreWriter` records the
blobs it found already stored and relied on (under the store lock, so the check and the record are one
step) and the packs it wrote. The collector decides under the same lock: it keeps everything any running
writer (or one that finished while the collector was reading the snapshots) wrote or relied on, and
removes the blobs it will delete from the index there and then, so a writer coming later cannot find them
and stores its own copy. A pack written again with the very same content (and so the same id) as one about
to be deleted is taken back from the collector. Unchanged files a snapshot takes from the project's
previous snapshot are covered by that snapshot, which is never forgotten. Other processes cannot prune:
a prune needs the writable open, which the daemon holds. Readers (restores, read-only opens) that looked a
blob up in a pack deleted since look it up again in the new indexes.

Concurrency
===========

One writable opener per store (``fcntl.flock`` on ``lock``). Within it, several :class:`StoreWriter`
(one per snapshot run) may write at once; each keeps its unsealed blobs to itself, so a cancelled run
can never leave another run referencing data that was not made durable. One :class:`GarbageCollector`
at a time may run beside them (see Pruning). Read-only opens take no lock and clean nothing; they see
snapshots written meanwhile by re-reading the index when a blob is unknown (and a pack's footer when it
has no index yet).

Checking
========

:class:`StoreCheck` verifies at two levels. The fast level reads every index, checks that every pack is
present with the size its index implies and intact header and footer, and reads every snapshot's list of
entries to check that every blob it references is stored. ``read_data`` also re-hashes every blob. Each
:class:`Problem` (missing or corrupt pack, index, chunk or snapshot file) carries the snapshots and files
it damages.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import blake3
import zstandard

from ._remote import Remote

FORMAT_NAME = "syncsnap-store"
FORMAT_VERSION = 1
# Fixed-size chunking: 1 MiB keeps a changed large file's re-stored share small while keeping per-chunk
# overhead (index record, hash call, compressor call) negligible next to the data.
CHUNK_SIZE = 1 << 20
# 16 MiB packs (restic's default): few enough files that fsync cost vanishes, small enough that the
# fsync of a full pack overlaps with hashing the next one.
PACK_SIZE = 16 << 20
COMPRESSION_LEVEL = 1
# Unsealed packs waiting for their fsync; a writer that gets further ahead waits (bounds dirty data).
MAX_PENDING_SEALS = 2
# A tree group ends after a path whose crc32 has these low bits all zero: about 256 entries per group.
TREE_CUT_MASK = 0xFF

_PACK_MAGIC = b"SYNPACK1"
_PACK_END = b"SYNPKEND"
_PACK_FOOTER = struct.Struct("<Q8s")
_IDX_MAGIC = b"SYNIDX01"
_IDX_RECORD = struct.Struct("<32sQIIB")
_FLAG_ZSTD = 1
_HASH_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
SNAPSHOT_ID_RE = re.compile(r"\A\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}\Z")

EntryKind = Literal["file", "dir", "symlink"]


class StoreError(Exception):
    """The store cannot be opened, read or written."""


class UnknownSnapshotError(StoreError):
    """No snapshot with the given id exists in the store."""


class CorruptDataError(StoreError):
    """Stored data does not match its hash or cannot be decoded."""


def refuse_on_remote(store: Store) -> None:
    """Deleting (forget, prune) is refused on an S3 store: without a lock object in the bucket, another
    machine may be writing a snapshot that relies on the data a prune would delete."""
    if store.remote is not None:
        raise StoreError(f"forgetting and pruning are not supported on an S3 store yet ({store.remote.description})"
                         "; another machine could be writing to it")


class Entry(NamedTuple):
    """One entry of a snapshot: a file, directory or symlink below the project folder.

    ``path`` is relative POSIX, held as an ``os.fsdecode`` string (non-UTF-8 bytes as lone surrogates).
    ``mode`` is the permission bits (``st_mode & 0o7777``). ``inode`` is 0 when the engine does not trust
    the entry for the incremental check (changed while read, or modified just before the snapshot), so
    the next snapshot reads the file again. ``data``: chunk hashes for a file, the target for a symlink,
    ``None`` for a directory. Sizes of directories are recorded as 0.
    """

    path: str
    kind: str
    size: int
    mtime_ns: int
    mode: int
    inode: int
    data: list[str] | str | None

    @property
    def chunks(self) -> list[str]:
        """The chunk hashes of a file entry (empty for other kinds)."""
        return self.data if isinstance(self.data, list) else []

    @property
    def target(self) -> str:
        """The target of a symlink entry."""
        if not isinstance(self.data, str):
            raise ValueError(f"entry {self.path!r} is not a symlink")
        return self.data


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as listed (docs/api.md SNAPSHOT_INFO)."""

    id: str
    project: str
    time: str
    files: int
    bytes: int
    files_new: int
    files_changed: int
    files_unchanged: int
    bytes_added: int
    duration_seconds: float
    warnings: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SnapshotStats:
    """What the engine reports about a run; stored in the snapshot file."""

    files: int = 0
    bytes: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    bytes_added: int = 0
    duration_seconds: float = 0.0
    warnings: int = 0
    skipped: int = 0
    dirs: int = 0
    symlinks: int = 0


# How many affected paths a check keeps per snapshot and problem (the counts are always complete).
DAMAGE_PATHS = 10


@dataclass(frozen=True)
class Damage:
    """What one problem costs one snapshot: ``files`` that cannot be fully restored (the first few of
    them in ``paths``), and ``listing`` when part of the snapshot's list of entries itself is lost (the
    files listed in that part are then unknown and not counted)."""

    snapshot: str
    files: int = 0
    paths: tuple[str, ...] = ()
    listing: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "files": self.files, "paths": list(self.paths),
                "listing": self.listing}


@dataclass(frozen=True)
class Problem:
    """One damaged or missing object found by :meth:`Store.check`.

    ``object`` is ``pack``, ``index``, ``chunk`` or ``snapshot``; ``id`` its hash or snapshot id;
    ``pack`` the pack a damaged chunk is in; ``detail`` what is wrong, in words; ``damages`` the
    snapshots (and files) that cannot be fully restored because of it.
    """

    kind: Literal["missing", "corrupt"]
    object: Literal["pack", "index", "chunk", "snapshot"]
    id: str
    detail: str = ""
    pack: str | None = None
    damages: tuple[Damage, ...] = ()

    def __str__(self) -> str:
        where = f" in pack {self.pack}" if self.pack else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}: {self.object} {self.id}{where}{detail}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "object": self.object, "id": self.id, "pack": self.pack,
                "detail": self.detail, "damages": [d.to_json() for d in self.damages]}


@dataclass(frozen=True)
class DamagedSnapshot:
    """A snapshot that cannot be fully restored because of the problems found (all problems together).

    ``listing`` is True when (part of) its list of entries itself is lost: then the files in that part
    are unknown and not counted in ``files``.
    """

    id: str
    files: int
    paths: tuple[str, ...]  # the first few affected paths
    listing: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.id, "files": self.files, "paths": list(self.paths), "listing": self.listing}


@dataclass
class CheckReport:
    """The result of :meth:`Store.check`. ``ok`` when no problem was found."""

    problems: list[Problem] = field(default_factory=list)
    damaged: list[DamagedSnapshot] = field(default_factory=list)
    read_data: bool = True
    snapshots: int = 0
    packs: int = 0
    chunks: int = 0
    bytes_read: int = 0
    unindexed_packs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "read_data": self.read_data, "snapshots": self.snapshots, "packs": self.packs,
                "chunks": self.chunks, "bytes_read": self.bytes_read, "unindexed_packs": self.unindexed_packs,
                "problems": [p.to_json() for p in self.problems],
                "damaged": [d.to_json() for d in self.damaged]}


class ChunkLocation(NamedTuple):
    pack: str
    offset: int
    length: int
    raw_length: int
    flags: int


@dataclass
class _SnapshotRecord:
    info: SnapshotInfo
    root: str
    tree: list[str]
    skipped: int


_tls = threading.local()


def _compressor() -> Any:
    # zstd contexts are not thread-safe; one per thread is reused for every chunk (allocation is costly).
    c = getattr(_tls, "cctx", None)
    if c is None:
        c = _tls.cctx = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
    return c


def _decompressor() -> Any:
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """The store's content hash: blake3-256 as 64 lowercase hex digits."""
    return blake3.blake3(data).hexdigest()


def make_snapshot_id(when: datetime | None = None) -> str:
    """A new snapshot id that sorts by time, e.g. ``20261128T170102.123Z-a1b2c3``."""
    when = when or datetime.now(UTC)
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}.{when.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def _snapshot_time(snapshot_id: str) -> str:
    d, t = snapshot_id[:8], snapshot_id[9:19]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}Z"


def tree_groups(entries: Sequence[Entry]) -> Iterator[Sequence[Entry]]:
    """Cut the entry list into groups at content-defined points (paths whose crc32 ends in zero bits)."""
    start = 0
    crc32 = zlib.crc32
    for i, e in enumerate(entries):
        if crc32(e.path.encode("utf-8", "surrogatepass")) & TREE_CUT_MASK == 0:
            yield entries[start:i + 1]
            start = i + 1
    if start < len(entries):
        yield entries[start:]


def encode_tree_group(group: Sequence[Entry]) -> bytes:
    # Canonical JSON: same entries, same bytes, same hash. ensure_ascii keeps lone surrogates intact.
    return json.dumps(group, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode_tree_group(data: bytes) -> list[Entry]:
    make = Entry._make
    return [make(e) for e in json.loads(data)]


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_index(records: Sequence[tuple[bytes, int, int, int, int]]) -> bytes:
    body = bytearray(_IDX_MAGIC)
    pack = _IDX_RECORD.pack
    for r in records:
        body += pack(*r)
    body += blake3.blake3(body).digest()
    return bytes(body)


def _decode_index(data: bytes) -> list[tuple[bytes, int, int, int, int]]:
    if len(data) < len(_IDX_MAGIC) + 32 or not data.startswith(_IDX_MAGIC):
        raise CorruptDataError("bad index header")
    body, digest = data[:-32], data[-32:]
    if blake3.blake3(body).digest() != digest:
        raise CorruptDataError("index checksum mismatch")
    payload = memoryview(body)[len(_IDX_MAGIC):]
    if len(payload) % _IDX_RECORD.size:
        raise CorruptDataError("index length is not a whole number of records")
    return list(_IDX_RECORD.iter_unpack(payload))


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode("ascii")


class _PackMissing(StoreError):
    """A pack named by the index is not on disk (deleted by a prune since the index was read, or lost)."""

    def __init__(self, pack: str) -> None:
        super().__init__(f"pack {pack} is missing from the store")
        self.pack = pack


class ChunkReader:
    """Reads blobs for one thread, keeping a few pack files open. Not thread-safe; close when done.

    A pack deleted by a prune after its location was looked up (its blobs moved to a new pack) is
    looked up again once: readers never see a prune's repacking.
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
                raise _PackMissing(pack) from None
            if len(self._fds) >= self._MAX_OPEN:
                _, old = self._fds.popitem(last=False)
                os.close(old)
        self._fds[pack] = fd
        return fd

    def read(self, chunk: str) -> bytes:
        """Return the uncompressed bytes of blob ``chunk``, verified against its hash.

        Raises:
            StoreError: the blob is not in the store or its pack is missing.
            CorruptDataError: the stored bytes do not decode to data with that hash.
        """
        loc = self._store.locate(chunk)
        if loc is None:
            raise StoreError(f"chunk {chunk} is not in the store")
        try:
            return self.read_at(chunk, loc)
        except _PackMissing:
            moved = self._store._forget_pack(loc.pack, chunk)
            if moved is None or moved.pack == loc.pack:
                raise
            return self.read_at(chunk, moved)

    def read_at(self, chunk: str, loc: ChunkLocation) -> bytes:
        """The verified bytes of ``chunk`` stored at ``loc`` (no index look-up)."""
        return self._read_verified(chunk, loc)[1]

    def read_stored(self, chunk: str, loc: ChunkLocation) -> bytes:
        """The bytes of ``chunk`` as stored at ``loc`` (compressed or not), after verifying that they
        decode to data with that hash (for copying a blob to another pack as it is)."""
        return self._read_verified(chunk, loc)[0]

    def _read_verified(self, chunk: str, loc: ChunkLocation) -> tuple[bytes, bytes]:
        raw = self._pread(loc)
        if len(raw) != loc.length:
            raise CorruptDataError(f"chunk {chunk} in pack {loc.pack} is truncated")
        if loc.flags & _FLAG_ZSTD:
            try:
                data = _decompressor().decompress(raw, max_output_size=loc.raw_length)
            except zstandard.ZstdError as exc:
                raise CorruptDataError(f"chunk {chunk} in pack {loc.pack} does not decompress") from exc
        else:
            data = raw
        if len(data) != loc.raw_length or hash_bytes(data) != chunk:
            raise CorruptDataError(f"chunk {chunk} in pack {loc.pack} does not match its hash")
        return raw, bytes(data)

    def _pread(self, loc: ChunkLocation) -> bytes:
        try:
            fd = self._fd(loc.pack)
        except _PackMissing:
            remote = self._store.remote
            if remote is None:
                raise
            try:
                return remote.read_range(loc.pack, loc.offset, loc.length)
            except FileNotFoundError:
                raise _PackMissing(loc.pack) from None
        return os.pread(fd, loc.length, loc.offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    """An open store. Methods are synchronous and thread-safe; call them from worker threads.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, root: Path, writable: bool, config: dict[str, Any], lock_fd: int | None) -> None:
        self.root = root
        self.writable = writable
        self.chunk_size: int = config["chunk_size"]
        self.pack_size: int = config["pack_size"]
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._index: dict[str, ChunkLocation] = {}
        self._loaded_indexes: set[str] = set()
        # Only the small listing is cached (snapshot files never change); a snapshot's tree list is
        # read from its file when needed, so memory does not grow with history x folder size.
        self._snapshots: dict[str, SnapshotInfo] = {}
        # Crash tests set this to a function called at every durable-write step (see tests/_store_helpers).
        self._fault: Callable[[str], None] | None = None
        self._closed = False
        # Coordination with prune (see "Pruning" in the module docstring). Under self._lock: the writers
        # running, the collector in progress, and snapshots pinned by readers (restore, diff).
        self._writers: set[StoreWriter] = set()
        self._gc: GarbageCollector | None = None
        self._pins: dict[str, int] = {}
        # Packs a prune is about to delete; a writer that seals a pack with the same id (same content)
        # takes it back. Guarded by self._pack_lock, which also covers each pack's deletion.
        self._doomed: set[str] = set()
        self._pack_lock = threading.Lock()
        # The bucket behind this store when its directory is the staging and cache of an S3 store
        # (see _remote.py); None for a local store.
        self.remote: Remote | None = None

    # --- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, *, writable: bool) -> Store:
        """Open the store at ``root``.

        A writable open creates the store if ``root`` is missing or empty, takes the exclusive lock,
        removes leftover temporary files and re-indexes packs whose index was not written. A read-only
        open needs an existing store and changes nothing on disk.

        A directory marked by ``remote.json`` is the staging and cache directory of an S3 store (see
        ``_remote.py``): opening first syncs its cached metadata with the bucket (creating the store
        there, writable, when missing), and ``self.remote`` is set.

        Raises:
            StoreError: not a store, unsupported version, or (writable) in use by another process.
        """
        root = Path(root)
        try:
            return cls._open(root, writable)
        except OSError as exc:
            raise StoreError(f"cannot open store {root}: {exc.strerror or exc}") from exc

    @classmethod
    def _open(cls, root: Path, writable: bool) -> Store:
        # An S3 store: sync the cached metadata with the bucket first (creates the store there if needed).
        remote = Remote.attach(root, writable=writable)
        try:
            return cls._open_local(root, writable, remote)
        except BaseException:
            if remote is not None:
                remote.close()
            raise

    @classmethod
    def _open_local(cls, root: Path, writable: bool, remote: Remote | None) -> Store:
        config_path = root / "config.json"
        if writable and not config_path.exists():
            cls._create(root)
        try:
            config = json.loads(config_path.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"{root} is not a syncsnap store (no config.json)") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the store configuration {config_path}: {exc}") from exc
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise StoreError(f"{root} is not a syncsnap store")
        if config.get("version") != FORMAT_VERSION:
            raise StoreError(f"store {root} has format version {config.get('version')}, "
                             f"this syncsnapd reads version {FORMAT_VERSION}")
        lock_fd = None
        if writable:
            for sub in ("tmp", "packs", "index", "snapshots"):
                (root / sub).mkdir(exist_ok=True)
            lock_fd = cls._take_lock(root)
        store = cls(root, writable, config, lock_fd)
        store.remote = remote
        try:
            if writable:
                store._clean_tmp()
                store._reindex_orphan_packs()
            store._refresh_index()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _create(root: Path) -> None:
        # A crash during creation can leave tmp/ behind; anything else means this is someone's data.
        if root.exists() and {p.name for p in root.iterdir()} - {"tmp"}:
            raise StoreError(f"{root} is not empty and not a syncsnap store")
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "chunk_size": CHUNK_SIZE,
                  "hash": "blake3", "compression": "zstd", "compression_level": COMPRESSION_LEVEL,
                  "pack_size": PACK_SIZE}
        tmp = root / "tmp" / f"config.json.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, json.dumps(config, indent=1).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, root / "config.json")
        _fsync_dir(root)

    @staticmethod
    def _take_lock(root: Path) -> int:
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise StoreError(f"store {root} is in use by another syncsnapd (pid {pid})") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _clean_tmp(self) -> None:
        # Only a writable opener gets here, under the lock, so nobody else is writing temporary files.
        for p in (self.root / "tmp").iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def _reindex_orphan_packs(self) -> None:
        # A crash between renaming a pack into place and writing its index (or a prune's crash between
        # deleting a pack's index and the pack) leaves a durable pack that no index names. Its footer
        # holds the index; write it out so its blobs are found again. A damaged index file is re-created
        # the same way.
        for pack_id, index_bytes in self._orphan_footers(repair_damaged=True):
            self._write_durable(self.root / "index" / f"{pack_id}.idx", index_bytes, "reindex")

    def _orphan_footers(self, *, repair_damaged: bool = False) -> Iterator[tuple[str, bytes]]:
        """(pack id, index bytes) from the footers of packs that have no (readable) index file."""
        indexed = {n[:-4] for n in os.listdir(self.root / "index") if n.endswith(".idx")}
        if repair_damaged:
            for pack in list(indexed):
                try:
                    data = (self.root / "index" / f"{pack}.idx").read_bytes()
                    _decode_index(data)
                    if hash_bytes(data) != pack:
                        raise CorruptDataError("name mismatch")
                except (OSError, CorruptDataError):
                    indexed.discard(pack)
        for pack_path in (self.root / "packs").glob("*/*.pack"):
            pack_id = pack_path.name[:-5]
            if pack_id in indexed:
                continue
            try:
                index_bytes = self._read_pack_footer(pack_path)
                _decode_index(index_bytes)
            except (OSError, CorruptDataError):
                continue  # not readable: leave it for `check`, no snapshot can reference it
            if hash_bytes(index_bytes) == pack_id:
                yield pack_id, index_bytes

    @staticmethod
    def _read_pack_footer(pack_path: Path) -> bytes:
        with open(pack_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < len(_PACK_MAGIC) + _PACK_FOOTER.size:
                raise CorruptDataError("pack too short")
            f.seek(size - _PACK_FOOTER.size)
            length, end = _PACK_FOOTER.unpack(f.read(_PACK_FOOTER.size))
            if end != _PACK_END or length > size - len(_PACK_MAGIC) - _PACK_FOOTER.size:
                raise CorruptDataError("bad pack footer")
            f.seek(size - _PACK_FOOTER.size - length)
            return f.read(length)

    def close(self) -> None:
        """Release the lock (writable) and forget cached state. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
        if self.remote is not None:
            self.remote.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- packs wherever they are (staged here, or in the bucket) --------------------------------------

    def _pack_sizes(self) -> dict[str, int]:
        """Every pack file with its size: here, and (S3 store) in the bucket, listed now."""
        sizes = {} if self.remote is None else self.remote.pack_sizes()
        for p in (self.root / "packs").glob("*/*.pack"):
            with contextlib.suppress(FileNotFoundError):
                sizes[p.name[:-5]] = p.stat().st_size
        return sizes

    def _pack_footer(self, pack: str) -> bytes:
        """The index copy at the end of a pack (local, else in the bucket)."""
        path = self.pack_path(pack)
        if self.remote is None or path.exists():
            return self._read_pack_footer(path)
        size = self.remote.pack_sizes().get(pack)
        if size is None:
            raise FileNotFoundError(pack)
        tail = self.remote.read_range(pack, size - _PACK_FOOTER.size, _PACK_FOOTER.size)
        length, end = _PACK_FOOTER.unpack(tail) if len(tail) == _PACK_FOOTER.size else (0, b"")
        if end != _PACK_END or length > size - len(_PACK_MAGIC) - _PACK_FOOTER.size:
            raise CorruptDataError("bad pack footer")
        return self.remote.read_range(pack, size - _PACK_FOOTER.size - length, length)

    def _pack_frame_ok(self, pack: str, index_bytes: bytes, size: int) -> bool:
        path = self.pack_path(pack)
        if self.remote is None or path.exists():
            return _pack_frame_ok(path, index_bytes)
        try:
            head = self.remote.read_range(pack, 0, len(_PACK_MAGIC))
            tail_len = len(index_bytes) + _PACK_FOOTER.size
            tail = self.remote.read_range(pack, size - tail_len, tail_len)
        except (OSError, StoreError):
            return False
        return head == _PACK_MAGIC and tail == index_bytes + _PACK_FOOTER.pack(len(index_bytes), _PACK_END)

    # --- paths and index ---------------------------------------------------------------------------

    def pack_path(self, pack: str) -> Path:
        return self.root / "packs" / pack[:2] / f"{pack}.pack"

    def _refresh_index(self) -> None:
        """Load index files not loaded yet (written by this process or, read-only, by the daemon)."""
        try:
            names = [n for n in os.listdir(self.root / "index") if n.endswith(".idx")]
        except FileNotFoundError:
            return
        for name in names:
            pack = name[:-4]
            if pack in self._loaded_indexes:
                continue
            try:
                records = _decode_index((self.root / "index" / name).read_bytes())
            except (OSError, CorruptDataError):
                continue  # `check` reports it; its blobs count as missing meanwhile
            self._add_to_index(pack, records)

    def _add_to_index(self, pack: str, records: Iterable[tuple[bytes, int, int, int, int]]) -> None:
        with self._lock:
            index = self._index
            for h, off, length, raw, flags in records:
                index.setdefault(h.hex(), ChunkLocation(pack, off, length, raw, flags))
            self._loaded_indexes.add(pack)

    def has_chunk(self, chunk: str) -> bool:
        """Whether a durable blob with this hash is in the store (as last loaded; no disk access)."""
        # A dict lookup is atomic under the GIL; writers mutate under self._lock.
        return chunk in self._index

    def locate(self, chunk: str) -> ChunkLocation | None:
        loc = self._index.get(chunk)
        if loc is None:
            self._refresh_index()
            loc = self._index.get(chunk)
            if loc is None and not self.writable:
                # A read-only opener may look at a pack whose index the daemon has not written yet (or
                # that a crash left without one): its footer holds the same records.
                for pack_id, index_bytes in self._orphan_footers():
                    if pack_id not in self._loaded_indexes:
                        self._add_to_index(pack_id, _decode_index(index_bytes))
                loc = self._index.get(chunk)
        return loc

    def _forget_pack(self, pack: str, chunk: str) -> ChunkLocation | None:
        """A pack named by the index is gone: drop its locations, re-read the indexes (a prune writes the
        blobs it moved into new packs, with their indexes, before it deletes the old ones), and return
        where ``chunk`` is now, if anywhere."""
        gone = not (self.root / "index" / f"{pack}.idx").exists()
        with self._lock:
            if self._index.get(chunk, ChunkLocation("", 0, 0, 0, 0)).pack == pack:
                for h in [h for h, loc in self._index.items() if loc.pack == pack]:
                    del self._index[h]
                if gone:
                    self._loaded_indexes.discard(pack)
        return self.locate(chunk)

    def read_chunk(self, chunk: str) -> bytes:
        """Return the verified, uncompressed bytes of a blob. For many reads use :class:`ChunkReader`."""
        with ChunkReader(self) as reader:
            return reader.read(chunk)

    def reader(self) -> ChunkReader:
        """A :class:`ChunkReader` for this thread (keeps pack files open between reads)."""
        return ChunkReader(self)

    # --- snapshots ----------------------------------------------------------------------------------

    def _parse_snapshot(self, snapshot_id: str, data: bytes) -> _SnapshotRecord:
        try:
            doc = json.loads(data)
            checksum = doc.pop("checksum")
            if hash_bytes(_canonical(doc)) != checksum or doc.get("id") != snapshot_id:
                raise ValueError("checksum mismatch")
            stats = doc["stats"]
            info = SnapshotInfo(
                id=snapshot_id, project=doc["project"], time=doc["time"], files=stats["files"],
                bytes=stats["bytes"], files_new=stats["files_new"], files_changed=stats["files_changed"],
                files_unchanged=stats["files_unchanged"], bytes_added=stats["bytes_added"],
                duration_seconds=stats["duration_seconds"], warnings=stats["warnings"],
            )
            tree = [str(h) for h in doc["tree"]]
            return _SnapshotRecord(info, str(doc["root"]), tree, int(stats.get("skipped", 0)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptDataError(f"snapshot file {snapshot_id}.json is damaged") from exc

    def _scan_snapshots(self, problems: list[Problem] | None = None) -> dict[str, SnapshotInfo]:
        try:
            names = os.listdir(self.root / "snapshots")
        except FileNotFoundError:
            names = []
        present: set[str] = set()
        for name in names:
            sid = name[:-5]
            if not name.endswith(".json") or not SNAPSHOT_ID_RE.match(sid):
                continue
            present.add(sid)
            if sid in self._snapshots:
                continue
            try:
                record = self._read_snapshot(sid)
            except FileNotFoundError:
                present.discard(sid)  # forgotten by a prune meanwhile
                continue
            except (OSError, CorruptDataError):
                if problems is not None:
                    problems.append(Problem("corrupt", "snapshot", sid, "the snapshot file is damaged"))
                continue
            with self._lock:
                self._snapshots[sid] = record.info
        with self._lock:
            for sid in [sid for sid in self._snapshots if sid not in present]:
                del self._snapshots[sid]  # forgotten (by a prune here or in the daemon)
            return dict(self._snapshots)

    def _read_snapshot(self, snapshot_id: str) -> _SnapshotRecord:
        return self._parse_snapshot(snapshot_id, (self.root / "snapshots" / f"{snapshot_id}.json").read_bytes())

    def list_snapshots(self, project: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of ``project`` (all projects if None), oldest first."""
        infos = self._scan_snapshots()
        return [infos[sid] for sid in sorted(infos) if project is None or infos[sid].project == project]

    def latest(self, project: str) -> SnapshotInfo | None:
        """The most recent snapshot of ``project``, or None."""
        snaps = self.list_snapshots(project)
        return snaps[-1] if snaps else None

    def _record(self, snapshot_id: str) -> _SnapshotRecord:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise UnknownSnapshotError(f"{snapshot_id!r} is not a snapshot id")
        try:
            return self._read_snapshot(snapshot_id)
        except FileNotFoundError:
            raise UnknownSnapshotError(f"no snapshot {snapshot_id} in store {self.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot read snapshot {snapshot_id}: {exc.strerror}") from exc

    def snapshot_root(self, snapshot_id: str) -> str:
        """The folder path the snapshot was taken of."""
        return self._record(snapshot_id).root

    def load_entries(self, snapshot_id: str) -> list[Entry]:
        """All entries of a snapshot, a directory always before its contents.

        Raises:
            UnknownSnapshotError: no such snapshot.
            StoreError: its tree data is missing or damaged.
        """
        record = self._record(snapshot_id)
        entries: list[Entry] = []
        with self.reader() as reader:
            for h in record.tree:
                entries.extend(decode_tree_group(reader.read(h)))
        return entries

    # --- writing ------------------------------------------------------------------------------------

    def _step(self, label: str) -> None:
        if self._fault is not None:
            self._fault(label)

    def _write_durable(self, final: Path, data: bytes, label: str) -> None:
        """Write a whole file atomically and durably: tmp, fsync, rename, fsync directory."""
        tmp = self.root / "tmp" / f"{final.name}.{secrets.token_hex(4)}"
        self._step(f"{label}:open")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data)
            self._step(f"{label}:written")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._step(f"{label}:fsynced")
        os.rename(tmp, final)
        self._step(f"{label}:renamed")
        _fsync_dir(final.parent)
        self._step(f"{label}:dirsynced")

    def begin_write(self) -> StoreWriter:
        """Start writing blobs for one snapshot run. See :class:`StoreWriter`."""
        if not self.writable:
            raise StoreError(f"store {self.root} is open read-only")
        writer = StoreWriter(self)
        with self._lock:
            self._writers.add(writer)
        return writer

    def _writer_done(self, writer: StoreWriter) -> None:
        """A writer committed its snapshot (its file is durable) or gave up. A collector that is still
        marking may have listed the snapshots before that file existed: it keeps protecting what this
        writer wrote and relied on until it has decided what to delete."""
        with self._lock:
            if writer in self._writers:
                self._writers.discard(writer)
                if self._gc is not None and self._gc._marking:
                    self._gc._retired.append(writer)

    def _use_chunk(self, chunk: str, relied: set[str]) -> bool:
        """Whether the blob is durable in the store; if so, record that the caller relies on it.

        Under the store lock, so that a collector deciding what to delete either sees the record, or
        has already removed the blob from the index and the caller stores its own copy.
        """
        with self._lock:
            if chunk in self._index:
                relied.add(chunk)
                return True
            return False

    def _install_pack(self, pack: _OpenPack, owner: set[str] | None = None) -> str:
        """Make a filled pack durable and indexed: footer, fsync, rename into place, fsync the directory,
        then its index file. Returns the pack id; ``owner`` (a writer's set of packs) gets the id before
        the pack becomes visible, so a collector never takes it for an unreferenced pack."""
        index_bytes = _encode_index(pack.records)
        _write_all(pack.fd, index_bytes + _PACK_FOOTER.pack(len(index_bytes), _PACK_END))
        self._step("pack:written")
        os.fsync(pack.fd)
        os.close(pack.fd)
        pack.fd = -1
        self._step("pack:fsynced")
        pack_id = hash_bytes(index_bytes)
        if owner is not None:
            with self._lock:
                owner.add(pack_id)
        with self._pack_lock:
            # Same id, same bytes: a pack a prune is about to delete has just been written again (the
            # same blobs, in the same order). It stays.
            self._doomed.discard(pack_id)
        final = self.pack_path(pack_id)
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            _fsync_dir(final.parent.parent)
            self._step("packdir:dirsynced")
        os.rename(pack.tmp, final)
        self._step("pack:renamed")
        _fsync_dir(final.parent)
        self._step("pack:dirsynced")
        self._write_durable(self.root / "index" / f"{pack_id}.idx", index_bytes, "index")
        return pack_id

    def _relocate(self, pack: str, records: Iterable[tuple[bytes, int, int, int, int]]) -> None:
        """Point the index at the copies of blobs a prune has just made durable in ``pack``."""
        with self._lock:
            for h, off, length, raw, flags in records:
                self._index[h.hex()] = ChunkLocation(pack, off, length, raw, flags)
            self._loaded_indexes.add(pack)

    # --- pins and forgetting -----------------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self, snapshot_ids: Iterable[str]) -> Iterator[None]:
        """Keep these snapshots (and so their data) from being forgotten while the block runs: a
        restore or diff reading them is never cut short by a prune."""
        ids = list(snapshot_ids)
        with self._lock:
            for sid in ids:
                self._pins[sid] = self._pins.get(sid, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for sid in ids:
                    n = self._pins[sid] - 1
                    if n:
                        self._pins[sid] = n
                    else:
                        del self._pins[sid]

    def forget(self, snapshot_ids: Iterable[str]) -> list[str]:
        """Delete these snapshots' files (their data stays until :meth:`collect_garbage`).

        Never forgets a pinned snapshot, nor the newest snapshot of a project: a running snapshot re-uses
        the newest one's blobs for unchanged files without reading them again (retention policies always
        keep it anyway). Returns the ids actually forgotten.
        """
        if not self.writable:
            raise StoreError(f"store {self.root} is open read-only")
        refuse_on_remote(self)
        infos = self._scan_snapshots()
        newest: dict[str, str] = {}
        for sid in sorted(infos):
            newest[infos[sid].project] = sid
        keep = set(newest.values())
        gone: list[str] = []
        try:
            for sid in sorted(set(snapshot_ids)):
                if sid in keep or sid not in infos:
                    continue
                with self._lock:
                    # Under the lock: a restore pinning this snapshot now either comes first (and it
                    # stays) or finds it gone.
                    if sid in self._pins:
                        continue
                    try:
                        os.unlink(self.root / "snapshots" / f"{sid}.json")
                    except FileNotFoundError:
                        pass
                    self._snapshots.pop(sid, None)
                gone.append(sid)
                self._step("forget:unlinked")
            if gone:
                _fsync_dir(self.root / "snapshots")
                self._step("forget:dirsynced")
        except OSError as exc:
            raise StoreError(f"cannot write to store {self.root}: {exc.strerror or exc}") from exc
        return gone

    def collect_garbage(self, *, dry_run: bool = False, exclude: Iterable[str] = (),
                        check: Callable[[], None] | None = None) -> PruneStats:
        """Delete the blobs no snapshot references: every phase of :class:`GarbageCollector` in turn.

        ``exclude``: snapshots to treat as forgotten (for a dry run of a prune that would forget them).
        """
        with GarbageCollector(self, dry_run=dry_run, exclude=exclude, check=check) as gc:
            gc.mark()
            gc.plan()
            if not dry_run:
                gc.repack()
                gc.delete()
            return gc.stats

    def commit_snapshot(self, writer: StoreWriter, *, snapshot_id: str, project: str, root: str,
                        entries: Sequence[Entry], stats: SnapshotStats,
                        on_written: Callable[[int, int], None] | None = None,
                        check: Callable[[], None] | None = None,
                        on_total: Callable[[int, int], None] | None = None) -> SnapshotInfo:
        """Store the tree, make every pack of ``writer`` durable, then write the snapshot file.

        For an S3 store, "durable" means uploaded: ``on_total(objects, nbytes)`` is called once what
        the upload sends is known, and ``on_written`` counts the bytes sent.

        ``on_written(objects, nbytes)`` is called as packs and the snapshot file become durable;
        ``check()`` is called before each step and may raise to abandon the commit (then call
        ``writer.abort()``). Returns the new snapshot's info.
        """
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(f"bad snapshot id {snapshot_id!r}")
        tree: list[str] = []
        for group in tree_groups(entries):
            if check is not None:
                check()
            data = encode_tree_group(group)
            h = hash_bytes(data)
            writer.add_chunk(h, data, metadata=True)
            tree.append(h)
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION, "id": snapshot_id, "project": project,
            "time": _snapshot_time(snapshot_id), "root": root, "tree": tree, "stats": asdict(stats),
        }
        doc["checksum"] = hash_bytes(_canonical(doc))
        payload = json.dumps(doc, ensure_ascii=True, indent=1).encode("ascii") + b"\n"
        remote = self.remote
        # Remote: packs are sealed here (staging), then every staged pack the bucket lacks is uploaded
        # (its index after it), then the snapshot file; step 5 counts the bytes sent.
        writer.finish(on_written=None if remote is not None else on_written, check=check)
        if check is not None:
            check()
        if remote is not None:
            remote.upload_staged(on_written, check, on_total=on_total, extra=(1, len(payload)))
            if check is not None:
                check()
            remote.put_snapshot(snapshot_id, payload)
        try:
            self._write_durable(self.root / "snapshots" / f"{snapshot_id}.json", payload, "snapshot")
        except OSError as exc:
            raise StoreError(f"cannot write to store {self.root}: {exc.strerror or exc}") from exc
        if on_written is not None:
            on_written(1, len(payload))
        record = self._parse_snapshot(snapshot_id, payload)
        with self._lock:
            self._snapshots[snapshot_id] = record.info
        self._writer_done(writer)
        return record.info

    # --- check --------------------------------------------------------------------------------------

    def check(self, *, read_data: bool = True, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Verify the store: every phase of :class:`StoreCheck` in turn.

        ``progress(nbytes)`` is called as pack data is read (with ``read_data``).
        """
        checker = StoreCheck(self, read_data=read_data)
        checker.scan()
        checker.verify_packs(None if progress is None else lambda packs, nbytes: progress(nbytes))
        return checker.verify_snapshots()


class StoreCheck:
    """One verification of the store, in three phases a caller can report as steps:

    1. :meth:`scan`: list the snapshots (damaged snapshot files are problems), read every index (a
       damaged index is a problem; its pack's own copy is used when intact) and list the packs;
    2. :meth:`verify_packs`: every indexed pack is present, with the size its index implies and intact
       header and footer; with ``read_data``, every blob decodes to data with its hash;
    3. :meth:`verify_snapshots`: every snapshot's list of entries can be read and every blob it
       references is present and intact. Each problem gets the snapshots and files it damages.

    The fast level (``read_data=False``) reads indexes, pack headers and footers and the lists of
    entries, not the file content. Snapshots are listed before indexes and indexes before packs: each is
    durable before the next needs it, so a daemon writing meanwhile causes no false alarm. Packs without
    an index (a crash, or a pack sealed while this runs) are not problems: their footer is used.
    """

    def __init__(self, store: Store, *, read_data: bool) -> None:
        self._store = store
        self.report = CheckReport(read_data=read_data)
        self._infos: dict[str, SnapshotInfo] = {}
        self._indexed: dict[str, list[tuple[bytes, int, int, int, int]]] = {}
        self._index_bytes: dict[str, bytes] = {}
        self._on_disk: set[str] = set()
        # Blob hash -> the problem that makes it unusable (a missing pack, a corrupt chunk...).
        self._bad: dict[str, int] = {}
        # Where each blob is, by this check's own reading of the indexes (and footers).
        self._locs: dict[str, ChunkLocation] = {}
        self._from_footer: set[str] = set()
        self.bytes_total = 0

    def _problem(self, problem: Problem) -> int:
        self.report.problems.append(problem)
        return len(self.report.problems) - 1

    def scan(self) -> tuple[int, int, int]:
        """Phase 1. Returns (snapshots, packs, bytes phase 2 reads)."""
        store = self._store
        problems: list[Problem] = []
        self._infos = store._scan_snapshots(problems)
        for p in problems:
            self._problem(p)
        self.report.snapshots = len(self._infos)
        store._refresh_index()
        index_dir = store.root / "index"
        for name in sorted(os.listdir(index_dir)):
            if not name.endswith(".idx"):
                continue
            pack = name[:-4]
            try:
                data = (index_dir / name).read_bytes()
            except FileNotFoundError:
                continue  # deleted by a prune meanwhile
            except OSError as exc:
                self._problem(Problem("corrupt", "index", pack, f"cannot be read: {exc.strerror}"))
                continue
            try:
                records = _decode_index(data)
                if hash_bytes(data) != pack:
                    raise CorruptDataError("its content does not match its name")
            except CorruptDataError as exc:
                detail = str(exc)
                try:
                    data = store._pack_footer(pack)
                    records = _decode_index(data)
                    if hash_bytes(data) != pack:
                        raise CorruptDataError("name mismatch")
                    detail += "; the pack's own copy is intact and the next start of the daemon re-creates it"
                except (OSError, CorruptDataError):
                    self._problem(Problem("corrupt", "index", pack, detail))
                    continue  # its blobs are unknown; the snapshots needing them show as damaged
                self._problem(Problem("corrupt", "index", pack, detail))
            self._indexed[pack] = records
            self._index_bytes[pack] = data
        self._sizes = store._pack_sizes()
        self._on_disk = set(self._sizes)
        unindexed = self._on_disk - set(self._indexed)
        for pack in sorted(unindexed):
            try:
                data = store._pack_footer(pack)
                records = _decode_index(data)
            except (OSError, CorruptDataError):
                continue  # half a pack from a crash is never referenced
            if hash_bytes(data) == pack:
                self.report.unindexed_packs += 1
                self._from_footer.add(pack)
                self._indexed[pack] = records
                self._index_bytes[pack] = data
        self.report.packs = len(self._indexed)
        self.report.chunks = sum(len(r) for r in self._indexed.values())
        if self.report.read_data:
            self.bytes_total = sum(r[2] for recs in self._indexed.values() for r in recs)
        return self.report.snapshots, self.report.packs, self.bytes_total

    def verify_packs(self, progress: Callable[[int, int], None] | None = None,
                     check: Callable[[], None] | None = None) -> None:
        """Phase 2. ``progress(packs, nbytes)`` is called as packs are done; ``check()`` may raise to stop."""
        store = self._store
        report = self.report
        bad = self._bad
        with store.reader() as reader:
            for pack in sorted(self._indexed):
                if check is not None:
                    check()
                records = self._indexed[pack]
                hashes = [r[0].hex() for r in records]
                for h, (_, off, length, raw, flags) in zip(hashes, records, strict=True):
                    self._locs.setdefault(h, ChunkLocation(pack, off, length, raw, flags))
                read = 0
                try:
                    size = os.stat(store.pack_path(pack)).st_size
                except FileNotFoundError:
                    size = self._sizes.get(pack, -1) if store.remote is not None else -1
                if size < 0 and not (store.root / "index" / f"{pack}.idx").exists():
                    size = -2  # deleted by a prune meanwhile, with its index
                # Problems of this pack, with the blobs each makes unusable; kept only if the pack was
                # not deleted by a prune while it was being checked (a prune deletes the index first).
                found: list[tuple[Problem, list[str]]] = []
                if size == -1:
                    found.append((Problem("missing", "pack", pack, f"{len(records)} chunks"), hashes))
                elif size >= 0:
                    index_bytes = self._index_bytes[pack]
                    end = max((off + length for _, off, length, _, _ in records), default=len(_PACK_MAGIC))
                    expected = end + len(index_bytes) + _PACK_FOOTER.size
                    beyond: list[str] = [h for h, r in zip(hashes, records, strict=True) if r[1] + r[2] > size]
                    frame = store._pack_frame_ok(pack, index_bytes, size)
                    if size != expected or not frame:
                        detail = (f"{size:,} bytes where its index implies {expected:,}" if size != expected
                                  else "header or footer damaged")
                        found.append((Problem("corrupt", "pack", pack, detail), beyond))
                    if report.read_data:
                        skip = set(beyond) if found else set()
                        for h, (_, off, length, raw, flags) in zip(hashes, records, strict=True):
                            if h in bad or h in skip:
                                continue
                            try:
                                reader.read_at(h, ChunkLocation(pack, off, length, raw, flags))
                            except (StoreError, OSError) as exc:
                                reason = str(exc).rsplit(f" in pack {pack} ", 1)[-1]
                                found.append((Problem("corrupt", "chunk", h, reason, pack=pack), [h]))
                            read += length
                        report.bytes_read += read
                if found and self._deleted_meanwhile(pack):
                    found = []
                for problem, unusable in found:
                    n = self._problem(problem)
                    bad.update(dict.fromkeys(unusable, n))
                if progress is not None:
                    progress(1, read)

    def _deleted_meanwhile(self, pack: str) -> bool:
        if pack in self._from_footer:
            return not self._store.pack_path(pack).exists()
        return not (self._store.root / "index" / f"{pack}.idx").exists()

    def verify_snapshots(self, progress: Callable[[int, int], None] | None = None,
                         check: Callable[[], None] | None = None) -> CheckReport:
        """Phase 3: every snapshot's references. Returns the finished report."""
        store = self._store
        report = self.report
        bad, known = self._bad, self._locs
        # problem index -> snapshot -> [files, paths, listing]
        hurt: dict[int, dict[str, list[Any]]] = {}

        def problem_of(h: str) -> int | None:
            n = bad.get(h)
            if n is None and h not in known:
                n = bad[h] = self._problem(Problem("missing", "chunk", h, "referenced, but in no pack"))
            return n

        with store.reader() as reader:
            for sid in sorted(self._infos):
                if check is not None:
                    check()
                try:
                    record = store._read_snapshot(sid)
                except FileNotFoundError:
                    continue  # forgotten by a prune meanwhile
                except (OSError, CorruptDataError):
                    self._problem(Problem("corrupt", "snapshot", sid, "the snapshot file is damaged"))
                    continue
                files: dict[str, None] = {}  # damaged paths of this snapshot, in order
                listing = False
                for th in record.tree:
                    n = problem_of(th)
                    group = None
                    if n is None:
                        loc = known[th]
                        try:
                            try:
                                data = reader.read_at(th, loc)
                            except _PackMissing:
                                if (store.root / "index" / f"{loc.pack}.idx").exists():
                                    raise
                                data = reader.read(th)  # moved by a prune since the scan: look it up again
                            group = decode_tree_group(data)
                        except (StoreError, OSError) as exc:
                            reason = str(exc).rsplit(f" in pack {loc.pack} ", 1)[-1]
                            n = bad[th] = self._problem(Problem("corrupt", "chunk", th, reason, pack=loc.pack))
                        except (ValueError, TypeError):
                            n = bad[th] = self._problem(Problem("corrupt", "chunk", th, "a list of entries that "
                                                                "cannot be decoded", pack=loc.pack))
                    if group is None:
                        assert n is not None
                        hurt.setdefault(n, {}).setdefault(sid, [0, [], False])[2] = True
                        listing = True
                        continue
                    for e in group:
                        if e.kind != "file":
                            continue
                        for n2 in dict.fromkeys(p for p in map(problem_of, e.chunks) if p is not None):
                            entry = hurt.setdefault(n2, {}).setdefault(sid, [0, [], False])
                            entry[0] += 1
                            if len(entry[1]) < DAMAGE_PATHS:
                                entry[1].append(e.path)
                            files[e.path] = None
                if files or listing:
                    paths = tuple(list(files)[:DAMAGE_PATHS])
                    report.damaged.append(DamagedSnapshot(sid, len(files), paths, listing))
                if progress is not None:
                    progress(1, 0)
        for n, per_snapshot in hurt.items():
            damages = tuple(Damage(sid, c, tuple(p), listing) for sid, (c, p, listing) in sorted(per_snapshot.items()))
            report.problems[n] = replace(report.problems[n], damages=damages)
        return report


def _pack_frame_ok(path: Path, index_bytes: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_PACK_MAGIC))
        return head == _PACK_MAGIC and Store._read_pack_footer(path) == index_bytes
    except (OSError, CorruptDataError):
        return False


class _OpenPack:
    """A pack being filled in tmp/. Only its writer touches it."""

    def __init__(self, store: Store) -> None:
        self.tmp = store.root / "tmp" / f"{secrets.token_hex(8)}.pack"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        _write_all(self.fd, _PACK_MAGIC)
        self.size = len(_PACK_MAGIC)
        self.records: list[tuple[bytes, int, int, int, int]] = []
        self.hashes: list[str] = []

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
    :meth:`finish` (via :meth:`Store.commit_snapshot`) or :meth:`abort` exactly once.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: dict[str, _OpenPack] = {}  # blobs not durable yet: visible to this run only
        self._current: _OpenPack | None = None
        self._unsealed: list[_OpenPack] = []
        self._seals: list[concurrent.futures.Future[int]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncsnap-seal")
        self._done = False
        self.data_bytes_added = 0  # stored bytes of new file content
        self.meta_bytes_added = 0  # stored bytes of new tree groups
        self.packs_written = 0
        # What a prune running meanwhile must not delete (see Store._writer_done): blobs this run found
        # already stored and did not store again, and the packs it wrote. Changed under the store lock.
        self._relied: set[str] = set()
        self._packs: set[str] = set()

    def has_chunk(self, chunk: str) -> bool:
        """Whether the blob is durable in the store or already added by this writer. A True answer for a
        blob of the store means this run relies on it: a prune running meanwhile keeps it."""
        return chunk in self._pending or self._store._use_chunk(chunk, self._relied)

    def add_chunk(self, chunk: str, data: bytes | bytearray | memoryview, *, metadata: bool = False) -> int:
        """Store ``data`` under its hash ``chunk`` unless already present.

        Compresses with zstd (level 1) and keeps the raw bytes when that is not smaller. Returns the
        stored bytes added (0 for a duplicate). ``data`` may be reused by the caller after the call.
        """
        if self.has_chunk(chunk):
            return 0
        raw_length = len(data)
        compressed = _compressor().compress(data)  # outside the lock: zstd releases the GIL
        if len(compressed) < raw_length:
            stored: bytes | bytearray | memoryview = compressed
            flags = _FLAG_ZSTD
        else:
            stored, flags = data, 0
        full: _OpenPack | None = None
        with self._lock:
            if self._done:
                raise StoreError("writer already finished or aborted")
            if self.has_chunk(chunk):
                return 0  # another worker stored the same data meanwhile
            pack = self._current
            try:
                if pack is None:
                    pack = self._current = _OpenPack(self._store)
                    self._unsealed.append(pack)
                _write_all(pack.fd, stored)
            except OSError as exc:
                raise StoreError(f"cannot write to store {self._store.root}: {exc.strerror}") from exc
            pack.records.append((bytes.fromhex(chunk), pack.size, len(stored), raw_length, flags))
            pack.hashes.append(chunk)
            pack.size += len(stored)
            self._pending[chunk] = pack
            if metadata:
                self.meta_bytes_added += len(stored)
            else:
                self.data_bytes_added += len(stored)
            if pack.size >= self._store.pack_size:
                full = pack
                self._current = None
        if full is not None:
            self._submit_seal(full)
        return len(stored)

    def _submit_seal(self, pack: _OpenPack) -> None:
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

    def _seal(self, pack: _OpenPack) -> int:
        store = self._store
        try:
            pack_id = store._install_pack(pack, self._packs)
        except OSError as exc:
            raise StoreError(f"cannot write to store {store.root}: {exc.strerror or exc}") from exc
        store._add_to_index(pack_id, pack.records)
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
        self._store._writer_done(self)


# --- pruning ----------------------------------------------------------------------------------------

# A pack that still holds blobs in use is rewritten (its used blobs copied to a new pack, then deleted)
# once at least this share of its bytes is unused: rewriting a mostly-used 16 MiB pack to free a few
# hundred KiB costs more disk writes than it saves. So at most about this share of the store is dead
# weight after a prune (restic's default `--max-unused` is 5% of the repository, for the same trade-off).
REPACK_MIN_UNUSED = 0.10


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
       unknown). Running writers are registered meanwhile (see :meth:`Store._writer_done`).
    2. :meth:`plan`: under the store lock, add what running writers (and writers that finished while
       marking) wrote or relied on, decide per pack (delete if nothing in it is used; repack if at least
       :data:`REPACK_MIN_UNUSED` of it is unused), and remove the unused blobs of those packs from the
       index. From then on no writer can find them: it stores its own copy instead.
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
        if not dry_run:
            refuse_on_remote(store)
        self._store = store
        self.dry_run = dry_run
        self._exclude = set(exclude)
        self._check = check or (lambda: None)
        self.stats = PruneStats()
        self._marking = False
        self._retired: list[StoreWriter] = []
        self._registered = False
        self._records: dict[str, list[tuple[bytes, int, int, int, int]]] = {}
        self._used: set[str] = set()
        self.delete_packs: list[str] = []
        self.repack_packs: dict[str, list[tuple[str, ChunkLocation]]] = {}
        self._hidden: dict[str, list[tuple[bytes, int, int, int, int]]] = {}
        self._deleted: set[str] = set()
        self._open: _OpenPack | None = None

    def __enter__(self) -> GarbageCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mark(self, progress: Callable[[int], None] | None = None) -> int:
        """Phase 1. Returns the number of snapshots; ``progress(1)`` per snapshot read."""
        store = self._store
        if not self.dry_run:
            with store._lock:
                if store._gc is not None:
                    raise StoreError("another prune of this store is running")
                store._gc = self
                self._registered = True
                self._marking = True
        index_dir = store.root / "index"
        for name in sorted(os.listdir(index_dir)):
            if name.endswith(".idx"):
                try:
                    self._records[name[:-4]] = _decode_index((index_dir / name).read_bytes())
                except (OSError, CorruptDataError):
                    continue  # its blobs are unknown: this pack is never deleted
        infos = store._scan_snapshots()
        used = self._used
        seen: set[str] = set()
        count = 0
        with store.reader() as reader:
            for sid in sorted(infos):
                if sid in self._exclude:
                    continue
                self._check()
                try:
                    record = store._read_snapshot(sid)
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

    def plan(self) -> PruneStats:
        """Phase 2: decide, and (unless a dry run) hide the unused blobs of the packs to delete or repack."""
        store = self._store
        stats = self.stats
        with store._lock:
            writers = [*store._writers, *self._retired]
            protected_packs = set().union(*(w._packs for w in writers))
            relied = set().union(*(w._relied for w in writers))
            index = store._index
            used = self._used
            present: set[str] = set()
            for pack in sorted(self._records):
                if pack in protected_packs:
                    continue
                stats.packs += 1
                keep: list[tuple[str, ChunkLocation]] = []
                drop: list[tuple[bytes, int, int, int, int]] = []
                total = unused = 0
                for rec in self._records[pack]:
                    hb, off, length, raw, flags = rec
                    h = hb.hex()
                    total += length
                    loc = index.get(h)
                    # Only the copy the index points at counts; other copies of a blob are extra.
                    canonical = loc is None or (loc.pack == pack and loc.offset == off)
                    if canonical and (h in used or h in relied):
                        keep.append((h, ChunkLocation(pack, off, length, raw, flags)))
                        present.add(h)
                    else:
                        drop.append(rec)
                        unused += length
                stats.chunks_used += len(keep)
                stats.chunks_unused += len(drop)
                if not keep:
                    self.delete_packs.append(pack)
                elif unused and unused >= REPACK_MIN_UNUSED * total:
                    self.repack_packs[pack] = keep
                    stats.bytes_repacked += total - unused
                else:
                    continue
                self._hidden[pack] = drop
            stats.packs_deleted = len(self.delete_packs)
            stats.packs_repacked = len(self.repack_packs)
            stats.missing_chunks = len(used - present - set(index) - relied)
            if not self.dry_run:
                for pack, drop in self._hidden.items():
                    for hb, off, *_ in drop:
                        h = hb.hex()
                        loc = index.get(h)
                        if loc is not None and loc.pack == pack and loc.offset == off:
                            del index[h]
            self._marking = False
            self._retired.clear()
        if not self.dry_run:
            with store._pack_lock:
                store._doomed.update(self._hidden)
        for pack in self._hidden:
            stats.bytes_deleted += self._file_sizes(pack)
        if self.repack_packs:
            # Estimate for a dry run; repack() counts what it actually writes.
            stats.bytes_written = stats.bytes_repacked
        return stats

    def _file_sizes(self, pack: str) -> int:
        size = 0
        for path in (self._store.pack_path(pack), self._store.root / "index" / f"{pack}.idx"):
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:
                pass
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
                            pack = self._open = _OpenPack(store)
                        _write_all(pack.fd, stored)
                        pack.records.append((bytes.fromhex(h), pack.size, loc.length, loc.raw_length, loc.flags))
                        pack.hashes.append(h)
                        pack.size += loc.length
                        if progress is not None:
                            progress(0, loc.length)
                        if pack.size >= store.pack_size:
                            self._install()
                    if progress is not None:
                        progress(1, 0)
                if self._open is not None:
                    self._install()
        except OSError as exc:
            raise StoreError(f"cannot write to store {store.root}: {exc.strerror or exc}") from exc

    def _install(self) -> None:
        pack, self._open = self._open, None
        assert pack is not None
        store = self._store
        pack_id = store._install_pack(pack)
        store._relocate(pack_id, pack.records)
        self.stats.packs_written += 1
        self.stats.bytes_written += self._file_sizes(pack_id)

    def delete(self, progress: Callable[[int], None] | None = None) -> None:
        """Phase 4: delete the packs decided on (indexes first). Quick; not interrupted by ``check``."""
        if self.dry_run:
            return
        store = self._store
        doomed = sorted(self._hidden)
        unindexed: list[str] = []
        self.stats.bytes_deleted = 0
        try:
            for pack in doomed:
                with store._pack_lock:
                    if pack not in store._doomed:
                        continue  # written again meanwhile by a snapshot (same blobs): it stays
                    idx = store.root / "index" / f"{pack}.idx"
                    self.stats.bytes_deleted += self._file_sizes(pack)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(idx)
                    with store._lock:
                        store._loaded_indexes.discard(pack)
                unindexed.append(pack)
                store._step("gc:index-unlinked")
            if unindexed:
                _fsync_dir(store.root / "index")
                store._step("gc:indexdir-synced")
            dirs: set[Path] = set()
            for pack in unindexed:
                with store._pack_lock:
                    if pack not in store._doomed:
                        continue
                    path = store.pack_path(pack)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    store._doomed.discard(pack)
                self._deleted.add(pack)
                dirs.add(path.parent)
                store._step("gc:pack-unlinked")
                if progress is not None:
                    progress(1)
            for d in sorted(dirs):
                _fsync_dir(d)
            if dirs:
                store._step("gc:packdir-synced")
        except OSError as exc:
            raise StoreError(f"cannot delete from store {store.root}: {exc.strerror or exc}") from exc
        with store._lock:
            # Nothing should still point at a deleted pack (used blobs were moved, unused ones hidden).
            stale = [h for h, loc in store._index.items() if loc.pack in self._deleted]
            for h in stale:
                del store._index[h]
        self.stats.packs_deleted = len(self._deleted - set(self.repack_packs))
        self.stats.packs_repacked = len(self._deleted & set(self.repack_packs))

    def close(self) -> None:
        """End the collection: put what was hidden but not deleted back into the index. Idempotent."""
        store = self._store
        if self._open is not None:
            self._open.discard()
            self._open = None
        if not self.dry_run and self._hidden:
            with store._pack_lock:
                back = [p for p in self._hidden if p not in self._deleted and p in store._doomed]
                store._doomed.difference_update(back)
            for pack in back:
                store._add_to_index(pack, self._hidden[pack])
            self._hidden = {p: d for p, d in self._hidden.items() if p in self._deleted}
        if self._registered:
            with store._lock:
                if store._gc is self:
                    store._gc = None
                self._marking = False
                self._retired.clear()
            self._registered = False
