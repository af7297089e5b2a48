"""Restoring a snapshot, or paths inside it, into a directory, never writing outside it.

Every entry path is validated before anything is written: relative, no empty, ``.`` or ``..``
components, no duplicates, and its parent must be a directory entry of the same snapshot listed before
it. That last rule is what keeps a snapshot holding a symlink ``a -> /etc`` and a file ``a/passwd`` from
writing through the link. As a second line of defence, every directory is opened component by component
from the target with ``O_NOFOLLOW | O_DIRECTORY``, and every file, symlink and directory is created
relative to its parent's descriptor under a name that is a single component, so nothing already on disk
is followed.

Each file is written under a temporary name in its directory (``.syncsnap-restore-*``), verified, given
its mode and mtime, and only then given its name: a restore that fails or is cancelled leaves what it
finished, never a half-written file under a real name. Without ``overwrite`` the target must be new or
empty, and a name that appears meanwhile is not replaced (the file is linked into place, which fails if
the name exists). With ``overwrite`` the target may hold files: each file or symlink of the snapshot
replaces what has its name atomically (``rename``), a directory of the snapshot is merged into an
existing directory, and a file or symlink where the snapshot has a directory is replaced by it; a
directory where the snapshot has a file is left alone and the restore stops (``target_conflict``): a
restore never deletes a directory tree.

Restored: content (every chunk verified against its hash), the read, write and execute bits,
modification times (files, symlinks, directories; a directory's after its contents), symlinks as links
with their exact target. Not restored: owners, and so neither setuid, setgid nor sticky bits (as ``cp``
and ``tar`` without ``-p``: a setuid file restored by root would otherwise run as root with content its
owner chose); hard links (each path becomes its own file), sparse holes, extended attributes.

The target itself: one the restore creates gets the permission bits of the snapshot's folder, as
every restored directory gets its own (0o700 while its contents are written, its mode last; also when
only some paths are restored, since the target stands for the folder); for a snapshot of a version
that did not record them, the mode ``mkdir`` and ``cp -r`` give a new directory (0o777 less the umask).
An existing target, empty or not, with or without ``overwrite``, keeps its own mode, as ``cp -r``
leaves an existing destination directory's. Its mtime is never set.

Every entry is checked as it is read from the store (types, ranges, modes: see
``store.decode_tree_group``), and the folder's recorded mode with the snapshot file; a damaged list or
snapshot file is ``snapshot_damaged``.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core import SyncsnapdError
from ..store import ChunkReader, CorruptDataError, Entry, Store, StoreError, UnknownSnapshotError

__all__ = ["Restore", "RestoreError", "RestoreStats", "check_target", "normalize_path", "restore_snapshot",
           "select_entries", "validate_entries"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".syncsnap-restore-"
# Owners are not restored, so neither are setuid, setgid and sticky (as `cp` and `tar` without `-p`): a
# setuid file of another user, restored by root, would be a setuid-root program whose content that user
# chose. Only the read, write and execute bits are restored.
RESTORED_MODE_BITS = 0o777
# A target the restore creates for a snapshot that does not record its folder's mode: as mkdir(1) and
# `cp -r` create a directory, 0o777 less the umask.
TARGET_MODE = 0o777
# Filesystems without hard links (FAT, some FUSE): a file is renamed into place once its name was seen free.
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


class RestoreError(SyncsnapdError):
    """The snapshot cannot be restored to the target. ``code`` says why (docs/api.md): ``target_invalid``,
    ``target_not_empty``, ``target_outside`` (an entry would lead outside the target), ``path_invalid``,
    ``path_unknown``, ``target_conflict``, ``snapshot_damaged``, ``data_damaged`` or ``io_error``."""

    def __init__(self, message: str, code: str = "io_error") -> None:
        super().__init__(message, code=code)


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
            raise RestoreError(f"the snapshot has an unsafe path {path!r}; nothing was restored", "target_outside")
        if path in seen:
            raise RestoreError(f"the snapshot lists {path!r} twice; nothing was restored", "snapshot_damaged")
        seen.add(path)
        if len(parts) > 1 and path.rpartition("/")[0] not in dirs:
            raise RestoreError(f"the snapshot has {path!r} inside something that is not a directory "
                               "of the snapshot (it could lead outside the target); nothing was restored",
                               "target_outside")
        if e.kind == "dir":
            dirs.add(path)
        elif not ((e.kind == "file" and isinstance(e.data, list))
                  or (e.kind == "symlink" and isinstance(e.data, str))):
            raise RestoreError(f"the snapshot has a malformed entry {path!r}; nothing was restored",
                               "snapshot_damaged")


def normalize_path(path: str) -> str:
    """A path inside a snapshot as given by a user (``docs/``, ``/docs/a.txt``) in the snapshot's form.

    Raises:
        RestoreError: ``path_invalid`` for ``.``/``..`` components, NUL, or an empty path.
    """
    parts = [p for p in path.strip("/").split("/")]
    if not path.strip("/") or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise RestoreError(f"{path!r} is not a path inside a snapshot (relative, without '.' or '..')",
                           "path_invalid")
    return "/".join(parts)


def select_entries(entries: Sequence[Entry], paths: Sequence[str]) -> list[Entry]:
    """The entries at or below ``paths`` (normalized), with the directories leading to them, in order.

    Raises:
        RestoreError: ``path_unknown`` naming a path the snapshot does not have.
    """
    if not paths:
        return list(entries)
    wanted = set(paths)
    found: set[str] = set()
    ancestors = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}
    out: list[Entry] = []
    for e in entries:
        path = e.path
        if path in wanted:
            found.add(path)
            out.append(e)
        elif path in ancestors:
            if e.kind == "dir":
                out.append(e)
        else:
            head = path
            while "/" in head:
                head = head.rpartition("/")[0]
                if head in wanted:
                    out.append(e)
                    break
    for p in paths:
        if p not in found:
            raise RestoreError(f"the snapshot has nothing at {p!r}", "path_unknown")
    return out


def check_target(target: Path, *, overwrite: bool) -> None:
    """Refuse a target that cannot be restored into, before any work (nothing is created).

    Raises:
        RestoreError: ``target_invalid`` (not absolute, not a directory, parent missing) or
            ``target_not_empty`` (without ``overwrite``).
    """
    if not target.is_absolute():
        raise RestoreError(f"the target {target} is not an absolute path", "target_invalid")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise RestoreError(f"the parent directory of the target {target} does not exist",
                               "target_invalid") from None
        return
    if not stat.S_ISDIR(st.st_mode):
        raise RestoreError(f"the target {target} exists and is not a directory", "target_invalid")
    if not overwrite:
        with os.scandir(target) as it:
            if next(it, None) is not None:
                raise RestoreError(f"the target {target} is not empty; restore into a new or empty directory "
                                   "(or allow overwriting)", "target_not_empty")


def _prepare_target(target: Path, overwrite: bool, root_mode: int | None) -> tuple[int, int | None]:
    """Open the target, creating it if missing. Returns its descriptor and the mode to give it at the
    end, after its contents (meanwhile it is writable and searchable by its owner), or None to leave
    its mode (an existing target).

    A created target gets ``root_mode``, the snapshot folder's permission bits, masked as every restored
    directory's mode; it is created 0o700, so nothing in it is reachable by others before its mode is
    final. A snapshot without ``root_mode`` (older versions did not record it) gets the mode ``mkdir``
    and ``cp -r`` give a new directory: 0o777 less the process umask (0o755 with the usual 022; 0o700
    under the systemd units, whose UMask is 0077).
    """
    created = True
    try:
        # The kernel applies the umask, as for mkdir(1).
        os.mkdir(target, TARGET_MODE if root_mode is None else 0o700)
    except FileExistsError:
        created = False
        check_target(Path(os.path.abspath(target)), overwrite=overwrite)
    except FileNotFoundError:
        raise RestoreError(f"the parent directory of the target {target} does not exist",
                           "target_invalid") from None
    # The target itself may be reached through a symlink the user chose; below it nothing is followed.
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if not created:
        return fd, None
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o700 != 0o700:  # a umask such as 0o277 locked the owner out
        os.fchmod(fd, mode | 0o700)
    return fd, mode if root_mode is None else root_mode & RESTORED_MODE_BITS


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


class Restore:
    """One restore, in three phases a caller can report as steps:

    1. :meth:`load`: read the snapshot's entries, validate them all, select ``paths``, prepare the target;
    2. :meth:`write`: directories, files (chunk by chunk, verified) and symlinks, in walk order;
    3. :meth:`finish`: directories' modes and mtimes, deepest first (after their contents).

    ``check()`` is called between files and chunks and may raise to stop (the restore keeps what it
    finished); ``progress(files, nbytes)`` is called as files and bytes are written. Synchronous: run
    the phases in a worker thread. Call :meth:`close` at the end.
    """

    def __init__(self, store: Store, snapshot_id: str, target: Path, *, paths: Sequence[str] = (),
                 overwrite: bool = False, check: Callable[[], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self._store = store
        self.snapshot_id = snapshot_id
        self.target = Path(target)
        self.paths = [normalize_path(p) for p in paths]
        self.overwrite = overwrite
        self._check = check or (lambda: None)
        self._progress = progress or (lambda files, nbytes: None)
        self.entries: list[Entry] = []
        self._target_fd = -1
        self._target_mode: int | None = None  # to give a created target at the end
        self._dirs: _Dirs | None = None
        self._made_dirs: list[Entry] = []
        self._files = self._symlinks = self._bytes = 0

    def load(self) -> tuple[int, int]:
        """Phase 1. Returns (files and symlinks to restore, their bytes).

        Raises:
            UnknownSnapshotError: no such snapshot.
            RestoreError: see its codes; nothing was written.
        """
        try:
            root_mode = self._store.snapshot_root_mode(self.snapshot_id)
            entries = self._store.load_entries(self.snapshot_id)
        except UnknownSnapshotError:
            raise
        except CorruptDataError as exc:
            raise RestoreError(f"{exc}; nothing was restored", "snapshot_damaged") from exc
        except StoreError as exc:
            raise RestoreError(f"the list of files of snapshot {self.snapshot_id} cannot be read: {exc}",
                               "snapshot_damaged") from exc
        validate_entries(entries)
        self.entries = select_entries(entries, self.paths)
        self._target_fd, self._target_mode = _prepare_target(self.target, self.overwrite, root_mode)
        self._dirs = _Dirs(self._target_fd)
        files = [e for e in self.entries if e.kind != "dir"]
        return len(files), sum(e.size for e in files if e.kind == "file")

    def write(self) -> None:
        """Phase 2."""
        assert self._dirs is not None
        dirs = self._dirs
        try:
            with self._store.reader() as reader:
                for e in self.entries:
                    self._check()
                    parent, _, name = e.path.rpartition("/")
                    pfd = dirs.open(parent)
                    if e.kind == "dir":
                        self._make_dir(pfd, name, e)
                        self._made_dirs.append(e)
                    elif e.kind == "symlink":
                        self._make_symlink(pfd, name, e)
                        self._symlinks += 1
                        self._progress(1, 0)
                    else:
                        self._write_file(pfd, name, e, reader)
                        self._files += 1
                        self._progress(1, 0)
        except OSError as exc:
            raise RestoreError(f"restore into {self.target} failed: {exc}") from exc

    def finish(self) -> RestoreStats:
        """Phase 3. Returns what was restored."""
        assert self._dirs is not None
        dirs = self._dirs
        try:
            # Deepest first, so setting a directory's mode cannot lock us out of its subdirectories,
            # and last, so creating contents no longer changes its mtime.
            for e in reversed(self._made_dirs):
                self._check()
                dirs.close()
                fd = dirs.open(e.path)
                os.fchmod(fd, e.mode & RESTORED_MODE_BITS)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            if self._target_mode is not None:
                os.fchmod(self._target_fd, self._target_mode)
        except OSError as exc:
            raise RestoreError(f"restore into {self.target} failed: {exc}") from exc
        return RestoreStats(files=self._files, dirs=len(self._made_dirs), symlinks=self._symlinks,
                            bytes=self._bytes)

    def close(self) -> None:
        if self._dirs is not None:
            self._dirs.close()
            self._dirs = None
        if self._target_fd >= 0:
            os.close(self._target_fd)
            self._target_fd = -1

    # --- one entry ---------------------------------------------------------------------------------

    def _conflict(self, e: Entry, what: str) -> RestoreError:
        return RestoreError(f"cannot restore {e.path!r}: {what}", "target_conflict")

    def _make_dir(self, pfd: int, name: str, e: Entry) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)  # owner-writable until its contents are in
            return
        except FileExistsError:
            if not self.overwrite:
                raise self._conflict(e, "something with that name appeared in the target meanwhile") from None
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            return  # merged into the existing directory
        os.unlink(name, dir_fd=pfd)  # a file or symlink where the snapshot has a directory
        os.mkdir(name, 0o700, dir_fd=pfd)

    def _make_symlink(self, pfd: int, name: str, e: Entry) -> None:
        if not self.overwrite:
            try:
                os.symlink(e.target, name, dir_fd=pfd)
            except FileExistsError:
                raise self._conflict(e, "something with that name appeared in the target meanwhile") from None
        else:
            tmp = TEMP_PREFIX + secrets.token_hex(8)
            os.symlink(e.target, tmp, dir_fd=pfd)
            self._replace(pfd, tmp, name, e)
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _replace(self, pfd: int, tmp: str, name: str, e: Entry) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except OSError as exc:
            os.unlink(tmp, dir_fd=pfd)
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise self._conflict(e, "the target has a directory with that name (a restore never "
                                        "deletes a directory)") from None
            raise

    def _write_file(self, pfd: int, name: str, e: Entry, reader: ChunkReader) -> None:
        tmp = TEMP_PREFIX + secrets.token_hex(8)
        fd = os.open(tmp, _FILE_FLAGS, 0o600, dir_fd=pfd)
        placed = False
        try:
            try:
                write_content(fd, e, reader, self._check, lambda n: self._progress(0, n))
            finally:
                os.close(fd)
            if self.overwrite:
                self._replace(pfd, tmp, name, e)
            else:
                self._link_new(pfd, tmp, name, e)
            placed = True
            self._bytes += e.size  # write_content checked that its chunks hold that much
        finally:
            if not placed:
                try:
                    os.unlink(tmp, dir_fd=pfd)
                except FileNotFoundError:
                    pass

    def _link_new(self, pfd: int, tmp: str, name: str, e: Entry) -> None:
        """Give the finished file its name only if that name is free (link fails if it exists)."""
        try:
            os.link(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            raise self._conflict(e, "something with that name appeared in the target meanwhile") from None
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            try:
                os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                return
            raise self._conflict(e, "something with that name appeared in the target meanwhile") from None
        os.unlink(tmp, dir_fd=pfd)


def write_content(fd: int, e: Entry, reader: ChunkReader, check: Callable[[], None],
                  wrote: Callable[[int], None] | None = None) -> None:
    """Write file entry ``e``'s chunks to ``fd`` (``check()`` before each, ``wrote(n)`` after), then give
    it the stored mode and mtime.

    Raises:
        RestoreError: ``data_damaged``: a chunk cannot be read, or the chunks do not add up to its size.
    """
    written = 0
    for h in e.chunks:
        check()
        try:
            data = reader.read(h)
        except StoreError as exc:
            raise RestoreError(f"cannot restore {e.path!r}: {exc}", "data_damaged") from exc
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        written += len(data)
        if wrote is not None:
            wrote(len(data))
    if written != e.size:
        raise RestoreError(f"cannot restore {e.path!r}: the snapshot records {e.size} bytes but its chunks "
                           f"hold {written}", "data_damaged")
    os.fchmod(fd, e.mode & RESTORED_MODE_BITS)
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def restore_snapshot(store: Store, snapshot_id: str, target: Path, *, paths: Sequence[str] = (),
                     overwrite: bool = False) -> RestoreStats:
    """Restore snapshot ``snapshot_id`` (or only ``paths`` inside it) into ``target``.

    Without ``overwrite``, ``target`` must be missing or an empty directory. Synchronous (call it from a
    worker thread inside the daemon). See :class:`Restore` for the phases.

    Raises:
        UnknownSnapshotError: no such snapshot.
        RestoreError: see its codes. For damaged data, the target holds what was restored before the
            damaged file.
    """
    restore = Restore(store, snapshot_id, target, paths=paths, overwrite=overwrite)
    try:
        restore.load()
        restore.write()
        return restore.finish()
    finally:
        restore.close()
