"""Inotify on exactly the directories a snapshot walks: one non-recursive watch per real directory.

Why not watchfiles (Rust notify): its recursive watch walks with ``follow_links(true)``, so a link to
``/`` inside a project watches the whole filesystem and a link to the store makes every snapshot trigger
the next; it cannot skip ignored directories; and it drops errors (``ENOSPC`` when the kernel's watch
limit is reached, at start and for every directory created later), so part of the tree went unwatched
without a word. Here every directory is watched by itself, ``IN_DONT_FOLLOW | IN_ONLYDIR``, after the
same ignore rules as the snapshot, and a refused watch is raised as :class:`WatchLimit`. Names are bytes
throughout, so names that are not UTF-8 are watched like any other.

The system calls and the parsing of events are inotify_simple's (a literal wrapper of inotify, no
policy): what to watch, and what an event means for a snapshot, is ours.

Blocking code (the walks, ``read``): the caller runs it in a worker thread, one call at a time, and sets
:attr:`TreeWatch.stop` to make a walk return early.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from inotify_simple import Event, INotify, flags

__all__ = ["Batch", "TreeWatch", "WatchLimit", "watch_limit"]

_IN_MODIFY = flags.MODIFY
_IN_ATTRIB = flags.ATTRIB
_IN_CLOSE_WRITE = flags.CLOSE_WRITE
_IN_MOVED_FROM = flags.MOVED_FROM
_IN_MOVED_TO = flags.MOVED_TO
_IN_CREATE = flags.CREATE
_IN_DELETE = flags.DELETE
_IN_DELETE_SELF = flags.DELETE_SELF
_IN_MOVE_SELF = flags.MOVE_SELF
_IN_Q_OVERFLOW = flags.Q_OVERFLOW
_IN_IGNORED = flags.IGNORED
_IN_ONLYDIR = flags.ONLYDIR
_IN_DONT_FOLLOW = flags.DONT_FOLLOW
_IN_EXCL_UNLINK = flags.EXCL_UNLINK
_IN_ISDIR = flags.ISDIR

# What makes a snapshot differ: content, metadata, names coming and going. Not IN_ACCESS/IN_OPEN/
# IN_CLOSE_NOWRITE: the snapshot's own reads must not trigger the next snapshot.
_CONTENT = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
            | _IN_DELETE)
_SUBDIR_MASK = _CONTENT | _IN_ONLYDIR | _IN_DONT_FOLLOW | _IN_EXCL_UNLINK
# The folder itself is followed if it is a symlink (as the snapshot engine opens it), and watched for
# its own removal or rename.
_ROOT_MASK = _CONTENT | _IN_ONLYDIR | _IN_EXCL_UNLINK | _IN_DELETE_SELF | _IN_MOVE_SELF

# Entries skipped when a watch is refused: the directory vanished, was replaced by a file or a
# symlink (never followed), or cannot be read (the snapshot says so itself).
_SKIPPED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM)


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/user/{name}") as f:  # this user namespace's limit (fs.inotify.* in the first)
            return f.read().strip()
    except OSError:
        return "?"


class WatchLimit(Exception):
    """The kernel refuses another inotify watch or instance (a per-user limit, shared by every process
    of the user): the sentence says which limit and how many of the folder's directories were watched."""


def watch_limit(err: int, watched: int) -> WatchLimit:
    if err == errno.ENOSPC:
        return WatchLimit(f"the kernel's limit on inotify watches (fs.inotify.max_user_watches = "
                          f"{_sysctl('max_inotify_watches')}, shared by all of this user's processes) was "
                          f"reached after {watched} of this folder's directories")
    return WatchLimit(f"the kernel's limit on inotify instances (fs.inotify.max_user_instances = "
                      f"{_sysctl('max_inotify_instances')}) is reached ({os.strerror(err)})")


@dataclass
class Batch:
    """What one :meth:`TreeWatch.read` found."""

    changes: int = 0  # wanted changes (names, content, metadata)
    root_event: bool = False  # the folder itself was removed or renamed: check what is there now
    overflow: bool = False  # the kernel dropped events: the tree was walked again, count it as a change


