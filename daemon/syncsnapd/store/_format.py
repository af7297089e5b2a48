"""The store's on-disk format: constants, and the encodings of packs, indexes, trees, config.json and
snapshot files (pure functions, no I/O).

On-disk format (version 2; version 1 below)
==========================================

::

    store/
      config.json                  {"format": "syncsnap-store", "version": 2,
                                    "chunker": {"algorithm": "fastcdc-2020", "min": 262144, "avg": 524288,
                                                "max": 2097152, "normalization": 2},
                                    "chunk_id": "blake3", "compression": "zstd", "compression_level": -1,
                                    "encryption": "none", "pack_size": 16777216}
      lock                         flock'ed by the one writable opener; holds its pid (for the error message)
      tmp/                         temporary files; emptied by every writable open
      packs/<2hex>/<packid>.pack   chunks ("blobs"), back to back, plus a copy of the pack's index
      index/<packid>.idx           which blobs a pack holds, where, and how they are stored
      snapshots/<id>.json          one small file per snapshot; written last

**config.json** says how the store's content is cut (``chunker``), named (``chunk_id``), compressed and
encrypted, and how large packs grow. A reader checks every key it knows: a value it does not know (a
newer chunker, keyed chunk ids, encryption: issue 15 adds those as new values of ``chunk_id`` and
``encryption``, within version 2) makes it refuse the store with an error naming the key and value,
never guess (``_config.py``). Keys it does not know are left alone: whatever changes how data is
read or written is the value of one of these keys. ``chunker`` objects are those of
``_chunker.py``: ``fastcdc-2020`` (min, avg, max, normalization) or ``fixed`` (size).

**Version 1** stores (``{"format": "syncsnap-store", "version": 1, "chunk_size": 1048576, "hash":
"blake3", "compression": "zstd", "compression_level": 1, "pack_size": 16777216}``) have the same layout,
packs, indexes, trees and snapshot files; their content is cut into fixed ``chunk_size`` chunks. They are
read and written as they are, new data cut as version 1 cut it (a version 1 syncsnapd, and a download
or a diff against the live folder, rely on it), and never converted: a new store gets version 2.

**Blobs.** Every piece of stored data is a blob keyed by the blake3-256 hash (64 hex digits) of its
*uncompressed* bytes, so equal data is stored once, across files, snapshots and projects. A blob is
stored zstd-compressed (level 1) unless compression does not make it smaller; then it is stored raw
(flag bit 0 clear). File content is cut into content-defined chunks (FastCDC 2020, 0.6 MiB on average,
256 KiB to 2 MiB; see ``_chunker.py`` and docs/chunking.md), so a large file changed anywhere, even by
a byte inserted at its start, only stores the chunks around the change; content up to 256 KiB is one
chunk. A file's chunks, in order, are its content; their lengths are in the index. The list of entries
of a snapshot (its "tree") is stored as blobs too (see below), in the same packs.

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
and an unchanged folder adds no tree data at all. Decoding checks every field of every entry and of the
snapshot file (types, ranges, modes): a store is input like any other, and whatever it holds is either
valid or :class:`CorruptDataError`.

**Snapshot files** ``snapshots/<id>.json`` (their own format 1, in both store versions): ``{"format": 1, "id", "project", "time", "root", "tree":
[group hashes], "stats": {...}, "root_mode", "checksum"}``, where ``checksum`` is the blake3 of the
canonical JSON of the rest. ``root_mode`` (optional, so no new format version) holds the permission bits
of the folder itself (0 to 0o777; the folder is no entry of its tree), which a restore gives the target
it creates; snapshot files of older versions lack it, and those versions ignore it (the checksum covers
every key). ``host`` (optional likewise) names the machine that took the snapshot (the daemon's
``host`` setting, else the system's hostname: 1 to 255 printable characters); snapshot files of older
versions lack it (host unknown). Ids sort by time: ``20261128T170102.123Z-a1b2c3d4e5f6`` (UTC start time
to the millisecond, 48 random bits); they are safe as file names and URL path segments. Ids of older
versions have 24 random bits (``-a1b2c3``) and are read as they are.

**Several machines, one bucket: why names cannot collide.** A snapshot id is only ever made once, by
the machine taking the snapshot; two ids collide only if two snapshots start in the same millisecond
*and* draw the same 48 random bits: about one chance in 2.8e14 for each such pair (24 bits, one in 1.7e7,
was too close for machines snapshotting on the same schedule, where the same second is the rule; a
collision would let one machine's snapshot file replace the other's). A pack id is the blake3 of its
index, which lists the hash, offset and length of every blob it holds: two packs share an id only if they
hold the same blobs at the same places, i.e. the same content, so whichever copy the bucket keeps serves
both machines' indexes (blake3 collisions aside).

Encrypted stores (issue 15; still version 2)
============================================

``config.json`` says ``"encryption": "aes-256-gcm"`` (or ``"chacha20-poly1305"``), ``"chunk_id":
"blake3-keyed"`` and ``"key_check"`` (a sealed value only the master key opens); it holds no secret.
Everything else is sealed (``nonce | ciphertext | tag``, see ``_crypto.py``): each blob (compressed
first, as above, then sealed; the index records the sealed length), each index file (the sealed bytes of
the index above; the pack id is the blake3 of those sealed bytes, and the pack's copy is the same
bytes), each snapshot file (named ``snapshots/<keyed hash of its id>.json``). Blob ids are keyed blake3.
Key files are in ``keys/``. Pack framing (``SYNPACK1``, the footer) is as above: it says nothing that
config.json and the object's size do not. docs/encryption.md has every byte.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import blake3
import zstandard

from ._chunker import FastCDC2020
from ._errors import CorruptDataError

FORMAT_NAME = "syncsnap-store"
# New stores are written as version 2; version 1 stores are read and written as they are (see above).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Snapshot files have kept their format since version 1 (their "format" key is this, in both versions).
SNAPSHOT_FORMAT = 1
# Version 1's fixed-size chunks: 1 MiB keeps a changed large file's re-stored share small while keeping
# per-chunk overhead (index record, hash call, compressor call) negligible next to the data.
CHUNK_SIZE = 1 << 20
# Version 2's content-defined chunks (FastCDC 2020, see _chunker.py), sizes chosen by measurement
# (docs/chunking.md, `python -m bench chunking`): 256 KiB / 512 KiB / 2 MiB at normalization level 2
# make chunks of 0.6 MiB on average, so a 1-byte insert re-stores about 0.6 MiB (at most 1 MiB in the
# trials) and a 1 MiB append about 1.3 MiB (at most 1.7), where a 1 MiB average (restic's) re-stored up
# to 2.6 MiB for an append: its last chunk is larger. The price is ~1,700 index records per GiB stored
# instead of 1,024. Level 2 narrows the spread of sizes (the paper's finding), and with it the size of
# the last chunk, which is what an append re-stores; a minimum of 256 KiB skips the scan of the first
# 256 KiB of every chunk (faster than 128 KiB, same dedup), and content up to it is always one chunk.
CDC_MIN = 256 << 10
CDC_AVG = 512 << 10
CDC_MAX = 2 << 20
CDC_NORMALIZATION = 2
# 16 MiB packs (restic's default): few enough files that fsync cost vanishes, small enough that the
# fsync of a full pack overlaps with hashing the next one.
PACK_SIZE = 16 << 20
# zstd --fast=1 for new blobs (store/_writer.py has the measurement); every zstd decoder reads every level,
# so blobs of either level mix in one store.
COMPRESSION_LEVEL = -1
# A tree group ends after a path whose crc32 has these low bits all zero: about 256 entries per group.
TREE_CUT_MASK = 0xFF

PACK_MAGIC = b"SYNPACK1"
PACK_END = b"SYNPKEND"
PACK_FOOTER = struct.Struct("<Q8s")
IDX_MAGIC = b"SYNIDX01"
IDX_RECORD = struct.Struct("<32sQIIB")
FLAG_ZSTD = 1
# Random suffix: 6 hex digits before issue 15, 12 since (see "Several machines, one bucket" above).
SNAPSHOT_ID_RE = re.compile(r"\A\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}(?:[0-9a-f]{6})?\Z")

EntryKind = Literal["file", "dir", "symlink"]
# One record of an index file: (blob hash as 32 bytes, offset in the pack, stored length, raw length, flags).
IndexRecord = tuple[bytes, int, int, int, int]


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
    # The machine that took it; None for a snapshot file of a version that did not record it.
    host: str | None = None

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


class ChunkLocation(NamedTuple):
    """Where a blob is stored: its pack, offset and stored length there, its raw length, its flags."""

    pack: str
    offset: int
    length: int
    raw_length: int
    flags: int


@dataclass(frozen=True)
class SnapshotRecord:
    """A parsed snapshot file: its listing, the folder it was taken of, its tree group hashes."""

    info: SnapshotInfo
    root: str
    tree: list[str]
    skipped: int
    root_mode: int | None = None  # the folder's permission bits; None in snapshots of older versions


# --- hashes, ids, compression ---------------------------------------------------------------------

def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """The store's content hash: blake3-256 as 64 lowercase hex digits."""
    return blake3.blake3(data).hexdigest()


