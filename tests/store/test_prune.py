"""Retention policies, forgetting, and garbage collection: what is deleted and repacked, that nothing a
snapshot needs is ever lost (also while snapshots are written, at controlled points and at random ones,
and after a crash at every step), and the offline `syncsnapd prune`."""

from __future__ import annotations

import io
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers.store import (
    CrashRunner,
    assert_restores,
    backdate,
    commit_entries,
    prune_store,
    snapshot,
    tree_state,
    write_files,
)
from syncsnapd.core import ConfigError, KeepPolicy, human_bytes, load_config
from syncsnapd.engine import restore_snapshot
from syncsnapd.service import run_prune
from syncsnapd.store import GarbageCollector, SnapshotInfo, Store, apply_policy, hash_bytes

KiB, MiB = 1 << 10, 1 << 20


def small_packs(root: Path, size: int = 256 * KiB) -> None:
    Store.open(root, writable=True).close()
    cfg = root / "config.json"
    cfg.write_text(cfg.read_text().replace(str(16 * MiB), str(size)))


def info(when: datetime, suffix: str = "000000") -> SnapshotInfo:
    sid = when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z-{suffix}"
    return SnapshotInfo(sid, "p", "", 0, 0, 0, 0, 0, 0, 0.0, 0)


def pack_bytes(root: Path) -> int:
    """Size of every pack and index file."""
    return sum(p.stat().st_size for p in [*(root / "packs").glob("*/*.pack"), *(root / "index").glob("*.idx")])


def all_packs(root: Path) -> set[str]:
    return {p.name[:-5] for p in (root / "packs").glob("*/*.pack")}


def stored_chunks(root: Path) -> set[str]:
    """Every blob hash named by an index file on disk."""
    from syncsnapd.store._format import decode_index

    return {r[0].hex() for p in (root / "index").glob("*.idx") for r in decode_index(p.read_bytes())}


# --- retention ------------------------------------------------------------------------------------

def test_keep_rules_keep_the_newest_of_each_bucket_like_restic() -> None:
    t = [datetime(2026, 11, 28, 17, 0), datetime(2026, 11, 28, 16, 30), datetime(2026, 11, 28, 16, 0),
         datetime(2026, 11, 28, 12, 0), datetime(2026, 11, 27, 23, 0), datetime(2026, 11, 27, 10, 0),
         datetime(2026, 11, 20, 9, 0), datetime(2026, 10, 15, 8, 0), datetime(2025, 6, 1, 7, 0)]
    snaps = [info(x.replace(tzinfo=UTC), f"{i:06d}") for i, x in enumerate(t)]
    policy = KeepPolicy(last=2, hourly=3, daily=3, weekly=2, monthly=2, yearly=2)
    d = apply_policy(list(reversed(snaps)), policy, tz=UTC)
    assert d.keep == {
        snaps[0].id: ("last", "hourly", "daily", "weekly", "monthly", "yearly"),
        snaps[1].id: ("last", "hourly"),  # another hour; same day, week, month, year
        snaps[3].id: ("hourly",),
        snaps[4].id: ("daily",),  # Friday: the same ISO week as Saturday
        snaps[6].id: ("daily", "weekly"),
        snaps[7].id: ("monthly",),
        snaps[8].id: ("yearly",),
    }
    assert d.forget == (snaps[5].id, snaps[2].id)  # oldest first
    # Days follow the time zone: 23:00 UTC on the 27th is already the 28th in UTC+2.
    from datetime import timedelta, timezone
    plus2 = apply_policy(snaps, KeepPolicy(daily=2), tz=timezone(timedelta(hours=2)))
    assert set(plus2.keep) == {snaps[0].id, snaps[5].id}


