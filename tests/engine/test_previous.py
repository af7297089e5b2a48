"""The previous snapshot streamed beside the walk (``engine/_previous.py``): one directory's files at a
time, in walk order, and what a damaged previous snapshot still lets a run re-use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.store import backdate, snapshot, write_files
from syncsnapd.engine._previous import PreviousFiles
from syncsnapd.store import Store
from syncsnapd.store._format import decode_tree_group


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


async def test_listings_come_one_directory_at_a_time_in_walk_order(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a", "e.txt": b"e", "d1/x": b"x", "d1/sub/y": b"y", "d2/z": b"z",
                      "d2/deeper/w": b"w"})
    os.symlink("a.txt", src / "link")
    summary = await snapshot(store, src)

    previous = PreviousFiles(store, summary.id)
    root = previous.listing("")
    assert sorted(root) == ["a.txt", "e.txt"]  # files only: no directories, no symlinks
    assert root["a.txt"].chunks and root["a.txt"].size == 1
    assert list(previous.listing("d1")) == ["d1/x"]
    # d1/sub is not asked for (ignored now, say); a directory that was not there is empty.
    assert previous.listing("d15") == {}
    assert list(previous.listing("d2")) == ["d2/z"]
    assert previous.listing("d1") == {}  # behind: the stream never goes back
    assert list(previous.listing("d2/deeper")) == ["d2/deeper/w"]
    assert previous.listing("d3") == {}
    previous.close()
    assert not previous.damaged


async def test_a_previous_snapshot_damaged_part_way_still_spares_reading_the_files_before(
        store: Store, tmp_path: Path) -> None:
    """Files the previous snapshot tells of before a damaged list of entries are re-used unread; only the
    rest are read again (before, one damaged list made every file count as new and be read)."""
    src = tmp_path / "src"
    write_files(src, {f"f{i:04}": b"%d" % i for i in range(1500)})
    backdate(src)
    first = await snapshot(store, src)
    tree = store.catalog.record(first.id).tree
    assert len(tree) >= 3
    damaged = len(tree) // 2
    before = sum(len(decode_tree_group(store.read_chunk(h))) for h in tree[:damaged])
    loc = store.locate(tree[damaged])
    assert loc is not None
    fd = os.open(store.pack_path(loc.pack), os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * loc.length, loc.offset)
    finally:
        os.close(fd)

    second = await snapshot(store, src)

    assert second.files == 1500
    assert second.files_unchanged == before
    assert second.files_new == 1500 - before
