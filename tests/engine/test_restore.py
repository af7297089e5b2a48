"""Restoring snapshots: byte-identical trees, refusing unsafe targets and entries, verifying data."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import api, make_env, start_daemon, wait_until
from helpers.store import commit_entries, commit_raw, flip_byte, patch_file, snapshot, tree_state, write_files
from syncsnapd.engine import RestoreError, restore_snapshot
from syncsnapd.store import Store, UnknownSnapshotError, hash_bytes
from syncsnapd.store._format import canonical

MiB = 1 << 20
T0 = 1_650_000_000_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


def build_odd_tree(src: Path) -> None:
    """Odd names (not UTF-8, NFC and NFD, spaces, newline), every kind of symlink, empty things, modes
    from 0o444 to setuid, and a distinct nanosecond mtime on every entry."""
    b = os.fsencode(src)
    os.mkdir(b)
    files = {
        b"caf\xc3\xa9": b"nfc", b"cafe\xcc\x81": b"nfd", b"bad\xff\xfe": b"latin-1 bytes",
        b"with space": b"s", b"new\nline": b"n", b"tab\tname": b"t", b"-dash": b"d",
        b"\xe2\x80\x8b": b"zero width", b"emoji \xf0\x9f\x93\xb8": b"e", b"empty": b"",
        b"big.bin": os.urandom(2 * MiB + 12345), b"text.txt": b"compressible " * 10000,
    }
    os.mkdir(b + b"/dir \xff")
    os.mkdir(b + b"/dir \xff/deeper")
    os.mkdir(b + b"/emptydir")
    os.mkdir(b + b"/ro dir")
    files[b"dir \xff/inner\x80"] = b"inner"
    files[b"dir \xff/deeper/leaf"] = b"leaf"
    files[b"ro dir/kept"] = b"inside a read-only directory"
    for name, data in files.items():
        patch_file(b + b"/" + name, 0, data)
    links = {b"dangling": b"does/not/exist", b"outside": b"/etc/passwd", b"up": b"../../x",
             b"todir": b"dir \xff", b"badtarget": b"\xff\xfe", b"dir \xff/self": b"."}
    for name, target in links.items():
        os.symlink(target, b + b"/" + name)
    modes = {b"big.bin": 0o755, b"text.txt": 0o600, b"-dash": 0o444, b"tab\tname": 0o4755,
             b"emptydir": 0o1777, b"dir \xff/deeper": 0o700}
    for name, mode in modes.items():
        os.chmod(b + b"/" + name, mode)
    everything = [*files, *links, b"dir \xff", b"dir \xff/deeper", b"emptydir", b"ro dir"]
    # Deepest first, so setting a directory's time is not undone by touching its contents.
    for i, name in enumerate(sorted(everything, key=lambda n: -n.count(b"/"))):
        t = T0 + i * 1_000_000_007
        os.utime(b + b"/" + name, ns=(t, t), follow_symlinks=False)
    os.chmod(b + b"/ro dir", 0o555)


def without_special_bits(state: dict[bytes, tuple[Any, ...]]) -> dict[bytes, tuple[Any, ...]]:
    """A tree state as a restore reproduces it: setuid, setgid and sticky cleared (owners are not restored)."""
    return {k: (v[0], v[1] & 0o777, *v[2:]) if v[0] != "symlink" else v for k, v in state.items()}


async def test_restore_reproduces_the_tree_exactly(store: Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    build_odd_tree(src)
    expected = without_special_bits(tree_state(src))
    summary = await snapshot(store, src)
    stats = restore_snapshot(store, summary.id, out)
    assert tree_state(out) == expected
    assert (stats.files, stats.symlinks, stats.dirs) == (15, 6, 4)
    assert stats.bytes == sum(e[3] for e in expected.values() if e[0] == "file")
    assert os.readlink(out / "outside") == "/etc/passwd"  # a link, never followed


async def test_restore_into_an_existing_empty_directory(store: Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    patch_file(tmp_path / "src.txt", 0, b"")  # not part of the snapshot
    src.mkdir()
    patch_file(src / "a", 0, b"a")
    out.mkdir()
    summary = await snapshot(store, src)
    restore_snapshot(store, summary.id, out)
    assert (out / "a").read_bytes() == b"a"


async def test_restore_refuses_a_target_that_is_not_empty(store: Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    patch_file(src / "a", 0, b"new")
    out.mkdir()
    patch_file(out / "a", 0, b"mine")
    summary = await snapshot(store, src)
    with pytest.raises(RestoreError, match="is not empty"):
        restore_snapshot(store, summary.id, out)
    assert os.listdir(out) == ["a"] and (out / "a").read_bytes() == b"mine"
    with pytest.raises(RestoreError, match="not a directory"):
        restore_snapshot(store, summary.id, out / "a")


UNSAFE: dict[str, list[tuple[str, str, bytes | str | None]]] = {
    "dot-dot": [("../escape", "file", b"x")],
    "absolute": [("/tmp/escape", "file", b"x")],
    "dot-dot inside": [("a", "dir", None), ("a/../../escape", "file", b"x")],
    "dot": [("a", "dir", None), ("a/./b", "file", b"x")],
    "empty component": [("a", "dir", None), ("a//b", "file", b"x")],
    "empty path": [("", "file", b"x")],
    "through a symlink": [("link", "symlink", "OUTSIDE"), ("link/pwned", "file", b"x")],
    "through a file": [("f", "file", b"x"), ("f/g", "file", b"y")],
    "parent not listed": [("missing/child", "file", b"x")],
    "twice": [("d", "dir", None), ("d", "dir", None)],
    "unknown kind": [("dev", "chardev", None)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_restore_refuses_entries_that_could_escape_the_target(store: Store, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [(p, k, str(outside) if d == "OUTSIDE" else d) for p, k, d in UNSAFE[case]]
    sid = commit_entries(store, "evil", entries)
    target = tmp_path / "nested" / "target"
    target.parent.mkdir()
    with pytest.raises(RestoreError, match="nothing was restored"):
        restore_snapshot(store, sid, target)
    assert not target.exists()
    assert os.listdir(outside) == [] and sorted(os.listdir(tmp_path)) == ["nested", "outside", "store"]
    assert os.listdir(target.parent) == []


async def test_restore_verifies_every_chunk(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    patch_file(src / "good.txt", 0, b"good")
    patch_file(src / "z.bin", 0, os.urandom(100_000))
    summary = await snapshot(store, src)
    entry = next(e for e in store.load_entries(summary.id) if e.path == "z.bin")
    loc = store.locate(entry.chunks[0])
    assert loc is not None
    flip_byte(store.pack_path(loc.pack), loc.offset + 5000)
    with pytest.raises(RestoreError, match=r"cannot restore 'z.bin'.*does not match its hash"):
        restore_snapshot(store, summary.id, tmp_path / "out")


def test_restore_of_an_unknown_snapshot(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UnknownSnapshotError):
        restore_snapshot(store, "20261128T170102.123Z-a1b2c3", tmp_path / "out")
    assert not (tmp_path / "out").exists()


async def test_restore_of_paths_inside_the_snapshot(store: Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    build_odd_tree(src)
    summary = await snapshot(store, src)
    stats = restore_snapshot(store, summary.id, out, paths=[os.fsdecode(b"dir \xff/deeper/"), "/text.txt"])
    full = tree_state(src)
    wanted = {k: v for k, v in full.items() if k.startswith(b"dir \xff/deeper") or k == b"text.txt"}
    # The directory leading to the path is restored too (with its mode and mtime), not its other contents.
    wanted[b"dir \xff"] = full[b"dir \xff"]
    assert tree_state(out) == wanted
    assert (stats.files, stats.dirs, stats.symlinks) == (2, 2, 0)
    for bad, code in [("../x", "path_invalid"), ("", "path_invalid"), ("nope", "path_unknown"),
                      ("text.txt/x", "path_unknown")]:
        with pytest.raises(RestoreError) as exc:
            restore_snapshot(store, summary.id, tmp_path / "other", paths=[bad])
        assert exc.value.code == code
    assert not (tmp_path / "other").exists()


async def test_overwrite_replaces_files_and_links_but_never_a_directory(store: Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    patch_file(src / "a.txt", 0, b"from the snapshot")
    os.symlink("a.txt", src / "link")
    (src / "d").mkdir()
    patch_file(src / "d" / "inner", 0, b"inner")
    patch_file(src / "was-file-now-dir", 0, b"x")
    summary = await snapshot(store, src)
    out.mkdir()
    patch_file(out / "a.txt", 0, b"a local version that is longer")
    os.symlink("/etc/passwd", out / "link")
    patch_file(out / "d", 0, b"a file where the snapshot has a directory")
    patch_file(out / "mine.txt", 0, b"kept")
    stats = restore_snapshot(store, summary.id, out, overwrite=True)
    assert stats.files == 3 and (out / "a.txt").read_bytes() == b"from the snapshot"
    assert os.readlink(out / "link") == "a.txt" and (out / "d" / "inner").read_bytes() == b"inner"
    assert (out / "mine.txt").read_bytes() == b"kept"
    # A directory where the snapshot has a file stays: a restore never deletes a directory tree.
    (out / "was-file-now-dir").unlink()
    (out / "was-file-now-dir").mkdir()
    patch_file(out / "was-file-now-dir" / "precious", 0, b"p")
    with pytest.raises(RestoreError) as exc:
        restore_snapshot(store, summary.id, out, overwrite=True)
    assert exc.value.code == "target_conflict"
    assert (out / "was-file-now-dir" / "precious").read_bytes() == b"p"
    assert [p.name for p in out.rglob(".syncsnap-restore-*")] == []


async def test_damaged_data_never_leaves_a_half_written_file_under_its_name(store: Store, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    patch_file(src / "a.txt", 0, b"whole")
    patch_file(src / "b.bin", 0, os.urandom(3 * MiB))
    summary = await snapshot(store, src)
    entry = next(e for e in store.load_entries(summary.id) if e.path == "b.bin")
    loc = store.locate(entry.chunks[2])  # the first two chunks are written before the damage shows
    assert loc is not None
    flip_byte(store.pack_path(loc.pack), loc.offset + 5)
    with pytest.raises(RestoreError) as exc:
        restore_snapshot(store, summary.id, out)
    assert exc.value.code == "data_damaged"
    assert sorted(os.listdir(out)) == ["a.txt"] and (out / "a.txt").read_bytes() == b"whole"


async def test_restore_never_recreates_setuid_setgid_or_sticky_bits(store: Store, tmp_path: Path) -> None:
    """Owners are not restored, so neither are the bits that only mean something with them (as `cp` and
    `tar` without `-p`): a `-rwsr-xr-x nobody` file restored by root must not become a setuid-root program
    whose content another user controlled."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_files(src, {"suid": b"#!/bin/sh\nid\n", "sgid": b"g", "both": b"b", "plain": b"p"})
    (src / "sticky").mkdir()
    modes = {"suid": 0o4755, "sgid": 0o2750, "both": 0o6711, "plain": 0o644, "sticky": 0o1777}
    for name, mode in modes.items():
        if os.geteuid() == 0:
            os.chown(src / name, 65534, 65534)  # nobody: what the trial restored as a setuid-root program
        os.chmod(src / name, mode)
    summary = await snapshot(store, src)
    recorded = {e.path: e.mode for e in store.load_entries(summary.id)}
    assert recorded == modes  # the snapshot keeps what the folder had (diff shows it)
    for overwrite in (False, True):
        restore_snapshot(store, summary.id, out, overwrite=overwrite)
        restored = {name: stat.S_IMODE(os.lstat(out / name).st_mode) for name in modes}
        assert restored == {"suid": 0o755, "sgid": 0o750, "both": 0o711, "plain": 0o644, "sticky": 0o777}
        assert {os.lstat(out / name).st_uid for name in modes} == {os.geteuid()}
        assert (out / "suid").read_bytes() == b"#!/bin/sh\nid\n"


