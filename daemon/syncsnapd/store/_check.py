"""Verifying a store: :class:`StoreCheck` and what it reports (:class:`CheckReport`, :class:`Problem`).

:class:`StoreCheck` verifies at two levels. The fast level reads every index, checks that every pack is
present with the size its index implies and intact header and footer, and reads every snapshot's list of
entries to check that every blob it references is stored: each distinct list (tree group) once, however
many snapshots share it, so a check costs what the history stores, not how many snapshots list it. ``read_data`` also re-hashes every blob. Each
:class:`Problem` (missing or corrupt pack, index, chunk or snapshot file) carries the snapshots and files
it damages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ._errors import CorruptDataError, PackMissing, StoreError
from ._format import (
    PACK_FOOTER,
    PACK_MAGIC,
    ChunkLocation,
    IndexRecord,
    SnapshotInfo,
    decode_tree_group,
    hash_bytes,
)

if TYPE_CHECKING:
    from ._reader import ChunkReader
    from ._repository import Store

__all__ = ["DAMAGE_PATHS", "CheckReport", "Damage", "DamagedSnapshot", "Problem", "StoreCheck"]

# How many affected paths a check keeps per snapshot and problem (the counts are always complete).
DAMAGE_PATHS = 10

# What one list of entries (tree group) costs every snapshot that lists it: the problem that makes the
# group itself unreadable (None when it was read), the damaged files' paths in walk order, and per
# problem the paths of the files it damages.
_GroupCost = tuple[int | None, list[str], list[tuple[int, list[str]]]]


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
    # Distinct lists of entries (tree groups) read and decoded: each once, however many snapshots share it.
    tree_groups: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "read_data": self.read_data, "snapshots": self.snapshots, "packs": self.packs,
                "chunks": self.chunks, "bytes_read": self.bytes_read, "unindexed_packs": self.unindexed_packs,
                "tree_groups": self.tree_groups,
                "problems": [p.to_json() for p in self.problems],
                "damaged": [d.to_json() for d in self.damaged]}


class StoreCheck:
    """One verification of the store, in three phases a caller can report as steps:

    1. :meth:`scan`: list the snapshots (damaged snapshot files are problems), read every index (a
       damaged index is a problem; its pack's own copy is used when intact) and list the packs;
    2. :meth:`verify_packs`: every indexed pack is present, with the size its index implies and intact
       header and footer; with ``read_data``, every blob decodes to data with its hash;
    3. :meth:`verify_snapshots`: every snapshot's list of entries can be read and every blob it
       references is present and intact. Each problem gets the snapshots and files it damages.

    The fast level (``read_data=False``) reads indexes, pack headers and footers and the lists of
    entries, not the file content. In an encrypted store every object read is authenticated first: one that
was tampered with (or swapped for another) is reported corrupt like a damaged one. Snapshots are listed before indexes and indexes before packs: each is
    durable before the next needs it, so a daemon writing meanwhile causes no false alarm. Packs without
    an index (a crash, or a pack sealed while this runs) are not problems: their footer is used.
    """

    def __init__(self, store: Store, *, read_data: bool) -> None:
        self._store = store
        self.report = CheckReport(read_data=read_data)
        self._infos: dict[str, SnapshotInfo] = {}
        self._indexed: dict[str, list[IndexRecord]] = {}
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
        damaged: list[str] = []
        self._infos = store.catalog.scan(damaged)
        for sid in damaged:
            self._problem(Problem("corrupt", "snapshot", sid, "the snapshot file is damaged"))
        self.report.snapshots = len(self._infos)
        store.index.refresh()
        for pack in store.files.indexed_packs():
            try:
                data = store.files.index_path(pack).read_bytes()
            except FileNotFoundError:
                continue  # deleted by a prune meanwhile
            except OSError as exc:
                self._problem(Problem("corrupt", "index", pack, f"cannot be read: {exc.strerror}"))
                continue
            try:
                records = store.files.index_records(data)
                if hash_bytes(data) != pack:
                    raise CorruptDataError("its content does not match its name")
            except CorruptDataError as exc:
                detail = str(exc)
                try:
                    data = store.pack_footer(pack)
                    records = store.files.index_records(data)
                    if hash_bytes(data) != pack:
                        raise CorruptDataError("name mismatch")
                    detail += "; the pack's own copy is intact and the next start of the daemon re-creates it"
                except (OSError, CorruptDataError):
                    self._problem(Problem("corrupt", "index", pack, detail))
                    continue  # its blobs are unknown; the snapshots needing them show as damaged
                self._problem(Problem("corrupt", "index", pack, detail))
            self._indexed[pack] = records
            self._index_bytes[pack] = data
        self._sizes = store.pack_sizes()
        self._on_disk = set(self._sizes)
        unindexed = self._on_disk - set(self._indexed)
        for pack in sorted(unindexed):
            try:
                data = store.pack_footer(pack)
                records = store.files.index_records(data)
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
                if size < 0 and not store.files.index_path(pack).exists():
                    size = -2  # deleted by a prune meanwhile, with its index
                # Problems of this pack, with the blobs each makes unusable; kept only if the pack was
                # not deleted by a prune while it was being checked (a prune deletes the index first).
                found: list[tuple[Problem, list[str]]] = []
                if size == -1:
                    found.append((Problem("missing", "pack", pack, f"{len(records)} chunks"), hashes))
                elif size >= 0:
                    index_bytes = self._index_bytes[pack]
                    end = max((off + length for _, off, length, _, _ in records), default=len(PACK_MAGIC))
                    expected = end + len(index_bytes) + PACK_FOOTER.size
                    beyond: list[str] = [h for h, r in zip(hashes, records, strict=True) if r[1] + r[2] > size]
                    frame = store.pack_frame_ok(pack, index_bytes, size)
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
        return not self._store.files.index_path(pack).exists()

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

        # Tree group hash -> what it costs any snapshot that lists it (see _GroupCost). Groups
        # are shared by the snapshots of an unchanged folder: each is read and decoded once per check.
        verified: dict[str, _GroupCost] = {}

        def verify_group(th: str, reader: ChunkReader) -> _GroupCost:
            n = problem_of(th)
            group = None
            if n is None:
                loc = known[th]
                try:
                    try:
                        data = reader.read_at(th, loc)
                    except PackMissing:
                        if store.files.index_path(loc.pack).exists():
                            raise
                        data = reader.read(th)  # moved by a prune since the scan: look it up again
                    group = decode_tree_group(data)
                    report.tree_groups += 1
                except (StoreError, OSError) as exc:
                    reason = str(exc).rsplit(f" in pack {loc.pack} ", 1)[-1]
                    n = bad[th] = self._problem(Problem("corrupt", "chunk", th, reason, pack=loc.pack))
                except (ValueError, TypeError):
                    n = bad[th] = self._problem(Problem("corrupt", "chunk", th, "a list of entries that "
                                                        "cannot be decoded", pack=loc.pack))
            if group is None:
                assert n is not None
                return n, [], []
            damaged: dict[str, None] = {}
            per_problem: dict[int, list[str]] = {}
            refs = {h for e in group if e.kind == "file" for h in e.chunks}
            if refs <= known.keys() and refs.isdisjoint(bad):
                return None, [], []  # the common case: every chunk it lists is stored and intact
            for e in group:
                if e.kind != "file":
                    continue
                for n2 in dict.fromkeys(p for p in map(problem_of, e.chunks) if p is not None):
                    per_problem.setdefault(n2, []).append(e.path)
                    damaged[e.path] = None
            return None, list(damaged), list(per_problem.items())

        with store.reader() as reader:
            for sid in sorted(self._infos):
                if check is not None:
                    check()
                try:
                    record = store.catalog.read(sid)
                except FileNotFoundError:
                    continue  # forgotten by a prune meanwhile
                except (OSError, CorruptDataError):
                    self._problem(Problem("corrupt", "snapshot", sid, "the snapshot file is damaged"))
                    continue
                files: dict[str, None] = {}  # damaged paths of this snapshot, in order
                listing = False
                for th in record.tree:
                    result = verified.get(th)
                    if result is None:
                        result = verified[th] = verify_group(th, reader)
                    unreadable, damaged, found = result
                    if unreadable is not None:
                        hurt.setdefault(unreadable, {}).setdefault(sid, [0, [], False])[2] = True
                        listing = True
                        continue
                    for n2, group_paths in found:
                        entry = hurt.setdefault(n2, {}).setdefault(sid, [0, [], False])
                        entry[0] += len(group_paths)
                        entry[1].extend(group_paths[:DAMAGE_PATHS - len(entry[1])])
                    files.update(dict.fromkeys(damaged))
                if files or listing:
                    paths = tuple(list(files)[:DAMAGE_PATHS])
                    report.damaged.append(DamagedSnapshot(sid, len(files), paths, listing))
                if progress is not None:
                    progress(1, 0)
        for n, per_snapshot in hurt.items():
            damages = tuple(Damage(sid, c, tuple(p), listing) for sid, (c, p, listing) in sorted(per_snapshot.items()))
            report.problems[n] = replace(report.problems[n], damages=damages)
        return report
