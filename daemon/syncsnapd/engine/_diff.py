"""What changed between two snapshots, or between a snapshot and the live folder.

Between snapshots only the lists of entries are read: files compare by size and chunk list (equal
chunk hashes mean equal content), symlinks by target, everything by kind and permission bits. Against
the live folder the folder is walked as a snapshot would walk it (same ignore rules, same
``O_NOFOLLOW`` discipline); a file whose size, mtime and inode match the snapshot's (and that the
snapshot trusted, inode not 0) is taken as unchanged without reading it, a file of another size as
changed, and only the rest is read and hashed chunk by chunk.

A modified entry lists its changes: ``content`` (file data or symlink target), ``mode`` (permission
bits) and ``type`` (file, directory and symlink replaced by one another; then nothing else is compared).
Modification times alone are not a change.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from ..core import SyncsnapdError, walked_path
from ..store import Chunker, Entry
from ._dirs import DirChain as _DirChain
from ._dirs import SnapshotError

__all__ = ["Diff", "DiffError", "Modified", "Side", "diff_entries", "scan_live"]

# Lists longer than this are cut in the JSON form (the summary still counts everything).
DEFAULT_LIMIT = 10_000


class DiffError(SyncsnapdError):
    """The live folder cannot be read (``code`` ``folder_missing``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True)
class Side:
    """An entry that exists on one side only (added or removed)."""

    path: str
    kind: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size}


@dataclass(frozen=True)
class Modified:
    """An entry on both sides that differs in ``change`` (``content``, ``mode``, ``type``)."""

    path: str
    change: tuple[str, ...]
    kind_before: str
    kind_after: str
    size_before: int
    size_after: int
    mode_before: int
    mode_after: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "change": list(self.change), "kind_before": self.kind_before,
                "kind_after": self.kind_after, "size_before": self.size_before, "size_after": self.size_after,
                "mode_before": f"{self.mode_before:04o}", "mode_after": f"{self.mode_after:04o}"}