def make_snapshot_id(when: datetime | None = None) -> str:
    """A new snapshot id that sorts by time, e.g. ``20261128T170102.123Z-a1b2c3d4e5f6``."""
    when = when or datetime.now(UTC)
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}.{when.microsecond // 1000:03d}Z-{secrets.token_hex(6)}"


def snapshot_time(snapshot_id: str) -> str:
    """The ISO 8601 UTC start time encoded in a snapshot id."""
    d, t = snapshot_id[:8], snapshot_id[9:19]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}Z"


_tls = threading.local()


def compressor() -> Any:
    """This thread's zstd compressor (contexts are not thread-safe; allocating one per chunk is costly)."""
    c = getattr(_tls, "cctx", None)
    if c is None:
        c = _tls.cctx = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
    return c


def decompressor() -> Any:
    """This thread's zstd decompressor."""
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


# --- trees ----------------------------------------------------------------------------------------

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


# What an entry's fields may hold. A snapshot file and its tree are input like any other: a store can be
# damaged, or written by someone else, so every field is checked before anything acts on it.
_KIND_TYPE_BITS = {"file": 0o100000, "dir": 0o040000, "symlink": 0o120000}
# os.utime takes seconds that fit a signed 64-bit time_t (the kernel then clamps to what the filesystem
# can store); stat reports nothing outside that range either.
MTIME_NS_MIN = -(2**63) * 1_000_000_000
MTIME_NS_MAX = 2**63 * 1_000_000_000 - 1
_HASH_RE = re.compile(r"\A[0-9a-f]{64}\Z")


