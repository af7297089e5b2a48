"""`check` at both levels finds deliberately damaged and deleted objects exactly, with the snapshots and
files each one damages, and reports nothing on a healthy store, also while a writer adds snapshots."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import trio

from helpers.store import backdate, commit_entries, flip_byte, patch_file, snapshot, write_files
from syncsnapd.store import Damage, DamagedSnapshot, Entry, Problem, SnapshotStats, Store, make_snapshot_id

KiB, MiB = 1 << 10, 1 << 20


def small_packs(root: Path, size: int = 256 * KiB) -> None:
    Store.open(root, writable=True).close()
    cfg = root / "config.json"
    cfg.write_text(cfg.read_text().replace(str(16 * MiB), str(size)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Three snapshots over several packs: docs@1 (a, b, big), docs@2 (+ c; big changed), code@1 (a again)."""
    base = tmp_path_factory.mktemp("check")
    root = base / "store"
    small_packs(root)
    docs, code = base / "docs", base / "code"
    a = os.urandom(40 * KiB)
    write_files(docs, {"a.bin": a, "b.bin": os.urandom(300 * KiB), "big.bin": os.urandom(2 * MiB + 5)})
    write_files(code, {"copy-of-a.bin": a})
    backdate(docs)
    backdate(code)
    ids: dict[str, str] = {}

    async def take() -> None:
        with Store.open(root, writable=True) as store:
            ids["docs1"] = (await snapshot(store, docs, "docs")).id
            write_files(docs, {"c.bin": os.urandom(100 * KiB)})
            patch_file(docs / "big.bin", MiB + 10, b"changed")
            backdate(docs)
            ids["docs2"] = (await snapshot(store, docs, "docs")).id
            ids["code1"] = (await snapshot(store, code, "code")).id

    trio.run(take)
    return root, ids


