"""What a mounted snapshot shows: the tree as it was, byte for byte, with modes, mtimes and symlinks, read
from a real FUSE mount served by ``syncsnapd mount`` in a subprocess."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.mount import snapshot, write_config
from helpers.store import commit_entries, commit_raw, flip_byte
from syncsnapd.store import Store

MIB = 1 << 20
BAD = b"caf\xe9 \xff"  # not UTF-8


def hostile_tree(root: Path) -> None:
    """Nested dirs with odd modes and mtimes, a file over several chunks, an empty file, names with spaces,
    newlines, quotes and bytes that are not UTF-8, and symlinks: inside, absolute out of the tree, with
    ``..`` out of it, dangling."""
    (root / "a/b/c").mkdir(parents=True)
    (root / "a/b/c/deep.txt").write_bytes(b"deep\n")
    (root / "big.bin").write_bytes(os.urandom(9 * MIB + 12345))  # several content-defined chunks
    (root / "empty").write_bytes(b"")
    (root / "name with spaces 'and' \"quotes\"").write_bytes(b"q")
    (root / "new\nline").write_bytes(b"n")
    (root / "ü.txt").write_bytes("ü".encode())
    os.mkdir(os.path.join(os.fsencode(root), BAD))
    with open(os.path.join(os.fsencode(root), BAD, BAD + b".txt"), "wb") as f:
        f.write(b"bytes")
    (root / "private").write_bytes(b"secret")
    os.chmod(root / "private", 0o600)
    (root / "script.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "script.sh", 0o751)
    os.chmod(root / "a/b", 0o710)
    os.symlink("a/b/c/deep.txt", root / "inside")
    os.symlink("/etc/passwd", root / "absolute")
    os.symlink("../../outside/x", root / "a/up")
    os.symlink("no-such-file", root / "dangling")
    for i, p in enumerate(["big.bin", "empty", "a/b/c/deep.txt", "a/b/c", "a", "private"]):
        os.utime(root / p, ns=(1_700_000_000_123_456_789 + i * 1_000_000_007,) * 2)


def lstat_map(root: Path) -> dict[bytes, tuple[int, int, int, bytes | None]]:
    """relative path (bytes) -> (mode with kind, size of files, mtime in ns, symlink target)."""
    out: dict[bytes, tuple[int, int, int, bytes | None]] = {}
    base = os.fsencode(root)
    for d, dirs, files in os.walk(base):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, base)
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out[rel] = (st.st_mode, size, st.st_mtime_ns, target)
    return out


def test_a_mounted_snapshot_is_the_tree_as_it_was(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    hostile_tree(src)
    copy = short_tmp / "copy"
    shutil.copytree(src, copy, symlinks=True)  # the tree at snapshot time (copy2 keeps modes and mtimes)
    before = lstat_map(src)
    sid = snapshot(short_tmp / "store", src)
    (src / "big.bin").write_bytes(b"changed after the snapshot")
    (src / "later.txt").write_bytes(b"not in the snapshot")

    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    snap = m.dir / "p" / sid
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(copy), str(snap)], capture_output=True)
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, b"", b"")
    assert (m.dir / "p/latest").resolve() == snap.resolve()
    assert os.readlink(m.dir / "p/latest") == sid

    # Every entry: kind, permission bits, size, mtime to the nanosecond, symlink target as stored.
    mounted = lstat_map(snap)
    assert set(mounted) == set(before)
    for rel, (mode, size, mtime, target) in before.items():
        got = mounted[rel]
        assert (got[0], got[1], got[3]) == (mode, size, target), rel
        if not stat.S_ISDIR(mode):
            assert got[2] == mtime, rel
    assert mounted[b"a"][2] == before[b"a"][2]  # a directory's mtime too (its listing was not changed)

    # `ls -l` shows where symlinks point, the out-of-tree ones as stored (never followed by the mount).
    ls = subprocess.run(["ls", "-l", str(snap)], capture_output=True).stdout.decode(errors="replace")
    assert "absolute -> /etc/passwd" in ls and "inside -> a/b/c/deep.txt" in ls and "dangling -> no-such-file" in ls
    assert os.readlink(snap / "a/up") == "../../outside/x"
    # A name that is not UTF-8 comes out as its original bytes.
    assert BAD in os.listdir(os.fsencode(snap))
    assert open(os.path.join(os.fsencode(snap), BAD, BAD + b".txt"), "rb").read() == b"bytes"
    assert "new\nline" in os.listdir(snap)


def test_a_file_over_several_chunks_reads_right_at_any_offset(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    src.mkdir()
    data = os.urandom(9 * MIB + 777)
    (src / "big.bin").write_bytes(data)
    sid = snapshot(short_tmp / "store", src)
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    path = m.dir / "p" / sid / "big.bin"
    with open(path, "rb") as f:
        for offset, length in [(0, 1), (1, 4095), (MIB - 3, 7), (3 * MIB + 1, 2 * MIB + 5), (len(data) - 10, 100),
                               (len(data), 10), (len(data) + 5, 10), (4 * MIB + 333, 1)]:
            f.seek(offset)
            assert f.read(length) == data[offset:offset + length], (offset, length)
    # dd with odd block sizes and skips, as a shell user would cut a piece out.
    out = subprocess.run(["dd", f"if={path}", "bs=1001", "skip=3001", "count=2500", "status=none"],
                         capture_output=True, check=True).stdout
    assert out == data[1001 * 3001:1001 * (3001 + 2500)]
    assert path.read_bytes() == data


def test_a_directory_of_20000_entries_lists_whole(short_tmp: Path, mount_offline: Any) -> None:
    with Store.open(short_tmp / "store", writable=True) as store:
        entries: list[tuple[str, str, bytes | str | None]] = [("many", "dir", None)]
        entries += [(f"many/f{i:05d}", "file", b"x%d" % (i % 7)) for i in range(20000)]
        sid = commit_entries(store, "p", entries)
    m = mount_offline(write_config(short_tmp, {"p": short_tmp}), short_tmp / "mnt")
    names = os.listdir(m.dir / "p" / sid / "many")
    assert len(names) == 20000 and len(set(names)) == 20000
    assert sorted(names) == [f"f{i:05d}" for i in range(20000)]
    assert (m.dir / "p" / sid / "many/f12345").read_bytes() == b"x%d" % (12345 % 7)
    # Inodes are stable while mounted: the same file has the same inode, another file another.
    a = os.lstat(m.dir / "p" / sid / "many/f00001").st_ino
    assert os.lstat(m.dir / "p" / sid / "many/f00001").st_ino == a != os.lstat(m.dir / "p" / sid / "many/f00002").st_ino


def test_a_crafted_snapshot_cannot_name_dot_dot_or_escape(short_tmp: Path, mount_offline: Any) -> None:
    """Entries a store writer could craft (``..``, ``.``, absolute, empty, under a file) are not shown; the
    rest of the snapshot is."""
    def entry(path: str, kind: str = "dir") -> list[Any]:
        return [path, kind, 0, 1_600_000_000_000_000_000, 0o755, 0, [] if kind == "file" else None]

    with Store.open(short_tmp / "store", writable=True) as store:
        sid = commit_raw(store, "p", [[entry("a"), entry("a/.."), entry("a/."), entry("a/ok", "file"),
                                       entry("/etc"), entry("f", "file"), entry("f/under", "file")]])
    m = mount_offline(write_config(short_tmp, {"p": short_tmp}), short_tmp / "mnt")
    snap = m.dir / "p" / sid
    assert sorted(os.listdir(snap)) == ["a", "f"]
    assert os.listdir(snap / "a") == ["ok"]
    assert (snap / "a/ok").read_bytes() == b""
    assert os.path.realpath(snap / "a/..") == str(snap)


def damage_first_chunk(store_dir: Path, sid: str, path: str) -> None:
    """Flip one byte in the stored first chunk of ``path`` in snapshot ``sid``."""
    with Store.open(store_dir, writable=False) as store:
        entry = next(e for e in store.load_entries(sid) if e.path == path)
        loc = store.locate(entry.chunks[0])
        assert loc is not None
        pack = store.pack_path(loc.pack)
    flip_byte(pack, loc.offset + loc.length // 2)


def test_a_damaged_chunk_reads_as_eio_and_the_mount_goes_on(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    src.mkdir()
    (src / "bad.bin").write_bytes(os.urandom(200_000))
    (src / "good.txt").write_bytes(b"fine")
    sid = snapshot(short_tmp / "store", src)
    damage_first_chunk(short_tmp / "store", sid, "bad.bin")
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    snap = m.dir / "p" / sid
    with pytest.raises(OSError) as caught:
        (snap / "bad.bin").read_bytes()
    assert caught.value.errno == errno.EIO
    assert (snap / "good.txt").read_bytes() == b"fine" and m.proc.poll() is None
    assert "does not match its hash" in m.output() or "damaged" in m.output() or "cannot read" in m.output()


def resident_bytes(path: Path) -> int:
    """How much of ``path`` is in the kernel's page cache (util-linux ``fincore``: mmap and mincore, no read)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip() or 0)