@dataclass
class Diff:
    """The differences from ``from_`` to ``to`` (snapshot ids, or ``live``), each list sorted by path."""

    from_: str
    to: str
    added: list[Side] = field(default_factory=list)
    removed: list[Side] = field(default_factory=list)
    modified: list[Modified] = field(default_factory=list)
    unchanged: int = 0
    bytes_before: int = 0  # total size of the files on each side
    bytes_after: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added), "removed": len(self.removed), "modified": len(self.modified),
            "unchanged": self.unchanged,
            "size_added": sum(s.size for s in self.added if s.kind == "file"),
            "size_removed": sum(s.size for s in self.removed if s.kind == "file"),
            "size_before": self.bytes_before, "size_after": self.bytes_after,
        }

    def to_json(self, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        """The API form (docs/api.md); each list holds at most ``limit`` items (``truncated`` says so)."""
        return {
            "from": self.from_, "to": self.to,
            "added": [s.to_json() for s in self.added[:limit]],
            "removed": [s.to_json() for s in self.removed[:limit]],
            "modified": [m.to_json() for m in self.modified[:limit]],
            "truncated": max(len(self.added), len(self.removed), len(self.modified)) > limit,
            "summary": self.summary(),
        }


def _changes(a: Entry, b: Entry) -> tuple[str, ...]:
    if a.kind != b.kind:
        return ("type",)
    out: list[str] = []
    if (a.kind == "file" and (a.size != b.size or a.data != b.data)) or (a.kind == "symlink" and a.data != b.data):
        out.append("content")
    if a.mode != b.mode:
        out.append("mode")
    return tuple(out)


def diff_entries(before: Iterable[Entry], after: Iterable[Entry], *, from_: str, to: str) -> Diff:
    """Compare two lists of entries (a snapshot's, or :func:`scan_live`'s)."""
    old = {e.path: e for e in before}
    diff = Diff(from_, to)
    seen: set[str] = set()
    for b in after:
        seen.add(b.path)
        if b.kind == "file":
            diff.bytes_after += b.size
        a = old.get(b.path)
        if a is None:
            diff.added.append(Side(b.path, b.kind, b.size if b.kind != "dir" else 0))
            continue
        change = _changes(a, b)
        if change:
            diff.modified.append(Modified(b.path, change, a.kind, b.kind, a.size, b.size, a.mode, b.mode))
        else:
            diff.unchanged += 1
    for a in old.values():
        if a.kind == "file":
            diff.bytes_before += a.size
        if a.path not in seen:
            diff.removed.append(Side(a.path, a.kind, a.size if a.kind != "dir" else 0))
    diff.added.sort(key=lambda s: s.path)
    diff.removed.sort(key=lambda s: s.path)
    diff.modified.sort(key=lambda m: m.path)
    return diff


def scan_live(root: str, reference: dict[str, Entry], *, chunker: Chunker,
              ignore: Callable[[str], bool] | None = None,
              check: Callable[[], None] | None = None,
              chunk_id: Callable[[memoryview], str] | None = None) -> Iterator[Entry]:
    """The entries of the live folder ``root``, as a snapshot would record them, for comparing with
    ``reference`` (the snapshot's entries by path). A file's ``data`` is the reference's chunk list when
    its size, mtime and inode match a trusted reference entry, its own chunk hashes when it has the same
    size as the reference but may differ, and ``[]`` otherwise (new, or of another size: no need to read
    it), cut by ``chunker`` (the store's). Files that vanish or cannot be read while scanned are left
    out, as a snapshot would. ``chunk_id``: how the store names chunks (``Store.chunk_id``; keyed in an
    encrypted store), plain blake3 by default.
    ``ignore(relpath)`` is the snapshot's predicate (a directory's path ends in ``/``).

    Raises:
        DiffError: the folder itself cannot be read.
    """
    check = check or (lambda: None)
    try:
        chain = _DirChain(root)
    except SnapshotError as exc:
        raise DiffError("folder_missing", exc.message) from exc
    view = memoryview(bytearray(chunker.buffer_size))
    try:
        stack = [""]
        while stack:
            check()
            rel_dir = stack.pop()
            try:
                dir_fd = chain.open_dir(rel_dir)
                with os.scandir(dir_fd) as it:
                    listing = sorted(it, key=lambda d: d.name)
            except OSError as exc:
                if not rel_dir:
                    raise DiffError("folder_missing", f"The folder {root} cannot be read: {exc.strerror}.") from exc
                continue
            subdirs: list[str] = []
            for de in listing:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                if ignore is not None and ignore(walked_path(rel, de)):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                mode = st.st_mode & 0o7777
                if stat.S_ISREG(st.st_mode):
                    ref = reference.get(rel)
                    data: list[str] = []
                    if ref is not None and ref.kind == "file" and ref.size == st.st_size:
                        if ref.inode and ref.inode == st.st_ino and ref.mtime_ns == st.st_mtime_ns:
                            data = ref.chunks
                        else:
                            hashed = _hash_file(chain, rel, chunker, view, check, chunk_id or _blake3)
                            if hashed is None:
                                continue
                            data = hashed
                    yield Entry(rel, "file", st.st_size, st.st_mtime_ns, mode, st.st_ino, data)
                elif stat.S_ISDIR(st.st_mode):
                    subdirs.append(rel)
                    yield Entry(rel, "dir", 0, st.st_mtime_ns, mode, st.st_ino, None)
                elif stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(de.name, dir_fd=dir_fd)
                    except OSError:
                        continue
                    yield Entry(rel, "symlink", st.st_size, st.st_mtime_ns, mode, st.st_ino, target)
            stack.extend(reversed(subdirs))
    finally:
        chain.close()


def _blake3(data: memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def _hash_file(chain: _DirChain, rel: str, chunker: Chunker, view: memoryview,
               check: Callable[[], None], chunk_id: Callable[[memoryview], str]) -> list[str] | None:
    try:
        fd = chain.open_file(rel)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EPERM):
            return None
        raise
    try:
        hashes: list[str] = []
        for data in chunker.split(fd, view, sys.maxsize):  # to its end, however long it is now
            check()
            hashes.append(chunk_id(data))
        return hashes
    except OSError:
        return None
    finally:
        os.close(fd)
