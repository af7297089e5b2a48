"""Getting one version of one file back (issue 13): find the version a user names, and write it next to
the live file, or where the user says, without ever touching the live file.

**Naming a version.** ``latest`` (the project's newest snapshot), a snapshot id, or a content id
(``store.content_id``: 24 hex digits) or any prefix of one of at least 8 hex digits. A prefix is looked
for in every snapshot of the project (through each store's versions cache, ``store.VersionIndex``), and
must name exactly one content id of that path
(else ``version_ambiguous``, listing the candidates). The snapshot said to hold a version is the newest
snapshot that holds it; its time names the restored copy.

**Where it goes.** Without ``to``: in the live folder's directory of the path, as ``NAME (syncsnap
2026-12-01 14.03).EXT`` (local time of that snapshot; no extension: ``NAME (syncsnap ...)``; a dotfile
``.bashrc (syncsnap ...)``), and if that name is taken, ``NAME (syncsnap 2026-12-01 14.03 2).EXT``, `` 3``...
The directories are opened from the project folder one component at a time with ``O_NOFOLLOW``, so a
symlink in the live folder cannot lead the copy outside it. With ``overwrite`` the first name is replaced
instead of numbered. With ``to``: an existing directory receives the file under its original name; any
other path is the file's new name (its parent must exist). An existing name is replaced only with
``overwrite``, and never a directory.

**Crash safety.** The content is written to ``.syncsnap-restore-*`` in the target directory (every chunk
verified against its hash, the size checked), given the stored mode (read, write and execute bits) and
mtime, flushed to disk, then given its name: linked (fails if the name exists, so nothing is replaced by
a race) or, with ``overwrite``, renamed over it. A symlink is restored as a symlink with its exact target.
A failure or cancellation removes the temporary file; a kill leaves at most one ``.syncsnap-restore-*``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from ..store import Entry, Store, StoreError, VersionIndex, content_id, find_entry
from ._restore import (
    _DIR_FLAGS,
    _FILE_FLAGS,
    _NO_LINK,
    TEMP_PREFIX,
    RestoreError,
    write_content,
)

__all__ = ["FoundVersion", "find_version", "restore_version", "version_name"]

# The shortest content id prefix accepted: 8 hex digits (32 bits) make a chance match among one path's
# versions vanishingly rare, and are what a user copies from a listing.
MIN_PREFIX = 8
_HEX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},64}}")
# How many numbered names (" 2", " 3", ...) are tried before giving up: a directory with a thousand
# restored copies of one file is a loop, not a user.
MAX_NUMBERED = 1000
NAME_MAX = 255


@dataclass(frozen=True)
class FoundVersion:
    """A version of a path found in a snapshot: the entry, its content id and the snapshot holding it."""

    snapshot_id: str
    time: str  # the snapshot's ISO 8601 UTC time
    entry: Entry
    content_id: str
    store: Store


def _entry_in(store: Store, sid: str, path: str) -> Entry | None:
    try:
        return find_entry(store, sid, path)
    except StoreError as exc:
        raise RestoreError(f"the list of files of snapshot {sid} cannot be read: {exc}", "snapshot_damaged") from exc


def _usable(found: Entry | None, sid: str, time: str, path: str, store: Store) -> FoundVersion:
    if found is None:
        raise RestoreError(f"snapshot {sid} has nothing at {path!r} (the file was deleted or not yet "
                           "there; `syncsnap versions` lists its versions)", "path_unknown")
    cid = content_id(found)
    if cid is None:
        raise RestoreError(f"{path!r} is a directory in snapshot {sid}; restore a directory with "
                           "`syncsnap restore PROJECT SNAPSHOT TARGET --path P`", "not_a_file")
    return FoundVersion(sid, time, found, cid, store)


def find_version(snapshots: Sequence[tuple[str, str, Store]], path: str, version: str,
                 check: Callable[[], None] = lambda: None) -> FoundVersion:
    """The version ``version`` of ``path`` among ``snapshots`` ((id, ISO time, store), newest first).

    Raises:
        RestoreError: ``version_invalid`` (not latest, a snapshot id or >= 8 hex digits), ``version_unknown``,
            ``version_ambiguous``, ``path_unknown`` (the named snapshot has nothing there), ``not_a_file``
            (a directory), ``snapshot_damaged``.
    """
    if version == "latest":
        if not snapshots:
            raise RestoreError("the project has no snapshot yet", "version_unknown")
        sid, time, store = snapshots[0]
        return _usable(_entry_in(store, sid, path), sid, time, path, store)
    for sid, time, store in snapshots:
        if sid == version:
            return _usable(_entry_in(store, sid, path), sid, time, path, store)
    prefix = version.lower()
    if not _HEX.fullmatch(prefix):
        raise RestoreError(f"{version!r} names no version: give a content id (at least {MIN_PREFIX} hex "
                           "digits), a snapshot id of the project, or 'latest'", "version_invalid")
    # Which content id each snapshot holds at the path, from each store's versions cache (it decodes a
    # tree group shared by many snapshots once); the newest snapshot holding a match is the one named.
    held: dict[str, str | None] = {}
    by_store: dict[int, tuple[Store, list[str]]] = {}
    for sid, _, store in snapshots:
        by_store.setdefault(id(store), (store, []))[1].append(sid)
    for store, sids in by_store.values():
        check()
        index = VersionIndex.of(store)
        try:
            index.update()
        except StoreError as exc:
            raise RestoreError(f"the snapshots' lists of files cannot be read: {exc}", "snapshot_damaged") from exc
        for sid, rec in index.lookup(sids, [path]).get(path, {}).items():
            held[sid] = rec[5]
    newest: dict[str, tuple[str, str, Store]] = {}
    for sid, time, store in snapshots:
        cid = held.get(sid)
        if cid is not None and cid.startswith(prefix):
            newest.setdefault(cid, (sid, time, store))
    matches = {cid: where for cid, where in newest.items()}
    if not matches:
        raise RestoreError(f"no snapshot of the project holds a version {version!r} of {path!r} "
                           "(`syncsnap versions` lists them)", "version_unknown")
    if len(matches) > 1:
        raise RestoreError(f"{version!r} is the start of {len(matches)} versions of {path!r} "
                           f"({', '.join(sorted(matches))}); give more digits", "version_ambiguous")
    sid, time, store = next(iter(matches.values()))
    found = _usable(_entry_in(store, sid, path), sid, time, path, store)
    if not found.content_id.startswith(prefix):  # the cache and the snapshot disagree: never the wrong file
        raise RestoreError(f"the versions cache of the store does not match snapshot {sid}", "snapshot_damaged")
    return found


def _stamp(time: str, tz: tzinfo | None) -> str:
    when = datetime.fromisoformat(time.replace("Z", "+00:00")).astimezone(tz)
    return when.strftime("%Y-%m-%d %H.%M")


def version_name(name: str, time: str, n: int = 1, tz: tzinfo | None = None) -> str:
    """The name of a restored copy of ``name`` from a snapshot taken at ``time`` (ISO UTC): ``b (syncsnap
    2026-12-01 14.03).txt``, the ``n``-th (n > 1) ``b (syncsnap 2026-12-01 14.03 2).txt``. A name too long
    for NAME_MAX loses characters at the end of its stem."""
    stem, ext = os.path.splitext(name)
    tag = f" (syncsnap {_stamp(time, tz)}{'' if n == 1 else f' {n}'})"
    while stem and len(os.fsencode(stem + tag + ext)) > NAME_MAX:
        stem = stem[:-1]
    if not stem:  # an extension alone too long: drop it
        ext = ""
        stem = name[:1]
    return stem + tag + ext


def _open_live_dir(folder: Path, parent: str) -> int:
    """The live folder's directory ``parent`` (relative), opened without following symlinks below the
    folder (the folder itself may be a symlink the user configured)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"the project folder {folder} cannot be opened: {exc.strerror}", "target_invalid") from None
    for part in parent.split("/") if parent else []:
        try:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            why = ("is a symlink or not a directory" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                   else "no longer exists" if exc.errno == errno.ENOENT else exc.strerror)
            raise RestoreError(f"the directory {parent!r} of the live folder {why}; give a target "
                               "(--to FILE or DIR) for the restored copy", "target_invalid") from None
        os.close(fd)
        fd = nfd
    return fd