@pytest.fixture
def store_copy(pristine: tuple[Path, dict[str, str]], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root, ids = pristine
    shutil.copytree(root, tmp_path / "store")
    return tmp_path / "store", ids


def check(root: Path, read_data: bool) -> tuple[list[Problem], list[DamagedSnapshot]]:
    with Store.open(root, writable=False) as store:
        report = store.check(read_data=read_data)
    return report.problems, report.damaged


def file_chunk(root: Path, sid: str, path: str, index: int = 0) -> tuple[str, str, int, int]:
    """(hash, pack, offset, stored length) of a chunk of a file in a snapshot."""
    with Store.open(root, writable=False) as store:
        entry = next(e for e in store.load_entries(sid) if e.path == path)
        h = entry.chunks[index]
        loc = store.locate(h)
        assert loc is not None
        return h, loc.pack, loc.offset, loc.length


@pytest.mark.parametrize("read_data", [False, True])
def test_a_healthy_store_has_no_problems(store_copy: tuple[Path, dict[str, str]], read_data: bool) -> None:
    root, _ = store_copy
    with Store.open(root, writable=False) as store:
        report = store.check(read_data=read_data)
    assert report.ok and report.problems == [] and report.damaged == []
    assert report.snapshots == 3 and report.packs >= 5
    assert (report.bytes_read > 2 * MiB) == read_data


def test_a_corrupted_chunk_is_found_by_read_data_with_every_file_it_damages(
        store_copy: tuple[Path, dict[str, str]]) -> None:
    root, ids = store_copy
    h, pack, offset, _ = file_chunk(root, ids["docs1"], "a.bin")
    flip_byte(root / "packs" / pack[:2] / f"{pack}.pack", offset + 7)
    assert check(root, read_data=False) == ([], [])  # the fast level does not read file content
    problems, damaged = check(root, read_data=True)
    # a.bin is in both docs snapshots, and the same bytes are copy-of-a.bin in code's.
    assert problems == [Problem("corrupt", "chunk", h, "does not match its hash", pack=pack, damages=(
        Damage(ids["docs1"], 1, ("a.bin",)), Damage(ids["docs2"], 1, ("a.bin",)),
        Damage(ids["code1"], 1, ("copy-of-a.bin",))))]
    assert damaged == [DamagedSnapshot(ids["docs1"], 1, ("a.bin",)), DamagedSnapshot(ids["docs2"], 1, ("a.bin",)),
                       DamagedSnapshot(ids["code1"], 1, ("copy-of-a.bin",))]


@pytest.mark.parametrize("read_data", [False, True])
def test_a_deleted_pack_is_found_at_both_levels(store_copy: tuple[Path, dict[str, str]], read_data: bool) -> None:
    root, ids = store_copy
    # The changed middle chunk of big.bin exists only in docs2.
    h, pack, _, _ = file_chunk(root, ids["docs2"], "big.bin", 1)
    (root / "packs" / pack[:2] / f"{pack}.pack").unlink()
    with Store.open(root, writable=False) as store:
        in_pack = {r for r, loc in ((r, store.locate(r)) for e in store.load_entries(ids["docs2"])
                                    for r in e.chunks) if loc is not None and loc.pack == pack}
    problems, damaged = check(root, read_data)
    assert [(p.kind, p.object, p.id) for p in problems] == [("missing", "pack", pack)]
    assert h in in_pack
    (problem,) = problems
    assert [d.snapshot for d in problem.damages] == [d.id for d in damaged]
    assert ids["docs2"] in [d.id for d in damaged] and ids["code1"] not in [d.id for d in damaged]
    # Exactly the files with a chunk in the deleted pack are damaged (no more, no fewer).
    with Store.open(root, writable=False) as store:
        for d in damaged:
            expected = sorted(e.path for e in store.load_entries(d.id) if set(e.chunks) & in_pack) \
                if not d.listing else None
            if expected is not None:
                assert sorted(d.paths) == expected and d.files == len(expected)


@pytest.mark.parametrize("read_data", [False, True])
def test_a_truncated_pack_is_found_at_both_levels(store_copy: tuple[Path, dict[str, str]], read_data: bool) -> None:
    root, ids = store_copy
    h, pack, offset, length = file_chunk(root, ids["docs1"], "big.bin", 0)
    path = root / "packs" / pack[:2] / f"{pack}.pack"
    size = path.stat().st_size
    os.truncate(path, offset + length - 1)  # cuts the last byte of big.bin's first chunk and all after it
    problems, damaged = check(root, read_data)
    assert problems[0] == Problem("corrupt", "pack", pack,
                                  f"{offset + length - 1:,} bytes where its index implies {size:,}",
                                  damages=problems[0].damages)
    assert len(problems) == 1
    affected = {d.snapshot: d.paths for d in problems[0].damages}
    assert "big.bin" in affected[ids["docs1"]] and "big.bin" in affected[ids["docs2"]]
    assert ids["code1"] not in affected


def test_a_damaged_index_is_reported_and_repaired_from_its_pack(store_copy: tuple[Path, dict[str, str]]) -> None:
    root, ids = store_copy
    _, pack, _, _ = file_chunk(root, ids["code1"], "copy-of-a.bin")
    flip_byte(root / "index" / f"{pack}.idx", 20)
    for read_data in (False, True):
        problems, damaged = check(root, read_data)
        assert [(p.kind, p.object, p.id, p.damages) for p in problems] == [("corrupt", "index", pack, ())]
        assert "the pack's own copy is intact" in problems[0].detail
        assert damaged == []  # its data is all there
    Store.open(root, writable=True).close()  # as the daemon's next start
    assert check(root, read_data=True) == ([], [])


def test_a_damaged_list_of_entries_damages_the_listing(store_copy: tuple[Path, dict[str, str]]) -> None:
    root, ids = store_copy
    with Store.open(root, writable=False) as store:
        tree = store.catalog.read(ids["code1"]).tree
        loc = store.locate(tree[0])
        assert loc is not None
    flip_byte(root / "packs" / loc.pack[:2] / f"{loc.pack}.pack", loc.offset + loc.length // 2)
    for read_data in (False, True):  # the fast level reads the lists of entries too
        problems, damaged = check(root, read_data)
        assert problems == [Problem("corrupt", "chunk", tree[0], problems[0].detail, pack=loc.pack,
                                    damages=(Damage(ids["code1"], 0, (), listing=True),))]
        assert problems[0].detail in ("does not match its hash", "does not decompress")
        assert damaged == [DamagedSnapshot(ids["code1"], 0, (), listing=True)]


def test_a_chunk_no_pack_holds_is_missing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store", writable=True) as store:
        ok = commit_entries(store, "p", [("f", "file", b"fine")])
        writer = store.begin_write()
        ghost = "ab" * 32
        sid = make_snapshot_id()
        store.commit_snapshot(writer, snapshot_id=sid, project="p", root="/x", stats=SnapshotStats(), entries=[
            Entry("d", "dir", 0, 0, 0o755, 0, None), Entry("d/ghost", "file", 4, 0, 0o644, 0, [ghost]),
            Entry("d/also", "file", 8, 0, 0o644, 0, [ghost, ghost])])
    problems, damaged = check(tmp_path / "store", read_data=True)
    assert problems == [Problem("missing", "chunk", ghost, "referenced, but in no pack",
                                damages=(Damage(sid, 2, ("d/ghost", "d/also")),))]
    assert damaged == [DamagedSnapshot(sid, 2, ("d/ghost", "d/also"))]
    assert ok not in [d.id for d in damaged]


def test_no_false_alarm_while_a_writer_adds_snapshots(tmp_path: Path) -> None:
    """A read-only check (the offline command while the daemon writes) never reports a problem: packs are
    sealed, indexed and referenced while it lists and reads."""
    root = tmp_path / "store"
    small_packs(root, 64 * KiB)
    errors: list[BaseException] = []
    commits = 60

    def writer() -> None:
        try:
            with Store.open(root, writable=True) as store:
                for _ in range(commits):
                    commit_entries(store, "p", [(f"f{j}", "file", os.urandom(20 * KiB)) for j in range(4)])
        except BaseException as exc:  # noqa: B036 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    checks = 0
    try:
        while thread.is_alive():
            with Store.open(root, writable=False) as store:
                report = store.check(read_data=checks % 2 == 1)
            assert report.ok, report
            checks += 1
    finally:
        thread.join()
    assert not errors and checks >= 10
    with Store.open(root, writable=False) as store:
        final = store.check(read_data=True)
    assert final.ok and final.snapshots == commits and final.packs > commits


def test_no_false_alarm_while_the_daemon_prunes(tmp_path: Path) -> None:
    """The same while snapshots are forgotten, packs deleted and repacked (indexes deleted before packs,
    blobs moved to new packs) between the check's listing and its reading."""
    from helpers.store import prune_store

    root = tmp_path / "store"
    small_packs(root, 64 * KiB)
    errors: list[BaseException] = []
    pool = [os.urandom(12 * KiB) for _ in range(16)]
    rounds = 40
    pruned: list[int] = []

    def daemon() -> None:
        try:
            with Store.open(root, writable=True) as store:
                for i in range(rounds):
                    files = [(f"f{j}", "file", pool[(i + j * 3) % len(pool)]) for j in range(5)]
                    commit_entries(store, "p", [*files, ("u", "file", os.urandom(30 * KiB))])
                    stats = prune_store(store, keep_last=2)
                    pruned.append(stats.packs_deleted + stats.packs_repacked)
        except BaseException as exc:  # noqa: B036 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=daemon)
    thread.start()
    checks = 0
    try:
        while thread.is_alive():
            with Store.open(root, writable=False) as store:
                report = store.check(read_data=checks % 2 == 1)
            assert report.ok, report
            checks += 1
    finally:
        thread.join()
    assert not errors and checks >= 10 and sum(pruned) > rounds
