"""One rule set, the same answer everywhere: the snapshot, diff's live walk, the start-up check, the
polling fingerprint and the inotify watcher keep exactly the files git keeps, and a change under an
ignored directory starts no run of a real daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers.daemon import api, spawn_daemon, wait_until, write_config
from helpers.store import snapshot
from helpers.watch import inotify_watches
from syncsnapd.core import ProjectConfig
from syncsnapd.engine import scan_live
from syncsnapd.sources import folder_fingerprint, make_filter, summarize_folder
from syncsnapd.sources._inotify import TreeWatch
from syncsnapd.store import FixedChunker, Store

RULES = ("build/", "/only-top.txt", "*.log", "!keep.log", "docs/**/*.tmp", "**/cache", "a/**/z")
FILES = ["build/out.bin", "build/keep.log", "src/build/x/y.o", "src/build.py", "x/build",
         "only-top.txt", "sub/only-top.txt", "app.log", "keep.log", "sub/keep.log", "sub/deep/app.log",
         "docs/c.tmp", "docs/a/b/c.tmp", "other/c.tmp", "x/cache/f", "cache", "a/z", "a/m/n/z", "a/m/y",
         "plain.txt"]


def _tree(root: Path) -> None:
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"+")


def _git_keeps(root: Path, tmp: Path) -> set[str]:
    """The files `git status` would offer to add, by git itself, with RULES as the exclude file."""
    rules = tmp / "rules"
    rules.write_text("\n".join(RULES) + "\n")
    git_dir = tmp / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    out = subprocess.run(["git", f"--git-dir={git_dir}", f"--work-tree={root}", "ls-files", "-o",
                          f"--exclude-from={rules}"], check=True, capture_output=True, text=True, cwd=root)
    return set(out.stdout.split())


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
async def test_snapshot_diff_checks_and_watcher_keep_what_git_keeps(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _tree(root)
    expected = _git_keeps(root, tmp_path)
    # The table's point, spelled out: directory rules at any depth, anchors, negation, `**`.
    assert expected == {"src/build.py", "x/build", "sub/only-top.txt", "keep.log", "sub/keep.log",
                        "other/c.tmp", "a/m/y", "plain.txt"}
    project = ProjectConfig("p", root, ignore=RULES)
    rules = project.ignore_fn()

    with Store.open(tmp_path / "store", writable=True) as store:
        summary = await snapshot(store, root, ignore=rules)
        entries = list(store.load_entries(summary.id))
    snap_files = {e.path for e in entries if e.kind == "file"}
    snap_dirs = {e.path for e in entries if e.kind == "dir"}
    assert snap_files == expected

    live = list(scan_live(str(root), {}, chunker=FixedChunker(1 << 20), ignore=rules))
    assert {e.path for e in live if e.kind == "file"} == expected
    assert {e.path for e in live if e.kind == "dir"} == snap_dirs

    assert summarize_folder(root, rules).files == len(entries)  # the start-up and interval check

    wanted = make_filter(root, ignore=rules)
    for rel in FILES:  # the polling watcher's fingerprint moves exactly for kept files
        before = folder_fingerprint(root, wanted)
        _append(root / rel)
        assert (folder_fingerprint(root, wanted) != before) is (rel in expected), rel

    # The inotify watcher: a watch on exactly the directories the snapshot has (and the folder), and an
    # event for exactly the kept files. The kernel queues events as the writes happen: no waiting.
    tree = TreeWatch(os.fsencode(root), lambda p: wanted(os.fsdecode(p)))
    try:
        tree.start()
        assert tree.count == len(snap_dirs) + 1
        for rel in FILES:
            _append(root / rel)
            assert (tree.read().changes > 0) is (rel in expected), rel
        (root / "src/build/new").mkdir()  # a directory created inside an ignored one: not watched
        (root / "newdir/cache").mkdir(parents=True)
        assert tree.read().changes == 1  # newdir/ only
        assert tree.count == len(snap_dirs) + 2
    finally:
        tree.close()


def test_a_change_under_an_ignored_directory_starts_no_run(short_tmp: Path) -> None:
    """A real daemon watching a folder with `ignore = ["build/"]`: it holds no inotify watch below any
    `build` directory, and writing there starts no run within ten times the time a watched change takes
    to start one (settle 0.2 s); a write beside it does."""
    folder = short_tmp / "f"
    for rel in ("src/a.txt", "src/build/obj/a.o", "build/b.o"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(rel)
    config = write_config(short_tmp, {"p": folder}, watch=True)
    config.write_text(config.read_text() + 'ignore = ["build/"]\nsettle = "0.2s"\nmax_delay = "1s"\n')
    d = spawn_daemon(short_tmp, config)
    try:
        def runs() -> list[dict[str, object]]:
            return list(api(d, "/projects/p/runs")["runs"])

        wait_until(lambda: len(runs()) == 1 and runs()[0]["state"] == "completed", 20, "the start-up snapshot")
        # The folder, src (never src/build, src/build/obj, build).
        wait_until(lambda: inotify_watches(d.proc.pid) == 2, 10, "two inotify watches")
        for n in range(5):
            (folder / f"src/build/obj/new{n}.o").write_text("x")
            (folder / "build/b.o").write_text(f"again {n}")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert len(runs()) == 1, runs()
            time.sleep(0.05)
        (folder / "src/a.txt").write_text("changed")
        wait_until(lambda: len(runs()) == 2, 10, "a run for the change beside build/")
    finally:
        d.stop()