def _open_target(to: Path, base: str) -> tuple[int, str, Path]:
    """(directory fd, name in it, the full path) for a target ``to`` chosen by the user."""
    try:
        st = os.stat(to)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise RestoreError(f"the target {to} cannot be used: {exc.strerror}", "target_invalid") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        directory, name = to, base
    else:
        directory, name = to.parent, to.name
    if not name or name in (".", ".."):
        raise RestoreError(f"the target {to} names no file", "target_invalid")
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise RestoreError(f"the directory {directory} of the target does not exist", "target_invalid") from None
    return fd, name, directory / name


class _Writer:
    """Writes one entry under a temporary name in ``dfd``, then gives it a name."""

    def __init__(self, found: FoundVersion, dfd: int, check: Callable[[], None]) -> None:
        self.found = found
        self.dfd = dfd
        self.check = check
        self.tmp = TEMP_PREFIX + secrets.token_hex(8)

    def write(self) -> None:
        e = self.found.entry
        if e.kind == "symlink":
            os.symlink(e.target, self.tmp, dir_fd=self.dfd)
            os.utime(self.tmp, ns=(e.mtime_ns, e.mtime_ns), dir_fd=self.dfd, follow_symlinks=False)
            return
        fd = os.open(self.tmp, _FILE_FLAGS, 0o600, dir_fd=self.dfd)
        try:
            with self.found.store.reader() as reader:
                write_content(fd, e, reader, self.check)
            os.fsync(fd)  # the data is on disk before the name is: a crash never leaves a named empty file
        finally:
            os.close(fd)

    def place(self, name: str, overwrite: bool) -> bool:
        """Give the finished copy ``name``; False when the name is taken (and not ``overwrite``)."""
        if overwrite:
            try:
                st = os.stat(name, dir_fd=self.dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(st.st_mode):
                    raise RestoreError(f"{name!r} is a directory; a restore never replaces a directory",
                                       "target_exists")
            os.rename(self.tmp, name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
            return True
        try:
            os.link(self.tmp, name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            try:  # no hard links here (FAT, some FUSE): rename once the name is seen free
                os.stat(name, dir_fd=self.dfd, follow_symlinks=False)
                return False
            except FileNotFoundError:
                os.rename(self.tmp, name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
                return True
        os.unlink(self.tmp, dir_fd=self.dfd)
        return True

    def discard(self) -> None:
        try:
            os.unlink(self.tmp, dir_fd=self.dfd)
        except FileNotFoundError:
            pass


def restore_version(found: FoundVersion, path: str, *, folder: Path, to: Path | None = None,
                    overwrite: bool = False, tz: tzinfo | None = None,
                    check: Callable[[], None] = lambda: None) -> Path:
    """Write version ``found`` of ``path`` (see the module docstring for where); returns where it went.

    Synchronous: run it in a worker thread. ``check()`` is called between chunks and may raise to stop.

    Raises:
        RestoreError: ``target_invalid`` (no such directory), ``target_exists`` (the name is taken and not
            ``overwrite``, or is a directory), ``data_damaged``, ``io_error``.
    """
    parent, _, base = path.rpartition("/")
    if to is None:
        dfd = _open_live_dir(folder, parent)
        shown = folder / parent if parent else folder
        names = [version_name(base, found.time, n, tz) for n in range(1, 2 if overwrite else MAX_NUMBERED + 1)]
    else:
        dfd, name, full = _open_target(to, base)
        shown = full.parent
        names = [name]
    try:
        writer = _Writer(found, dfd, check)
        placed = False
        try:
            writer.write()
            for name in names:
                if writer.place(name, overwrite):
                    placed = True
                    break
            if not placed:
                raise RestoreError(f"{shown / names[0]} exists; restore over it only with overwrite"
                                   if to is not None else f"{MAX_NUMBERED} restored copies of {base!r} are "
                                   f"already there in {shown}", "target_exists")
            os.fsync(dfd)
        except OSError as exc:
            raise RestoreError(f"cannot restore {path!r} into {shown}: {exc.strerror}") from exc
        finally:
            if not placed:
                writer.discard()
    finally:
        os.close(dfd)
    return shown / name