class TreeWatch:
    """The inotify watches of one folder: every directory below it that ``wanted`` accepts, reached
    without following symlinks, except the directories ``skip`` names by (device, inode).

    ``wanted`` gets absolute paths, a directory's with a trailing ``/`` (the ignore rules' convention:
    ``build/`` matches directories only)."""

    def __init__(self, root: bytes, wanted: Callable[[bytes], bool],
                 skip: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.root = root
        self._wanted = wanted
        self._skip = skip
        self.stop = threading.Event()
        self._wds: dict[bytes, int] = {}
        self._paths: dict[int, bytes] = {}
        self._root_wd = -1
        try:
            self._inotify = INotify(nonblocking=True)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise watch_limit(exc.errno, 0) from None
            raise
        self.fd: int = self._inotify.fileno()

    @property
    def count(self) -> int:
        """Directories watched now."""
        return len(self._paths)

    def close(self) -> None:
        """Close the instance; the kernel frees all its watches (for other projects, other processes)."""
        if self.fd >= 0:
            self._inotify.close()
            self.fd = -1

    def start(self) -> None:
        """Watch the folder and every wanted directory below it.

        Raises:
            WatchLimit: the kernel refused a watch.
            OSError: the folder cannot be watched (missing, not a directory).
        """
        self._walk(self.root)

    def read(self) -> Batch:
        """Read what the kernel queued (never blocks), keep the watches in step with the tree (new and
        moved-in directories watched, moved-out ones dropped), and say what changed.

        Raises:
            WatchLimit: the kernel refused a watch for a new directory.
        """
        batch = Batch()
        new_dirs: list[bytes] = []
        # Everything queued now (the kernel bounds the queue: fs.inotify.max_queued_events, then overflow).
        self._events(self._inotify.read(timeout=0), batch, new_dirs)
        if batch.overflow:
            new_dirs = [self.root]  # walking again re-adds what was missed; existing watches are kept
            batch.changes += 1
        for path in new_dirs:
            if self.stop.is_set():
                break
            self._walk(path)
        return batch

    def _events(self, events: list[Event], batch: Batch, new_dirs: list[bytes]) -> None:
        for wd, mask, _cookie, text in events:
            name = os.fsencode(text)  # inotify_simple decodes with the file system encoding: back to bytes
            if mask & _IN_Q_OVERFLOW:
                batch.overflow = True
                continue
            parent = self._paths.get(wd)
            if parent is None:
                continue  # a watch dropped meanwhile
            if mask & _IN_IGNORED:  # the directory is gone, and with it its watch
                self._forget(wd)
                batch.root_event |= wd == self._root_wd
                continue
            if not name:
                batch.root_event |= wd == self._root_wd and bool(mask & (_IN_DELETE_SELF | _IN_MOVE_SELF))
                continue  # a subdirectory's own events are reported by its parent too
            path = parent + b"/" + name
            if not self._wanted(path + b"/" if mask & _IN_ISDIR else path):
                continue
            batch.changes += 1
            if mask & _IN_ISDIR:
                if mask & (_IN_CREATE | _IN_MOVED_TO):
                    new_dirs.append(path)
                elif mask & _IN_MOVED_FROM:
                    self._drop(path)

    def _forget(self, wd: int) -> None:
        path = self._paths.pop(wd, None)
        if path is not None and self._wds.get(path) == wd:
            del self._wds[path]

    def _drop(self, top: bytes) -> None:
        """Stop watching a directory that moved away, and everything below it (its paths are stale: if
        it moved within the folder, its new place is walked and watched anew)."""
        prefix = top + b"/"
        for path, wd in list(self._wds.items()):
            if path == top or path.startswith(prefix):
                with contextlib.suppress(OSError):  # the kernel dropped it already (IN_IGNORED pending)
                    self._inotify.rm_watch(wd)
                self._forget(wd)

    def _add(self, path: bytes) -> bool:
        """Watch one directory; False when it is not to be walked (gone, not a directory, seen already)."""
        is_root = path == self.root
        try:
            wd = self._inotify.add_watch(path, _ROOT_MASK if is_root else _SUBDIR_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise watch_limit(exc.errno, len(self._paths)) from None
            if exc.errno in _SKIPPED and not is_root:
                return False
            raise OSError(exc.errno, exc.strerror, os.fsdecode(path)) from None
        if is_root:
            self._root_wd = wd
        old = self._paths.get(wd)
        if old is not None and old != path:
            try:
                if os.path.samefile(old, path):
                    return False  # one directory by two paths (a bind mount): watched once, walked once
            except OSError:
                pass  # the old path is stale: the directory was moved
            self._wds.pop(old, None)
        self._paths[wd] = path
        self._wds[path] = wd
        return True

    def _walk(self, top: bytes) -> None:
        """Watch ``top`` and the wanted real directories below it: each watched before it is listed, so
        a directory created meanwhile is either listed or reported."""
        stack = [top]
        while stack and not self.stop.is_set():
            path = stack.pop()
            if not self._add(path):
                continue
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        try:
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                            if self._skip and (entry.stat(follow_symlinks=False).st_dev,
                                               entry.inode()) in self._skip:
                                continue  # the daemon's store or state directory
                        except OSError:
                            continue
                        if self._wanted(entry.path + b"/"):
                            stack.append(entry.path)
            except OSError:
                continue  # vanished or unreadable since it was watched: its parent reports a removal