def _name_problem(name: object, what: str) -> str | None:
    """Why ``name`` is not a file name or path as the engine records one (an ``os.fsdecode`` string)."""
    if not isinstance(name, str):
        return f"{what} is not a string"
    if "\0" in name:
        return f"{what} holds a NUL character"
    if not name.isascii():
        try:
            canonical = os.fsdecode(os.fsencode(name)) == name
        except UnicodeError:
            canonical = False
        if not canonical:
            return f"{what} is not a file name as snapshots record them"
    return None


def _int_problem(value: object, what: str, low: int, high: int) -> str | None:
    if type(value) is not int:  # bool is an int too, and 1.0 or "1" are not
        return f"{what} {value!r:.40} is not an integer"
    if not low <= value <= high:
        return f"{what} {value} is out of range"
    return None


def _entry_problem(e: object) -> str | None:
    if not isinstance(e, list) or len(e) != len(Entry._fields):
        return f"not a list of {len(Entry._fields)} fields"
    path, kind, size, mtime_ns, mode, inode, data = e
    problem = (_name_problem(path, "its path") or _int_problem(size, "size", 0, 2**63 - 1)
               or _int_problem(mtime_ns, "mtime", MTIME_NS_MIN, MTIME_NS_MAX)
               or _int_problem(mode, "mode", 0, 0o177777) or _int_problem(inode, "inode", 0, 2**64 - 1))
    if problem:
        return problem
    type_bits = _KIND_TYPE_BITS.get(kind) if isinstance(kind, str) else None
    if type_bits is None:
        return f"unknown kind {kind!r:.40}"
    if mode & ~0o7777 not in (0, type_bits):
        return f"mode {mode:o} is not the permission bits of a {kind}"
    if kind == "file":
        if not isinstance(data, list) or not all(isinstance(h, str) and _HASH_RE.match(h) for h in data):
            return "a file whose chunks are not a list of hashes"
    elif kind == "symlink":
        if data == "":
            return "a symlink without a target"
        return _name_problem(data, "its symlink target")
    elif data is not None:
        return "a directory with data"
    return None