def test_opening_a_small_file_reads_the_next_ones_into_the_page_cache(short_tmp: Path, mount_offline: Any) -> None:
    """``tar`` or ``cp -r`` over many small files: opening one reads the files after it in its directory
    ahead, verified, and hands them to the kernel's page cache (FUSE notify_store), so that their reads
    never wait for the store. What the cache holds is the files' bytes."""
    src = short_tmp / "src"
    (src / "d").mkdir(parents=True)
    files = {f"d/f{i:03d}": os.urandom(1000 + 997 * i) for i in range(40)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    sid = snapshot(short_tmp / "store", src)
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    snap = m.dir / "p" / sid
    for name in os.listdir(snap / "d"):  # as tar does: list, lstat each, then open them in that order
        os.lstat(snap / "d" / name)
    assert (snap / "d/f000").read_bytes() == files["d/f000"]
    deadline = time.monotonic() + 20
    while resident_bytes(snap / "d/f020") < len(files["d/f020"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident_bytes(snap / "d/f020") >= len(files["d/f020"]), "f020 was not read ahead"
    for rel, data in files.items():
        assert (snap / rel).read_bytes() == data, rel
        assert os.stat(snap / rel).st_size == len(data)


def test_a_damaged_file_read_ahead_is_not_cached_and_still_reads_as_eio(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first")
    (src / "b.bin").write_bytes(os.urandom(50_000))
    (src / "c.txt").write_bytes(b"third")
    sid = snapshot(short_tmp / "store", src)
    damage_first_chunk(short_tmp / "store", sid, "b.bin")
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    snap = m.dir / "p" / sid
    assert sorted(os.listdir(snap)) == ["a.txt", "b.bin", "c.txt"]
    for name in ("a.txt", "b.bin", "c.txt"):
        os.lstat(snap / name)
    assert (snap / "a.txt").read_bytes() == b"first"  # reads b.bin and c.txt ahead
    deadline = time.monotonic() + 20
    while resident_bytes(snap / "c.txt") < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident_bytes(snap / "c.txt") >= 5, "c.txt was not read ahead"
    assert resident_bytes(snap / "b.bin") == 0
    with pytest.raises(OSError) as caught:
        (snap / "b.bin").read_bytes()
    assert caught.value.errno == errno.EIO
    assert (snap / "c.txt").read_bytes() == b"third" and m.proc.poll() is None
