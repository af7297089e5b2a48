"""The previous snapshot's files, streamed beside the walk: one directory's entries at a time.

A snapshot's entries are stored in walk order (``store/_format.py``): the walk lists the folder, then each
directory in depth-first order with names sorted, and appends one directory's listing at a time. So the
listings come as blocks of entries with the same parent, in the order of their directories' paths compared
component by component: the order in which the next walk asks for them. :class:`PreviousFiles` reads the
previous snapshot's tree groups one at a time and answers :meth:`~PreviousFiles.listing` by moving forward
through the blocks, skipping those of directories that are gone (or ignored now), never going back.

Memory: one tree group (~256 entries) and one directory's file entries, instead of an object per file
of the whole previous snapshot. A snapshot written in some other order (or damaged part way) only costs
re-use: a listing not found where expected is empty, and the files are read again.
"""

from __future__ import annotations

import calendar
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime

from ..store import Entry, Store, StoreError, iter_entries

__all__ = ["PreviousFiles", "id_time_ns"]


def id_time_ns(snapshot_id: str) -> int:
    """When a snapshot started, from its id (``20261128T170102.123Z-...``, UTC, to the millisecond: exactly
    its ``started_ns``; ids of older versions were made a little before the run's start)."""
    when = datetime.strptime(snapshot_id[:19], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
    return calendar.timegm(when.timetuple()) * 1_000_000_000 + when.microsecond * 1000


def _dir_of(path: str) -> str:
    return path.rpartition("/")[0]


def _order(rel_dir: str) -> list[str]:
    # Depth-first order with sorted names is the order of the paths' component lists.
    return rel_dir.split("/") if rel_dir else []


class PreviousFiles:
    """The file entries of one snapshot, looked up one directory at a time in walk order (see the module
    docstring). Used by one thread at a time; :meth:`close` when done."""

    def __init__(self, store: Store, snapshot_id: str) -> None:
        self._entries: Iterator[Entry] | None = iter_entries(store, snapshot_id)
        self._next: deque[Entry] = deque()
        self.damaged = False

    def _peek(self) -> Entry | None:
        if not self._next:
            if self._entries is None:
                return None
            try:
                self._next.append(next(self._entries))
            except StopIteration:
                self.close()
                return None
            except StoreError:
                # A damaged previous snapshot only costs speed: the rest of the files are read again.
                self.damaged = True
                self.close()
                return None
        return self._next[0]

    def listing(self, rel_dir: str) -> dict[str, Entry]:
        """The previous snapshot's file entries directly in ``rel_dir`` ("" is the folder), by path.

        Call in walk order; a directory asked for after a later one gets an empty answer.
        """
        want = _order(rel_dir)
        while (e := self._peek()) is not None:
            parent = _dir_of(e.path)
            if parent == rel_dir:
                files: dict[str, Entry] = {}
                while e is not None and _dir_of(e.path) == rel_dir:
                    if e.kind == "file":
                        files[e.path] = e
                    self._next.popleft()
                    e = self._peek()
                return files
            if _order(parent) > want:
                return {}
            while e is not None and _dir_of(e.path) == parent:  # a directory the walk did not ask for
                self._next.popleft()
                e = self._peek()
        return {}

    def close(self) -> None:
        entries, self._entries = self._entries, None
        if entries is not None:
            close = getattr(entries, "close", None)
            if close is not None:
                close()  # the generator's reader closes its pack files