CRAFTED_MODES = {
    "setuid and every type bit": 0o177777,
    "beyond the type bits": 0o1000644,
    "a directory's type on a file": stat.S_IFDIR | 0o644,
    "negative": -1,
    "a string": "0644",
    "a float": 420.0,
    "true": True,
}


@pytest.mark.parametrize("case", sorted(CRAFTED_MODES))
def test_restore_refuses_a_crafted_mode(store: Store, tmp_path: Path, case: str) -> None:
    """A mode is validated like any other input from a snapshot file: the permission bits (0o7777), with
    the type bits of the entry's own kind at most; anything else is damage, and nothing is written."""
    h = hash_bytes(b"x")
    writer = store.begin_write()
    writer.add_chunk(h, b"x")
    writer.finish()
    writer.committed()
    sid = commit_raw(store, "evil", [[["a", "file", 1, T0, CRAFTED_MODES[case], 0, [h]]]])
    target = tmp_path / "target"
    with pytest.raises(RestoreError) as exc:
        restore_snapshot(store, sid, target)
    assert exc.value.code == "snapshot_damaged"
    assert sid in str(exc.value) and "mode" in str(exc.value)
    assert not target.exists()


def test_restore_accepts_the_type_bits_of_the_entry_kind(store: Store, tmp_path: Path) -> None:
    h = hash_bytes(b"x")
    writer = store.begin_write()
    writer.add_chunk(h, b"x")
    writer.finish()
    writer.committed()
    sid = commit_raw(store, "p", [[["d", "dir", 0, T0, stat.S_IFDIR | 0o750, 0, None],
                                   ["d/a", "file", 1, T0, stat.S_IFREG | 0o4640, 0, [h]]]])
    restore_snapshot(store, sid, tmp_path / "out")
    assert stat.S_IMODE(os.lstat(tmp_path / "out" / "d").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(tmp_path / "out" / "d" / "a").st_mode) == 0o640


