"""Every version of a path and find, against a real syncsnapd with curl as the client (docs/api.md,
"Versions and find"): the issue's six snapshots, odd and undecodable names, symlinks, directories with
a depth, find grouped by version, the cache surviving a restart and a damaged cache file, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers.curl import error_code, fetch, q, snapshot_now
from helpers.daemon import DaemonProcess, spawn_daemon, start_daemon
from helpers.store import flip_byte
from syncsnapd.store import Store, content_id, find_entry, hash_bytes

ODD = "we ird\n'\"name ü.txt"
RAW = b"caf\xe9.txt"
OUT = "../../../etc/passwd"  # a symlink out of the tree: shown as its target, never followed


@dataclass
class Served:
    d: DaemonProcess
    base: Path
    folder: Path
    snaps: list[str] = field(default_factory=list)


def versions(d: DaemonProcess, path: str | bytes, *extra: str) -> tuple[int, Any]:
    r = fetch(d, f"/api/v1/projects/docs/versions?path={q(path)}" + "".join(f"&{e}" for e in extra))
    return r.status, json.loads(r.body)


def cid_of(served: Served, sid: str, path: str) -> str | None:
    with Store.open(served.base / "store", writable=False) as store:
        entry = find_entry(store, sid, path)
        assert entry is not None
        cid: str | None = content_id(entry)
        return cid


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """Six snapshots of a folder: ``a.txt`` is v1, v2 (changed in the 2nd), v2, v3 (changed in the
    4th), deleted in the 5th, re-created in the 6th (v4); an odd name, an undecodable one and a symlink
    change too."""
    base = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    folder = base / "docs"
    (folder / "sub/deep").mkdir(parents=True)
    (folder / "sub/deep/x.txt").write_bytes(b"deep")
    (folder / "sub/y.txt").write_bytes(b"y")
    d = start_daemon(base, {"docs": folder}, tcp="")
    s = Served(d, base, folder)
    try:
        raw = os.path.join(os.fsencode(folder), RAW)
        steps: list[tuple[bytes | str | None, str]] = [(b"v1", "t1"), (b"v2 longer", "t1"), (None, "t2"),
                                                 (b"version three", "t2"), ("del", OUT), (b"four again!", OUT)]
        for i, (content, target) in enumerate(steps):
            a = folder / "a.txt"
            if content == "del":
                a.unlink()
            elif isinstance(content, bytes):
                a.write_bytes(content)
            (folder / ODD).write_bytes(b"odd %d" % (i // 3))
            with open(raw, "wb") as f:
                f.write(b"raw %d" % (i // 2))
            link = folder / "link"
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)
            s.snaps.append(snapshot_now(d, "docs"))
        yield s
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def brief(doc: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    return [(v["kind"], v["first_snapshot"]["id"], v["last_snapshot"]["id"], v["count"]) for v in doc["versions"]]


def test_the_issues_six_snapshots(served: Served) -> None:
    status, doc = versions(served.d, "a.txt")
    assert status == 200, doc
    s = served.snaps
    assert (doc["project"], doc["path"], doc["kind"], doc["snapshots"]) == ("docs", "a.txt", "file", 6)
    assert brief(doc) == [("file", s[5], s[5], 1), ("deleted", s[4], s[4], 1), ("file", s[3], s[3], 1),
                          ("file", s[1], s[2], 2), ("file", s[0], s[0], 1)]
    newest, deleted, *_, oldest = doc["versions"]
    assert newest["content_id"] == cid_of(served, s[5], "a.txt") and len(newest["content_id"]) == 24
    assert (newest["size"], newest["mode"], newest["target"]) == (len(b"four again!"), "0644", None)
    assert newest["mtime"].endswith("Z")
    assert oldest["size"] == 2 and oldest["content_id"] == cid_of(served, s[0], "a.txt")
    assert deleted == {"content_id": None, "kind": "deleted", "size": None, "mtime": None, "mode": None,
                       "target": None, "first_snapshot": deleted["first_snapshot"],
                       "last_snapshot": deleted["last_snapshot"], "count": 1}
    assert deleted["first_snapshot"]["time"].endswith("Z")
    assert len({v["content_id"] for v in doc["versions"]}) == 5


def test_odd_and_undecodable_names_and_symlinks(served: Served) -> None:
    s = served.snaps
    status, doc = versions(served.d, ODD)
    assert status == 200, doc
    assert brief(doc) == [("file", s[3], s[5], 3), ("file", s[0], s[2], 3)]
    r = fetch(served.d, f"/api/v1/projects/docs/versions?path={q(RAW)}")
    assert r.status == 200 and b'"path":"caf\\udce9.txt"' in r.body
    assert brief(json.loads(r.body)) == [("file", s[4], s[5], 2), ("file", s[2], s[3], 2), ("file", s[0], s[1], 2)]
    status, doc = versions(served.d, "link")
    assert doc["kind"] == "symlink"
    assert [(v["kind"], v["target"], v["count"]) for v in doc["versions"]] == [
        ("symlink", OUT, 2), ("symlink", "t2", 2), ("symlink", "t1", 2)]
    assert doc["versions"][0]["size"] == len(OUT) and "root:" not in json.dumps(doc)


def test_a_directory_lists_its_entries_to_the_depth(served: Served) -> None:
    status, doc = versions(served.d, "sub")
    assert status == 200, doc
    assert (doc["kind"], doc["depth"]) == ("dir", 1)
    assert [(e["path"], e["kind"], len(e["versions"])) for e in doc["entries"]] == [
        ("sub/deep", "dir", 1), ("sub/y.txt", "file", 1)]
    status, doc = versions(served.d, "sub", "depth=2")
    assert [e["path"] for e in doc["entries"]] == ["sub/deep", "sub/deep/x.txt", "sub/y.txt"]
    assert doc["entries"][1]["versions"][0]["count"] == 6
    status, doc = versions(served.d, "")
    assert status == 200 and doc["kind"] == "dir"
    assert "a.txt" in [e["path"] for e in doc["entries"]] and "sub/y.txt" not in [e["path"] for e in doc["entries"]]


def test_find_groups_by_version_and_since(served: Served) -> None:
    s = served.snaps
    r = fetch(served.d, "/api/v1/projects/docs/find?pattern=a.txt")
    assert r.status == 200, r.body
    doc = json.loads(r.body)
    assert [m["path"] for m in doc["matches"]] == ["a.txt"] and doc["truncated"] is False
    assert len(doc["matches"][0]["versions"]) == 5
    doc = json.loads(fetch(served.d, "/api/v1/projects/docs/find?pattern=*.txt").body)
    assert [m["path"] for m in doc["matches"]] == sorted(["a.txt", "caf\udce9.txt", "sub/deep/x.txt", "sub/y.txt", ODD])
    doc = json.loads(fetch(served.d, "/api/v1/projects/docs/find?pattern=*.txt&limit=2").body)
    assert len(doc["matches"]) == 2 and doc["truncated"] is True
    with Store.open(served.base / "store", writable=False) as store:
        times = {i.id: i.time for i in store.list_snapshots("docs")}
    doc = json.loads(fetch(served.d, f"/api/v1/projects/docs/find?pattern=a.txt&since={times[s[4]]}").body)
    assert doc["snapshots"] == 2
    assert brief(doc["matches"][0]) == [("file", s[5], s[5], 1), ("deleted", s[4], s[4], 1)]


@pytest.mark.parametrize(("query", "code", "status"), [
    ("path=../etc/passwd", "path_invalid", 400),
    ("path=/etc/passwd", "path_invalid", 400),
    ("path=a/./b", "path_invalid", 400),
    ("path=a.txt&depth=0", "bad_request", 400),
    ("path=a.txt&depth=65", "bad_request", 400),
    ("path=a.txt&depth=99999999999999999999999", "bad_request", 400),
    ("path=a.txt&depth=x", "bad_request", 400),
    ("path=nowhere.txt", "path_unknown", 404),
])
def test_bad_input_is_a_clear_4xx(served: Served, query: str, code: str, status: int) -> None:
    r = fetch(served.d, f"/api/v1/projects/docs/versions?{query}")
    assert (r.status, error_code(r)) == (status, code), r.body
    assert json.loads(r.body)["error"]["message"]


@pytest.mark.parametrize(("query", "code"), [
    ("pattern=", "bad_request"), ("pattern=a&since=yesterday", "bad_request"), ("pattern=a&limit=0", "bad_request"),
    ("pattern=a&limit=1000001", "bad_request"),
])
def test_bad_find_input(served: Served, query: str, code: str) -> None:
    r = fetch(served.d, f"/api/v1/projects/docs/find?{query}")
    assert (r.status, error_code(r)) == (400, code), r.body


def test_unknown_project(served: Served) -> None:
    for url in ("/api/v1/projects/nope/versions?path=a.txt", "/api/v1/projects/nope/find?pattern=a"):
        r = fetch(served.d, url)
        assert (r.status, error_code(r)) == (404, "not_found"), r.body


def test_a_restarted_daemon_answers_from_its_cache_file_and_rebuilds_a_damaged_one(short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"one")
    d = start_daemon(short_tmp, {"docs": folder}, tcp="")
    try:
        first = snapshot_now(d, "docs")
        (folder / "a.txt").write_bytes(b"two!")
        snapshot_now(d, "docs")
        status, before = versions(d, "a.txt")
        assert status == 200 and [v["size"] for v in before["versions"]] == [4, 3]
    finally:
        assert d.stop() == 0
    cache = short_tmp / "store" / "cache" / "versions.json"
    raw = cache.read_bytes()
    # A cache file that says something else, with a matching hash: what the next daemon answers from
    # shows that it read this file instead of the snapshots' trees.
    body = json.loads(raw.partition(b"\n")[2])
    for rec in body["records"]:
        if rec[0] == "a.txt" and rec[2] == 3:
            rec[2] = 333
    text = json.dumps(body, separators=(",", ":")).encode()
    cache.write_bytes(b"syncsnap-versions 1 " + hash_bytes(text).encode() + b"\n" + text)
    d = spawn_daemon(short_tmp, d.config)
    try:
        status, doc = versions(d, "a.txt")
        assert [v["size"] for v in doc["versions"]] == [4, 333]
    finally:
        assert d.stop() == 0
    cache.write_bytes(raw[: len(raw) - 10])  # cut short (a disk that lost its end): not trusted
    d = spawn_daemon(short_tmp, d.config)
    try:
        status, doc = versions(d, "a.txt")
        assert doc == before and doc["versions"][1]["first_snapshot"]["id"] == first
        assert cache.read_bytes() == raw  # rebuilt and written again
    finally:
        assert d.stop() == 0


def test_a_snapshot_whose_list_of_files_is_damaged_is_left_out_and_named(short_tmp: Path) -> None:
    """One damaged snapshot does not take the endpoints down: its files are neither versions nor deletions,
    and the answers name it (`syncsnapd check` says what is damaged)."""
    folder = short_tmp / "docs"
    folder.mkdir()
    d = start_daemon(short_tmp, {"docs": folder}, tcp="")
    try:
        snaps = []
        for content in (b"one", b"two!", b"three"):
            (folder / "a.txt").write_bytes(content)
            snaps.append(snapshot_now(d, "docs"))
    finally:
        assert d.stop() == 0
    with Store.open(short_tmp / "store", writable=False) as store:
        trees = [store.catalog.read(sid).tree for sid in snaps]
        [group] = [h for h in trees[1] if h not in trees[0] and h not in trees[2]][:1]
        loc = store.locate(group)
        assert loc is not None
    flip_byte(short_tmp / "store" / "packs" / loc.pack[:2] / f"{loc.pack}.pack", loc.offset + loc.length // 2)
    d = spawn_daemon(short_tmp, d.config)
    try:
        status, doc = versions(d, "a.txt")
        assert status == 200, doc
        assert doc["damaged_snapshots"] == [snaps[1]] and doc["snapshots"] == 2
        assert [(v["kind"], v["size"], v["first_snapshot"]["id"]) for v in doc["versions"]] == [
            ("file", 5, snaps[2]), ("file", 3, snaps[0])]
        r = fetch(d, "/api/v1/projects/docs/find?pattern=a.txt")
        assert r.status == 200 and json.loads(r.body)["damaged_snapshots"] == [snaps[1]]
    finally:
        assert d.stop() == 0


def test_a_project_whose_store_changed_has_its_versions_in_both_stores(short_tmp: Path) -> None:
    """Snapshots before the project's ``store =`` changed stay in the daemon's store: the versions walk
    both, each store with its own cache."""
    folder = short_tmp / "docs"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"one")
    d = start_daemon(short_tmp, {"docs": folder}, tcp="")
    try:
        s1 = snapshot_now(d, "docs")
    finally:
        assert d.stop() == 0
    own = short_tmp / "own-store"
    cfg = d.config.read_text().replace(f'path = "{folder}"', f'path = "{folder}"\nstore = "{own}"')
    d.config.write_text(cfg)
    (folder / "a.txt").write_bytes(b"two!")
    d = spawn_daemon(short_tmp, d.config)
    try:
        s2 = snapshot_now(d, "docs")
        status, doc = versions(d, "a.txt")
        assert status == 200, doc
        assert brief(doc) == [("file", s2, s2, 1), ("file", s1, s1, 1)]
    finally:
        assert d.stop() == 0
    assert (short_tmp / "store" / "cache" / "versions.json").is_file()
    assert (own / "cache" / "versions.json").is_file()
