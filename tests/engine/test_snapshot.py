"""The snapshot engine: what a snapshot records, dedup, incremental runs, misbehaving files, progress,
errors and cancellation."""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers.store import (
    OpenWatcher,
    backdate,
    patch_file,
    run_in_subprocess,
    snapshot,
    tree_state,
    write_files,
)
from syncsnapd.core import IgnoreRules, Progress, RunCancelled, RunProgress
from syncsnapd.engine import SnapshotError, restore_snapshot, take_snapshot
from syncsnapd.store import Entry, Store, hash_bytes

MiB = 1 << 20
PAST = 1_700_000_000_123_456_789  # an mtime well before any test runs


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


def by_path(store: Store, snapshot_id: str) -> dict[str, Entry]:
    return {e.path: e for e in store.load_entries(snapshot_id)}


async def test_a_snapshot_records_every_entry_and_skips_special_files(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a/f.txt": b"hello", "empty": b"", "big.bin": os.urandom(2 * MiB + 5)})
    (src / "emptydir").mkdir()
    os.symlink("a", src / "dirlink")  # must be stored as a link, not followed into a/
    os.symlink("/nonexistent/target", src / "dangling")
    os.mkfifo(src / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
    skipped = 2
    if os.geteuid() == 0:
        os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        skipped += 1
    os.chmod(src / "a/f.txt", 0o640)
    os.chmod(src / "a", 0o750)
    os.utime(src / "a/f.txt", ns=(PAST, PAST))
    backdate(src)
    os.utime(src / "a/f.txt", ns=(PAST, PAST))

    summary = await snapshot(store, src)

    entries = by_path(store, summary.id)
    assert sorted(entries) == ["a", "a/f.txt", "big.bin", "dangling", "dirlink", "empty", "emptydir"]
    f = entries["a/f.txt"]
    st = os.lstat(src / "a/f.txt")
    assert (f.kind, f.size, f.mtime_ns, f.mode, f.inode) == ("file", 5, PAST, 0o640, st.st_ino)
    assert store.read_chunk(f.chunks[0]) == b"hello"
    assert entries["a"].kind == "dir" and entries["a"].mode == 0o750
    assert len(entries["big.bin"].chunks) >= 2  # content-defined chunks of 256 KiB to 2 MiB
    assert b"".join(map(store.read_chunk, entries["big.bin"].chunks)) == (src / "big.bin").read_bytes()
    assert entries["empty"].chunks == [] and entries["empty"].size == 0
    assert (entries["dirlink"].kind, entries["dirlink"].target) == ("symlink", "a")
    assert entries["dangling"].target == "/nonexistent/target"
    assert summary.files == 3 and summary.bytes == 5 + 2 * MiB + 5
    assert (summary.files_new, summary.files_changed, summary.files_unchanged) == (3, 0, 0)
    assert summary.skipped == skipped and summary.warnings == 0
    # A directory always comes before its contents.
    order = [e.path for e in store.load_entries(summary.id)]
    assert order.index("a") < order.index("a/f.txt")


async def test_names_that_are_not_utf8_are_kept_exactly(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src) + b"/bad\xff\xfe name"
    patch_file(raw, 0, b"data")
    summary = await snapshot(store, src)
    (entry,) = store.load_entries(summary.id)
    assert os.fsencode(entry.path) == b"bad\xff\xfe name"


async def test_progress_goes_through_steps_2_to_5_with_their_counters(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {f"d/f{i}.txt": b"x" * (100 + i) for i in range(10)} | {"big": os.urandom(3 * MiB)})
    backdate(src)
    events: list[Progress] = []
    last_of_step: dict[int, Progress] = {}

    class Recording(RunProgress):
        def set_step(self, step: int, **kw: Any) -> None:
            before = self.current()
            last_of_step[before.step] = before
            super().set_step(step, **kw)

    progress = Recording("p", "r1", events.append)
    await take_snapshot(store, "p", src, progress)
    last_of_step[5] = progress.current()
    assert [e.step for e in events] == [2, 3, 4, 5]
    assert [e.state for e in events] == ["browsing", "browsing", "compressing", "uploading"]
    assert last_of_step[3].files_done == 12  # d, d/f0..f9, big
    four = last_of_step[4]
    assert (four.files_total, four.files_done) == (11, 11)
    assert four.bytes_total == four.bytes_done == sum(100 + i for i in range(10)) + 3 * MiB
    five = last_of_step[5]
    assert five.files_total == five.files_done == 2  # one pack, one snapshot file
    assert five.bytes_done > 3 * MiB
    percents = [e.percent for e in events] + [five.percent]
    assert percents == sorted(percents)

    # A no-change run has nothing to read in step 4.
    events.clear()
    await take_snapshot(store, "p", src, Recording("p", "r2", events.append))
    assert (events[2].step, events[2].files_total, events[2].bytes_total) == (4, 0, 0)


async def test_equal_content_is_stored_once_across_files_snapshots_and_projects(
        store: Store, tmp_path: Path) -> None:
    payload = os.urandom(300_000)  # incompressible: stored raw, so sizes are exact
    one, two = tmp_path / "one", tmp_path / "two"
    write_files(one, {"a.bin": payload, "copy/a.bin": payload})
    s1 = await snapshot(store, one, "one")
    assert s1.bytes_added == len(payload)
    write_files(one, {"third.bin": payload})
    s2 = await snapshot(store, one, "one")
    assert (s2.files_new, s2.bytes_added) == (1, 0)
    write_files(two, {"elsewhere.bin": payload})
    s3 = await snapshot(store, two, "two")
    assert (s3.files_new, s3.bytes_added) == (1, 0)


async def test_a_changed_large_file_stores_only_its_changed_chunk(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    # Fixed pseudo-random content: where the content-defined cuts fall is the same every run.
    write_files(src, {"big.bin": random.Random(5).randbytes(5 * MiB), "small.txt": b"small"})
    backdate(src)
    first = await snapshot(store, src)
    assert first.bytes_added == 5 * MiB + len(b"small")
    patch_file(src / "big.bin", 2 * MiB + 12345, b"!")
    os.utime(src / "big.bin", ns=(PAST, PAST))
    second = await snapshot(store, src)
    assert (second.files_changed, second.files_unchanged) == (1, 1)
    old, new = by_path(store, first.id)["big.bin"], by_path(store, second.id)["big.bin"]
    same = [a == b for a, b in zip(old.chunks, new.chunks, strict=True)]
    assert len(same) > 5 and same.count(False) == 1
    changed = store.locate(new.chunks[same.index(False)])
    assert changed is not None and second.bytes_added == changed.raw_length < MiB


async def test_an_unchanged_folder_is_snapshotted_without_opening_any_file(store: Store, tmp_path: Path) -> None:
    """The kernel (inotify) reports every open and read of a file in the folder; there must be none."""
    src = tmp_path / "src"
    write_files(src, {f"d{i % 3}/f{i}.txt": f"file {i}".encode() * 50 for i in range(30)})
    backdate(src)
    first = await snapshot(store, src)
    watcher = OpenWatcher(src)
    try:
        second = await snapshot(store, src)
        assert watcher.file_events() == []
        assert (second.files_unchanged, second.files_changed, second.bytes_added) == (30, 0, 0)
        # The watcher does see reads: change one file and exactly that one is opened.
        (src / "d1/f4.txt").write_bytes(b"changed")
        os.utime(src / "d1/f4.txt", ns=(PAST, PAST))
        third = await snapshot(store, src)
        assert set(watcher.file_events()) == {os.fsencode(src / "d1/f4.txt")}
        assert (third.files_unchanged, third.files_changed) == (29, 1)
    finally:
        watcher.close()
    assert first.files_new == 30


async def test_a_file_modified_just_before_a_snapshot_is_read_again_next_time(
        store: Store, tmp_path: Path) -> None:
    """Its mtime may not change on a second write within the same timestamp tick ("racy" files), so
    the next snapshot reads it again, and only it; it still counts as unchanged."""
    src = tmp_path / "src"
    write_files(src, {"old.txt": b"old"})
    backdate(src)
    write_files(src, {"fresh.txt": b"just written"})
    await snapshot(store, src)
    watcher = OpenWatcher(src)
    try:
        second = await snapshot(store, src)
        assert set(watcher.file_events()) == {os.fsencode(src / "fresh.txt")}
    finally:
        watcher.close()
    assert (second.files_unchanged, second.files_changed, second.bytes_added) == (2, 0, 0)


async def test_files_and_folders_that_vanish_before_they_are_read_give_warnings(
        store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"aaa.txt": b"goes away", "gone/inner.txt": b"goes too", "mmm.txt": b"stays",
                      "zzz.txt": b"last"})

    def ignore(rel: str) -> bool:
        # Called during the walk, after aaa.txt and gone/ were seen: the user deletes them before
        # step 4 reads aaa.txt and before the walk lists gone/.
        if rel == "zzz.txt":
            (src / "aaa.txt").unlink()
            shutil.rmtree(src / "gone")
        return False

    summary = await snapshot(store, src, ignore=ignore)
    assert summary.warnings == 2
    assert sorted(summary.warning_paths) == ["aaa.txt: vanished before it could be read",
                                             "gone: vanished before it could be read"]
    assert sorted(by_path(store, summary.id)) == ["mmm.txt", "zzz.txt"]  # omitted, not half-recorded
    assert summary.files == 2


async def test_a_folder_swapped_for_a_symlink_during_the_snapshot_is_not_followed(
        store: Store, tmp_path: Path) -> None:
    """Someone replaces folders by symlinks to a secret place while the snapshot runs: once before
    the walk lists it (a/), once after the walk but before the file in it is read (b/)."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    secret = b"secret outside the folder " + os.urandom(16)
    write_files(outside, {"x.txt": secret, "y.txt": secret})
    write_files(src, {"a/x.txt": b"a", "b/y.txt": b"b", "b/z.txt": b"z", "zzz.txt": b"last"})

    def ignore(rel: str) -> bool:
        if rel == "zzz.txt":  # root listing done, a/ not listed yet
            os.rename(src / "a", tmp_path / "a-moved")
            os.symlink(outside, src / "a")
        if rel == "b/z.txt":  # b/ listed (y.txt seen), its files not read yet
            os.rename(src / "b", tmp_path / "b-moved")
            os.symlink(outside, src / "b")
        return False

    summary = await snapshot(store, src, ignore=ignore)
    assert sorted(summary.warning_paths) == ["a: was replaced by a file or symlink before it could be read",
                                             "b/y.txt: was replaced by a symlink before it could be read",
                                             "b/z.txt: was replaced by a symlink before it could be read"]
    assert sorted(by_path(store, summary.id)) == ["b", "zzz.txt"]
    assert not store.has_chunk(hash_bytes(secret))


async def test_a_file_that_changes_while_it_is_read_gives_a_warning_and_is_read_again(
        store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    # Larger than a reader's buffer (Store.chunk_size), so it is read in several reads, chunk by chunk.
    write_files(src, {"log.bin": os.urandom(store.chunk_size + 2 * MiB), "other.txt": b"other"})
    backdate(src)
    original = (src / "log.bin").read_bytes()

    class AppendingWriter(RunProgress):
        """Stands for another program appending to the file while the snapshot reads it."""
        appended = False

        def add_done(self, files: int = 0, nbytes: int = 0) -> None:
            super().add_done(files, nbytes)
            # The first chunk of log.bin is in: the reader is in the middle of the file.
            if nbytes and not files and not self.appended:
                self.appended = True
                patch_file(src / "log.bin", -1, b"more")

    first = await take_snapshot(store, "p", src, AppendingWriter("p", "r", lambda p: None))
    assert first.warnings == 1 and first.warning_paths == ("log.bin: changed while being read",)
    entry = by_path(store, first.id)["log.bin"]
    assert entry.size == len(original) and entry.inode == 0  # what was read; re-read next time
    assert b"".join(store.read_chunk(h) for h in entry.chunks) == original
    second = await snapshot(store, src)
    assert second.warnings == 0 and second.files_changed == 1
    assert by_path(store, second.id)["log.bin"].size == len(original) + 4


def test_unreadable_files_and_folders_give_warnings(tmp_path: Path) -> None:
    """Permission denied, for real: as root the run drops CAP_DAC_OVERRIDE/READ_SEARCH in a subprocess."""
    src = tmp_path / "src"
    write_files(src, {"ok.txt": b"fine", "secret.txt": b"hidden", "locked/inner.txt": b"inner"})
    os.chmod(src / "secret.txt", 0)
    os.chmod(src / "locked", 0)
    try:
        args = ["snapshot", str(tmp_path / "store"), str(src), "p"]
        code, out, err = run_in_subprocess(*args, *(["--drop-dac"] if os.geteuid() == 0 else []))
    finally:
        os.chmod(src / "locked", 0o755)
        os.chmod(src / "secret.txt", 0o644)
    assert code == 0 and out is not None, err
    summary = out["summary"]
    assert summary["warnings"] == 2
    assert sorted(summary["warning_paths"]) == ["locked: cannot be listed: Permission denied",
                                                "secret.txt: cannot be read: Permission denied"]
    with Store.open(tmp_path / "store", writable=False) as store:
        assert sorted(by_path(store, summary["id"])) == ["locked", "ok.txt"]


async def test_ignored_paths_and_the_store_inside_the_folder_are_left_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"keep.txt": b"k", "x.tmp": b"t", "cache/big": b"c", "sub/y.tmp": b"t"})
    with Store.open(src / ".store", writable=True) as store:
        summary = await snapshot(store, src, ignore=IgnoreRules(["*.tmp", "cache/"]))
        assert sorted(by_path(store, summary.id)) == ["keep.txt", "sub"]


async def test_a_restore_s_temporary_files_are_left_out(store: Store, tmp_path: Path) -> None:
    """A file a restore is writing into the folder (or one a kill left behind) is not the user's: only
    the exact temporary name is left out, not a user's file that looks like it."""
    src = tmp_path / "src"
    write_files(src, {"keep.txt": b"k", ".syncsnap-restore-0123456789abcdef": b"half",
                      "sub/.syncsnap-restore-fedcba9876543210": b"half",
                      ".syncsnap-restore-notes.txt": b"mine"})
    summary = await snapshot(store, src)
    assert sorted(by_path(store, summary.id)) == [".syncsnap-restore-notes.txt", "keep.txt", "sub"]


async def test_a_missing_folder_fails_with_folder_missing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SnapshotError) as info:
        await snapshot(store, tmp_path / "nope")
    assert info.value.code == "folder_missing" and str(tmp_path / "nope") in info.value.message
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SnapshotError) as info:
        await snapshot(store, tmp_path / "file")
    assert info.value.code == "folder_missing"
    assert store.list_snapshots() == []


