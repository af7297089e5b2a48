"""The watcher watches exactly what a snapshot walks, and says when the kernel will not let it.

End to end against real daemons and the real kernel: inotify watch counts are read from the daemon's
``/proc/PID/fdinfo``; the kernel's watch limit is reached for real, in a user namespace of the daemon's own
(helpers/watch.py), so other processes on this machine keep theirs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers.daemon import DaemonProcess, wait_until
from helpers.watch import (
    api,
    inotify_watches,
    snapshots,
    start_daemon_with_watch_limit,
    wait_for_snapshot_of_everything,
)

SETTINGS = 'settle = "0.3s"\nmax_delay = "5s"'
# Watches a daemon may hold in these tests: a few hundred times what they need, and small enough that a
# watcher that follows `link -> /` stops at it instead of taking every watch of the machine's root user.
LIMIT = 1000


def chain(root: Path, depth: int) -> Path:
    """``root/d0/d1/.../d{depth-1}``, created; returns the deepest."""
    deep = root.joinpath(*(f"d{i}" for i in range(depth)))
    deep.mkdir(parents=True)
    return deep


def quiet(d: DaemonProcess, project: str, seconds: float) -> list[dict[str, object]]:
    """The project's snapshots once ``seconds`` went by: several times the settle time (0.3 s), long enough
    for a snapshot that triggers the next one to show."""
    time.sleep(seconds)
    return snapshots(d, project)


# --- defect: inotify limits hit silently ----------------------------------------------------------------

def test_watch_limit_at_start_polls_and_sees_changes_deep_in_the_tree(short_tmp: Path) -> None:
    """40 nested directories, a limit of 20 watches: the kernel refuses the 21st. The project is polled
    instead, says so and why, and a file written at the bottom ends in a snapshot."""
    folder = short_tmp / "w"
    deep = chain(folder, 40)
    (folder / "top.txt").write_text("top")
    d = start_daemon_with_watch_limit(short_tmp, {"w": folder}, 20, watch=True, extra_daemon=SETTINGS)
    try:
        wait_until(lambda: snapshots(d, "w"), 20, "the start-up snapshot")
        before = len(snapshots(d, "w"))
        (deep / "bottom.txt").write_text("written below the limit")
        assert wait_for_snapshot_of_everything(d, "w", before, 15), "the change was never snapshotted"
        watch = api(d, "/projects/w")["watch"]
        assert watch["mode"] == "polling" and watch["error"] is None, watch
        assert "max_user_watches" in watch["warning"] and "polling" in watch["warning"], watch
        assert inotify_watches(d.proc.pid) == 0  # its watches were given back, for other projects
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_watch_limit_reached_later_by_one_project_leaves_the_others_watching(short_tmp: Path) -> None:
    """Two projects share the user's limit (20). Both start watched; one then grows past the limit. It
    falls back to polling and still snapshots a change at its bottom; the other keeps inotify."""
    grows, steady = short_tmp / "grows", short_tmp / "steady"
    grows.mkdir()
    steady.mkdir()
    (grows / "a.txt").write_text("a")  # an empty folder without snapshots gets no start-up snapshot
    (steady / "a.txt").write_text("a")
    d = start_daemon_with_watch_limit(short_tmp, {"grows": grows, "steady": steady}, 20, watch=True,
                                      extra_daemon=SETTINGS)
    try:
        wait_until(lambda: snapshots(d, "grows") and snapshots(d, "steady"), 20, "the start-up snapshots")
        assert inotify_watches(d.proc.pid) == 2
        before = len(snapshots(d, "grows"))
        deep = chain(grows, 30)
        assert wait_for_snapshot_of_everything(d, "grows", before, 15), "the new directories were not snapshotted"
        before = len(snapshots(d, "grows"))
        (deep / "bottom.txt").write_text("past the limit")
        assert wait_for_snapshot_of_everything(d, "grows", before, 15), "the change was never snapshotted"
        watch = api(d, "/projects/grows")["watch"]
        assert watch["mode"] == "polling" and "max_user_watches" in watch["warning"], watch
        assert api(d, "/projects/steady")["watch"] == {"mode": "inotify", "warning": None, "error": None}
        before = len(snapshots(d, "steady"))
        (steady / "b.txt").write_text("b")
        assert wait_for_snapshot_of_everything(d, "steady", before, 15)
        assert inotify_watches(d.proc.pid) == 1
    finally:
        d.stop()


# --- defect: the watcher follows symlinks out of the project ---------------------------------------------

def test_links_out_of_the_project_and_loops_are_not_watched(short_tmp: Path) -> None:
    """``link -> /``, a loop and an ignored directory: the daemon watches the project's 4 real
    directories and nothing else (the kernel's count), and still snapshots a change."""
    folder = short_tmp / "w"
    (folder / "a/b").mkdir(parents=True)
    (folder / "c").mkdir()
    (folder / ".stversions/old").mkdir(parents=True)  # a sync tool's directory: never snapshotted
    os.symlink("/", folder / "link")
    os.symlink("..", folder / "a/b/loop")
    d = start_daemon_with_watch_limit(short_tmp, {"w": folder}, LIMIT, watch=True, extra_daemon=SETTINGS)
    try:
        wait_until(lambda: snapshots(d, "w"), 20, "the start-up snapshot")
        assert inotify_watches(d.proc.pid) == 4  # w, w/a, w/a/b, w/c
        assert api(d, "/projects/w")["watch"] == {"mode": "inotify", "warning": None, "error": None}
        before = len(snapshots(d, "w"))
        (folder / "a/b/new.txt").write_text("new")
        assert wait_for_snapshot_of_everything(d, "w", before, 15)
    finally:
        d.stop()


def test_links_to_the_store_and_state_dir_do_not_chain_snapshots(short_tmp: Path) -> None:
    """A snapshot writes to the store and the state dir. Links to them inside the project must not make
    each snapshot trigger the next: one change, one snapshot, then quiet."""
    folder = short_tmp / "w"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    os.symlink(short_tmp / "store", folder / "store-link")
    os.symlink(short_tmp / "state", folder / "state-link")
    d = start_daemon_with_watch_limit(short_tmp, {"w": folder}, LIMIT, watch=True, extra_daemon=SETTINGS)
    try:
        wait_until(lambda: snapshots(d, "w"), 20, "the start-up snapshot")
        assert len(quiet(d, "w", 3)) == 1
        (folder / "b.txt").write_text("b")
        assert wait_for_snapshot_of_everything(d, "w", 1, 15)
        assert len(quiet(d, "w", 3)) == 2
        assert inotify_watches(d.proc.pid) == 1
    finally:
        d.stop()


def test_a_link_to_a_directory_with_an_undecodable_name_outside_is_not_followed(short_tmp: Path) -> None:
    """Changes in a directory outside the project, reached by a link and named with bytes that are not
    UTF-8, are not the project's: no snapshot, no fallback; the daemon stays up and keeps watching."""
    folder, outside = short_tmp / "w", os.fsencode(short_tmp) + b"/out\xff"
    folder.mkdir()
    os.mkdir(outside)
    os.mkdir(outside + b"/sub\xfe")
    os.symlink(outside, os.fsencode(folder) + b"/link")
    d = start_daemon_with_watch_limit(short_tmp, {"w": folder}, LIMIT, watch=True, extra_daemon=SETTINGS)
    try:
        wait_until(lambda: snapshots(d, "w"), 20, "the start-up snapshot")
        for i in range(5):
            with open(outside + b"/sub\xfe/f\xfd" + str(i).encode(), "wb") as f:
                f.write(b"outside")
        assert len(quiet(d, "w", 3)) == 1
        assert api(d, "/projects/w")["watch"] == {"mode": "inotify", "warning": None, "error": None}
        (folder / "in.txt").write_text("inside")
        assert wait_for_snapshot_of_everything(d, "w", 1, 15)
        assert len(quiet(d, "w", 1.5)) == 2
        assert d.proc.poll() is None
    finally:
        d.stop()