def test_the_daemons_restore_clears_special_bits_and_refuses_a_crafted_snapshot(short_tmp: Path) -> None:
    """The restore API shares this engine: through a real syncsnapd (curl), a setuid file of `nobody` comes
    back without setuid, and a snapshot with a crafted mode fails `snapshot_damaged` with nothing written."""
    folder = short_tmp / "docs"
    write_files(folder, {"tool": b"#!/bin/sh\nid\n"})
    if os.geteuid() == 0:
        os.chown(folder / "tool", 65534, 65534)
    os.chmod(folder / "tool", 0o4755)
    with Store.open(short_tmp / "store", writable=True) as store:
        chunk = hash_bytes(b"x")
        writer = store.begin_write()
        writer.add_chunk(chunk, b"x")
        writer.finish()
        writer.committed()
        crafted = commit_raw(store, "docs", [[["evil", "file", 1, T0, 0o177777, 0, [chunk]]]])
    d = start_daemon(short_tmp, {"docs": folder})
    try:
        def call(method: str, path: str, body: Any = None) -> Any:
            args = ["-X", method, f"http://localhost{path}"]
            if body is not None:
                args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
            return json.loads(d.curl(*args).stdout)

        def until_done(run: str, path: str) -> Any:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                progress = call("GET", path)
                if progress.get("run") == run and progress["state"] in ("completed", "failed", "cancelled"):
                    return progress
                time.sleep(0.05)
            raise AssertionError(f"run {run} did not end")

        run = call("POST", "/api/v1/projects/docs/snapshots")["run"]
        assert until_done(run, "/api/v1/projects/docs/progress")["state"] == "completed"
        run = call("POST", "/api/v1/projects/docs/restore",
                   {"snapshot": "latest", "target": str(short_tmp / "out")})["run"]
        assert until_done(run, f"/api/v1/operations/{run}")["state"] == "completed"
        assert stat.S_IMODE(os.lstat(short_tmp / "out" / "tool").st_mode) == 0o755
        assert (short_tmp / "out" / "tool").read_bytes() == b"#!/bin/sh\nid\n"

        run = call("POST", "/api/v1/projects/docs/restore",
                   {"snapshot": crafted, "target": str(short_tmp / "evil")})["run"]
        final = until_done(run, f"/api/v1/operations/{run}")
        assert (final["state"], final["error"]["code"]) == ("failed", "snapshot_damaged"), final
        assert crafted in final["error"]["message"] and "mode" in final["error"]["message"]
        assert not (short_tmp / "evil").exists()
    finally:
        d.stop()


