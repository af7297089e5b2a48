"""Automatic snapshots for plain folders: debounce, ignore rules, real inotify, polling fallback, start-up."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from syncsnapd.core import ProjectConfig, SyncsnapdError
from syncsnapd.sources import (
    FolderSummary,
    WatchStatus,
    folder_fingerprint,
    make_filter,
    serve_debounce,
    serve_folder_watch,
    serve_project_watch,
    summarize_folder,
)


async def _debounce_requests(feed_times: list[float], settle: float, max_delay: float,
                             until: float) -> list[float]:
    requests: list[float] = []
    send, recv = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_debounce(  # type: ignore[misc]
            recv, lambda: requests.append(trio.current_time()), settle=settle, max_delay=max_delay,
            task_status=task_status))
        start = trio.current_time()
        for t in feed_times:
            await trio.sleep_until(start + t)
            await send.send(1)
        await trio.sleep_until(start + until)
        nursery.cancel_scope.cancel()
    return [round(r - start, 6) for r in requests]


async def test_debounce_waits_for_the_folder_to_settle(autojump_clock: trio.testing.MockClock) -> None:
    # A burst at 0, 1, 2 s: one request 5 s after the last change.
    assert await _debounce_requests([0, 1, 2], settle=5, max_delay=60, until=100) == [7.0]


async def test_debounce_max_delay_for_a_folder_that_never_settles(autojump_clock: trio.testing.MockClock) -> None:
    # A change every 2 s (at odd seconds; deadlines fall on even ones, so none ties) until 149 s: a request
    # max_delay after each burst's first change (1, 63), then `settle` after the last change.
    feed = [float(t) for t in range(1, 150, 2)]
    assert await _debounce_requests(feed, settle=5, max_delay=61, until=200) == [62.0, 124.0, 154.0]


async def test_debounce_two_separate_bursts(autojump_clock: trio.testing.MockClock) -> None:
    assert await _debounce_requests([0, 0.5, 30, 31], settle=5, max_delay=60, until=100) == [5.5, 36.0]


def test_filter_ignores_sync_tool_files_store_and_patterns(tmp_path: Path) -> None:
    p = ProjectConfig("p", tmp_path, ignore=("*.log", "build/out"))
    wanted = make_filter(tmp_path, ignore=p.ignore_fn((tmp_path / ".store",)))
    assert wanted(f"{tmp_path}/docs/a.txt")
    assert wanted(f"{tmp_path}/.stignore")
    for ignored in (".stfolder", ".stversions/x.txt", "d/.syncthing.a.txt.tmp", "d/~syncthing~b.tmp",
                    "x/app.log", "build/out/bin", ".store/packs/ab/c.pack"):
        assert not wanted(f"{tmp_path}/{ignored}"), ignored
    assert wanted(f"{tmp_path}/build/other")


def test_summary_counts_what_a_snapshot_counts(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a").write_bytes(b"12345")
    os.symlink("d/a", tmp_path / "l")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / ".stfolder").mkdir()
    s = summarize_folder(tmp_path, ProjectConfig("p", tmp_path).ignore_fn())
    assert (s.files, s.bytes) == (3, 5)  # d, d/a, l; not the fifo nor .stfolder


@pytest.fixture
def exhaust_inotify() -> Any:
    """Returns a function that uses up this user's inotify instances (a real kernel limit, 128 here);
    they are given back after the test. Other processes of the same user may free one meanwhile, so the
    test calls it right before starting the watcher."""
    libc = ctypes.CDLL(None, use_errno=True)
    fds: list[int] = []

    def exhaust() -> None:
        while len(fds) < 100_000:
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd < 0:
                return
            fds.append(fd)

    yield exhaust
    for fd in fds:
        os.close(fd)


async def test_watch_limit_falls_back_to_polling(tmp_path: Path, exhaust_inotify: Any) -> None:
    status = WatchStatus()
    send, recv = trio.open_memory_channel[object](100)
    exhaust_inotify()
    # An inotify instance closed just before (by a watcher shutting down in this process or another)
    # is freed asynchronously by its owner's event-loop thread: take any such stragglers too.
    await trio.sleep(0.3)
    exhaust_inotify()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_folder_watch, tmp_path, send,
                            make_filter(tmp_path, ignore=ProjectConfig("p", tmp_path).ignore_fn()), status)
        with trio.fail_after(5):
            await recv.receive()  # the fallback itself counts as a change: nothing may have been missed
        assert status.mode == "polling", status
        assert status.warning is not None and "polling" in status.warning
        (tmp_path / "after.txt").write_text("seen by polling")
        with trio.fail_after(10):
            await recv.receive()
        nursery.cancel_scope.cancel()


async def test_real_inotify_reports_changes_and_skips_ignored(tmp_path: Path) -> None:
    status = WatchStatus()
    project = ProjectConfig("p", tmp_path, ignore=("*.tmp",))
    send, recv = trio.open_memory_channel[object](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_folder_watch, tmp_path, send,
                            make_filter(tmp_path, ignore=project.ignore_fn()), status)
        assert status.mode == "inotify"
        (tmp_path / "junk.tmp").write_text("x")
        (tmp_path / ".stfolder").mkdir()
        await trio.sleep(0.4)
        with pytest.raises(trio.WouldBlock):
            recv.receive_nowait()
        (tmp_path / "new").mkdir()
        (tmp_path / "new/file.txt").write_text("hello")
        with trio.fail_after(5):
            await recv.receive()
        nursery.cancel_scope.cancel()


async def test_startup_check_and_interval_skip_unchanged_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    project = ProjectConfig("p", tmp_path, watch=False, interval=0.2)
    fingerprint = summarize_folder(tmp_path, project.ignore_fn())
    requests: list[str] = []
    asked = trio.Event()

    def request(trigger: str) -> None:
        requests.append(trigger)
        asked.set()

    async def last() -> FolderSummary | None:
        return fingerprint

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_project_watch, project, request, last)
        await trio.sleep(1.0)
        assert requests == []  # unchanged: neither the start-up check nor the interval snapshot
        (tmp_path / "b.txt").write_text("two")
        with trio.fail_after(5):
            await asked.wait()
        assert requests[0] == "schedule"
        nursery.cancel_scope.cancel()

    requests.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_project_watch, ProjectConfig("p", tmp_path, watch=True), requests.append, last)
        assert requests == ["start-up"]  # changed since the last snapshot
        nursery.cancel_scope.cancel()


def test_daemon_snapshots_a_changed_folder_exactly_once(daemon_factory: Any, short_tmp: Path) -> None:
    """End to end with real inotify: a burst of writes leads to one snapshot with all of them."""
    folder = short_tmp / "w"
    folder.mkdir()
    (folder / "first.txt").write_text("first")
    d = daemon_factory({"w": folder}, watch=True, extra_daemon='settle = "0.5s"\nmax_delay = "10s"')
    # A folder that was never snapshotted gets its first snapshot at start (an empty one would not).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snaps = json.loads(d.curl("http://localhost/api/v1/projects/w/snapshots").stdout)["snapshots"]
        if snaps:
            break
        time.sleep(0.05)
    assert len(snaps) == 1
    for i in range(50):
        sub = folder / f"new{i % 5}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_text(f"content {i}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snaps = json.loads(d.curl("http://localhost/api/v1/projects/w/snapshots").stdout)["snapshots"]
        if len(snaps) >= 2:
            break
        time.sleep(0.05)
    time.sleep(1.5)  # long enough for a spurious second run to show up (settle is 0.5 s)
    snaps = json.loads(d.curl("http://localhost/api/v1/projects/w/snapshots").stdout)["snapshots"]
    assert len(snaps) == 2, snaps
    assert snaps[1]["files"] == 51 and snaps[1]["files_new"] == 50


async def test_debounced_changes_queue_at_most_one_follow_up_run(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Watcher bursts -> debounce -> scheduler: while a run is in progress, later bursts coalesce into one
    queued run. Each run's step 1 takes 10 s and then fails (no worker threads, so times are exact)."""
    from syncsnapd.core import RunProgress
    from syncsnapd.engine import SnapshotError
    from syncsnapd.runs import RetryPolicy, Scheduler, Tracker
    from syncsnapd.store import Store

    starts: list[float] = []

    async def slow_step_one(project: ProjectConfig, progress: RunProgress) -> None:
        starts.append(trio.current_time())
        await trio.sleep(10)
        raise SnapshotError("sync_unreachable", "test: step 1 ends the run here")

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    sched = Scheduler(store, Tracker(),
                      [ProjectConfig("p", tmp_path)], waiter=slow_step_one, retry=RetryPolicy(attempts=1))
    send, recv = trio.open_memory_channel[object](16)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            await nursery.start(lambda task_status: serve_debounce(  # type: ignore[misc]
                recv, lambda: sched.request_snapshot("p", "watch"), settle=5, max_delay=60,
                task_status=task_status))
            t0 = trio.current_time()
            for t in (0, 6, 7, 13, 14.5):
                await trio.sleep_until(t0 + t)
                await send.send(1)
            await trio.sleep_until(t0 + 100)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    # Burst 1 (0) -> request at 5: run A 5-15. Burst 2 (6, 7) -> request at 12: queued B.
    # Burst 3 (13, 14.5) -> request at 19.5: B is running (15-25), so it queues C, which runs 25-35.
    assert [round(s - t0, 6) for s in starts] == [5.0, 15.0, 25.0]


