"""The store's local directory: where each object's file is, and how a file is made durable.

Every pack, index and snapshot file is written under ``tmp/``, fsynced, renamed into place, and its
directory fsynced (:meth:`StoreFiles.write_durable`; packs are streamed into ``tmp/`` and installed the
same way by ``_writer.py``). Each of those steps is a *durable step*: the ``on_durable_step`` callback
given to ``Store.open`` is called with a label (``pack:written``, ``index:renamed``, ``snapshot:dirsynced``,
``gc:index-unlinked``...) right after it. The crash tests kill the process there, at every step in
turn (tests/helpers/store.py), and check that nothing a snapshot references was lost.

In an encrypted store (``crypto`` set) this is also where index and snapshot files are sealed and opened
and where a snapshot's file is named (a keyed hash of its id: see ``_crypto.py``).

This is the local store's only I/O layer; an S3 store keeps this directory as staging and cache and
reaches its bucket through ``_backend.py`` (see ``_remote.py``).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._crypto import AD_INDEX, AD_SNAPSHOT
from ._errors import CorruptDataError, StoreError
from ._format import (
    PACK_FOOTER,
    SNAPSHOT_ID_RE,
    IndexRecord,
    decode_index,
    footer_index_length,
    snapshot_file_id,
)

if TYPE_CHECKING:
    from ._crypto import Crypto

# The names of an encrypted store's snapshot files (keyed hashes).
_KEYED_NAME_RE = re.compile(r"\A[0-9a-f]{64}\Z")

__all__ = ["DurableStep", "StoreFiles", "fsync_dir", "read_pack_footer", "write_all"]

# Called with a label after each durable-write step (see the module docstring).
DurableStep = Callable[[str], None]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pack_footer(pack_path: Path) -> bytes:
    """The copy of the index at the end of a local pack file.

    Raises:
        OSError: the file cannot be read.
        CorruptDataError: its footer is damaged.
    """
    with open(pack_path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - PACK_FOOTER.size))
        length = footer_index_length(f.read(PACK_FOOTER.size), size)
        f.seek(size - PACK_FOOTER.size - length)
        return f.read(length)


class StoreFiles:
    """The paths of a store's directory and its durable writes. Thread-safe (no state but the hook)."""

    def __init__(self, root: Path, on_durable_step: DurableStep | None = None, crypto: Crypto | None = None) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.index_dir = root / "index"
        self.snapshot_dir = root / "snapshots"
        self.keys_dir = root / "keys"
        self._on_durable_step = on_durable_step
        # The cipher of an encrypted store; None for a plaintext one.
        self.crypto = crypto

    # --- sealed objects (an encrypted store) ----------------------------------------------------------

    def seal_index(self, index_bytes: bytes) -> bytes:
        """An index file's bytes as stored (sealed in an encrypted store)."""
        return index_bytes if self.crypto is None else bytes(self.crypto.seal(index_bytes, AD_INDEX))

    def index_records(self, stored: bytes) -> list[IndexRecord]:
        """The records of an index file (or a pack's copy of it) as stored.

        Raises:
            CorruptDataError: damaged, tampered with, or (encrypted) sealed with another key.
        """
        if self.crypto is not None:
            stored = self.crypto.open(stored, AD_INDEX, "the index")
        return decode_index(stored)

    def snapshot_name(self, snapshot_id: str) -> str:
        """The name of a snapshot's file without ``.json``: its id, or (encrypted) a keyed hash of it."""
        return snapshot_id if self.crypto is None else self.crypto.snapshot_name(snapshot_id)

    def is_snapshot_name(self, name: str) -> bool:
        """Whether ``name`` (without ``.json``) may be a snapshot file's."""
        return bool((SNAPSHOT_ID_RE if self.crypto is None else _KEYED_NAME_RE).match(name))

    def seal_snapshot(self, snapshot_id: str, payload: bytes) -> bytes:
        """A snapshot file's bytes as stored (sealed, bound to its name, in an encrypted store)."""
        if self.crypto is None:
            return payload
        name = self.crypto.snapshot_name(snapshot_id)
        return bytes(self.crypto.seal(payload, AD_SNAPSHOT + name.encode()))

    def open_snapshot(self, name: str, stored: bytes) -> tuple[str, bytes]:
        """(snapshot id, plaintext) of the snapshot file named ``name`` (without ``.json``), as stored.

        Raises:
            CorruptDataError: (encrypted) it fails authentication, or its id does not map to its name.
        """
        if self.crypto is None:
            return name, stored
        plain = self.crypto.open(stored, AD_SNAPSHOT + name.encode(), f"snapshot file {name}.json")
        sid = snapshot_file_id(plain)
        if sid is None or self.crypto.snapshot_name(sid) != name:
            raise CorruptDataError(f"snapshot file {name}.json is not the file of the snapshot it names")
        return sid, plain

    def pack_path(self, pack: str) -> Path:
        return self.root / "packs" / pack[:2] / f"{pack}.pack"

    def index_path(self, pack: str) -> Path:
        return self.index_dir / f"{pack}.idx"

    def snapshot_path(self, snapshot_id: str) -> Path:
        return self.snapshot_dir / f"{self.snapshot_name(snapshot_id)}.json"

    def indexed_packs(self) -> list[str]:
        """The ids of the packs that have an index file, sorted."""
        try:
            return sorted(n[:-4] for n in os.listdir(self.index_dir) if n.endswith(".idx"))
        except FileNotFoundError:
            return []

    def pack_files(self) -> list[Path]:
        """Every pack file here."""
        return list((self.root / "packs").glob("*/*.pack"))

    def step(self, label: str) -> None:
        """A durable-write step was just taken (see the module docstring)."""
        if self._on_durable_step is not None:
            self._on_durable_step(label)

    def tmp_name(self, name: str) -> Path:
        """A new, unused path under ``tmp/`` for a file that will be renamed to ``name``."""
        return self.tmp / f"{name}.{secrets.token_hex(4)}"

    def write_durable(self, final: Path, data: bytes, label: str) -> None:
        """Write a whole file atomically and durably: tmp, fsync, rename, fsync directory."""
        tmp = self.tmp_name(final.name)
        self.step(f"{label}:open")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, data)
            self.step(f"{label}:written")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.step(f"{label}:fsynced")
        os.rename(tmp, final)
        self.step(f"{label}:renamed")
        fsync_dir(final.parent)
        self.step(f"{label}:dirsynced")

    def install(self, tmp: Path, final: Path, label: str) -> None:
        """Rename a durable (fsynced) file from ``tmp/`` into place and fsync its directory, creating
        (durably) the directory if needed."""
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            fsync_dir(final.parent.parent)
            self.step(f"{label}dir:dirsynced")
        os.rename(tmp, final)
        self.step(f"{label}:renamed")
        fsync_dir(final.parent)
        self.step(f"{label}:dirsynced")

    def clean_tmp(self) -> None:
        """Remove every temporary file. Only for the writable opener, under the lock: nobody else is
        writing temporary files."""
        for p in self.tmp.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def take_store_lock(root: Path) -> int:
    """The writable opener's exclusive ``flock`` on ``root/lock`` (its pid written in it, for the error a
    second opener gets); the descriptor holds it until closed.

    Raises:
        StoreError: another process holds it.
    """
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreError(f"store {root} is in use by another syncsnapd (pid {pid})") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