def test_keep_policy_in_the_config(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()

    def load(keep: str) -> Any:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[[projects]]\nid = "docs"\npath = "{folder}"\n{keep}\n')
        return load_config(cfg, env={"HOME": str(tmp_path)})

    assert load("keep = { last = 10, daily = 7, weekly = 4 }").projects[0].keep == KeepPolicy(10, 0, 7, 4, 0, 0)
    assert load("").projects[0].keep is None  # no policy: every snapshot is kept
    for keep, message in [
        ("keep = { daily = -1 }", "projects[0].keep.daily: expected a whole number of snapshots from 0 to "
                                  "1000000, got -1"),
        ("keep = { often = 3 }", "projects[0].keep.often: unknown key (known: last, hourly, daily, weekly, "
                                 "monthly, yearly)"),
        ("keep = { last = true }", "projects[0].keep.last: expected a whole number"),
        ("keep = { last = 0 }", "projects[0].keep: keeps no snapshot at all"),
        ('keep = "forever"', "projects[0].keep: expected a table"),
    ]:
        with pytest.raises(ConfigError) as exc:
            load(keep)
        assert str(exc.value).startswith(message), str(exc.value)


# --- forget and collect ---------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    small_packs(tmp_path / "store")
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


async def test_prune_deletes_dead_packs_repacks_partly_dead_ones_and_keeps_every_kept_snapshot_whole(
        store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    dead_big, keep, dead_small = os.urandom(300 * KiB), os.urandom(100 * KiB), os.urandom(100 * KiB)
    # Written in name order: a-dead fills a pack of its own; b-keep and c-dead share the next one.
    write_files(src, {"a-dead.bin": dead_big, "b-keep.bin": keep, "c-dead.bin": dead_small})
    backdate(src)
    s1 = await snapshot(store, src)
    packs_s1 = all_packs(store.root)
    (src / "a-dead.bin").unlink()
    (src / "c-dead.bin").unlink()
    write_files(src, {"d-new.bin": os.urandom(50 * KiB)})
    backdate(src)
    expected = tree_state(src)
    s2 = await snapshot(store, src)
    reader = Store.open(store.root, writable=False)  # opened before the prune: its index goes stale
    try:
        before = pack_bytes(store.root)
        assert store.forget([s1.id, s2.id]) == [s1.id]  # the newest snapshot of a project is never forgotten
        stats = store.collect_garbage()
        assert (stats.packs_deleted, stats.packs_repacked, stats.packs_written) == (1, 1, 1)
        assert stats.bytes_repacked == len(keep)  # random data is stored raw
        after = pack_bytes(store.root)
        assert before - after == stats.bytes_freed and stats.bytes_freed > 390 * KiB
        assert len(packs_s1 - all_packs(store.root)) == 2  # both of s1's packs are gone
        chunks = stored_chunks(store.root)
        assert hash_bytes(dead_big) not in chunks and hash_bytes(dead_small) not in chunks
        assert hash_bytes(keep) in chunks
        assert_restores(store, {s2.id: expected}, tmp_path / "out")
        # A reader that loaded the indexes before finds the moved blobs in their new pack.
        restore_snapshot(reader, s2.id, tmp_path / "stale-reader")
        assert tree_state(tmp_path / "stale-reader") == expected
        # Nothing left to do the second time.
        again = store.collect_garbage()
        assert (again.packs_deleted, again.packs_repacked, again.bytes_freed) == (0, 0, 0)
    finally:
        reader.close()


def test_forget_spares_pinned_snapshots_and_the_newest_of_each_project(store: Store) -> None:
    a1 = commit_entries(store, "a", [("f", "file", b"1")])
    a2 = commit_entries(store, "a", [("f", "file", b"2")])
    b1 = commit_entries(store, "b", [("f", "file", b"3")])
    with store.pinned([a1]):
        assert store.forget([a1, a2, b1]) == []
    assert store.forget([a1, a2, b1]) == [a1]
    assert [s.id for s in store.list_snapshots()] == [a2, b1]


async def test_a_prune_stopped_while_repacking_leaves_the_store_whole(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {f"f{i}.bin": os.urandom(60 * KiB) for i in range(12)})
    backdate(src)
    await snapshot(store, src)
    for i in range(0, 12, 2):
        (src / f"f{i}.bin").unlink()
    backdate(src)
    s2 = await snapshot(store, src)
    expected = {s2.id: tree_state(src)}
    packs = all_packs(store.root)
    calls = 0

    class Stop(Exception):
        pass

    def stop_after_a_few() -> None:
        nonlocal calls
        calls += 1
        if calls > 3:  # one call per snapshot marked, then one per blob copied
            raise Stop  # anything raised by check() stops the collector (the daemon: RunCancelled)

    store.forget([s.id for s in store.list_snapshots()])
    with pytest.raises(Stop), GarbageCollector(store, check=stop_after_a_few) as gc:
        gc.mark()
        gc.plan()
        assert gc.repack_packs
        gc.repack()
    assert all_packs(store.root) >= packs  # nothing deleted; a repacked copy may have been written
    assert os.listdir(store.root / "tmp") == []
    assert_restores(store, expected, tmp_path / "out")
    stats = store.collect_garbage()  # the next prune does the work
    assert stats.packs_repacked + stats.packs_deleted > 0
    assert_restores(store, expected, tmp_path / "out")


# --- racing a running snapshot --------------------------------------------------------------------

@pytest.mark.parametrize("commit_before_plan", [False, True])
def test_a_blob_a_writer_relies_on_between_mark_and_plan_is_kept(store: Store, tmp_path: Path,
                                                                  commit_before_plan: bool) -> None:
    """The race: the collector has found blob X unused; a running snapshot then finds X stored and
    relies on it (dedup), with its snapshot file written before or after the collector decides."""
    x = os.urandom(80 * KiB)
    with_x = commit_entries(store, "p", [("x", "file", x)])
    commit_entries(store, "p", [("y", "file", os.urandom(10 * KiB))])
    assert store.forget([with_x]) == [with_x]  # x is in no snapshot now, but still stored
    assert store.has_chunk(hash_bytes(x))

    with GarbageCollector(store) as gc:
        gc.mark()  # x: unused
        from syncsnapd.store import Entry, SnapshotStats, make_snapshot_id

        writer = store.begin_write()
        assert writer.add_chunk(hash_bytes(x), x) == 0  # found in the store: not stored again
        sid = make_snapshot_id()

        def commit() -> None:
            store.commit_snapshot(writer, snapshot_id=sid, project="r", root="/", stats=SnapshotStats(),
                                  entries=[Entry("x", "file", len(x), 0, 0o644, 0, [hash_bytes(x)])])

        if commit_before_plan:
            commit()
        gc.plan()
        gc.repack()
        gc.delete()
    if not commit_before_plan:
        commit()
    assert store.check(read_data=True).ok
    restore_snapshot(store, sid, tmp_path / "out")
    assert (tmp_path / "out" / "x").read_bytes() == x


def test_a_pack_written_again_by_a_snapshot_while_doomed_is_not_deleted(store: Store, tmp_path: Path) -> None:
    """After the collector hid X, a snapshot stores X again: the same blobs in the same order make a
    pack with the same id (a pack's id is the hash of its index) as the one about to be deleted."""
    x = os.urandom(30 * KiB)
    first = commit_entries(store, "p", [("x", "file", x)])
    commit_entries(store, "p", [("y", "file", b"y")])
    doomed = store.locate(hash_bytes(x))
    assert doomed is not None
    store.forget([first])
    with GarbageCollector(store) as gc:
        gc.mark()
        gc.plan()
        assert doomed.pack in gc.delete_packs and not store.has_chunk(hash_bytes(x))
        again = commit_entries(store, "p", [("x", "file", x)])
        loc = store.locate(hash_bytes(x))
        assert loc is not None and loc.pack == doomed.pack  # the very same pack file, rewritten
        gc.repack()
        gc.delete()
    assert store.pack_path(doomed.pack).exists()
    assert store.check(read_data=True).ok
    restore_snapshot(store, again, tmp_path / "out")
    assert (tmp_path / "out" / "x").read_bytes() == x


def dedup_fixture(root: Path, src: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A store where the folder's next snapshot re-uses blobs only a forgettable snapshot references."""
    old = {f"old{i}.bin": os.urandom(90 * KiB) for i in range(4)}
    # Shares a pack with old0 and old1 but never comes back: that pack gets repacked.
    write_files(src, {**old, "old-gone.bin": os.urandom(40 * KiB)})
    backdate(src)
    expected: dict[str, Any] = {}

    async def go() -> None:
        with Store.open(root, writable=True) as s:
            first = await snapshot(s, src)
            expected[first.id] = tree_state(src)
            for name in [*old, "old-gone.bin"]:
                (src / name).unlink()
            write_files(src, {"middle.bin": os.urandom(90 * KiB)})
            backdate(src)
            second = await snapshot(s, src)
            expected[second.id] = tree_state(src)

    trio.run(go)
    # The next snapshot: the old files are back under new names (found stored, so relied on), plus new data.
    write_files(src, {f"back{i}.bin": data for i, data in enumerate(old.values())})
    write_files(src, {f"new{i}.bin": os.urandom(90 * KiB) for i in range(5)})
    backdate(src)
    return expected, old


def prune_at_step(armed: list[Store], n: int, fired: list[str]) -> Callable[[str], None]:
    """A durable-step hook (``Store.open(on_durable_step=...)``) that runs a whole prune of the store in
    ``armed`` at the ``n``-th durable-write step (once); steps taken while ``armed`` is empty (opening,
    checking afterwards) are not counted."""
    count = 0

    def hook(label: str) -> None:
        nonlocal count
        if not armed:
            return
        count += 1
        if count == n and not fired:
            fired.append(label)
            prune_store(armed[0])

    return hook


def test_a_prune_at_every_durable_step_of_a_running_snapshot_loses_nothing(tmp_path: Path) -> None:
    """A whole prune (forget all but the newest, collect) runs inside the snapshot's thread at its N-th
    durable-write step, for every N in turn: while packs are sealed, between a pack and its index, before
    and after the snapshot file. Afterwards every snapshot restores byte-identical and check is clean."""
    pristine, src = tmp_path / "pristine", tmp_path / "src"
    small_packs(pristine, 128 * KiB)
    expected, _ = dedup_fixture(pristine, src)
    live = tree_state(src)
    steps_seen: set[str] = set()
    n = 0
    while True:
        n += 1
        root = tmp_path / f"s{n}"
        shutil.copytree(pristine, root)
        fired: list[str] = []

        armed: list[Store] = []
        with Store.open(root, writable=True, on_durable_step=prune_at_step(armed, n, fired)) as store:
            armed.append(store)
            new = trio.run(snapshot, store, src)
            armed.clear()
            want = {k: v for k, v in expected.items()}
            want[new.id] = live
            assert_restores(store, want, tmp_path / f"out{n}")
        shutil.rmtree(root)
        if not fired:
            break
        steps_seen.add(fired[0])
    assert {"pack:written", "pack:renamed", "index:dirsynced", "snapshot:open", "snapshot:dirsynced"} <= steps_seen
    assert n > 15


def test_prune_racing_snapshots_of_a_changing_folder_loses_nothing(tmp_path: Path) -> None:
    """Prunes in a loop on one thread while snapshots of a folder whose files come and go (and come back:
    deduplicated against data only forgotten snapshots held) run on another; then every remaining
    snapshot restores byte-identical and check is clean."""
    root, src = tmp_path / "store", tmp_path / "src"
    small_packs(root, 64 * KiB)
    pool = [os.urandom(40 * KiB) for _ in range(24)]
    expected: dict[str, Any] = {}
    done = threading.Event()
    errors: list[BaseException] = []
    prunes = 0

    with Store.open(root, writable=True) as store:

        def pruner() -> None:
            nonlocal prunes
            try:
                while not done.is_set():
                    prune_store(store, keep_last=2)
                    prunes += 1
            except BaseException as exc:  # noqa: B036 - reported below
                errors.append(exc)

        async def snapshots() -> None:
            for round_ in range(12):
                shutil.rmtree(src, ignore_errors=True)
                chosen = {f"f{i}.bin": pool[(round_ * 5 + i * 7) % len(pool)] for i in range(10)}
                chosen[f"unique{round_}.bin"] = os.urandom(70 * KiB)
                write_files(src, chosen)
                backdate(src)
                s = await snapshot(store, src)
                expected[s.id] = tree_state(src)

        thread = threading.Thread(target=pruner)
        thread.start()
        try:
            trio.run(snapshots)
        finally:
            done.set()
            thread.join()
        assert not errors, errors
        assert prunes >= 3
        # How many snapshots finished after the pruner's last pass depends on the machine's load; each pass
        # keeps 2, and a final pass leaves exactly 2.
        assert len(store.list_snapshots()) >= 2
        assert_restores(store, expected, tmp_path / "out")
        prune_store(store, keep_last=2)
        assert len(store.list_snapshots()) == 2
        assert_restores(store, expected, tmp_path / "out")


# --- crash safety ---------------------------------------------------------------------------------

def test_crash_at_every_durable_step_of_a_prune_loses_nothing_referenced(tmp_path: Path) -> None:
    """SIGKILL at each step of a prune that forgets snapshots, deletes packs and repacks others (in a
    forked child). After each: every snapshot still listed restores byte-identical, check is clean, no
    temporary file survives the next writable open, and a second prune completes the job."""
    pristine, src = tmp_path / "pristine", tmp_path / "src"
    small_packs(pristine, 128 * KiB)
    expected, _ = dedup_fixture(pristine, src)

    async def third() -> None:
        with Store.open(pristine, writable=True) as s:
            third_ = await snapshot(s, src)
            expected[third_.id] = tree_state(src)

    trio.run(third)
    with Store.open(pristine, writable=False) as s:
        newest = s.list_snapshots()[-1].id
    seen: set[str] = set()
    with CrashRunner() as runner:
        for n in range(1, 200):
            root = tmp_path / f"crash{n}"
            shutil.copytree(pristine, root)
            code, reached = runner.run(root, None, "", n)
            if code == 0:
                assert len(reached) == n - 1
                break
            assert code == -9 and len(reached) == n, (n, code, reached)
            seen.add(reached[-1])
            with Store.open(root, writable=True) as store:
                assert os.listdir(root / "tmp") == []
                assert newest in [s.id for s in store.list_snapshots()]
                assert_restores(store, expected, tmp_path / f"out{n}")
                prune_store(store)
                assert [s.id for s in store.list_snapshots()] == [newest]
                assert_restores(store, expected, tmp_path / f"out{n}")
            shutil.rmtree(root)
        else:
            raise AssertionError("the prune never completed")
    assert {"forget:unlinked", "forget:dirsynced", "pack:fsynced", "index:renamed", "gc:index-unlinked",
            "gc:indexdir-synced", "gc:pack-unlinked", "gc:packdir-synced"} <= seen


# --- the offline command --------------------------------------------------------------------------

def test_offline_prune_refuses_while_the_daemon_holds_the_store_and_dry_runs_change_nothing(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root, writable=True) as store:
        old = commit_entries(store, "docs", [("a", "file", os.urandom(5000))])
        new = commit_entries(store, "docs", [("b", "file", os.urandom(5000))])
        other = commit_entries(store, "gone", [("c", "file", b"c")])
        out = io.StringIO()
        assert run_prune(root, out, policies={"docs": KeepPolicy(last=1)}) == 2
        assert out.getvalue() == (f"Cannot open the store: store {root} is in use by another syncsnapd (pid "
                                  f"{os.getpid()}). Prune through the daemon instead: `syncsnap prune`.\n")
        files_before = sorted(str(p) for p in root.rglob("*"))
        loc = store.locate(store.load_entries(old)[0].chunks[0])
        assert loc is not None
        freed = human_bytes(store.pack_path(loc.pack).stat().st_size
                            + (root / "index" / f"{loc.pack}.idx").stat().st_size)
        out = io.StringIO()
        assert run_prune(root, out, policies={"docs": KeepPolicy(last=1)}, dry_run=True) == 0
        assert sorted(str(p) for p in root.rglob("*")) == files_before
        assert out.getvalue().splitlines() == [
            "docs: keeping 1, would forget 1", f"  - {old}", "gone: keeping 1, would forget 0",
            f"Would delete 1 unused packs and repack 0 partly used ones (0 B copied); would free {freed}."]
    out = io.StringIO()
    assert run_prune(root, out, policies={"docs": KeepPolicy(last=1)}) == 0
    assert out.getvalue().splitlines() == [
        "docs: keeping 1, forgetting 1", f"  - {old}", "gone: keeping 1, forgetting 0",
        f"Deleted 1 unused packs and repack 0 partly used ones (0 B copied); freed {freed}."]
    with Store.open(root, writable=False) as store:
        assert [s.id for s in store.list_snapshots()] == [new, other]
        assert store.check(read_data=True).ok

