"""Torture: hostile trees for the folder watcher, against a real daemon and the real kernel.

The tree has many directories (close to a watch limit of the daemon's own, helpers/watch.py), links to
``/``, to the store, to the state dir and to a directory outside with a name that is not UTF-8, symlink
loops, and names that are not UTF-8. Rounds of random real changes (new files, appends, deep new
directories, directories created and removed in bursts, directories moved, removals), each with a change
outside the project beside it: after every round the newest snapshot must hold the whole live folder
(the daemon's diff against it is empty) within a bounded wait, with no more snapshots than the round asks
for. While inotify is in use the kernel's watch count equals the project's real directories. The last
phase grows the tree past the limit: the project falls back to polling, says so, and still misses nothing.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

from helpers.daemon import wait_until
from helpers.torture import record, scale
from helpers.watch import (
    api,
    inotify_watches,
    snapshots,
    start_daemon_with_watch_limit,
    wait_for_snapshot_of_everything,
)

ROUNDS = scale(12, 120)
OVER_LIMIT_ROUNDS = scale(3, 20)
DIRS = scale(150, 1500)
# Watches to spare above the tree's directories: rounds add a few directories at a time (and remove some).
HEADROOM = 80
ROUND_TIMEOUT = 20  # seconds for a round's changes to be in a snapshot


def real_dirs(root: bytes) -> int:
    """Directories a snapshot walks: real ones (no symlinks followed), not a sync tool's."""
    count = 0
    for _dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = [n for n in dirnames if n != b".stversions"]
        count += 1
    return count


def build(root: bytes, outside: bytes, base: bytes, rng: random.Random) -> list[bytes]:
    """The hostile tree; returns its directories (bytes paths)."""
    os.makedirs(root)
    dirs = [root]
    for i in range(DIRS - 1):
        parent = rng.choice(dirs[-20:]) if rng.random() < 0.7 else rng.choice(dirs)
        name = b"d%d" % i + (b"\xff" if i % 7 == 0 else b"")
        path = parent + b"/" + name
        os.mkdir(path)
        dirs.append(path)
        if i % 3 == 0:
            with open(path + b"/f\xfe%d" % i, "wb") as f:
                f.write(b"x" * (i % 100))
    os.makedirs(root + b"/.stversions/old")
    os.makedirs(outside + b"/sub\xfe")
    os.symlink(b"/", root + b"/to-root")
    os.symlink(b".", dirs[1] + b"/loop")
    os.symlink(b"../..", dirs[5] + b"/up")
    os.symlink(base + b"/store", root + b"/to-store")
    os.symlink(base + b"/state", root + b"/to-state")
    os.symlink(outside, root + b"/to-outside")
    return dirs


def live_dirs(root: bytes) -> list[bytes]:
    out = []
    for dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = [n for n in dirnames if n != b".stversions"]
        out.append(dirpath)
    return out


def change(root: bytes, outside: bytes, rng: random.Random, n: int) -> str:
    """One round of real changes; returns its kind."""
    dirs = live_dirs(root)
    kind = rng.choice(["new file", "append", "deep dirs", "churn", "move dir", "remove"])
    here = rng.choice(dirs)
    if kind == "append":
        files = [e.path for e in os.scandir(here) if e.is_file(follow_symlinks=False)]
        if files:
            with open(rng.choice(files), "ab") as f:
                f.write(b"more %d" % n)
        else:
            kind = "new file"
    if kind == "deep dirs":
        deep = here + b"".join(b"/n%d-%d\xfd" % (n, i) for i in range(rng.randint(3, 6)))
        os.makedirs(deep)
        here = deep
    elif kind == "churn":
        for i in range(scale(30, 100)):  # directories that come and go while the watcher adds them
            burst = here + b"/churn%d-%d" % (n, i)
            os.makedirs(burst + b"/inner")
            with open(burst + b"/inner/t", "wb") as f:
                f.write(b"t")
            shutil.rmtree(burst)
    elif kind == "move dir":
        movable = [d for d in dirs if d != root and not here.startswith(d)]
        src = rng.choice(movable)
        if not here.startswith(src + b"/") and here != src:
            dst = here + b"/moved%d" % n
            os.rename(src, dst)
            here = dst
    elif kind == "remove":
        leaves = [d for d in dirs if d != root and not any(e.is_dir(follow_symlinks=False) for e in os.scandir(d))]
        if leaves:
            shutil.rmtree(rng.choice(leaves))
    if kind != "remove":
        with open(here + b"/new\xfc%d" % n, "wb") as f:
            f.write(b"round %d" % n)
    # Beside it, a change outside the project (reached only through a link): never a snapshot.
    with open(outside + b"/sub\xfe/out%d" % n, "wb") as f:
        f.write(b"outside")
    return kind


