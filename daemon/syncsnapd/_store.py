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
without index (re-indexed by the next writable open), and packs no snapshot references (harmless; the
next snapshot re-uses their blobs, a future prune could reclaim them).

Concurrency
===========

One writable opener per store (``fcntl.flock`` on ``lock``). Within it, several :class:`StoreWriter`
(one per snapshot run) may write at once; each keeps its unsealed blobs to itself, so a cancelled run
can never leave another run referencing data that was not made durable. Read-only opens take no lock and
clean nothing; they see snapshots written meanwhile by re-reading the index when a blob is unknown.
"""

from __future__ import annotations

import concurrent.futures
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import blake3
import zstandard

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


@dataclass(frozen=True)
class Problem:
    """One damaged or missing object found by :meth:`Store.check`."""

    kind: Literal["missing", "corrupt"]
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


@dataclass(frozen=True)
class DamagedSnapshot:
    """A snapshot that cannot be fully restored because of the problems found.

    ``listing`` is True when (part of) its list of entries itself is lost: then the files in that part
    are unknown and not counted in ``files``.
    """

    id: str
    files: int
    paths: tuple[str, ...]  # the first few affected paths
    listing: bool = False


@dataclass
class CheckReport:
    """The result of :meth:`Store.check`. ``ok`` when no problem was found."""

    problems: list[Problem] = field(default_factory=list)
    damaged: list[DamagedSnapshot] = field(default_factory=list)
    snapshots: int = 0
    packs: int = 0
    chunks: int = 0
    bytes_read: int = 0
    unindexed_packs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged


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


class ChunkReader:
    """Reads blobs for one thread, keeping a few pack files open. Not thread-safe; close when done."""

    _MAX_OPEN = 8

    def __init__(self, store: Store) -> None:
        self._store = store
        self._fds: OrderedDict[str, int] = OrderedDict()

    def _fd(self, pack: str) -> int:
        fd = self._fds.pop(pack, None)
        if fd is None:
            try:
                fd = os.open(self._store.pack_path(pack), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise StoreError(f"pack {pack} is missing from the store") from exc
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
        return self.read_at(chunk, loc)

    def read_at(self, chunk: str, loc: ChunkLocation) -> bytes:
        raw = os.pread(self._fd(loc.pack), loc.length, loc.offset)
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
        return bytes(data)

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

    # --- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, *, writable: bool) -> Store:
        """Open the store at ``root``.

        A writable open creates the store if ``root`` is missing or empty, takes the exclusive lock,
        removes leftover temporary files and re-indexes packs whose index was not written. A read-only
        open needs an existing store and changes nothing on disk.

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
        # A crash between renaming a pack into place and writing its index leaves a durable pack that no
        # index names. Its footer holds the index; write it out so its blobs are found again.
        indexed = {p.name[:-4] for p in (self.root / "index").iterdir() if p.name.endswith(".idx")}
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
                self._write_durable(self.root / "index" / f"{pack_id}.idx", index_bytes, "reindex")

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

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        return loc

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
        for name in names:
            sid = name[:-5]
            if not name.endswith(".json") or not SNAPSHOT_ID_RE.match(sid) or sid in self._snapshots:
                continue
            try:
                record = self._read_snapshot(sid)
            except (OSError, CorruptDataError):
                if problems is not None:
                    problems.append(Problem("corrupt", f"snapshot {sid}"))
                continue
            with self._lock:
                self._snapshots[sid] = record.info
        with self._lock:
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
        return StoreWriter(self)

    def commit_snapshot(self, writer: StoreWriter, *, snapshot_id: str, project: str, root: str,
                        entries: Sequence[Entry], stats: SnapshotStats,
                        on_written: Callable[[int, int], None] | None = None,
                        check: Callable[[], None] | None = None) -> SnapshotInfo:
        """Store the tree, make every pack of ``writer`` durable, then write the snapshot file.

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
        writer.finish(on_written=on_written, check=check)
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION, "id": snapshot_id, "project": project,
            "time": _snapshot_time(snapshot_id), "root": root, "tree": tree, "stats": asdict(stats),
        }
        doc["checksum"] = hash_bytes(_canonical(doc))
        payload = json.dumps(doc, ensure_ascii=True, indent=1).encode("ascii") + b"\n"
        if check is not None:
            check()
        try:
            self._write_durable(self.root / "snapshots" / f"{snapshot_id}.json", payload, "snapshot")
        except OSError as exc:
            raise StoreError(f"cannot write to store {self.root}: {exc.strerror or exc}") from exc
        if on_written is not None:
            on_written(1, len(payload))
        record = self._parse_snapshot(snapshot_id, payload)
        with self._lock:
            self._snapshots[snapshot_id] = record.info
        return record.info

    # --- check --------------------------------------------------------------------------------------

    def check(self, *, read_data: bool = True, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Verify the store: every index, every pack (with ``read_data``: every blob's hash), every
        snapshot's tree and the presence of every chunk it references.

        Unindexed packs (a crash before the index was written; re-indexed by the next writable open) and
        temporary files are not problems. ``progress(nbytes)`` is called as pack data is read.
        """
        report = CheckReport()
        problems = report.problems
        # Snapshots first, then indexes: an index is durable before any snapshot that needs it, so a
        # daemon writing meanwhile cannot make us report its new snapshot's data as missing.
        infos = self._scan_snapshots(problems)
        report.snapshots = len(infos)
        self._refresh_index()
        bad: set[str] = set()
        indexed: dict[str, list[tuple[bytes, int, int, int, int]]] = {}
        index_bytes_of: dict[str, bytes] = {}
        index_files = sorted((self.root / "index").glob("*.idx"))
        # Packs are listed after indexes: a pack is durable before its index is written, so a daemon
        # writing meanwhile cannot make an indexed pack look missing.
        packs_on_disk = {p.name[:-5] for p in (self.root / "packs").glob("*/*.pack")}
        for p in index_files:
            pack = p.name[:-4]
            try:
                data = p.read_bytes()
                indexed[pack] = _decode_index(data)
                index_bytes_of[pack] = data
                if hash_bytes(data) != pack:
                    raise CorruptDataError("name mismatch")
            except (OSError, CorruptDataError):
                problems.append(Problem("corrupt", f"index {pack}"))
                indexed.pop(pack, None)
        report.unindexed_packs = len(packs_on_disk - set(indexed))
        reader = self.reader()
        try:
            for pack in sorted(indexed):
                records_ = indexed[pack]
                report.packs += 1
                report.chunks += len(records_)
                hashes = [r[0].hex() for r in records_]
                if pack not in packs_on_disk:
                    problems.append(Problem("missing", f"pack {pack}"))
                    bad.update(hashes)
                    continue
                footer_ok = self._check_pack_frame(pack, index_bytes_of[pack])
                if not footer_ok:
                    problems.append(Problem("corrupt", f"pack {pack} (header or footer)"))
                if not read_data:
                    continue
                for h, (_, off, length, raw, flags) in zip(hashes, records_, strict=True):
                    try:
                        reader.read_at(h, ChunkLocation(pack, off, length, raw, flags))
                    except (StoreError, OSError):
                        problems.append(Problem("corrupt", f"chunk {h} in pack {pack}"))
                        bad.add(h)
                    report.bytes_read += length
                    if progress is not None:
                        progress(length)
            known = {h for recs in indexed.values() for h in (r[0].hex() for r in recs)}
            missing_reported: set[str] = set()

            def usable(h: str) -> bool:
                if h in bad:
                    return False
                if h not in known:
                    if h not in missing_reported:
                        missing_reported.add(h)
                        problems.append(Problem("missing", f"chunk {h}"))
                    return False
                return True

            for sid in sorted(infos):
                try:
                    record = self._read_snapshot(sid)
                except (OSError, CorruptDataError):
                    problems.append(Problem("corrupt", f"snapshot {sid}"))
                    continue
                damaged: list[str] = []
                count = 0
                listing = False
                for th in record.tree:
                    try:
                        group = decode_tree_group(reader.read(th)) if usable(th) else None
                    except (StoreError, ValueError, TypeError):
                        group = None
                    if group is None:
                        listing = True
                        continue
                    for e in group:
                        if e.kind == "file" and not all(usable(h) for h in e.chunks):
                            count += 1
                            if len(damaged) < 10:
                                damaged.append(e.path)
                if count or listing:
                    report.damaged.append(DamagedSnapshot(sid, count, tuple(damaged), listing))
        finally:
            reader.close()
        return report

    def _check_pack_frame(self, pack: str, index_bytes: bytes) -> bool:
        path = self.pack_path(pack)
        try:
            with open(path, "rb") as f:
                head = f.read(len(_PACK_MAGIC))
            return head == _PACK_MAGIC and self._read_pack_footer(path) == index_bytes
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

    def has_chunk(self, chunk: str) -> bool:
        """Whether the blob is durable in the store or already added by this writer."""
        return chunk in self._pending or self._store.has_chunk(chunk)

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
            if chunk in self._pending or self._store.has_chunk(chunk):
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
            index_bytes = _encode_index(pack.records)
            _write_all(pack.fd, index_bytes + _PACK_FOOTER.pack(len(index_bytes), _PACK_END))
            store._step("pack:written")
            os.fsync(pack.fd)
            os.close(pack.fd)
            pack.fd = -1
            store._step("pack:fsynced")
            pack_id = hash_bytes(index_bytes)
            final = store.pack_path(pack_id)
            if not final.parent.is_dir():
                final.parent.mkdir(exist_ok=True)
                _fsync_dir(final.parent.parent)
                store._step("packdir:dirsynced")
            os.rename(pack.tmp, final)
            store._step("pack:renamed")
            _fsync_dir(final.parent)
            store._step("pack:dirsynced")
            store._write_durable(store.root / "index" / f"{pack_id}.idx", index_bytes, "index")
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
