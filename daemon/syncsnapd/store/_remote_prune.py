"""What a prune does in the bucket of an S3 store (``_prune.py`` decides, under the exclusive lock of
``_locks.py``): upload the packs it repacked, each before its index; find packs left without an index;
delete forgotten snapshot files, then old indexes, then old packs. A part of :class:`~._remote.Remote`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from ._backend import Backend
from ._errors import BackendError
from ._remote_spec import _index_key, _pack_key, _store_error, write_cache_file

__all__ = ["BucketPruning"]


class BucketPruning:
    """The prune's requests to the bucket; :class:`~._remote.Remote` has them."""

    root: Path
    backend: Backend

    def _staged_packs(self) -> set[str]:
        raise NotImplementedError

    def upload_repacked(self, packs: list[str], step: Callable[[str], None]) -> None:
        """Upload the packs a prune just wrote (staged here), each before its index, one at a time (their
        order is what the crash tests step through), and drop the staged copies. ``step(label)`` after
        each object is in the bucket."""
        try:
            for pack in packs:
                path = self.root / "packs" / pack[:2] / f"{pack}.pack"
                if not path.exists():
                    continue  # uploaded meanwhile by a snapshot run's upload of every staged pack
                self.backend.put_file(_pack_key(pack), path)
                step("gc:pack-uploaded")
                self.backend.put_bytes(_index_key(pack), (self.root / "index" / f"{pack}.idx").read_bytes())
                step("gc:index-uploaded")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        except BackendError as exc:
            raise _store_error(exc) from exc

    def orphan_packs(self, sizes: dict[str, int]) -> list[str]:
        """Packs in the bucket (``sizes``: from :meth:`pack_sizes`) with no index there and not staged here:
        what a prune that crashed between deleting a pack's index and the pack leaves (or a run that died
        between uploading a pack and its index)."""
        try:
            indexed = {k[len("index/"):-4] for k, _ in self.backend.list("index/") if k.endswith(".idx")}
        except BackendError as exc:
            raise _store_error(exc) from exc
        staged = self._staged_packs()
        return sorted(p for p in sizes if p not in indexed and p not in staged)

    def upload_index(self, pack: str, index_bytes: bytes) -> None:
        """Upload (then cache) the index of a pack re-indexed from its footer."""
        try:
            self.backend.put_bytes(_index_key(pack), index_bytes)
        except BackendError as exc:
            raise _store_error(exc) from exc
        write_cache_file(self.root / "index" / f"{pack}.idx", index_bytes)

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a forgotten snapshot's file from the bucket."""
        self._delete(f"snapshots/{snapshot_id}.json")

    def delete_index(self, pack: str) -> None:
        self._delete(_index_key(pack))

    def delete_pack(self, pack: str) -> None:
        self._delete(_pack_key(pack))

    def _delete(self, key: str) -> None:
        try:
            self.backend.delete(key)
        except BackendError as exc:
            raise _store_error(exc) from exc