def test_hostile_trees_every_change_snapshotted_no_storm_daemon_up(short_tmp: Path) -> None:
    rng = random.Random(11)
    base = os.fsencode(short_tmp)
    root, outside = base + b"/w", base + b"/out\xff"
    build(root, outside, base, rng)
    limit = real_dirs(root) + HEADROOM
    d = start_daemon_with_watch_limit(short_tmp, {"w": Path(os.fsdecode(root))}, limit, watch=True,
                                      extra_daemon='settle = "0.3s"\nmax_delay = "5s"')
    missed = extra = changes = watch_mismatches = 0
    kinds: dict[str, int] = {}
    try:
        wait_until(lambda: snapshots(d, "w"), 60, "the start-up snapshot")
        assert wait_for_snapshot_of_everything(d, "w", 0, ROUND_TIMEOUT)
        assert api(d, "/projects/w")["watch"] == {"mode": "inotify", "warning": None, "error": None}

        def round_(n: int) -> None:
            nonlocal missed, extra, changes
            before = len(snapshots(d, "w"))
            kind = change(root, outside, rng, n)
            kinds[kind] = kinds.get(kind, 0) + 1
            changes += 1
            if not wait_for_snapshot_of_everything(d, "w", before, ROUND_TIMEOUT):
                missed += 1
            extra += max(0, len(snapshots(d, "w")) - before - 1)

        for n in range(ROUNDS):
            round_(n)
            if inotify_watches(d.proc.pid) != real_dirs(root):
                watch_mismatches += 1
        # No storm: once quiet, no snapshot follows another (several settle times and runs).
        settled = len(snapshots(d, "w"))
        time.sleep(3)
        storm = len(snapshots(d, "w")) - settled

        # Past the limit: the next directories cannot all be watched.
        before = len(snapshots(d, "w"))
        for i in range(HEADROOM + 20):
            os.mkdir(root + b"/over%d" % i)
        changes += 1
        if not wait_for_snapshot_of_everything(d, "w", before, ROUND_TIMEOUT):
            missed += 1
        watch = api(d, "/projects/w")["watch"]
        assert watch["mode"] == "polling" and "max_user_watches" in watch["warning"], watch
        for n in range(ROUNDS, ROUNDS + OVER_LIMIT_ROUNDS):
            round_(n)
        daemon_died = int(d.proc.poll() is not None)
    finally:
        d.stop()
    record("watch abuse", trees=1, dirs=DIRS, watch_limit=limit, changes=changes, missed_changes=missed,
           extra_snapshots=extra, storm_snapshots=storm, watch_count_mismatches=watch_mismatches,
           daemon_died=daemon_died, **{f"changes_{k.replace(' ', '_')}": v for k, v in sorted(kinds.items())})
    assert (missed, storm, watch_mismatches, daemon_died) == (0, 0, 0, 0), kinds
    # A round is one burst: at most one extra snapshot now and then (a run that started mid-burst).
    assert extra <= changes // 4, (extra, changes)
