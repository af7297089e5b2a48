"""Every version of a path across a store's snapshots, from a per-store cache of path -> content id by
snapshot, built incrementally (issue 13; the API is ``GET /projects/{id}/versions`` and ``/find``).

What it keeps
=============

A snapshot's tree is a list of *groups* cut at content-defined points (``_format.tree_groups``), and a
group is named by its hash: two snapshots of a folder where a few files changed share all but a few
groups. So :class:`VersionIndex` decodes each distinct group **once**, ever, and keeps:

* ``records``: every distinct ``(path, kind, size, mtime_ns, mode, content_id, target)`` seen (a
  :data:`Record`); a file unchanged for 500 snapshots is one record;
* ``groups``: group hash -> the record numbers of its entries (a short array of ints);
* ``snapshots``: snapshot id -> its group hashes (``SnapshotRecord.tree``);
* ``by_path``: path -> the numbers of its records (a path has one record per version, give or take a
  touched mtime), from which a look-up starts.

A look-up of path P over a project's snapshots takes P's record numbers, intersects them with each group
those snapshots hold (once per distinct group, in C: ``set.intersection``), and walks the snapshots in
time order: which record of P each one holds, or none. Consecutive snapshots with the same content id are
one version (:func:`versions_of`); a snapshot without P after one with it is a deletion.

Keeping it current
==================

:meth:`VersionIndex.update` compares the snapshots it knows with the store's listing: a new snapshot
costs reading its snapshot file and decoding the groups no other snapshot had (``statistics()``
counts them: ``groups_decoded``); a forgotten one (forget, prune, or another machine's prune on S3) is
dropped with the groups and records nothing else holds. Every look-up calls it first.

On disk
=======

``cache/versions.json`` under the store's directory (an S3 store's is its local staging and cache
directory under the daemon's state directory): a first line ``syncsnap-versions <FORMAT_VERSION>
<blake3 of the rest>``, then one JSON object ``{"records": [[path, kind, size, mtime_ns, mode,
content_id, target], ...], "groups": [[hash, NUMBERS of its records], ...], "snapshots": {id: NUMBERS
of its groups (places in "groups")}}``, where NUMBERS is base64 of 4-byte little-endian unsigned words
(written and read in C: they are most of the file).
Written after each change as a temporary file in the same directory, fsynced, renamed over the old one
(a kill at any moment leaves the old file or the new one, and perhaps a temporary file, removed at the
next write); the directory is 0700 and the file 0600. A file
whose hash, format version or contents do not check out is not trusted: it is ignored and the cache is
rebuilt from the store (and written again).

Paths are stored in plain text. An encrypted store's cache is therefore written only under a
directory that is local state already (an S3 store's directory under the state dir, 0700/0600); a local
encrypted store's directory may sit on a disk that travels, so its cache is kept in memory only. A store
opened read-only (the offline commands, the mount) keeps its cache in memory too: it never writes into
the store's directory.
"""

from __future__ import annotations

import array
import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ._content import content_id
from ._errors import CorruptDataError, UnknownSnapshotError
from ._format import decode_tree_group, encode_tree_group, hash_bytes

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["FORMAT_VERSION", "Record", "Version", "VersionIndex", "versions_cache_path", "merge_lookups", "versions_of"]

log = logging.getLogger("syncsnapd.store")

# The cache file's format; a file of another version is rebuilt, not read.
FORMAT_VERSION = 1
MAGIC = "syncsnap-versions"
CACHE_DIR = "cache"
CACHE_FILE = "versions.json"

# (path, kind, size, mtime_ns, mode, content id or None for a directory, symlink target or None)
Record = tuple[str, str, int, int, int, "str | None", "str | None"]

_KINDS = ("file", "dir", "symlink")
# An array typecode of 4-byte unsigned words (record and group numbers in the file).
_WORD = "I" if array.array("I").itemsize == 4 else "L"
Numbers: TypeAlias = "array.array[int]"  # of _WORD


@dataclass(frozen=True)
class Version:
    """One version of a path: consecutive snapshots holding the same content (or, ``kind`` "deleted",
    consecutive snapshots without the path after it existed). ``record`` is what the first of them holds
    (None for a deletion); ``first``/``last``: snapshot ids; ``count``: how many snapshots."""

    kind: str
    content_id: str | None
    record: Record | None
    first: str
    last: str
    count: int