def write_bytes(path: bytes, data: bytes, mode: str = "wb") -> None:
    """Write a file whose name is given as bytes (names that are not UTF-8)."""
    with open(path, mode) as f:
        f.write(data)


async def test_names_that_are_not_utf8_are_watched_with_inotify_like_any_other(tmp_path: Path) -> None:
    """Names are bytes to the watcher: a file or directory whose name is not valid UTF-8 (which
    watchfiles could not report, and which once made it fall back to polling) is watched with inotify,
    and changes in it and below it keep triggering."""
    status = WatchStatus()
    root = os.fsencode(tmp_path)
    (tmp_path / "sub").mkdir()
    send, recv = trio.open_memory_channel[object](100)

    async def one_change() -> None:
        with trio.fail_after(5):
            await recv.receive()
        await trio.sleep(0.2)  # the rest of the same burst
        while True:
            try:
                recv.receive_nowait()
            except trio.WouldBlock:
                break

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_folder_watch, tmp_path, send,
                            make_filter(tmp_path, ignore=ProjectConfig("p", tmp_path).ignore_fn()), status)
        write_bytes(root + b"/sub/bad\xff name", b"x")
        await one_change()
        os.mkdir(root + b"/dir\xfe")
        await one_change()
        write_bytes(root + b"/dir\xfe/inner.txt", b"y")  # inside a directory created after the start
        await one_change()
        write_bytes(root + b"/sub/bad\xff name", b"more", "ab")
        await one_change()
        assert (status.mode, status.warning) == ("inotify", None)
        nursery.cancel_scope.cancel()


