"""Restoring a snapshot into a directory, never writing outside it.

Every entry path is validated before anything is written: relative, no empty, ``.`` or ``..``
components, no duplicates, and its parent must be a directory entry of the same snapshot listed before
it. That last rule is what keeps a snapshot holding a symlink ``a -> /etc`` and a file ``a/passwd`` from
writing through the link. As a second line of defence, every directory is opened component by component
from the target with ``O_NOFOLLOW | O_DIRECTORY`` and every file and directory is created with
``O_EXCL``/``mkdir`` relative to its parent's descriptor, so nothing already on disk is followed or
overwritten either.

Restored: content (every chunk verified against its hash), permission bits, modification times (files,
symlinks, directories; a directory's after its contents), symlinks as links with their exact target.
Not restored: owners, hard links (each path becomes its own file), sparse holes, extended attributes;
the target directory itself keeps its own mode and mtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._store import Entry, Store, StoreError, UnknownSnapshotError

__all__ = ["RestoreError", "RestoreStats", "restore_snapshot", "validate_entries"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class RestoreError(Exception):
    """The snapshot cannot be restored to the target (target not empty, unsafe entry, damaged data)."""


@dataclass(frozen=True)
class RestoreStats:
    """What a restore wrote."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


def validate_entries(entries: list[Entry]) -> None:
    """Refuse entries that could write outside the target.

    Raises:
        RestoreError: naming the first offending path.
    """
    dirs: set[str] = set()
    seen: set[str] = set()
    for e in entries:
        path = e.path
        parts = path.split("/")
        if (not path or path.startswith("/") or "\0" in path
                or any(p in ("", ".", "..") for p in parts)):
            raise RestoreError(f"the snapshot has an unsafe path {path!r}; nothing was restored")
        if path in seen:
            raise RestoreError(f"the snapshot lists {path!r} twice; nothing was restored")
        seen.add(path)
        if len(parts) > 1 and path.rpartition("/")[0] not in dirs:
            raise RestoreError(f"the snapshot has {path!r} inside something that is not a directory "
                               "of the snapshot (it could lead outside the target); nothing was restored")
        if e.kind == "dir":
            dirs.add(path)
        elif not ((e.kind == "file" and isinstance(e.data, list))
                  or (e.kind == "symlink" and isinstance(e.data, str))):
            raise RestoreError(f"the snapshot has a malformed entry {path!r}; nothing was restored")


class _Dirs:
    """Opens directories below the target without following symlinks; caches the last one."""

    def __init__(self, target_fd: int) -> None:
        self.target_fd = target_fd
        self._path: str | None = None
        self._fd = -1

    def open(self, rel_dir: str) -> int:
        """A descriptor for ``rel_dir`` ("" is the target). Valid until the next call."""
        if rel_dir == "":
            return self.target_fd
        if rel_dir == self._path:
            return self._fd
        self.close()
        fd = self.target_fd
        for part in rel_dir.split("/"):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            finally:
                if fd != self.target_fd:
                    os.close(fd)
            fd = nfd
        self._path, self._fd = rel_dir, fd
        return fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._path, self._fd = None, -1


def _prepare_target(target: Path) -> int:
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        if not target.is_dir():
            raise RestoreError(f"the target {target} exists and is not a directory") from None
        with os.scandir(target) as it:
            if next(it, None) is not None:
                raise RestoreError(f"the target {target} is not empty; restore into a new or empty "
                                   "directory") from None
    except FileNotFoundError:
        raise RestoreError(f"the parent directory of the target {target} does not exist") from None
    # The target itself may be reached through a symlink the user chose; below it nothing is followed.
    return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def restore_snapshot(store: Store, snapshot_id: str, target: Path) -> RestoreStats:
    """Restore snapshot ``snapshot_id`` into ``target``, which must be missing or an empty directory.

    Synchronous (call it from a worker thread inside the daemon).

    Raises:
        UnknownSnapshotError: no such snapshot.
        RestoreError: target not empty, an entry that would escape the target, or damaged data (then
            the target holds what was restored before the damaged file).
    """
    try:
        entries = store.load_entries(snapshot_id)
    except UnknownSnapshotError:
        raise
    except StoreError as exc:
        raise RestoreError(f"the list of files of snapshot {snapshot_id} cannot be read: {exc}") from exc
    validate_entries(entries)
    target_fd = _prepare_target(Path(target))
    dirs = _Dirs(target_fd)
    files = nbytes = symlinks = 0
    made_dirs: list[Entry] = []
    try:
        with store.reader() as reader:
            for e in entries:
                parent, _, name = e.path.rpartition("/")
                pfd = dirs.open(parent)
                if e.kind == "dir":
                    os.mkdir(name, 0o700, dir_fd=pfd)  # owner-writable until its contents are in
                    made_dirs.append(e)
                elif e.kind == "symlink":
                    os.symlink(e.target, name, dir_fd=pfd)
                    os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
                    symlinks += 1
                else:
                    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
                    try:
                        written = 0
                        for h in e.chunks:
                            try:
                                data = reader.read(h)
                            except StoreError as exc:
                                raise RestoreError(f"cannot restore {e.path!r}: {exc}") from exc
                            view = memoryview(data)
                            while view:
                                view = view[os.write(fd, view):]
                            written += len(data)
                        if written != e.size:
                            raise RestoreError(f"cannot restore {e.path!r}: the snapshot records {e.size} "
                                               f"bytes but its chunks hold {written}")
                        os.fchmod(fd, e.mode)
                        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
                    finally:
                        os.close(fd)
                    files += 1
                    nbytes += written
            # Deepest first, so setting a directory's mode cannot lock us out of its subdirectories,
            # and last, so creating contents no longer changes its mtime.
            for e in reversed(made_dirs):
                dirs.close()
                fd = dirs.open(e.path)
                os.fchmod(fd, e.mode)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
    except OSError as exc:
        raise RestoreError(f"restore into {target} failed: {exc}") from exc
    finally:
        dirs.close()
        os.close(target_fd)
    return RestoreStats(files=files, dirs=len(made_dirs), symlinks=symlinks, bytes=nbytes)
