"""Where a store's lock objects are kept (see ``_locks.py``): ``locks/`` in the bucket of an S3 store
(:class:`BucketLocks`), or in the directory of a local store on a network filesystem
(:class:`DirectoryLocks`, written atomically), and how such a filesystem is told from a local disk
(:func:`network_filesystem`: ``statfs``'s ``f_type``, and for FUSE the mount's type).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ._errors import REMOTE_CODES, BackendError, ObjectMissing, StoreError
from ._files import write_all

if TYPE_CHECKING:
    from ._backend import Backend

__all__ = ["PREFIX", "BucketLocks", "DirectoryLocks", "LockDir", "network_filesystem"]

PREFIX = "locks/"

# statfs(2) f_type of filesystems whose files other machines may write (linux/magic.h and the filesystems'
# own headers). flock on them is emulated, per host, or not at all, depending on the server and options.
_NETWORK_MAGIC = {
    0x6969: "nfs", 0x517B: "smb", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x00C36400: "ceph",
    0x5346414F: "afs", 0x6B414653: "afs", 0x73757245: "coda", 0x01021997: "9p", 0x0BD00BD0: "lustre",
    0x01161970: "gfs2", 0x7461636F: "ocfs2", 0x47504653: "gpfs", 0xAAD7AAEA: "panfs",
}
_FUSE_MAGIC = 0x65735546
# FUSE filesystems that reach another machine (by /proc/self/mounts' type; f_type is FUSE's for all).
_NETWORK_FUSE = ("fuse.sshfs", "fuse.glusterfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.ceph-fuse",
                 "fuse.juicefs", "fuse.davfs", "fuse.smbnetfs")


def _statfs_type(path: Path) -> int | None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _fuse_type(path: Path) -> str:
    best, kind = "", ""
    real = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, parts[2]
    return kind


def network_filesystem(path: Path) -> str | None:
    """The name of the network filesystem ``path`` is on (``"nfs"``, ``"cifs"``...), or None for a local
    one (or when it cannot be told)."""
    try:
        magic = _statfs_type(path)
    except OSError:
        return None
    if magic is None:
        return None
    if magic == _FUSE_MAGIC:
        kind = _fuse_type(path)
        return kind if kind in _NETWORK_FUSE else None
    return _NETWORK_MAGIC.get(magic)


# --- where lock objects are kept ------------------------------------------------------------------------

class LockDir(Protocol):
    """The ``locks/`` folder of a store. Blocking; raises :class:`StoreError` (FileNotFoundError from
    :meth:`get` for a lock deleted meanwhile)."""

    description: str

    def names(self) -> list[str]: ...

    def get(self, name: str) -> bytes: ...

    def put(self, name: str, data: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


class BucketLocks:
    """``locks/`` in the bucket of an S3 store."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.description = backend.description

    @staticmethod
    def _error(exc: BackendError) -> StoreError:
        return StoreError(f"lock objects: {exc.message}",
                          code=exc.code if exc.code in REMOTE_CODES else "store_error")

    def names(self) -> list[str]:
        try:
            return [k[len(PREFIX):] for k, _ in self._backend.list(PREFIX) if "/" not in k[len(PREFIX):]]
        except BackendError as exc:
            raise self._error(exc) from exc

    def get(self, name: str) -> bytes:
        try:
            return self._backend.get(PREFIX + name)
        except ObjectMissing:
            raise FileNotFoundError(name) from None
        except BackendError as exc:
            raise self._error(exc) from exc

    def put(self, name: str, data: bytes) -> None:
        try:
            self._backend.put_bytes(PREFIX + name, data)
        except BackendError as exc:
            raise self._error(exc) from exc

    def delete(self, name: str) -> None:
        try:
            self._backend.delete(PREFIX + name)
        except BackendError as exc:
            raise self._error(exc) from exc


class DirectoryLocks:
    """``locks/`` in the directory of a local store on a network filesystem (written atomically)."""

    def __init__(self, root: Path) -> None:
        self._dir = root / "locks"
        self.description = str(root)

    def _wrap(self, exc: OSError) -> StoreError:
        return StoreError(f"lock objects in {self._dir}: {exc.strerror or exc}")

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._dir) if not n.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._wrap(exc) from exc

    def get(self, name: str) -> bytes:
        try:
            return (self._dir / name).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._wrap(exc) from exc

    def put(self, name: str, data: bytes) -> None:
        tmp = self._dir / f".{name}.{secrets.token_hex(4)}"
        try:
            self._dir.mkdir(exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._dir / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._wrap(exc) from exc

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._dir / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._wrap(exc) from exc