async def test_a_store_that_cannot_be_written_fails_with_store_error(store: Store, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"a": b"a"})
    with Store.open(store.root, writable=False) as read_only:
        with pytest.raises(SnapshotError) as info:
            await snapshot(read_only, tmp_path / "src")
    assert info.value.code == "store_error"


async def test_the_work_runs_in_threads_while_the_trio_loop_stays_free(store: Store, tmp_path: Path) -> None:
    """Every counter update comes from a worker thread, and the loop can run code meanwhile."""
    write_files(tmp_path / "src", {"a.bin": os.urandom(2 * MiB), "b.txt": b"b"})
    loop_ran: list[int] = []

    class Probe(RunProgress):
        def add_done(self, files: int = 0, nbytes: int = 0) -> None:
            super().add_done(files, nbytes)
            assert threading.current_thread() is not threading.main_thread()
            # Blocks this worker until the Trio loop has run a task: impossible if the loop were busy.
            trio.from_thread.run(trio.sleep, 0)
            loop_ran.append(1)

    await take_snapshot(store, "p", tmp_path / "src", Probe("p", "r", lambda p: None))
    assert len(loop_ran) >= 5  # walk, each file, each chunk, each pack, the snapshot file


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one worker")
async def test_small_files_are_read_by_several_workers_at_once(store: Store, tmp_path: Path) -> None:
    """Step 4 feeds one worker per core from a shared queue: small files too are read by two threads at
    once. Each of the first two threads to read a file waits there until the other has read one; with a
    single small-file worker, it would wait alone and the run would fail (BrokenBarrierError)."""
    src = tmp_path / "src"
    write_files(src, {f"d{i // 50}/f{i:03d}.txt": os.urandom(2000) for i in range(400)})
    backdate(src)
    meeting = threading.Barrier(2, timeout=30)
    readers: set[threading.Thread] = set()
    lock = threading.Lock()

    class Meeting(RunProgress):
        def add_done(self, files: int = 0, nbytes: int = 0) -> None:
            super().add_done(files, nbytes)
            if files and self.current().step == 4:
                me = threading.current_thread()
                with lock:
                    first_two = me not in readers and len(readers) < 2
                    readers.add(me)
                if first_two:
                    meeting.wait()

    summary = await take_snapshot(store, "p", src, Meeting("p", "r", lambda p: None))
    assert summary.files_new == 400 and summary.warnings == 0
    assert len(readers) >= 2
    restore_snapshot(store, summary.id, tmp_path / "out")
    assert tree_state(tmp_path / "out") == tree_state(src)


