"""diff between snapshots and against the live folder: known trees with odd names, symlinks, mode and type
changes; the live comparison reads only files whose metadata changed; the offline command's output."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.store import OpenWatcher, backdate, patch_file, snapshot
from syncsnapd.core import ProjectConfig
from syncsnapd.engine import Modified, Side, diff_entries, scan_live
from syncsnapd.service import run_diff
from syncsnapd.store import Store

MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


def build_before(src: Path) -> None:
    b = os.fsencode(src)
    os.makedirs(b + b"/dir \xff/deep")
    os.mkdir(b + b"/becomes-file")
    files = {b"same.txt": b"same", b"edit.txt": b"old content", b"grow.bin": os.urandom(2 * MiB),
             b"chmod.sh": b"#!/bin/sh\n", b"gone.txt": b"bye", b"dir \xff/inner\x80": b"odd",
             b"dir \xff/deep/leaf": b"leaf", b"becomes-dir": b"was a file", b"becomes-link": b"was a file",
             b"both.txt": b"content and mode"}
    for name, data in files.items():
        patch_file(b + b"/" + name, 0, data)
    os.chmod(b + b"/chmod.sh", 0o644)
    os.chmod(b + b"/both.txt", 0o644)
    os.symlink(b"same.txt", b + b"/link")
    os.symlink(b"nowhere", b + b"/retarget")


def change(src: Path) -> None:
    """Every kind of change, applied to the tree of build_before."""
    b = os.fsencode(src)
    patch_file(b + b"/edit.txt", 0, b"new content")  # same size, other bytes
    patch_file(b + b"/grow.bin", 2 * MiB, b"more")  # a third chunk
    os.chmod(b + b"/chmod.sh", 0o755)
    os.unlink(b + b"/gone.txt")
    os.unlink(b + b"/dir \xff/deep/leaf")
    os.rmdir(b + b"/dir \xff/deep")
    patch_file(b + b"/dir \xff/new \xfe", 0, b"added")
    os.mkdir(b + b"/added dir")
    os.rmdir(b + b"/becomes-file")
    patch_file(b + b"/becomes-file", 0, b"now a file")
    os.unlink(b + b"/becomes-dir")
    os.mkdir(b + b"/becomes-dir")
    os.unlink(b + b"/becomes-link")
    os.symlink(b"same.txt", b + b"/becomes-link")
    os.unlink(b + b"/retarget")
    os.symlink(b"somewhere else", b + b"/retarget")
    with open(b + b"/both.txt", "wb") as f:
        f.write(b"CONTENT")
    os.chmod(b + b"/both.txt", 0o600)


def odd(name: bytes) -> str:
    return os.fsdecode(name)


EXPECTED_ADDED = [Side("added dir", "dir", 0), Side(odd(b"dir \xff/new \xfe"), "file", 5)]
EXPECTED_REMOVED = [Side(odd(b"dir \xff/deep"), "dir", 0), Side(odd(b"dir \xff/deep/leaf"), "file", 4),
                    Side("gone.txt", "file", 3)]


def expected_modified() -> list[Modified]:
    return [
        Modified("becomes-dir", ("type",), "file", "dir", 10, 0, 0o644, 0o755),
        Modified("becomes-file", ("type",), "dir", "file", 0, 10, 0o755, 0o644),
        Modified("becomes-link", ("type",), "file", "symlink", 10, 8, 0o644, 0o777),
        Modified("both.txt", ("content", "mode"), "file", "file", 16, 7, 0o644, 0o600),
        Modified("chmod.sh", ("mode",), "file", "file", 10, 10, 0o644, 0o755),
        Modified("edit.txt", ("content",), "file", "file", 11, 11, 0o644, 0o644),
        Modified("grow.bin", ("content",), "file", "file", 2 * MiB, 2 * MiB + 4, 0o644, 0o644),
        Modified("retarget", ("content",), "symlink", "symlink", 7, 14, 0o777, 0o777),
    ]


async def test_diff_between_two_snapshots_reports_every_kind_of_change(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    os.umask(0o022)
    build_before(src)
    first = await snapshot(store, src)
    change(src)
    second = await snapshot(store, src)
    diff = diff_entries(store.load_entries(first.id), store.load_entries(second.id), from_=first.id, to=second.id)
    assert diff.added == EXPECTED_ADDED
    assert diff.removed == EXPECTED_REMOVED
    assert diff.modified == expected_modified()
    # Unchanged: same.txt, link, dir \xff, dir \xff/inner\x80 (a directory whose contents changed is not
    # itself modified).
    assert diff.unchanged == 4
    summary = diff.summary()
    assert summary == {"added": 2, "removed": 3, "modified": 8, "unchanged": 4, "size_added": 5, "size_removed": 7,
                       "size_before": first.bytes, "size_after": second.bytes}
    doc = json.loads(json.dumps(diff.to_json()))  # non-UTF-8 names survive JSON (as lone surrogates)
    assert doc["from"] == first.id and doc["to"] == second.id and doc["truncated"] is False
    assert doc["added"][1] == {"path": odd(b"dir \xff/new \xfe"), "kind": "file", "size": 5}
    assert doc["modified"][3] == {"path": "both.txt", "change": ["content", "mode"], "kind_before": "file",
                                  "kind_after": "file", "size_before": 16, "size_after": 7,
                                  "mode_before": "0644", "mode_after": "0600"}
    assert diff.to_json(limit=1)["truncated"] is True and len(diff.to_json(limit=1)["modified"]) == 1
    # The same snapshot twice: nothing changed.
    same = diff_entries(store.load_entries(first.id), store.load_entries(first.id), from_=first.id, to=first.id)
    assert (same.added, same.removed, same.modified, same.unchanged) == ([], [], [], 15)


async def test_diff_against_the_live_folder_reads_only_files_whose_metadata_changed(store: Store,
                                                                                      tmp_path: Path) -> None:
    src = tmp_path / "src"
    os.umask(0o022)
    build_before(src)
    backdate(src)  # trusted by the snapshot (not "just modified")
    first = await snapshot(store, src)
    entries = store.load_entries(first.id)
    reference = {e.path: e for e in entries}

    watcher = OpenWatcher(src)
    try:
        live = list(scan_live(str(src), reference, chunker=store.chunker))
        assert watcher.file_events() == []  # nothing changed: not one file opened
        assert diff_entries(entries, live, from_=first.id, to="live").modified == []
        change(src)
        # Content rewritten with the same size and the same mtime as before, but a new inode: it is read.
        data = (src / "same.txt").read_bytes()
        st = os.stat(src / "same.txt")
        patch_file(src / "same.new", 0, b"SAME")  # created while the old inode is still in use
        os.utime(src / "same.new", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(src / "same.new", src / "same.txt")
        assert len(data) == 4
        watcher.file_events()
        live = list(scan_live(str(src), reference, chunker=store.chunker))
        prefix = os.fsencode(src) + b"/"
        opened = {p.removeprefix(prefix) for p in watcher.file_events()}
    finally:
        watcher.close()
    # Read: files of the same size whose mtime or inode changed. Not read: new files, files of another size,
    # files whose mode alone changed (chmod.sh).
    assert opened == {b"edit.txt", b"same.txt"}
    diff = diff_entries(entries, live, from_=first.id, to="live")
    assert diff.added == EXPECTED_ADDED
    assert diff.removed == EXPECTED_REMOVED
    assert diff.modified == [*expected_modified(), Modified("same.txt", ("content",), "file", "file", 4, 4,
                                                            0o644, 0o644)]


async def test_live_diff_follows_the_project_ignore_rules_and_never_follows_links(store: Store,
                                                                                 tmp_path: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    patch_file(outside / "secret", 0, b"s")
    patch_file(src / "sub" / "a.txt", 0, b"a")
    first = await snapshot(store, src)
    patch_file(src / "build.tmp", 0, b"ignored")
    (src / "sub" / "a.txt").unlink()
    (src / "sub").rmdir()
    os.symlink(outside, src / "sub")  # a directory swapped for a link out of the folder
    project = ProjectConfig(id="p", path=src, ignore=("*.tmp",))
    out = io.StringIO()
    assert run_diff(store.root, first.id, None, out, projects=[project], as_json=True) == 0
    doc = json.loads(out.getvalue())
    assert doc["added"] == []
    assert doc["removed"] == [{"path": "sub/a.txt", "kind": "file", "size": 1}]
    assert [(m["path"], m["change"]) for m in doc["modified"]] == [("sub", ["type"])]


async def test_offline_diff_command_prints_a_list_and_a_summary(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    patch_file(src / "keep.txt", 0, b"k")
    patch_file(src / "edit.txt", 0, b"one")
    patch_file(src / "gone.txt", 0, b"bye")
    first = await snapshot(store, src)
    patch_file(src / "edit.txt", 0, b"two!")
    os.chmod(src / "keep.txt", 0o600)
    (src / "gone.txt").unlink()
    patch_file(src / "new\nline", 0, b"x" * 2048)
    os.symlink("keep.txt", src / "link")
    second = await snapshot(store, src)
    out = io.StringIO()
    assert run_diff(store.root, first.id, second.id, out) == 0
    assert out.getvalue().splitlines() == [
        "M edit.txt  (content 3 B -> 4 B)",
        "- gone.txt  (3 B)",
        "M keep.txt  (mode 0644 -> 0600)",
        "+ link@",
        "+ new\\nline  (2.0 KiB)",
        f"2 added, 1 removed, 2 modified, 0 unchanged ({first.id} -> {second.id}); files 7 B -> 2.0 KiB.",
    ]
    out = io.StringIO()
    assert run_diff(store.root, second.id, None, out) == 0  # live: the folder the snapshot was taken of
    assert out.getvalue().splitlines() == [f"0 added, 0 removed, 0 modified, 4 unchanged ({second.id} -> live); "
                                           "files 2.0 KiB -> 2.0 KiB."]
    out = io.StringIO()
    assert run_diff(store.root, first.id, "20200101T000000.000Z-abcdef", out) == 2
    assert out.getvalue() == (f"There is no snapshot '20200101T000000.000Z-abcdef' in {store.root}; "
                              "`syncsnapd snapshots` lists them.\n")