def decode_tree_group(data: bytes) -> list[Entry]:
    """The entries of one tree group, each field checked (type, range; a mode holds permission bits and at
    most the type bits of its own kind, which are dropped).

    Raises:
        CorruptDataError: not JSON, or naming the first entry that is not a valid entry.
    """
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CorruptDataError(f"a list of entries is not JSON ({exc})") from None
    if not isinstance(raw, list):
        raise CorruptDataError("a list of entries is not a list")
    entries: list[Entry] = []
    append = entries.append
    hash_ok = _HASH_RE.match
    for i, e in enumerate(raw):
        # The common case, inline (a snapshot loads every entry of the previous one): an ASCII path and
        # a file or directory with nothing unusual. Everything else takes the full check.
        if type(e) is list and len(e) == 7:
            path, kind, size, mtime_ns, mode, inode, content = e
            if (type(path) is str and path.isascii() and "\0" not in path and type(size) is int
                    and type(mtime_ns) is int and type(mode) is int and type(inode) is int
                    and 0 <= size < 2**63 and MTIME_NS_MIN <= mtime_ns <= MTIME_NS_MAX and 0 <= inode < 2**64):
                if kind == "file":
                    if (type(content) is list and mode & ~0o7777 in (0, 0o100000)
                            and all(type(h) is str and hash_ok(h) for h in content)):
                        append(Entry(path, kind, size, mtime_ns, mode & 0o7777, inode, content))
                        continue
                elif kind == "dir" and content is None and mode & ~0o7777 in (0, 0o040000):
                    append(Entry(path, kind, size, mtime_ns, mode & 0o7777, inode, None))
                    continue
        problem = _entry_problem(e)
        if problem is not None:
            where = f" {e[0]!r:.200}" if isinstance(e, list) and e and isinstance(e[0], str) else ""
            raise CorruptDataError(f"entry {i}{where}: {problem}")
        path, kind, size, mtime_ns, mode, inode, content = e
        append(Entry(path, kind, size, mtime_ns, mode & 0o7777, inode, content))
    return entries


# --- index files and pack framing -----------------------------------------------------------------

def encode_index(records: Sequence[IndexRecord]) -> bytes:
    body = bytearray(IDX_MAGIC)
    pack = IDX_RECORD.pack
    for r in records:
        body += pack(*r)
    body += blake3.blake3(body).digest()
    return bytes(body)


def decode_index(data: bytes) -> list[IndexRecord]:
    """The records of an index file (or of a pack's copy of it).

    Raises:
        CorruptDataError: bad header, checksum or length.
    """
    if len(data) < len(IDX_MAGIC) + 32 or not data.startswith(IDX_MAGIC):
        raise CorruptDataError("bad index header")
    body, digest = data[:-32], data[-32:]
    if blake3.blake3(body).digest() != digest:
        raise CorruptDataError("index checksum mismatch")
    payload = memoryview(body)[len(IDX_MAGIC):]
    if len(payload) % IDX_RECORD.size:
        raise CorruptDataError("index length is not a whole number of records")
    return list(IDX_RECORD.iter_unpack(payload))


def pack_tail(index_bytes: bytes) -> bytes:
    """What ends a pack after its blobs: the copy of its index and the footer."""
    return index_bytes + PACK_FOOTER.pack(len(index_bytes), PACK_END)


def footer_index_length(footer: bytes, pack_size: int) -> int:
    """The length of the index copy named by a pack's last :data:`PACK_FOOTER` bytes.

    Raises:
        CorruptDataError: the footer is damaged or names more bytes than the pack holds.
    """
    if pack_size < len(PACK_MAGIC) + PACK_FOOTER.size or len(footer) != PACK_FOOTER.size:
        raise CorruptDataError("pack too short")
    length, end = PACK_FOOTER.unpack(footer)
    if end != PACK_END or length > pack_size - len(PACK_MAGIC) - PACK_FOOTER.size:
        raise CorruptDataError("bad pack footer")
    return int(length)


# --- config.json and snapshot files ---------------------------------------------------------------

def new_config(*, cipher: str | None = None, key_check: str | None = None) -> bytes:
    """The ``config.json`` of a new store (version 2, content-defined chunks); encrypted with ``cipher``
    (keyed chunk ids, and ``key_check`` from ``Crypto.key_check``) when given."""
    config: dict[str, Any] = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "chunker": FastCDC2020(CDC_MIN, CDC_AVG, CDC_MAX, CDC_NORMALIZATION).describe(),
        "chunk_id": "blake3" if cipher is None else "blake3-keyed", "compression": "zstd",
        "compression_level": COMPRESSION_LEVEL, "encryption": cipher or "none", "pack_size": PACK_SIZE}
    if cipher is not None:
        config["key_check"] = key_check
    return json.dumps(config, indent=1).encode() + b"\n"


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode("ascii")


