"""``syncsnap restore --version`` and ``syncsnap cat`` through the console script, and the library's file
stream, against a real daemon: what a user reads, what lands on disk, the exit codes (issue 13, item 2)."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import syncsnap
from helpers.client import SYNCSNAP, cli
from helpers.daemon import DaemonProcess

MiB = 1 << 20


def stamp(snapshot_id: str) -> str:
    i = snapshot_id
    utc = datetime.fromisoformat(f"{i[:4]}-{i[4:6]}-{i[6:8]}T{i[9:11]}:{i[11:13]}:{i[13:15]}+00:00")
    return utc.astimezone().strftime("%Y-%m-%d %H.%M")


def two_versions(daemon_factory: Any, base: Path) -> tuple[DaemonProcess, Path, list[str]]:
    """``docs/a.txt`` in two versions, one snapshot each; a binary file of several chunks, a directory, a
    symlink and an undecodable name beside it."""
    docs = base / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_bytes(b"version one\n")
    (docs / "big.bin").write_bytes(random.Random(5).randbytes(5 * MiB + 17))
    os.symlink("a.txt", docs / "link")
    with open(os.path.join(os.fsencode(docs), b"caf\xe9.txt"), "wb") as f:
        f.write(b"\xff\xfe undecodable")
    d = daemon_factory({"docs": docs})
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    (docs / "a.txt").write_bytes(b"version two, longer\n")
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    snaps = [s["id"] for s in json.loads(cli(d, "snapshots", "docs", "--json").stdout)["snapshots"]]
    return d, docs, snaps


def test_restore_one_version_next_to_the_live_file_then_to_a_dir_and_a_file(daemon_factory: Any,
                                                                            short_tmp: Path) -> None:
    d, docs, (first, second) = two_versions(daemon_factory, short_tmp)
    live = (docs / "a.txt").stat()
    r = cli(d, "restore", "docs", "--version", first, "--path", "a.txt")
    assert r.returncode == 0, r.stderr
    copy = docs / f"a (syncsnap {stamp(first)}).txt"
    assert r.stdout.startswith("Restored a.txt (version ") and r.stdout.endswith(f"of snapshot {first}) to {copy}\n")
    assert copy.read_bytes() == b"version one\n"
    assert (docs / "a.txt").read_bytes() == b"version two, longer\n"
    assert (docs / "a.txt").stat().st_ino == live.st_ino and (docs / "a.txt").stat().st_mtime_ns == live.st_mtime_ns
    # Again: a numbered name, never over the first copy.
    r = cli(d, "restore", "docs", "--version", first, "--path", "a.txt", "--json")
    doc = json.loads(r.stdout)
    assert doc["restored_to"] == str(docs / f"a (syncsnap {stamp(first)} 2).txt")

    # By content id prefix, to a directory, then over what is there only with --overwrite.
    out = short_tmp / "out"
    out.mkdir()
    prefix = doc["content_id"][:10]
    assert cli(d, "restore", "docs", "--version", prefix, "--path", "a.txt", "--to", str(out)).returncode == 0
    assert (out / "a.txt").read_bytes() == b"version one\n"
    r = cli(d, "restore", "docs", "--version", second, "--path", "a.txt", "--to", str(out))
    assert r.returncode == 1 and "--overwrite" in r.stderr, r.stderr
    assert (out / "a.txt").read_bytes() == b"version one\n"
    r = cli(d, "restore", "docs", "--version", "latest", "--path", "a.txt", "--to", str(out), "--overwrite")
    assert r.returncode == 0 and (out / "a.txt").read_bytes() == b"version two, longer\n"
    # --to a file name, relative to where the command runs.
    r = cli(d, "restore", "docs", "--version", first, "--path", "a.txt", "--to", "named.txt", cwd=out)
    assert r.returncode == 0 and r.stdout.endswith(f"to {out / 'named.txt'}\n")
    assert (out / "named.txt").read_bytes() == b"version one\n"

    r = cli(d, "restore", "docs", "--version", "00000000", "--path", "a.txt")
    assert r.returncode == 1 and "no snapshot of the project holds a version '00000000'" in r.stderr, r.stderr
    r = cli(d, "restore", "docs", "--version", "latest", "--path", "../a.txt")
    assert r.returncode in (1, 2) and "path" in r.stderr


def test_restore_usage_errors_and_the_old_form(daemon_factory: Any, short_tmp: Path) -> None:
    d, docs, (first, _) = two_versions(daemon_factory, short_tmp)
    for args in (["--version", "latest"], ["latest"], ["--version", "latest", "--path", "a.txt", "--follow"],
                 ["latest", "t", "--to", "x"], ["--version", "latest", "--path", "a", "--path", "b"]):
        r = cli(d, "restore", "docs", *args)
        assert r.returncode == 2 and "restore" in r.stderr, (args, r.stderr)
    r = cli(d, "restore", "docs", first, str(short_tmp / "old"), "--path", "a.txt", "--follow")
    assert r.returncode == 0, r.stderr
    assert (short_tmp / "old" / "a.txt").read_bytes() == b"version one\n"


def test_cat_streams_a_multi_chunk_binary_file_through_a_pipe(daemon_factory: Any, short_tmp: Path) -> None:
    d, docs, _ = two_versions(daemon_factory, short_tmp)
    out = short_tmp / "piped.bin"
    with open(out, "wb") as sink:
        reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sink)
        assert reader.stdin is not None
        writer = subprocess.run([SYNCSNAP, "cat", "docs", "latest", "big.bin"], env=d.env, stdout=reader.stdin,
                                stderr=subprocess.PIPE, timeout=60)
        reader.stdin.close()
        assert reader.wait(30) == 0
    assert writer.returncode == 0, writer.stderr
    assert out.read_bytes() == (docs / "big.bin").read_bytes()
    # Undecodable names and odd ones are files like others.
    r = subprocess.run([SYNCSNAP, "cat", "docs", "latest", os.fsdecode(b"caf\xe9.txt")], env=d.env,
                       capture_output=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, b"\xff\xfe undecodable")


def test_cat_into_a_reader_that_goes_away_stops_quietly(daemon_factory: Any, short_tmp: Path) -> None:
    d, _, _ = two_versions(daemon_factory, short_tmp)
    r = subprocess.run(f"'{SYNCSNAP}' cat docs latest big.bin | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", env=d.env, capture_output=True, text=True, timeout=60)
    assert (r.stdout.strip(), r.stderr) == ("141", "")


def test_cat_refuses_a_missing_path_a_directory_and_a_symlink_clearly(daemon_factory: Any, short_tmp: Path) -> None:
    d, _, _ = two_versions(daemon_factory, short_tmp)
    for path, says in (("nope.txt", "has no file 'nope.txt'"), ("sub", "'sub' is a directory"),
                       ("link", "'link' is a symlink")):
        r = cli(d, "cat", "docs", "latest", path)
        assert (r.returncode, r.stdout) == (1, ""), r
        assert says in r.stderr, r.stderr
    r = cli(d, "cat", "docs", "20200101T000000.000Z-000000000000", "a.txt")
    assert r.returncode == 1 and "no snapshot" in r.stderr


def test_the_library_streams_a_file_and_restores_a_version(daemon_factory: Any, short_tmp: Path) -> None:
    d, docs, (first, _) = two_versions(daemon_factory, short_tmp)
    with syncsnap.Client(socket=d.socket) as c:
        buf = io.BytesIO()
        assert c.download_file("docs", "latest", "big.bin", buf) == 5 * MiB + 17
        assert buf.getvalue() == (docs / "big.bin").read_bytes()
        doc = c.restore_version("docs", "a.txt", first, to=short_tmp / "lib.txt")
        assert doc["restored_to"] == str(short_tmp / "lib.txt")
    assert (short_tmp / "lib.txt").read_bytes() == b"version one\n"
