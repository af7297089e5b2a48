"""Living with a mount: new snapshots appear, writes are refused, Ctrl-C and ``fusermount3 -u`` unmount,
a mount left by a killed process is recognised, and a bad mount point is refused in a sentence."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.daemon import make_env, wait_until
from helpers.mount import is_mounted, snapshot, syncsnapd, write_config
from syncsnapd.store import SnapshotInfo


def info(sid: str, time_: str) -> SnapshotInfo:
    return SnapshotInfo(sid, "p", time_, 0, 0, 0, 0, 0, 0, 0.0, 0)


def test_by_date_names_are_the_minute_then_seconds_then_a_suffix() -> None:
    from syncsnapd.mount._catalog import date_names

    names = date_names([info("20261201T140527.000Z-c", "2026-12-01T14:05:27Z"),
                        info("20261201T140301.000Z-a", "2026-12-01T14:03:01Z"),
                        info("20261201T140359.000Z-b", "2026-12-01T14:03:59Z"),
                        info("20261201T140359.500Z-d", "2026-12-01T14:03:59Z")])
    assert names == {"2026-12-01T14:03": "20261201T140301.000Z-a", "2026-12-01T14:03:59": "20261201T140359.000Z-b",
                     "2026-12-01T14:03:59-2": "20261201T140359.500Z-d", "2026-12-01T14:05": "20261201T140527.000Z-c"}


def test_a_new_snapshot_appears_without_remounting(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"one")
    first = snapshot(short_tmp / "store", src)
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    project = m.dir / "p"
    assert sorted(os.listdir(project)) == sorted([first, "latest", "by-date"])
    assert os.readlink(project / "latest") == first

    (src / "f.txt").write_bytes(b"two")
    second = snapshot(short_tmp / "store", src)
    wait_until(lambda: second in os.listdir(project), 15, "the new snapshot in the listing")
    wait_until(lambda: os.readlink(project / "latest") == second, 15, "latest to point at the new snapshot")
    assert (project / "latest" / "f.txt").read_bytes() == b"two"
    assert (project / first / "f.txt").read_bytes() == b"one"
    dates = os.listdir(project / "by-date")
    assert len(dates) == 2
    assert sorted(os.readlink(project / "by-date" / d) for d in dates) == sorted([f"../{first}", f"../{second}"])
    assert {(project / "by-date" / d / "f.txt").read_bytes() for d in dates} == {b"one", b"two"}


def test_every_write_gives_erofs(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    (src / "d").mkdir(parents=True)
    (src / "f.txt").write_bytes(b"keep")
    sid = snapshot(short_tmp / "store", src)
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    snap = m.dir / "p" / sid
    attempts = {
        "open for write": lambda: open(snap / "f.txt", "r+b"),
        "open to append": lambda: open(snap / "f.txt", "ab"),
        "create": lambda: open(snap / "new.txt", "wb"),
        "mkdir": lambda: os.mkdir(snap / "newdir"),
        "mkdir at the top": lambda: os.mkdir(m.dir / "newproject"),
        "touch": lambda: os.utime(snap / "f.txt"),
        "rm": lambda: os.unlink(snap / "f.txt"),
        "rmdir": lambda: os.rmdir(snap / "d"),
        "rm latest": lambda: os.unlink(m.dir / "p/latest"),
        "rename": lambda: os.rename(snap / "f.txt", snap / "g.txt"),
        "symlink": lambda: os.symlink("x", snap / "link"),
        "chmod": lambda: os.chmod(snap / "f.txt", 0o777),
        "truncate": lambda: os.truncate(snap / "f.txt", 0),
        "setxattr": lambda: os.setxattr(snap / "f.txt", "user.x", b"1"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS, what
    for argv in (["touch", str(snap / "f.txt")], ["rm", "-f", str(snap / "f.txt")], ["mkdir", str(snap / "x")]):
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode != 0 and "Read-only file system" in r.stderr, argv
    assert (snap / "f.txt").read_bytes() == b"keep"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "fusermount3 -u"])
def test_ctrl_c_sigterm_or_fusermount_unmount_cleanly(short_tmp: Path, mount_offline: Any, how: str) -> None:
    src = short_tmp / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"x")
    snapshot(short_tmp / "store", src)
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    assert "fusermount3 -u" in wait_until(lambda: "Unmount with" in m.output() and m.output(), 10, "the hint")
    if how == "fusermount3 -u":
        assert subprocess.run(["fusermount3", "-u", str(m.dir)], capture_output=True).returncode == 0
        assert m.proc.wait(30) == 0
    else:
        assert m.stop(signal.SIGINT if how == "SIGINT" else signal.SIGTERM) == 0
    assert not is_mounted(m.dir)
    assert m.dir.is_dir() and os.listdir(m.dir) == []  # a plain empty directory again
    assert "Unmounted" in m.output() and "Traceback" not in m.output()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_while_tar_reads_many_small_files_unmounts_at_once(short_tmp: Path, mount_offline: Any,
                                                                    sig: signal.Signals) -> None:
    """Small files are read ahead and handed to the kernel's page cache while ``tar`` reads: a stop in the
    middle of that (the reader still in the mount) unmounts and ends the mount process promptly."""
    src = short_tmp / "src"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(300):
            (src / f"d{d}/f{i:03d}").write_bytes(os.urandom(30_000))
    sid = snapshot(short_tmp / "store", src)
    m = mount_offline(write_config(short_tmp, {"p": src}), short_tmp / "mnt")
    slow_reader = "import sys, time\nwhile sys.stdin.buffer.read(1 << 20): time.sleep(0.02)"  # ~50 MB/s
    tar = subprocess.Popen(["bash", "-c", f"tar -cf - . | {sys.executable} -c '{slow_reader}'"],
                           cwd=m.dir / "p" / sid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: tar.poll() is None and m.proc.poll() is None, 5, "tar reading")
        time.sleep(0.5)
        assert tar.poll() is None, "tar ended before the stop: the test would prove nothing"
        assert m.stop(sig, timeout=30) == 0
        assert not is_mounted(m.dir)
        assert "Unmounted" in m.output() and "Traceback" not in m.output()
    finally:
        tar.kill()
        tar.wait()


def test_a_mount_left_by_a_killed_process_is_recognised(short_tmp: Path, mount_offline: Any) -> None:
    src = short_tmp / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"x")
    snapshot(short_tmp / "store", src)
    config = write_config(short_tmp, {"p": src})
    m = mount_offline(config, short_tmp / "mnt")
    m.proc.kill()
    m.proc.wait()
    with pytest.raises(OSError) as caught:
        os.listdir(m.dir)
    assert caught.value.errno == errno.ENOTCONN
    r = syncsnapd(config, "mount", str(m.dir), env=make_env(short_tmp))
    assert r.returncode == 2
    assert f"fusermount3 -u -z {m.dir}" in r.stderr and "killed" in r.stderr and "Traceback" not in r.stderr
    assert subprocess.run(["fusermount3", "-u", "-z", str(m.dir)], capture_output=True).returncode == 0
    again = mount_offline(config, m.dir)
    assert os.listdir(again.dir) == ["p"]


def test_a_bad_mount_point_is_refused_in_a_sentence(short_tmp: Path) -> None:
    src = short_tmp / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"x")
    snapshot(short_tmp / "store", src)
    config = write_config(short_tmp, {"p": src})
    env = make_env(short_tmp)
    (short_tmp / "full").mkdir()
    (short_tmp / "full/x").write_bytes(b"")
    (short_tmp / "file").write_bytes(b"")
    for target, says in [("missing", "does not exist"), ("full", "not empty"), ("file", "not a directory")]:
        r = syncsnapd(config, "mount", str(short_tmp / target), env=env)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (target, r.stderr)
    assert (short_tmp / "full/x").exists() and (short_tmp / "file").is_file()
    r = syncsnapd(config, "mount", str(short_tmp / "mnt"), "--project", "p", "--bogus", env=env)
    assert r.returncode == 2 and "--bogus" in r.stderr


def test_project_option_shows_only_that_project(short_tmp: Path, mount_offline: Any) -> None:
    for pid in ("p", "q"):
        (short_tmp / pid).mkdir()
        (short_tmp / pid / "f").write_bytes(pid.encode())
        snapshot(short_tmp / "store", short_tmp / pid, pid)
    config = write_config(short_tmp, {"p": short_tmp / "p", "q": short_tmp / "q"})
    m = mount_offline(config, short_tmp / "mnt")
    assert sorted(os.listdir(m.dir)) == ["p", "q"]
    only = mount_offline(config, short_tmp / "mnt2", "--project", "q")
    assert os.listdir(only.dir) == ["q"]
    assert (only.dir / "q/latest/f").read_bytes() == b"q"
    assert not (only.dir / "p").exists()


def test_without_pyfuse3_the_command_says_what_to_install(short_tmp: Path) -> None:
    """pyfuse3 is installed here; a module that fails to import in its place stands for a machine without
    it (a test double of the missing package only)."""
    (short_tmp / "fake").mkdir()
    (short_tmp / "fake/pyfuse3.py").write_text("raise ImportError('No module named pyfuse3')\n")
    (short_tmp / "src").mkdir()
    snapshot(short_tmp / "store", short_tmp / "src")
    (short_tmp / "mnt").mkdir()
    env = make_env(short_tmp)
    env["PYTHONPATH"] = os.pathsep.join([str(short_tmp / "fake"), env.get("PYTHONPATH", "")])
    r = syncsnapd(write_config(short_tmp, {"p": short_tmp / "src"}), "mount", str(short_tmp / "mnt"), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "apt-get install fuse3 libfuse3-dev pkg-config" in r.stderr and "syncsnap[mount]" in r.stderr