async def test_a_removed_folder_ends_the_watch_with_folder_missing(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    status = WatchStatus()
    send, recv = trio.open_memory_channel[object](100)
    wanted = make_filter(root, ignore=ProjectConfig("p", root).ignore_fn())
    with pytest.raises(SyncsnapdError) as missing:
        await serve_folder_watch(tmp_path / "nope", send, wanted, status)
    assert missing.value.code == "folder_missing" and "nope" in missing.value.message
    with pytest.RaisesGroup(pytest.RaisesExc(SyncsnapdError, check=lambda e: e.code == "folder_missing"),
                            flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_folder_watch, root, send, wanted, status)
            (root / "a").write_text("a")
            await recv.receive()
            shutil.rmtree(root)
            with trio.fail_after(3):  # the folder's own deletion event: no periodic check needed
                await trio.sleep_forever()


def test_fingerprint_changes_with_content_names_and_modes(tmp_path: Path) -> None:
    wanted = make_filter(tmp_path, ignore=ProjectConfig("p", tmp_path, ignore=("*.tmp",)).ignore_fn())
    (tmp_path / "a").write_text("one")
    base = folder_fingerprint(tmp_path, wanted)
    assert folder_fingerprint(tmp_path, wanted) == base
    (tmp_path / "junk.tmp").write_text("ignored")
    assert folder_fingerprint(tmp_path, wanted) == base
    with open(os.fsencode(tmp_path) + b"/b\xff", "wb") as f:
        f.write(b"odd")
    odd = folder_fingerprint(tmp_path, wanted)
    assert odd != base
    os.chmod(os.fsencode(tmp_path) + b"/b\xff", 0o600)
    assert folder_fingerprint(tmp_path, wanted) != odd
    with pytest.raises(SyncsnapdError):
        folder_fingerprint(tmp_path / "gone", wanted)
