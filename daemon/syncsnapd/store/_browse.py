"""Looking into one snapshot without loading its whole tree: one directory's entries, or one entry.

A snapshot's entries are stored in walk order, cut into groups (see ``_format.py``); these functions read
the groups one at a time and keep only what they are after, so memory holds one group (about 256
entries) plus the answer, whatever the size of the folder.

They also stop early. The engine writes a directory's entries together (its walk appends one sorted
listing per directory, after the directory's own entry), so once the children of a directory have begun,
the first entry that is not one of them ends the listing; listing the root reads only the first group or
two, and finding an entry stops at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._errors import CorruptDataError
from ._format import Entry, decode_tree_group

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["find_entry", "iter_entries", "list_directory"]


def iter_entries(store: Store, snapshot_id: str) -> Iterator[Entry]:
    """The entries of a snapshot in stored (walk) order, one tree group read at a time.

    Raises:
        UnknownSnapshotError: no such snapshot.
        CorruptDataError: its snapshot file or a list of entries is damaged; the message names the snapshot.
        StoreError: its tree data is missing or cannot be read.
    """
    record = store.catalog.record(snapshot_id)
    with store.reader() as reader:
        for h in record.tree:
            data = reader.read(h)
            try:
                group = decode_tree_group(data)
            except CorruptDataError as exc:
                raise CorruptDataError(f"the list of files of snapshot {snapshot_id} is damaged: {exc}") from exc
            yield from group


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def find_entry(store: Store, snapshot_id: str, path: str) -> Entry | None:
    """The entry at relative POSIX ``path`` (not ``""``) in the snapshot, or None.

    Raises: as :func:`iter_entries`.
    """
    parent = _parent(path)
    in_listing = False
    for e in iter_entries(store, snapshot_id):
        if e.path == path:
            return e
        if _parent(e.path) == parent:
            in_listing = True
        elif in_listing:
            return None  # the parent's listing is over
    return None


def list_directory(store: Store, snapshot_id: str, path: str) -> list[Entry] | None:
    """The entries directly inside directory ``path`` (``""``: the snapshot's root), in stored order;
    None when the snapshot has no directory at ``path`` (nothing there, or a file or symlink).

    Raises: as :func:`iter_entries`.
    """
    found = path == ""
    children: list[Entry] = []
    for e in iter_entries(store, snapshot_id):
        if not found:
            if e.path == path:
                if e.kind != "dir":
                    return None
                found = True
            continue
        if _parent(e.path) == path:
            children.append(e)
        elif children:
            break  # the directory's listing is over
    return children if found else None