def encode_snapshot(snapshot_id: str, project: str, root: str, tree: list[str], stats: SnapshotStats,
                    root_mode: int | None = None, host: str | None = None) -> bytes:
    """A snapshot file, its checksum included (``root_mode``: the folder's permission bits, if known;
    ``host``: the machine taking it, if known)."""
    doc: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT, "id": snapshot_id, "project": project,
        "time": snapshot_time(snapshot_id), "root": root, "tree": tree, "stats": asdict(stats),
    }
    if root_mode is not None:
        if _root_mode_problem(root_mode):
            raise ValueError(f"bad root mode {root_mode!r}")
        doc["root_mode"] = root_mode
    if host is not None:
        if problem := _host_problem(host):
            raise ValueError(problem)
        doc["host"] = host
    doc["checksum"] = hash_bytes(canonical(doc))
    return json.dumps(doc, ensure_ascii=True, indent=1).encode("ascii") + b"\n"


def _root_mode_problem(mode: object) -> str | None:
    # Permission bits only: never setuid, setgid or sticky (a restore gives the target no more).
    if type(mode) is not int or not 0 <= mode <= 0o777:
        shown = f"{mode:#o}" if type(mode) is int else f"{mode!r:.40}"
        return f"root_mode {shown} is not the permission bits of a directory (0 to 0o777)"
    return None


def _host_problem(host: object) -> str | None:
    """Why ``host`` cannot name a machine in a snapshot file (None if it can): 1 to 255 printable
    characters, shown in tables and matched by ``?host=`` as they are."""
    if not isinstance(host, str) or not 0 < len(host) <= 255 or not host.isprintable():
        return f"host {host!r:.60} is not 1 to 255 printable characters"
    return None


_STATS_INTS = ("files", "bytes", "files_new", "files_changed", "files_unchanged", "bytes_added", "warnings")


def _snapshot_problem(doc: Any, snapshot_id: str) -> str | None:
    if not isinstance(doc, dict):
        return "not a JSON object"
    checksum = doc.pop("checksum", None)
    if not isinstance(checksum, str) or hash_bytes(canonical(doc)) != checksum:
        return "checksum mismatch"
    if doc.get("format") != SNAPSHOT_FORMAT or doc.get("id") != snapshot_id:
        return "not a snapshot file of this id and format"
    for key in ("project", "time", "root"):
        if not isinstance(doc.get(key), str):
            return f"{key} is not a string"
    if "root_mode" in doc and (problem := _root_mode_problem(doc["root_mode"])):
        return problem
    if "host" in doc and (problem := _host_problem(doc["host"])):
        return problem
    tree = doc.get("tree")
    if not isinstance(tree, list) or not all(isinstance(h, str) and _HASH_RE.match(h) for h in tree):
        return "tree is not a list of hashes"
    stats = doc.get("stats")
    if not isinstance(stats, dict):
        return "stats is not an object"
    for key in (*_STATS_INTS, "skipped"):
        value = stats.get(key, 0) if key == "skipped" else stats.get(key)
        if type(value) is not int or not 0 <= value < 2**63:
            return f"stats.{key} is not a count"
    duration = stats.get("duration_seconds")
    if not isinstance(duration, int | float) or isinstance(duration, bool) or not 0 <= duration < 1e12:
        return "stats.duration_seconds is not a duration"  # the range test also rejects NaN
    return None


def snapshot_file_id(data: bytes) -> str | None:
    """The id a snapshot file says it is of (not verified: :func:`decode_snapshot` does that); None if it
    names none. For encrypted stores, whose file names do not hold the id."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    sid = doc.get("id") if isinstance(doc, dict) else None
    return sid if isinstance(sid, str) and SNAPSHOT_ID_RE.match(sid) else None


def decode_snapshot(snapshot_id: str, data: bytes) -> SnapshotRecord:
    """Parse and verify a snapshot file: its checksum, and the type and range of every field used.

    Raises:
        CorruptDataError: not a snapshot file of this id, its checksum does not match, or a field is wrong.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    problem = _snapshot_problem(doc, snapshot_id)
    if problem is not None:
        raise CorruptDataError(f"snapshot file {snapshot_id}.json is damaged ({problem})")
    stats = doc["stats"]
    info = SnapshotInfo(
        id=snapshot_id, project=doc["project"], time=doc["time"], files=stats["files"],
        bytes=stats["bytes"], files_new=stats["files_new"], files_changed=stats["files_changed"],
        files_unchanged=stats["files_unchanged"], bytes_added=stats["bytes_added"],
        duration_seconds=stats["duration_seconds"], warnings=stats["warnings"], host=doc.get("host"),
    )
    return SnapshotRecord(info, doc["root"], list(doc["tree"]), stats.get("skipped", 0), doc.get("root_mode"))
