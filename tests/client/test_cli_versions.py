"""``syncsnap versions`` and ``syncsnap find`` through the console script, and the library's ``versions`` /
``find``, against a real daemon: the issue's six snapshots as a user reads them."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from helpers.client import cli
from helpers.daemon import DaemonProcess
from syncsnap import Client

RAW = b"caf\xe9.txt"


def snapshot(d: DaemonProcess) -> str:
    r = cli(d, "snapshot", "docs", "--follow", "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout.splitlines()[-1])["snapshot"]["id"])


def local(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def six_snapshots(d: DaemonProcess, docs: Path) -> list[str]:
    """``a.txt``: v1; v2 (changed); v2; v3 (changed); deleted; re-created (v4)."""
    snaps = []
    for content in (b"v1", b"v2 longer", None, b"version three", b"", b"four again!"):
        if content == b"":
            (docs / "a.txt").unlink()
        elif content is not None:
            (docs / "a.txt").write_bytes(content)
        snaps.append(snapshot(d))
    return snaps


def test_versions_table_newest_first_and_json(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub/b.txt").write_bytes(b"b")
    with open(os.path.join(os.fsencode(docs), RAW), "wb") as f:
        f.write(b"raw")
    d = daemon_factory({"docs": docs})
    s = six_snapshots(d, docs)
    doc = json.loads(cli(d, "versions", "docs", "a.txt", "--json").stdout)
    times = {v["first_snapshot"]["id"]: v["first_snapshot"]["time"] for v in doc["versions"]}
    times.update({v["last_snapshot"]["id"]: v["last_snapshot"]["time"] for v in doc["versions"]})
    cids = [v["content_id"] for v in doc["versions"]]

    r = cli(d, "versions", "docs", "a.txt")
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert r.stdout.splitlines()[0] == "a.txt (file): 5 versions"
    assert lines[1] == ["FIRST", "SEEN", "LAST", "SEEN", "SIZE", "VERSION", "SNAPSHOTS"]
    expected = [(s[5], s[5], ["11", "B"], cids[0][:12], "1"), (s[4], s[4], ["deleted"], "-", "1"),
                (s[3], s[3], ["13", "B"], cids[2][:12], "1"), (s[1], s[2], ["9", "B"], cids[3][:12], "2"),
                (s[0], s[0], ["2", "B"], cids[4][:12], "1")]
    for line, (first, last, size, cid, count) in zip(lines[2:7], expected, strict=True):
        assert line == [*local(times[first]).split(), *local(times[last]).split(), *size, cid, count]
    assert r.stdout.splitlines()[7] == "(6 snapshots of docs looked at)"

    # An absolute path inside the project's folder is taken relative to it.
    assert json.loads(cli(d, "versions", "docs", str(docs / "a.txt"), "--json").stdout) == doc

    r = cli(d, "versions", "docs", "sub")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["sub (directory): 1 entry to depth 1, 6 snapshots looked at",
                                         "  sub/b.txt (file): 1 version"]
    r = cli(d, "versions", "docs", ".", "--depth", "2", "--json")
    assert [e["path"] for e in json.loads(r.stdout)["entries"]] == ["a.txt", "caf\udce9.txt", "sub", "sub/b.txt"]

    # An undecodable name given on the command line travels as its bytes.
    r = cli(d, "versions", "docs", os.fsdecode(RAW))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "caf\\xe9.txt (file): 1 version"

    # The library, blocking.
    with Client(socket=d.socket) as client:
        assert client.versions("docs", "a.txt") == doc
        found = client.find("docs", "*.txt", limit=1)
        assert [m["path"] for m in found["matches"]] == ["a.txt"] and found["truncated"] is True


def test_versions_errors_say_what_is_wrong(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    docs.mkdir()
    (docs / "a.txt").write_bytes(b"a")
    d = daemon_factory({"docs": docs})
    snapshot(d)
    r = cli(d, "versions", "docs", "nothing.txt")
    assert r.returncode == 2 and "nothing.txt" in r.stderr and r.stdout == ""
    r = cli(d, "versions", "docs", "../etc/passwd")
    assert r.returncode == 2 and "'..'" in r.stderr
    r = cli(d, "versions", "docs", "/etc/passwd")  # outside the project's folder
    assert r.returncode == 2 and "relative" in r.stderr
    r = cli(d, "versions", "nope", "a.txt")
    assert r.returncode == 2 and "nope" in r.stderr
    r = cli(d, "versions", "docs", "a.txt", "--depth", "0")
    assert r.returncode == 2 and "--depth" in r.stderr
    r = cli(d, "find", "docs", "a", "--since", "yesterday")
    assert r.returncode == 2 and "ISO 8601" in r.stderr


def test_find_over_forty_snapshots_grouped_by_version(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    docs.mkdir()
    (docs / "keep.log").write_bytes(b"same")
    d = daemon_factory({"docs": docs})
    snaps = []
    for i in range(40):
        (docs / "notes.txt").write_bytes(b"notes %d" % (i // 10))  # 4 versions, 10 snapshots each
        (docs / f"day{i:02d}.txt").write_bytes(b"day")  # a new file in each snapshot
        snaps.append(snapshot(d))
    doc = json.loads(cli(d, "find", "docs", "notes", "--json").stdout)
    [m] = doc["matches"]
    assert [(v["first_snapshot"]["id"], v["last_snapshot"]["id"], v["count"]) for v in m["versions"]] == [
        (snaps[30], snaps[39], 10), (snaps[20], snaps[29], 10), (snaps[10], snaps[19], 10), (snaps[0], snaps[9], 10)]
    doc = json.loads(cli(d, "find", "docs", "day3?.txt", "--json").stdout)
    assert [m["path"] for m in doc["matches"]] == [f"day{i}.txt" for i in range(30, 40)]
    assert all(len(m["versions"]) == 1 for m in doc["matches"])
    since = json.loads(cli(d, "versions", "docs", "notes.txt", "--json").stdout)["versions"][0]["first_snapshot"]["time"]
    doc = json.loads(cli(d, "find", "docs", "*.log", "--since", since, "--json").stdout)
    [m] = doc["matches"]
    assert m["versions"][0]["first_snapshot"]["id"] >= snaps[30] and m["versions"][0]["last_snapshot"]["id"] == snaps[39]
    r = cli(d, "find", "docs", "notes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "1 path matching 'notes' in 40 snapshots of docs"
    assert r.stdout.splitlines()[1] == "  notes.txt (file): 4 versions"
