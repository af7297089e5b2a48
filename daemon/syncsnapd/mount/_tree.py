"""One snapshot's tree as the mount serves it: every entry by path and every directory's children,
read once (group by group, ``store.iter_entries``) when the snapshot is first looked into, and kept in a
small LRU of trees (:class:`TreeCache`) so that memory holds a few snapshots' trees, whatever the
history's length.

A whole tree is read rather than one directory at a time (``store.list_directory``) because
``list_directory`` reads from the first group every time: walking a 20,000-file tree directory by
directory would read it once per directory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from ..store import Entry, Store, iter_entries

__all__ = ["SnapshotTree", "TreeCache"]

# Trees kept in memory at once: a `diff -r` of two snapshots, a `tar` of a third, and room for `ls` of a
# few more. A tree of 20,000 entries is a few MiB.
MAX_TREES = 6
_NOT_NAMES = frozenset({"", ".", ".."})


@dataclass
class SnapshotTree:
    """The entries of one snapshot. ``children[""]`` is the root's listing (paths, in stored order)."""

    snapshot_id: str
    entries: dict[str, Entry] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)  # each entry's index in its parent's children
    # directory -> index of the first of its children not read ahead yet (the mount's small-file read-ahead)
    ahead: dict[str, int] = field(default_factory=dict)
    root_mode: int | None = None  # the permission bits of the folder snapshotted (None: not recorded)

    @classmethod
    def read(cls, store: Store, snapshot_id: str) -> SnapshotTree:
        """Read the tree from the store (blocking: run it in a worker thread).

        Raises:
            StoreError: as ``store.iter_entries``.
        """
        tree = cls(snapshot_id, children={"": []}, root_mode=store.snapshot_root_mode(snapshot_id))
        for e in iter_entries(store, snapshot_id):
            parent, _, name = e.path.rpartition("/")
            siblings = tree.children.get(parent)
            if siblings is None or e.path in tree.entries or name in _NOT_NAMES or e.path.startswith("/"):
                # Under a path that is not a directory of this snapshot, twice, or a name no directory can
                # hold (a crafted snapshot file): not shown.
                continue
            tree.entries[e.path] = e
            tree.position[e.path] = len(siblings)
            siblings.append(e.path)
            if e.kind == "dir":
                tree.children[e.path] = []
        return tree


class TreeCache:
    """The last :data:`MAX_TREES` snapshot trees read. Thread-safe (trees are read in worker threads)."""

    def __init__(self, limit: int = MAX_TREES) -> None:
        self._limit = limit
        self._trees: OrderedDict[str, SnapshotTree] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, snapshot_id: str) -> SnapshotTree | None:
        with self._lock:
            tree = self._trees.get(snapshot_id)
            if tree is not None:
                self._trees.move_to_end(snapshot_id)
            return tree

    def put(self, tree: SnapshotTree) -> None:
        with self._lock:
            self._trees[tree.snapshot_id] = tree
            self._trees.move_to_end(tree.snapshot_id)
            while len(self._trees) > self._limit:
                self._trees.popitem(last=False)
