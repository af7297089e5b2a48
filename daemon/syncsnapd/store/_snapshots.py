"""The snapshot files of a store: listing (cached), reading, pins, and removal for ``forget``.

Only the small listing is cached (snapshot files never change); a snapshot's tree list is read from its
file when needed, so memory does not grow with history x folder size. A snapshot is *pinned* while a
restore or diff reads it: ``forget`` then leaves it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator

from ._errors import CorruptDataError, StoreError, UnknownSnapshotError
from ._files import StoreFiles
from ._format import SNAPSHOT_ID_RE, SnapshotInfo, SnapshotRecord, decode_snapshot

__all__ = ["SnapshotCatalog"]


class SnapshotCatalog:
    """The snapshots of one store directory. Thread-safe."""

    def __init__(self, files: StoreFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._infos: dict[str, SnapshotInfo] = {}
        self._pins: dict[str, int] = {}

    def read(self, snapshot_id: str) -> SnapshotRecord:
        """Read and verify a snapshot file. Raises OSError (FileNotFoundError) or CorruptDataError."""
        return decode_snapshot(snapshot_id, self._files.snapshot_path(snapshot_id).read_bytes())

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
        """Every snapshot now in the directory (new files read, forgotten ones dropped from the cache).
        The ids of damaged snapshot files are appended to ``damaged`` (and left out)."""
        try:
            names = os.listdir(self._files.snapshot_dir)
        except FileNotFoundError:
            names = []
        present: set[str] = set()
        for name in names:
            sid = name[:-5]
            if not name.endswith(".json") or not SNAPSHOT_ID_RE.match(sid):
                continue
            present.add(sid)
            if sid in self._infos:
                continue
            try:
                record = self.read(sid)
            except FileNotFoundError:
                present.discard(sid)  # forgotten by a prune meanwhile
                continue
            except (OSError, CorruptDataError):
                if damaged is not None:
                    damaged.append(sid)
                continue
            with self._lock:
                self._infos[sid] = record.info
        with self._lock:
            for sid in [sid for sid in self._infos if sid not in present]:
                del self._infos[sid]  # forgotten (by a prune here or in the daemon)
            return dict(self._infos)

    def added(self, info: SnapshotInfo) -> None:
        """A snapshot file this process has just made durable."""
        with self._lock:
            self._infos[info.id] = info

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
        return True