# --- the target's own mode ---------------------------------------------------------------------------

@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask (and so a subprocess's started meanwhile) is ``mask`` inside the block."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def snapshot_file(store: Path, sid: str) -> Path:
    """The snapshot file ``sid`` of the store directory ``store``."""
    return store / "snapshots" / f"{sid}.json"


def rewrite_snapshot_file(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit a snapshot file's fields and fix its checksum, as an older version or an attacker would write it."""
    doc = json.loads(path.read_bytes())
    del doc["checksum"]
    edit(doc)
    doc["checksum"] = hash_bytes(canonical(doc))
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700),
                                                (0o277, 0o500)])
async def test_without_a_recorded_root_mode_a_created_target_gets_the_mode_mkdir_would_give_it(
        store: Store, tmp_path: Path, mask: int, expected: int) -> None:
    """A snapshot file of an older version (no ``root_mode``): as `mkdir` and `cp -r` create a directory,
    0o777 less the umask. A umask that leaves the owner no write permission still restores everything,
    then applies it."""
    write_files(tmp_path / "src", {"d/a.txt": b"a", "b.txt": b"b"})
    os.chmod(tmp_path / "src", 0o750)
    sid = (await snapshot(store, tmp_path / "src")).id
    assert json.loads(store.files.snapshot_path(sid).read_bytes())["root_mode"] == 0o750
    rewrite_snapshot_file(store.files.snapshot_path(sid), lambda doc: doc.pop("root_mode"))
    assert store.snapshot_root_mode(sid) is None
    with umask(mask):
        restore_snapshot(store, sid, tmp_path / "out")
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == expected
    assert (tmp_path / "out/d/a.txt").read_bytes() == b"a" and (tmp_path / "out/b.txt").read_bytes() == b"b"