CANCEL_POINTS = ["walk", "reading", "sealing", "run-cancelled"]


@pytest.mark.parametrize("point", CANCEL_POINTS)
async def test_a_cancelled_run_leaves_no_snapshot_and_no_temporary_files(
        store: Store, tmp_path: Path, point: str) -> None:
    src = tmp_path / "src"
    write_files(src, {"keep.txt": b"keep"})
    backdate(src)
    first = await snapshot(store, src)
    write_files(src, {f"new/f{i:02d}.bin": os.urandom(20_000) for i in range(40)} | {"big": os.urandom(4 * MiB)})
    backdate(src)
    calls_after_cancel: list[int] = []

    with trio.CancelScope() as scope:
        class Canceller(RunProgress):
            fired = False

            def fire(self) -> None:
                # CancelScope.cancel delivers to every worker's thread call before it returns, so
                # from here on each worker may only finish the file or chunk in hand.
                if point == "run-cancelled":
                    self.cancel()
                else:
                    trio.from_thread.run_sync(scope.cancel)
                self.fired = True

            def set_step(self, step: int, **kw: Any) -> None:
                super().set_step(step, **kw)
                if point == "walk" and step == 3:
                    self.fired = True
                    scope.cancel()

            def add_done(self, files: int = 0, nbytes: int = 0) -> None:
                super().add_done(files, nbytes)
                step = self.current().step
                if self.fired:
                    calls_after_cancel.append(step)
                elif (point in ("reading", "run-cancelled") and step == 4) or (point == "sealing" and step == 5):
                    self.fire()

        progress = Canceller("p", "r", lambda p: None)
        if point == "run-cancelled":
            with pytest.raises(RunCancelled):
                await take_snapshot(store, "p", src, progress)
        else:
            await take_snapshot(store, "p", src, progress)
            raise AssertionError("not cancelled")
    assert progress.fired
    assert point == "run-cancelled" or scope.cancelled_caught
    # Prompt: at most the file or chunk in hand per worker is finished, not the 41 files queued.
    assert len(calls_after_cancel) <= 4, calls_after_cancel
    assert [i.id for i in store.list_snapshots()] == [first.id]
    assert os.listdir(store.root / "tmp") == []
    assert store.check().ok
    # The store carries on: the next run is complete.
    second = await snapshot(store, src)
    restore_snapshot(store, second.id, tmp_path / "out")
    assert tree_state(tmp_path / "out") == tree_state(src)


