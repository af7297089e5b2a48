"""Directories and files below a folder, opened so that nothing outside it is ever followed: the
snapshot engine's and the diff's one way in (:class:`DirChain`), and :class:`SnapshotError`, what a
folder that cannot be read is reported as.
"""

from __future__ import annotations

import os

from ..core import SyncsnapdError

__all__ = ["DirChain", "SnapshotError"]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# O_NOATIME spares a metadata write per file read; only allowed on own files (or with CAP_FOWNER).
_O_NOATIME = getattr(os, "O_NOATIME", 0)


class SnapshotError(SyncsnapdError):
    """A snapshot run failed; ``code`` is ``folder_missing`` or ``store_error`` (docs/api.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_for_read(name: str, dir_fd: int) -> int:
    # O_NOFOLLOW: a file replaced by a symlink after the walk is not followed out of the folder.
    # O_NONBLOCK: a file replaced by a fifo does not hang the worker.
    if _O_NOATIME:
        try:
            return os.open(name, _READ_FLAGS | _O_NOATIME, dir_fd=dir_fd)
        except PermissionError:
            pass  # not our file: read it the ordinary way (EACCES will come again if that is the cause)
    return os.open(name, _READ_FLAGS, dir_fd=dir_fd)



class DirChain:
    """Directory descriptors along one path below the folder, each opened from its parent with
    O_NOFOLLOW, so a directory swapped for a symlink while a snapshot runs is never followed out of the
    folder. Moving to another directory re-opens only the components that differ; work comes in walk
    order, so that is rare. Holds at most one descriptor per level. One per thread."""

    def __init__(self, root: str) -> None:
        try:
            # The folder itself may be reached through a symlink: it is the configured path.
            self._fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        except OSError as exc:
            raise SnapshotError("folder_missing", f"The folder {root} cannot be read: {exc.strerror}.") from exc
        self._parts: list[str] = []

    def open_dir(self, rel_dir: str) -> int:
        """A descriptor for directory ``rel_dir`` ("" is the folder); valid until the next call."""
        parts = rel_dir.split("/") if rel_dir else []
        keep = 0
        for mine, theirs in zip(self._parts, parts, strict=False):
            if mine != theirs:
                break
            keep += 1
        while len(self._parts) > keep:
            self._parts.pop()
            os.close(self._fds.pop())
        for part in parts[keep:]:
            self._fds.append(os.open(part, _DIR_FLAGS, dir_fd=self._fds[-1]))
            self._parts.append(part)
        return self._fds[-1]

    def open_file(self, rel: str) -> int:
        """Open the file at relative path ``rel`` for reading."""
        rel_dir, _, name = rel.rpartition("/")
        return _open_for_read(name, self.open_dir(rel_dir))

    def close(self) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds, self._parts = [], []