def versions_of(timeline: Sequence[tuple[str, Record | None]], *, held_before: bool = False) -> list[Version]:
    """The versions of one path from ``(snapshot id, what it holds there or None)`` in time order,
    oldest first. Snapshots before the path's first appearance are no version, unless ``held_before``
    (the snapshot just before the timeline held it: they are its deletion); a directory at the path is
    a version of kind "dir" (content id None)."""
    out: list[Version] = []
    start = 0 if held_before else next((i for i, (_, rec) in enumerate(timeline) if rec is not None), None)
    if start is None or not timeline:
        return out
    run_key: tuple[str, str | None] | None = None
    first_sid = ""
    first_rec: Record | None = None
    count = 0
    last_sid = ""
    for sid, rec in timeline[start:]:
        key = ("deleted", None) if rec is None else (rec[1], rec[5])
        if key != run_key:
            if run_key is not None:
                out.append(Version(run_key[0], run_key[1], first_rec, first_sid, last_sid, count))
            run_key, first_sid, first_rec, count = key, sid, rec, 0
        count += 1
        last_sid = sid
    if run_key is not None:
        out.append(Version(run_key[0], run_key[1], first_rec, first_sid, last_sid, count))
    return out


def _record_of(entry: Any) -> Record:
    return (entry.path, entry.kind, entry.size, entry.mtime_ns, entry.mode, content_id(entry),
            entry.data if entry.kind == "symlink" else None)


_indexes: weakref.WeakKeyDictionary[Store, VersionIndex] = weakref.WeakKeyDictionary()
_indexes_lock = threading.Lock()


