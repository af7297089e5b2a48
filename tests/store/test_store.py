"""The store on disk: layout, locking, clean-up, blobs, `check`, and crash safety at every write step."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from helpers.store import (
    CrashRunner,
    backdate,
    commit_entries,
    flip_byte,
    patch_file,
    snapshot,
    tree_state,
    write_files,
)
from syncsnapd.engine import restore_snapshot
from syncsnapd.store import (
    Damage,
    DamagedSnapshot,
    Problem,
    SnapshotInfo,
    SnapshotStats,
    Store,
    StoreError,
    UnknownSnapshotError,
    hash_bytes,
    make_snapshot_id,
)

MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


def test_new_store_has_documented_layout(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store", writable=True):
        pass
    root = tmp_path / "store"
    config = json.loads((root / "config.json").read_text())
    assert config == {"format": "syncsnap-store", "version": 2,
                      "chunker": {"algorithm": "fastcdc-2020", "min": 256 * 1024, "avg": 512 * 1024,
                                  "max": 2 * MiB, "normalization": 2},
                      "chunk_id": "blake3", "compression": "zstd", "compression_level": -1,
                      "encryption": "none", "pack_size": 16 * MiB}
    assert sorted(p.name for p in root.iterdir()) == ["config.json", "index", "lock", "packs", "snapshots", "tmp"]


def test_read_only_open_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a syncsnap store"):
        Store.open(tmp_path / "nothing", writable=False)
    assert not (tmp_path / "nothing").exists()


def test_writable_open_refuses_a_folder_with_other_data(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thesis.txt").write_text("precious")
    with pytest.raises(StoreError, match="not empty and not a syncsnap store"):
        Store.open(tmp_path / "data", writable=True)
    assert sorted(os.listdir(tmp_path / "data")) == ["thesis.txt"]


def test_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "store", writable=True)
    try:
        with pytest.raises(StoreError) as info:
            Store.open(tmp_path / "store", writable=True)
        assert str(info.value) == f"store {tmp_path / 'store'} is in use by another syncsnapd (pid {os.getpid()})"
        with Store.open(tmp_path / "store", writable=False) as reader:  # offline commands still work
            assert reader.list_snapshots() == []
    finally:
        first.close()
    Store.open(tmp_path / "store", writable=True).close()  # the lock is released on close


def test_leftover_temporary_files_are_removed_by_a_writable_open_only(tmp_path: Path) -> None:
    Store.open(tmp_path / "store", writable=True).close()
    tmp = tmp_path / "store" / "tmp"
    (tmp / "abc.pack").write_bytes(b"half a pack")
    (tmp / "dir").mkdir()
    (tmp / "dir" / "x").write_bytes(b"x")
    Store.open(tmp_path / "store", writable=False).close()
    assert sorted(os.listdir(tmp)) == ["abc.pack", "dir"]
    Store.open(tmp_path / "store", writable=True).close()
    assert os.listdir(tmp) == []


def test_blobs_are_compressed_unless_that_does_not_help(store: Store) -> None:
    text = b"the same words again and again " * 4000
    noise = os.urandom(100_000)
    writer = store.begin_write()
    assert 0 < writer.add_chunk(hash_bytes(text), text) < len(text) // 10
    assert writer.add_chunk(hash_bytes(noise), noise) == len(noise)  # stored raw
    assert writer.add_chunk(hash_bytes(text), text) == 0  # duplicate within the run
    store.commit_snapshot(writer, snapshot_id=make_snapshot_id(), project="p", root="/x", entries=[],
                          stats=SnapshotStats())
    assert store.read_chunk(hash_bytes(text)) == text
    assert store.read_chunk(hash_bytes(noise)) == noise
    text_loc, noise_loc = store.locate(hash_bytes(text)), store.locate(hash_bytes(noise))
    assert text_loc is not None and text_loc.flags == 1  # zstd
    assert noise_loc is not None and noise_loc.flags == 0  # raw


def test_a_snapshot_file_records_the_folders_mode_only_when_given(store: Store) -> None:
    """``root_mode`` is optional in a snapshot file (older versions neither write nor read it): given, it
    is read back; not given, the file has no such key and the mode is unknown (None); permission bits
    only, so a setuid mode is refused before anything is written."""
    given, older = make_snapshot_id(), make_snapshot_id()
    for sid, mode in ((given, 0o750), (older, None)):
        store.commit_snapshot(store.begin_write(), snapshot_id=sid, project="p", root="/x", entries=[],
                              stats=SnapshotStats(), root_mode=mode)
    assert (store.snapshot_root_mode(given), store.snapshot_root_mode(older)) == (0o750, None)
    assert "root_mode" not in json.loads(store.files.snapshot_path(older).read_bytes())
    assert [s.id for s in store.list_snapshots("p")] == sorted([given, older])
    writer = store.begin_write()
    with pytest.raises(ValueError):
        store.commit_snapshot(writer, snapshot_id=make_snapshot_id(), project="p", root="/x", entries=[],
                              stats=SnapshotStats(), root_mode=0o4750)
    writer.abort()
    assert len(store.list_snapshots("p")) == 2


def test_snapshot_ids_sort_by_time_and_are_safe_names() -> None:
    from datetime import UTC, datetime

    a = make_snapshot_id(datetime(2026, 11, 28, 17, 1, 2, 123000, tzinfo=UTC))
    b = make_snapshot_id(datetime(2026, 11, 28, 17, 1, 2, 124000, tzinfo=UTC))
    c = make_snapshot_id(datetime(2027, 1, 1, tzinfo=UTC))
    assert a.startswith("20261128T170102.123Z-") and len(a) == len("20261128T170102.123Z-a1b2c3d4e5f6")
    assert sorted([c, b, a]) == [a, b, c]
    assert all(ch.isalnum() or ch in ".-" for ch in a)


async def test_list_and_latest_are_per_project_and_oldest_first(store: Store, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"a.txt": b"a"})
    s1 = await snapshot(store, tmp_path / "src", "one")
    s2 = await snapshot(store, tmp_path / "src", "two")
    s3 = await snapshot(store, tmp_path / "src", "one")
    assert [i.id for i in store.list_snapshots()] == [s1.id, s2.id, s3.id]
    assert [i.id for i in store.list_snapshots("one")] == [s1.id, s3.id]
    latest = store.latest("one")
    assert isinstance(latest, SnapshotInfo) and latest.id == s3.id and latest.project == "one"
    assert latest.files == 1 and latest.files_unchanged == 1
    assert set(latest.to_json()) == {"id", "project", "time", "files", "bytes", "files_new", "files_changed",
                                     "files_unchanged", "bytes_added", "duration_seconds", "warnings", "host"}
    assert store.latest("three") is None
    with pytest.raises(UnknownSnapshotError):
        store.load_entries("20200101T000000.000Z-000000")
    with pytest.raises(UnknownSnapshotError):
        store.load_entries("../../etc/passwd")


async def test_a_reader_sees_snapshots_written_after_it_opened(store: Store, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"a.txt": b"first"})
    reader = Store.open(store.root, writable=False)
    try:
        assert reader.list_snapshots() == []
        s = await snapshot(store, tmp_path / "src")
        assert [i.id for i in reader.list_snapshots()] == [s.id]
        entries = reader.load_entries(s.id)  # its blobs are in an index written after the reader opened
        assert reader.read_chunk(entries[0].chunks[0]) == b"first"
    finally:
        reader.close()


async def test_small_packs_are_sealed_while_writing(tmp_path: Path) -> None:
    """With a 256 KiB pack size, one snapshot spreads over many packs sealed on the background thread."""
    Store.open(tmp_path / "store", writable=True).close()
    cfg = tmp_path / "store" / "config.json"
    cfg.write_text(cfg.read_text().replace(str(16 * MiB), str(256 * 1024)))
    files = {f"f{i}.bin": os.urandom(100_000) for i in range(30)}
    files["big.bin"] = os.urandom(3 * MiB)
    write_files(tmp_path / "src", files)
    with Store.open(tmp_path / "store", writable=True) as store:
        s = await snapshot(store, tmp_path / "src")
        assert s.bytes_added == sum(len(v) for v in files.values())
        report = store.check()
        assert report.ok and report.packs >= 10
        restore_snapshot(store, s.id, tmp_path / "out")
    assert tree_state(tmp_path / "out") == tree_state(tmp_path / "src")


async def two_snapshots(store: Store, tmp_path: Path) -> tuple[str, str, str, str]:
    """S1 holds a.bin and b.bin; S2 adds c.bin, which lands in a pack of its own."""
    src = tmp_path / "src"
    write_files(src, {"a.bin": os.urandom(50_000), "b.bin": os.urandom(50_000)})
    backdate(src)
    s1 = await snapshot(store, src)
    write_files(src, {"c.bin": os.urandom(50_000)})
    backdate(src)
    s2 = await snapshot(store, src)
    return s1.id, s2.id, hash_bytes((src / "a.bin").read_bytes()), hash_bytes((src / "c.bin").read_bytes())


async def test_check_of_a_healthy_store_finds_nothing(store: Store, tmp_path: Path) -> None:
    await two_snapshots(store, tmp_path)
    report = store.check()
    assert report.ok and report.problems == [] and report.damaged == []
    assert report.snapshots == 2 and report.packs == 2 and report.bytes_read > 150_000


async def test_check_finds_a_corrupted_chunk_and_the_snapshots_it_damages(store: Store, tmp_path: Path) -> None:
    s1, s2, a_hash, _ = await two_snapshots(store, tmp_path)
    loc = store.locate(a_hash)
    assert loc is not None
    flip_byte(store.pack_path(loc.pack), loc.offset + 100)
    with Store.open(store.root, writable=False) as reader:
        report = reader.check()
    assert report.problems == [Problem("corrupt", "chunk", a_hash, "does not match its hash", pack=loc.pack,
                                       damages=(Damage(s1, 1, ("a.bin",)), Damage(s2, 1, ("a.bin",))))]
    assert report.damaged == [DamagedSnapshot(s1, 1, ("a.bin",)), DamagedSnapshot(s2, 1, ("a.bin",))]
    with Store.open(store.root, writable=False) as reader:
        assert reader.check(read_data=False).ok  # without reading data, a flipped byte is invisible


async def test_check_finds_a_deleted_pack_and_the_snapshot_it_damages(store: Store, tmp_path: Path) -> None:
    s1, s2, _, c_hash = await two_snapshots(store, tmp_path)
    loc = store.locate(c_hash)
    assert loc is not None
    store.pack_path(loc.pack).unlink()
    for read_data in (True, False):
        with Store.open(store.root, writable=False) as reader:
            report = reader.check(read_data=read_data)
        # S2's new list of entries went into the same pack as c.bin, so S2's listing is lost too.
        assert report.problems == [Problem("missing", "pack", loc.pack, "2 chunks",
                                           damages=(Damage(s2, 0, (), listing=True),))]
        assert report.damaged == [DamagedSnapshot(s2, 0, (), listing=True)]
    assert s1 not in [d.id for d in report.damaged]


async def test_check_finds_a_damaged_snapshot_file(store: Store, tmp_path: Path) -> None:
    s1, _, _, _ = await two_snapshots(store, tmp_path)
    path = store.root / "snapshots" / f"{s1}.json"
    path.write_text(path.read_text().replace('"files": 2', '"files": 3'))
    with Store.open(store.root, writable=False) as reader:
        report = reader.check()
        assert report.problems == [Problem("corrupt", "snapshot", s1, "the snapshot file is damaged")]
        assert s1 not in [i.id for i in reader.list_snapshots()]


async def test_a_pack_without_index_is_reindexed_on_writable_open(store: Store, tmp_path: Path) -> None:
    """The crash window between renaming a pack and writing its index loses nothing."""
    s1, _, a_hash, _ = await two_snapshots(store, tmp_path)
    loc = store.locate(a_hash)
    assert loc is not None
    store.close()
    (store.root / "index" / f"{loc.pack}.idx").unlink()
    with Store.open(store.root, writable=False) as reader:
        # Read-only, nothing is repaired, but the pack's own copy of its index is used.
        report = reader.check()
        assert report.ok and report.unindexed_packs == 1
        restore_snapshot(reader, s1, tmp_path / "read-only")
    assert not (store.root / "index" / f"{loc.pack}.idx").exists()
    with Store.open(store.root, writable=True) as writer:
        assert writer.check().ok
        restore_snapshot(writer, s1, tmp_path / "out")
    assert (tmp_path / "out" / "a.bin").read_bytes() == (tmp_path / "src" / "a.bin").read_bytes()


def test_crash_at_every_durable_write_step_keeps_earlier_snapshots(tmp_path: Path) -> None:
    """SIGKILL at each fsync/rename step of a snapshot (in a forked child), for every step in turn.

    Afterwards: the earlier snapshot is listed, restores byte-identical and `check` is clean; the new
    snapshot exists only if its file was renamed into place, and then restores completely; no
    temporary file survives the next writable open; and the next snapshot succeeds.
    Note: a killed process leaves the page cache intact, so this shows crash consistency of the
    ordering, not behaviour on power loss (which the fsyncs are for).
    """
    src, pristine = tmp_path / "src", tmp_path / "pristine"
    write_files(src, {"keep.txt": b"unchanged\n", "big.bin": os.urandom(3 * MiB)})
    backdate(src)
    with Store.open(pristine, writable=True) as s:
        trio.run(snapshot, s, src)
    # Small packs, so that the run below writes more than one.
    cfg = pristine / "config.json"
    cfg.write_text(cfg.read_text().replace(str(16 * MiB), str(MiB)))
    with Store.open(pristine, writable=False) as s:
        (first,) = s.list_snapshots()
    before = tree_state(src)
    patch_file(src / "big.bin", MiB + 10, os.urandom(100))  # one changed 1 MiB chunk
    # With 1 MiB packs: one pack sealed on the background thread while reading, one at the end.
    write_files(src, {"new/a.bin": os.urandom(600_000), "new/b.txt": b"b" * 5000})
    backdate(src)
    after = tree_state(src)

    seen_steps: set[str] = set()
    with CrashRunner() as runner:
        for n in range(1, 200):
            store_dir = tmp_path / f"crash{n}"
            shutil.copytree(pristine, store_dir)
            code, reached = runner.run(store_dir, src, "p", n)
            if code == 0:
                assert len(reached) == n - 1  # every step has been killed at once
                break
            assert code == -9 and len(reached) == n, (n, code, reached)
            seen_steps.add(reached[-1])
            check_after_crash(store_dir, src, reached, first, before, after, tmp_path / f"out{n}")
            shutil.rmtree(store_dir)
        else:
            raise AssertionError("the snapshot never completed")
    # Every kind of step was hit: several packs, their indexes, and the snapshot file.
    for kind in ("pack", "index", "snapshot"):
        for step in ("written", "fsynced", "renamed", "dirsynced"):
            assert f"{kind}:{step}" in seen_steps
    assert n > 2 * 9


def check_after_crash(store_dir: Path, src: Path, reached: list[str], first: SnapshotInfo, before: object,
                      after: object, out: Path) -> None:
    out.mkdir()
    with Store.open(store_dir, writable=True) as store:
        assert os.listdir(store_dir / "tmp") == []
        snaps = store.list_snapshots()
        assert snaps[0] == first
        renamed = "snapshot:renamed" in reached
        assert len(snaps) == (2 if renamed else 1), reached
        report = store.check()
        assert report.ok, (reached, report)
        restore_snapshot(store, first.id, out / "first")
        assert tree_state(out / "first") == before, reached
        if renamed:
            restore_snapshot(store, snaps[1].id, out / "second")
            assert tree_state(out / "second") == after
        # The store stays usable: the next snapshot completes and is whole.
        following = trio.run(snapshot, store, src)
        restore_snapshot(store, following.id, out / "next")
        assert tree_state(out / "next") == after
        assert store.check().ok


def test_unknown_ids_are_refused_before_touching_the_disk(store: Store) -> None:
    with pytest.raises(UnknownSnapshotError, match="not a snapshot id"):
        store.snapshot_root("20261128T170102.123Z-a1b2c3/../../x")


def test_a_hand_made_snapshot_round_trips(store: Store) -> None:
    sid = commit_entries(store, "p", [("d", "dir", None), ("d/f", "file", b"content"), ("l", "symlink", "d/f")])
    entries = store.load_entries(sid)
    assert [(e.path, e.kind) for e in entries] == [("d", "dir"), ("d/f", "file"), ("l", "symlink")]
    assert store.read_chunk(entries[1].chunks[0]) == b"content" and entries[2].target == "d/f"
