"""`check` costs what the store holds, not how many snapshots list it: each distinct list of entries (tree
group) is read and decoded once, and a problem in a shared group still names every snapshot it damages.

The decodes are counted with a wrapper around the store's own ``decode_tree_group`` that calls through
(no double: every group is really read and decoded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.store import flip_byte
from syncsnapd.store import (
    Damage,
    DamagedSnapshot,
    Entry,
    SnapshotStats,
    Store,
    _check,
    hash_bytes,
    make_snapshot_id,
)

SNAPSHOTS = 12
FILES = 3000  # about a dozen tree groups (cut at paths whose crc32 ends in 8 zero bits)


def build(root: Path) -> tuple[list[str], list[Entry]]:
    """SNAPSHOTS snapshots of one tree of FILES files; between two of them one file's mtime changes, so
    each snapshot has one list of entries of its own and shares the others."""
    ids: list[str] = []
    with Store.open(root, writable=True) as store:
        writer = store.begin_write()
        entries = [Entry("d", "dir", 0, 1, 0o755, 0, None)]
        for i in range(FILES):
            data = os.urandom(64)
            h = hash_bytes(data)
            writer.add_chunk(h, data)
            entries.append(Entry(f"d/f{i:05d}", "file", len(data), 1, 0o644, 0, [h]))
        for n in range(SNAPSHOTS):
            if n:
                writer = store.begin_write()
                i = 1 + (n * 251) % FILES
                entries[i] = entries[i]._replace(mtime_ns=entries[i].mtime_ns + n)
            sid = make_snapshot_id()
            store.commit_snapshot(writer, snapshot_id=sid, project="p", root="/x", entries=entries,
                                  stats=SnapshotStats(files=FILES))
            ids.append(sid)
    return ids, entries


def distinct_groups(root: Path, ids: list[str]) -> tuple[int, int]:
    """(distinct tree groups, groups listed by all snapshots together)."""
    with Store.open(root, writable=False) as store:
        trees = [store.catalog.read(sid).tree for sid in ids]
    return len({h for t in trees for h in t}), sum(len(t) for t in trees)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counted = [0]
    real = _check.decode_tree_group

    def counting(data: bytes) -> list[Entry]:
        counted[0] += 1
        return real(data)

    monkeypatch.setattr(_check, "decode_tree_group", counting)
    return counted


@pytest.mark.parametrize("read_data", [False, True])
def test_each_shared_list_of_entries_is_decoded_once(tmp_path: Path, decodes: list[int], read_data: bool) -> None:
    ids, _ = build(tmp_path / "store")
    distinct, listed = distinct_groups(tmp_path / "store", ids)
    assert listed > 3 * distinct  # the snapshots share most of their groups
    with Store.open(tmp_path / "store", writable=False) as store:
        report = store.check(read_data=read_data)
    assert report.ok and report.snapshots == SNAPSHOTS
    assert decodes[0] == distinct
    assert report.tree_groups == distinct and report.to_json()["tree_groups"] == distinct


def test_a_damaged_chunk_in_a_shared_group_damages_every_snapshot_listing_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids, entries = build(root)
    victim = entries[FILES // 2]  # never changed: the same entry in every snapshot
    with Store.open(root, writable=False) as store:
        loc = store.locate(victim.chunks[0])
        assert loc is not None
    flip_byte(root / "packs" / loc.pack[:2] / f"{loc.pack}.pack", loc.offset + loc.length // 2)
    with Store.open(root, writable=False) as store:
        report = store.check(read_data=True)
    (problem,) = report.problems
    assert (problem.kind, problem.object, problem.id) == ("corrupt", "chunk", victim.chunks[0])
    assert problem.damages == tuple(Damage(sid, 1, (victim.path,)) for sid in sorted(ids))
    assert report.damaged == [DamagedSnapshot(sid, 1, (victim.path,)) for sid in sorted(ids)]


def test_a_damaged_shared_group_damages_the_listing_of_every_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids, _ = build(root)
    with Store.open(root, writable=False) as store:
        trees = [store.catalog.read(sid).tree for sid in sorted(ids)]
        shared = next(h for h in trees[0] if all(h in t for t in trees))
        loc = store.locate(shared)
        assert loc is not None
    flip_byte(root / "packs" / loc.pack[:2] / f"{loc.pack}.pack", loc.offset + loc.length // 2)
    with Store.open(root, writable=False) as store:
        report = store.check(read_data=False)
    (problem,) = report.problems
    assert problem.id == shared
    assert problem.damages == tuple(Damage(sid, 0, (), listing=True) for sid in sorted(ids))
    assert report.damaged == [DamagedSnapshot(sid, 0, (), listing=True) for sid in sorted(ids)]