class VersionIndex:
    """The versions cache of one store. Thread-safe; its methods block (call them in worker threads).

    Get a store's with :meth:`of` (one per open store, made on first use and loaded from its file).
    """

    def __init__(self, store: Store, path: Path | None) -> None:
        self._store = store
        self.path = path  # the cache file; None: kept in memory only
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._record_ids: dict[Record, int] = {}
        self._by_path: dict[str, list[int]] = {}
        self._groups: dict[str, Numbers] = {}  # 4-byte words: a group's numbers cost 1 KiB
        self._snapshots: dict[str, tuple[str, ...]] = {}
        # Snapshots whose file or list of files is damaged -> why: left out of every answer (not retried
        # while this index lives; `syncsnapd check` says what is damaged, a forget or prune removes them).
        self.damaged: dict[str, str] = {}
        # An entry's canonical JSON (without its brackets) -> its record number: see _decode_group. Not
        # in the file (a piece holds the inode, which records leave out); filled as groups are decoded.
        self._pieces: dict[bytes, int] = {}
        # Counters for tests and the benchmark (statistics()).
        self._decoded = 0
        self._loaded = False
        self._rebuilt_damaged = 0
        if path is not None:
            self._load()

    @classmethod
    def of(cls, store: Store) -> VersionIndex:
        """The cache of ``store`` (the same object for every caller while the store is open)."""
        with _indexes_lock:
            index = _indexes.get(store)
            if index is None:
                index = _indexes[store] = cls(store, versions_cache_path(store))
            return index

    @classmethod
    def drop(cls, store: Store) -> None:
        """Forget the cache object of ``store`` (the file stays): the next :meth:`of` loads it again, as
        a daemon starting does."""
        with _indexes_lock:
            _indexes.pop(store, None)

    # --- the state --------------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """``groups_decoded``: tree groups read from the store and decoded by this object;
        ``loaded_from_file``: 1 when it started from its file; ``damaged_files``: files not trusted;
        ``snapshots``, ``groups``, ``records``, ``paths``: what it holds now."""
        with self._lock:
            return {"groups_decoded": self._decoded, "loaded_from_file": int(self._loaded),
                    "damaged_files": self._rebuilt_damaged, "snapshots": len(self._snapshots),
                    "groups": len(self._groups), "records": len(self._records), "paths": len(self._by_path)}

    def update(self) -> bool:
        """Take in the store's snapshots added or forgotten since the last call (new groups decoded,
        forgotten ones dropped), and write the file if anything changed. Returns whether it did.

        Raises:
            StoreError: a new snapshot's file or tree cannot be read; what was taken in before it stands.
                A damaged one (CorruptDataError) is not raised: it is left out, in :attr:`damaged`.
        """
        with self._lock:
            listed = [info.id for info in self._store.list_snapshots()]
            present = set(listed)
            for sid in [sid for sid in self.damaged if sid not in present]:
                del self.damaged[sid]
            gone = [sid for sid in self._snapshots if sid not in present]
            new = [sid for sid in listed if sid not in self._snapshots and sid not in self.damaged]
            if not gone and not new:
                return False
            for sid in gone:
                del self._snapshots[sid]
            if gone:
                self._compact()
            try:
                # Pinned while read: a prune cannot take their trees from under us.
                with self._store.pinned(new):
                    for sid in new:
                        try:
                            self._add_snapshot(sid)
                        except UnknownSnapshotError:
                            continue  # forgotten since the listing
                        except CorruptDataError as exc:
                            log.warning("versions: snapshot %s left out: %s", sid, exc)
                            self.damaged[sid] = str(exc)
            finally:
                self._save()
            return True

    def _add_snapshot(self, sid: str) -> None:
        record = self._store.catalog.record(sid)
        missing = [h for h in dict.fromkeys(record.tree) if h not in self._groups]
        if missing:
            with self._store.reader() as reader:
                for h in missing:
                    try:
                        self._groups[h] = self._decode_group(reader.read(h))
                    except CorruptDataError as exc:
                        raise CorruptDataError(f"the list of files of snapshot {sid} is damaged: {exc}") from exc
                    self._decoded += 1
        self._snapshots[sid] = tuple(record.tree)

    def _decode_group(self, data: bytes) -> Numbers:
        """The record numbers of a tree group's entries.

        The fast way: a group is canonical JSON (``encode_tree_group``), so an entry unchanged since an
        earlier group has the same bytes there; the group is cut at ``],[`` and each piece looked up
        among the pieces seen before (in C). Only new pieces are decoded, with every check of
        :func:`decode_tree_group`, and they are kept only if, joined again, they are exactly the
        canonical encoding of the entries they decode to (so a cut inside a file name, or a group not
        written canonically, cannot mislead it: that group takes the slow way, decoded whole).
        """
        pieces = self._pieces
        if data.startswith(b"[[") and data.endswith(b"]]"):
            cut = data[2:-2].split(b"],[")
            new = list(set(cut).difference(pieces))
            if not new:
                return array.array(_WORD, map(pieces.__getitem__, cut))
            joined = b"[[" + b"],[".join(new) + b"]]"
            try:
                entries = decode_tree_group(joined)
            except CorruptDataError:
                entries = []
            # No piece holds "],[" (the group was cut at every one), so when the joined pieces are the
            # canonical encoding of as many entries, every cut was between two entries.
            if len(entries) == len(new) and encode_tree_group(entries) == joined:
                for c, e in zip(new, entries, strict=True):
                    pieces[c] = self._intern(_record_of(e))
                return array.array(_WORD, map(pieces.__getitem__, cut))
        return array.array(_WORD, [self._intern(_record_of(e)) for e in decode_tree_group(data)])

    def _intern(self, rec: Record) -> int:
        rid = self._record_ids.get(rec)
        if rid is None:
            rid = self._record_ids[rec] = len(self._records)
            self._records.append(rec)
            self._by_path.setdefault(rec[0], []).append(rid)
        return rid

    def _compact(self) -> None:
        """Drop the groups no snapshot holds and the records no group holds (renumbering the rest)."""
        live = {h for tree in self._snapshots.values() for h in tree}
        groups = {h: g for h, g in self._groups.items() if h in live}
        old, old_pieces = self._records, self._pieces
        self._records, self._record_ids, self._by_path = [], {}, {}
        renumber: dict[int, int] = {}
        for h, g in groups.items():
            new_g = []
            for rid in g:
                n = renumber.get(rid)
                if n is None:
                    n = renumber[rid] = self._intern(old[rid])
                new_g.append(n)
            groups[h] = array.array(_WORD, new_g)
        self._groups = groups
        self._pieces = {c: renumber[r] for c, r in old_pieces.items() if r in renumber}

    # --- look-ups -----------------------------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        """The snapshots it holds, oldest first."""
        with self._lock:
            return sorted(self._snapshots)

    def paths(self, match: Callable[[str], bool] | None = None) -> list[str]:
        """Every path any snapshot of the store held (that ``match`` accepts), sorted."""
        with self._lock:
            known = list(self._by_path)
        return sorted(p for p in known if match is None or match(p))

    def lookup(self, snapshot_ids: Iterable[str], paths: Iterable[str]) -> dict[str, dict[str, Record]]:
        """What each of ``snapshot_ids`` holds at each of ``paths``: path -> {snapshot id: record}, only
        paths held by at least one of them; snapshots it does not hold are skipped (call :meth:`update`
        first)."""
        with self._lock:
            wanted: set[int] = set()
            for p in paths:
                wanted.update(self._by_path.get(p, ()))
            out: dict[str, dict[str, Record]] = {}
            if not wanted:
                return out
            hits: dict[str, set[int]] = {}
            records = self._records
            for sid in snapshot_ids:
                tree = self._snapshots.get(sid)
                if tree is None:
                    continue
                for h in tree:
                    found = hits.get(h)
                    if found is None:
                        found = hits[h] = wanted.intersection(self._groups[h])
                    for rid in found:
                        rec = records[rid]
                        out.setdefault(rec[0], {})[sid] = rec
            return out

    # --- the file -----------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the versions cache %s (%s); rebuilding it", self.path, exc.strerror)
            return
        try:
            self._parse(raw)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, binascii.Error) as exc:
            log.warning("the versions cache %s is damaged or of another version (%s); rebuilding it",
                        self.path, exc)
            self._rebuilt_damaged += 1
            self._records, self._record_ids, self._by_path, self._groups, self._snapshots = [], {}, {}, {}, {}
            return
        self._loaded = True

    def _parse(self, raw: bytes) -> None:
        head, sep, body = raw.partition(b"\n")
        parts = head.decode("ascii").split(" ")
        if not sep or len(parts) != 3 or parts[0] != MAGIC:
            raise ValueError("not a versions cache file")
        if parts[1] != str(FORMAT_VERSION):
            raise ValueError(f"format version {parts[1]!r}, not {FORMAT_VERSION}")
        if hash_bytes(body) != parts[2]:
            raise ValueError("its contents do not match its hash")
        obj = json.loads(body)
        records = obj["records"]
        for r in records:
            if not (type(r) is list and len(r) == 7 and type(r[0]) is str and r[1] in _KINDS
                    and type(r[2]) is int and type(r[3]) is int and type(r[4]) is int
                    and (r[5] is None or type(r[5]) is str) and (r[6] is None or type(r[6]) is str)):
                raise ValueError("a record is not valid")
            self._intern((r[0], r[1], r[2], r[3], r[4], r[5], r[6]))
        if len(self._records) != len(records):
            raise ValueError("records repeat")
        n = len(records)
        groups: dict[str, Numbers] = {}
        order: list[str] = []
        for h, g in obj["groups"]:
            if type(h) is not str or h in groups:
                raise ValueError("a group is not valid")
            groups[h] = _unpack(g, n)
            order.append(h)
        snapshots: dict[str, tuple[str, ...]] = {}
        for sid, tree in obj["snapshots"].items():
            snapshots[sid] = tuple(order[i] for i in _unpack(tree, len(order)))
        self._groups, self._snapshots = groups, snapshots

    def _save(self) -> None:
        if self.path is None:
            return
        place = {h: i for i, h in enumerate(self._groups)}
        body = json.dumps({"records": self._records,
                           "groups": [[h, _pack(g)] for h, g in self._groups.items()],
                           "snapshots": {sid: _pack([place[h] for h in tree]) for sid, tree in self._snapshots.items()}},
                          ensure_ascii=True, separators=(",", ":")).encode("ascii")
        data = f"{MAGIC} {FORMAT_VERSION} {hash_bytes(body)}\n".encode() + body
        folder = self.path.parent
        tmp = folder / f".{CACHE_FILE}.{secrets.token_hex(4)}.tmp"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            # A temporary file of a process killed mid-write (only the writable opener, which holds the
            # store's lock, writes here).
            for stale in folder.glob(f".{CACHE_FILE}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        except OSError as exc:
            # Only a cache: the answers stand, the next change tries again.
            log.warning("cannot write the versions cache %s: %s", self.path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _pack(numbers: Sequence[int]) -> str:
    """Numbers below 2**32 as base64 of 4-byte little-endian words: the bulk of the file, written and
    read in C."""
    words = array.array(_WORD, numbers)
    if sys.byteorder == "big":
        words.byteswap()
    return base64.b64encode(words.tobytes()).decode("ascii")


def _unpack(text: object, bound: int) -> Numbers:
    """:func:`_pack`'s numbers back, each checked to be below ``bound``; ValueError when not."""
    if type(text) is not str:
        raise ValueError("a list of numbers is not a string")
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("a list of numbers is cut short")
    words = array.array(_WORD)
    words.frombytes(raw)
    if sys.byteorder == "big":
        words.byteswap()
    if words and max(words) >= bound:
        raise ValueError("a number points past the end of its table")
    return words


def versions_cache_path(store: Store) -> Path | None:
    """Where ``store``'s versions cache is written; None: in memory only (read-only open, or a local
    encrypted store: see the module docstring)."""
    if not store.writable:
        return None
    if store.encrypted and store.remote is None:
        return None
    return Path(store.root) / CACHE_DIR / CACHE_FILE


def merge_lookups(parts: Mapping[str, dict[str, Record]], into: dict[str, dict[str, Record]]) -> None:
    """Add one store's :meth:`VersionIndex.lookup` answer to ``into`` (several stores per project)."""
    for path, held in parts.items():
        into.setdefault(path, {}).update(held)