@pytest.mark.parametrize(("root", "mask"), [(0o750, 0o022), (0o700, 0o022), (0o777, 0o077), (0o500, 0o277),
                                            (0o2755, 0o022), (0o1777, 0o022)])
async def test_a_created_target_gets_the_snapshot_folders_mode(store: Store, tmp_path: Path, root: int,
                                                                mask: int) -> None:
    """The folder's permission bits, whatever the umask (as every restored directory's mode), never
    setgid or sticky; a folder without write permission for its owner still restores everything."""
    write_files(tmp_path / "src", {"d/a.txt": b"a", "b.txt": b"b"})
    os.chmod(tmp_path / "src", root)
    sid = (await snapshot(store, tmp_path / "src")).id
    with umask(mask):
        restore_snapshot(store, sid, tmp_path / "out")
        restore_snapshot(store, sid, tmp_path / "part", paths=["d/a.txt"])
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == root & 0o777
    assert stat.S_IMODE(os.stat(tmp_path / "part").st_mode) == root & 0o777
    assert (tmp_path / "out/d/a.txt").read_bytes() == b"a" and (tmp_path / "out/b.txt").read_bytes() == b"b"
    assert (tmp_path / "part/d/a.txt").read_bytes() == b"a" and not (tmp_path / "part/b.txt").exists()