async def test_the_previous_snapshot_is_per_project(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a"})
    backdate(src)
    await snapshot(store, src, "one")
    other = await snapshot(store, src, "two")
    assert (other.files_new, other.files_unchanged) == (1, 0)
    again = await snapshot(store, src, "one")
    assert (again.files_new, again.files_unchanged) == (0, 1)


async def test_a_damaged_previous_snapshot_only_costs_a_full_read(store: Store, tmp_path: Path) -> None:
    """If data the previous snapshot refers to is gone, files are read again instead of re-using it."""
    src = tmp_path / "src"
    write_files(src, {"a.bin": os.urandom(10_000)})
    backdate(src)
    first = await snapshot(store, src)
    loc = store.locate(by_path(store, first.id)["a.bin"].chunks[0])
    assert loc is not None
    store.close()
    store.pack_path(loc.pack).unlink()
    (store.root / "index" / f"{loc.pack}.idx").unlink()
    with Store.open(store.root, writable=True) as fresh:
        second = await snapshot(fresh, src)
        assert second.files_new == 1 and second.bytes_added == 10_000
        restore_snapshot(fresh, second.id, tmp_path / "out")
    assert (tmp_path / "out" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()


async def test_summary_matches_what_the_store_lists(store: Store, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"a": b"1", "b": b"22"})
    s = await snapshot(store, tmp_path / "src")
    (info,) = store.list_snapshots()
    assert (info.id, info.files, info.bytes, info.files_new, info.bytes_added, info.warnings) == (
        s.id, 2, 3, 2, s.bytes_added, 0)
    assert store.snapshot_root(s.id) == str(tmp_path / "src")



async def test_a_file_changed_after_the_run_started_is_named_in_the_warnings(store: Store, tmp_path: Path) -> None:
    """A file changed between the walk and its reading (or chmod'ed) is captured as read, but the run says
    so: every path whose snapshot differs from what it was when the run started is in the warnings."""
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"before", "b.txt": b"before", "c.txt": b"stays", "zzz.txt": b"last"})
    backdate(src)

    def ignore(rel: str) -> bool:
        if rel == "zzz.txt":  # every file seen by the walk, none read yet
            patch_file(src / "a.txt", 0, b"AFTER!")  # same size, new content
            os.chmod(src / "b.txt", 0o600)
        return False

    summary = await snapshot(store, src, ignore=ignore)
    assert sorted(summary.warning_paths) == ["a.txt: changed while the snapshot ran",
                                             "b.txt: changed while the snapshot ran"]
    entries = by_path(store, summary.id)
    assert store.read_chunk(entries["a.txt"].chunks[0]) == b"AFTER!" and entries["a.txt"].inode == 0
    assert entries["c.txt"].inode != 0


async def test_a_file_changed_with_its_mtime_set_back_is_read_again(store: Store, tmp_path: Path) -> None:
    """`touch -r`, `rsync -t` or an extraction can change content and set the old mtime back: same inode,
    size and mtime, but its ctime is after the previous snapshot started, so it is read again."""
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"version 1", "b.txt": b"stays"})
    backdate(src)
    st = os.stat(src / "a.txt")
    await snapshot(store, src)
    patch_file(src / "a.txt", 0, b"version 2")
    os.utime(src / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(src / "a.txt").st_ino, os.stat(src / "a.txt").st_size) == (st.st_ino, st.st_size)
    second = await snapshot(store, src)
    assert store.read_chunk(by_path(store, second.id)["a.txt"].chunks[0]) == b"version 2"
    assert (second.files_unchanged, second.files_changed) == (1, 1)
