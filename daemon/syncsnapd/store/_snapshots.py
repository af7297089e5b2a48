"""The snapshot files of a store: listing (cached), reading, pins, and removal for ``forget``.

Only the small listing is cached (snapshot files never change); a snapshot's tree list is read from its
file when needed, so memory does not grow with history x folder size. A snapshot is *pinned* while a
restore or diff reads it: ``forget`` then leaves it.

The listing is not read again at every call, so that a run costs the same with 5,000 snapshots as with 2.
It is listed again when something else may have changed the directory:

* A store opened **writable** holds the store's lock, so only this process adds (:meth:`added`) or removes
  (:meth:`remove_unless_pinned`) snapshot files: the listing follows its own changes and is never read
  again, except when the directory itself changed behind its back (a person deleting a file by hand): its
  ``stat`` (inode, mtime, ctime, size) is compared at each call, and recorded after each change of ours.
* A store opened **read-only** (the offline commands, while the daemon or a ``syncsnapd prune`` writes)
  lists again whenever that ``stat`` changed, and also while the directory's mtime is within
  :data:`RACY_NS` of the time it was listed: timestamps are coarse on some file systems (a jiffy on ext4,
  2 s on FAT, an attribute cache on NFS), so a change in the same tick as the listing would not show
  (git's "racy" rule).
* :meth:`refresh` forgets the listing, and ``scan(damaged)`` (the check) always lists: what is on disk.

In an encrypted store a snapshot file is named by a keyed hash of its id (``StoreFiles.snapshot_name``):
the listing maps the names of the snapshots it knows, and opens the others to learn their ids.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator

from ._errors import CorruptDataError, StoreError, UnknownSnapshotError
from ._files import StoreFiles
from ._format import SNAPSHOT_ID_RE, SnapshotInfo, SnapshotRecord, decode_snapshot

__all__ = ["SnapshotCatalog"]

# A read-only catalog trusts its listing only once the directory's mtime is this much older than the
# listing (FAT's 2 s timestamps are the coarsest we may meet; NFS's attribute cache is closer to the
# mtime it reports after the same delay).
RACY_NS = 2_000_000_000

# What identifies one state of the snapshot directory: inode, mtime, ctime (ns), size.
_DirKey = tuple[int, int, int, int]


class SnapshotCatalog:
    """The snapshots of one store directory. Thread-safe.

    Args:
        files: the store's directory.
        exclusive: this process holds the store's lock (a writable open): nobody else adds or removes
            snapshot files, so the listing follows this process's own changes (see the module docstring).
    """

    def __init__(self, files: StoreFiles, *, exclusive: bool = False) -> None:
        self._files = files
        self._exclusive = exclusive
        self._lock = threading.Lock()
        self._infos: dict[str, SnapshotInfo] = {}  # sorted by id (= by time)
        self._pins: dict[str, int] = {}
        # The directory's key when the listing was last made current; None: list again at the next scan.
        self._key: _DirKey | None = None

    def read(self, snapshot_id: str) -> SnapshotRecord:
        """Read and verify a snapshot file. Raises OSError (FileNotFoundError) or CorruptDataError."""
        return self._read_named(self._files.snapshot_name(snapshot_id))

    def _read_named(self, name: str) -> SnapshotRecord:
        files = self._files
        sid, plain = files.open_snapshot(name, (files.snapshot_dir / f"{name}.json").read_bytes())
        return decode_snapshot(sid, plain)

    def record(self, snapshot_id: str) -> SnapshotRecord:
        """A snapshot file, read and verified.

        Raises:
            UnknownSnapshotError: not a snapshot id, or no such snapshot.
            StoreError: the file cannot be read (CorruptDataError: it is damaged).
        """
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise UnknownSnapshotError(f"{snapshot_id!r} is not a snapshot id")
        try:
            return self.read(snapshot_id)
        except FileNotFoundError:
            raise UnknownSnapshotError(f"no snapshot {snapshot_id} in store {self._files.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot read snapshot {snapshot_id}: {exc.strerror}") from exc

    def scan(self, damaged: list[str] | None = None) -> dict[str, SnapshotInfo]:
        """Every snapshot now in the directory, by id in id (time) order: the cached listing while the
        directory has not changed, else listed again (new files read, forgotten ones dropped).

        With ``damaged`` (a check) the directory is always listed, and the ids of damaged snapshot files
        are appended to it (and left out)."""
        key = self._dir_key()
        with self._lock:
            if damaged is None and key is not None and key == self._key:
                return dict(self._infos)
        return self._list(key, damaged)

    def refresh(self) -> None:
        """Forget the cached listing: the next :meth:`scan` lists the directory."""
        with self._lock:
            self._key = None

    def _dir_key(self) -> _DirKey | None:
        try:
            st = os.stat(self._files.snapshot_dir)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def _trusted(self, key: _DirKey | None, listed_ns: int) -> _DirKey | None:
        """The key to remember for a listing made at ``listed_ns`` of the directory in state ``key``."""
        if key is None or self._exclusive or listed_ns - max(key[1], key[2]) > RACY_NS:
            return key
        return None  # changed too recently to tell a later change in the same tick: list again next time

    def _list(self, key: _DirKey | None, damaged: list[str] | None) -> dict[str, SnapshotInfo]:
        listed_ns = time.time_ns()
        try:
            names = os.listdir(self._files.snapshot_dir)
        except FileNotFoundError:
            names = []
        present: set[str] = set()
        found: dict[str, SnapshotInfo] = {}
        unreadable = False
        with self._lock:
            known = dict(self._infos)
        files = self._files
        # File name -> snapshot id of those known (the same in a plaintext store).
        by_name = {files.snapshot_name(sid): sid for sid in known} if files.crypto is not None else None
        for name in names:
            stem = name[:-5]
            if not name.endswith(".json") or not files.is_snapshot_name(stem):
                continue
            sid = stem if by_name is None else by_name.get(stem)
            if sid is not None:
                present.add(sid)
                if sid in known:
                    continue
            try:
                record = self._read_named(stem)
            except FileNotFoundError:
                present.discard(sid or "")  # forgotten by a prune meanwhile
                continue
            except (OSError, CorruptDataError):
                unreadable = True  # left out, and tried again at the next scan
                if damaged is not None:
                    damaged.append(sid or stem)  # an encrypted store's damaged file: its name
                continue
            present.add(record.info.id)
            found[record.info.id] = record.info
        with self._lock:
            # Forgotten ones dropped (by a prune here or in another process); added ones since our
            # listdir (added() meanwhile) kept.
            infos = {sid: info for sid, info in self._infos.items() if sid in present or sid not in known}
            infos.update(found)
            self._infos = dict(sorted(infos.items()))
            self._key = None if unreadable else self._trusted(key, listed_ns)
            return dict(self._infos)

    def _changed_locked(self) -> None:
        """After a change of ours: a listing that was current stays so; remember the directory's new key (a
        writable store is the only writer). Not listed yet (or not trusted): list at the next scan."""
        self._key = self._dir_key() if self._exclusive and self._key is not None else None

    def added(self, info: SnapshotInfo) -> None:
        """A snapshot file this process has just made durable."""
        with self._lock:
            last = next(reversed(self._infos), None)
            self._infos[info.id] = info
            if last is not None and info.id < last:
                self._infos = dict(sorted(self._infos.items()))
            self._changed_locked()

    @contextlib.contextmanager
    def pinned(self, snapshot_ids: Iterable[str]) -> Iterator[None]:
        """Keep these snapshots from being removed while the block runs."""
        ids = list(snapshot_ids)
        with self._lock:
            for sid in ids:
                self._pins[sid] = self._pins.get(sid, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for sid in ids:
                    n = self._pins[sid] - 1
                    if n:
                        self._pins[sid] = n
                    else:
                        del self._pins[sid]

    def remove_unless_pinned(self, snapshot_id: str) -> bool:
        """Delete a snapshot file (not durable until its directory is fsynced) unless it is pinned.

        Under the lock: a restore pinning this snapshot now either comes first (and it stays) or finds it
        gone. Returns whether it was removed.
        """
        with self._lock:
            if snapshot_id in self._pins:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._files.snapshot_path(snapshot_id))
            self._infos.pop(snapshot_id, None)
            self._changed_locked()
        return True