@pytest.mark.parametrize("overwrite", [False, True])
async def test_an_existing_target_keeps_its_mode(store: Store, tmp_path: Path, overwrite: bool) -> None:
    """Empty, or (with overwrite) holding files: its mode is the user's, as `cp -r` leaves it."""
    write_files(tmp_path / "src", {"a.txt": b"a"})
    os.chmod(tmp_path / "src", 0o750)
    sid = (await snapshot(store, tmp_path / "src")).id
    (tmp_path / "out").mkdir()
    if overwrite:
        (tmp_path / "out" / "mine.txt").write_bytes(b"mine")
    os.chmod(tmp_path / "out", 0o711)
    restore_snapshot(store, sid, tmp_path / "out", overwrite=overwrite)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o711
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("bad", [0o4750, 0o2750, 0o1777, 0o7777, 0o10000, -1, 2**64, "0750", True, 488.0, None])
async def test_a_tampered_root_mode_is_refused_as_damaged(store: Store, tmp_path: Path, bad: Any) -> None:
    """A recorded root mode holds permission bits only: setuid, setgid, sticky, out of range or not an
    integer is a damaged snapshot file (checksum fixed, as someone able to write the store could), and
    nothing is written."""
    write_files(tmp_path / "src", {"a.txt": b"a"})
    sid = (await snapshot(store, tmp_path / "src")).id
    rewrite_snapshot_file(store.files.snapshot_path(sid), lambda doc: doc.update(root_mode=bad))
    with pytest.raises(RestoreError) as exc:
        restore_snapshot(store, sid, tmp_path / "out")
    assert exc.value.code == "snapshot_damaged"
    assert sid in str(exc.value) and "root_mode" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_the_daemons_and_the_offline_restore_give_a_new_target_the_folders_mode(short_tmp: Path) -> None:
    """Through a real syncsnapd (curl) started under umask 022, as from a login shell: snapshots of a
    0750 and a 0700 folder restore into new targets 0750 and 0700 (not 0755), by the API and by the
    offline `syncsnapd restore`; a snapshot file whose root mode was made setuid (checksum fixed) fails
    `snapshot_damaged` with nothing written."""
    folders = {"open": short_tmp / "open", "private": short_tmp / "private"}
    for name, folder in folders.items():
        write_files(folder, {"a.txt": name.encode()})
    os.chmod(folders["open"], 0o750)
    os.chmod(folders["private"], 0o700)
    with umask(0o022):
        d = start_daemon(short_tmp, folders)  # the daemon inherits the umask

        def ended(path: str, run: str) -> Any:
            """The terminal progress of ``run`` at ``path``, waited for."""
            def answer() -> Any:
                p = api(d, path)
                return p if p.get("run") == run and p["state"] in ("completed", "failed", "cancelled") else None
            return wait_until(answer, 60, f"the end of run {run}")

        try:
            ids = {}
            for project in folders:
                run = api(d, f"/projects/{project}/snapshots", "POST")["run"]
                assert ended(f"/projects/{project}/progress", run)["state"] == "completed"
                ids[project] = api(d, f"/projects/{project}/snapshots")["snapshots"][-1]["id"]
            for project in folders:
                run = api(d, f"/projects/{project}/restore", "POST",
                          {"snapshot": "latest", "target": str(short_tmp / f"api-{project}")})["run"]
                final = ended(f"/operations/{run}", run)
                assert final["state"] == "completed", final
            assert stat.S_IMODE(os.stat(short_tmp / "api-open").st_mode) == 0o750
            assert stat.S_IMODE(os.stat(short_tmp / "api-private").st_mode) == 0o700
            tampered = ids["open"]
            before = snapshot_file(short_tmp / "store", tampered).read_bytes()
            rewrite_snapshot_file(snapshot_file(short_tmp / "store", tampered),
                                  lambda doc: doc.update(root_mode=0o4750))
            run = api(d, "/projects/open/restore", "POST",
                      {"snapshot": tampered, "target": str(short_tmp / "evil")})["run"]
            final = ended(f"/operations/{run}", run)
            assert (final["state"], final["error"]["code"]) == ("failed", "snapshot_damaged"), final
            assert "root_mode" in final["error"]["message"]
            assert not (short_tmp / "evil").exists()
            snapshot_file(short_tmp / "store", tampered).write_bytes(before)
        finally:
            d.stop()
        for project in folders:
            offline = subprocess.run(
                [sys.executable, "-m", "syncsnapd", "--config", str(d.config), "restore", ids[project],
                 str(short_tmp / f"offline-{project}")], env=make_env(short_tmp), capture_output=True, text=True,
                timeout=60)
            assert offline.returncode == 0, offline.stdout + offline.stderr
    assert stat.S_IMODE(os.stat(short_tmp / "offline-open").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(short_tmp / "offline-private").st_mode) == 0o700
    for how in ("api", "offline"):
        assert (short_tmp / f"{how}-open" / "a.txt").read_bytes() == b"open"
        assert (short_tmp / f"{how}-private" / "a.txt").read_bytes() == b"private"
