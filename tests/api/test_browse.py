"""Browsing and downloading from snapshots, the store view and the SSE stream cap, against a real syncsnapd
with curl as the client (docs/api.md, "Browsing and downloading", "Store", "Connection limits")."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.curl import TERMINAL, Reply, SseReader, error_code, fetch, q, snapshot_now
from helpers.daemon import DaemonProcess, make_tree, start_daemon, wait_until
from helpers.store import flip_byte
from syncsnapd.store import Store, find_entry

MiB = 1 << 20
SECRET = b"the secret next to the project folder"


@dataclass
class Served:
    d: DaemonProcess
    folder: Path
    snap: str
    big: bytes


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One daemon with one snapshot of a folder with nested dirs, a symlink, odd and undecodable names and a
    multi-chunk file; a secret file lies next to the folder (never inside it)."""
    base = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    folder = base / "docs"
    make_tree(folder, files=12)
    big = random.Random(7).randbytes(2 * MiB + 123_457)
    (folder / "d1/big.bin").write_bytes(big)
    (folder / "empty").mkdir()
    (folder / "empty.txt").write_bytes(b"")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:
        f.write(b"undecodable")
    (base / "secret.txt").write_bytes(SECRET)
    d = start_daemon(base, {"docs": folder}, tcp="")
    try:
        yield Served(d, folder, snapshot_now(d, "docs"), big)
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


# --- the tree ---------------------------------------------------------------------------------------

def test_tree_at_root_lists_directories_first_then_names(served: Served) -> None:
    r = fetch(served.d, f"/api/v1/projects/docs/snapshots/{served.snap}/tree")
    assert r.status == 200, r.body
    doc = json.loads(r.body)
    assert (doc["snapshot"], doc["project"], doc["path"]) == (served.snap, "docs", "")
    names = [e["name"] for e in doc["entries"]]
    assert names == ["d0", "d1", "d2", "empty", "caf\udce9.txt", "empty.txt", "link", "odd name ü.txt"]
    by_name = {e["name"]: e for e in doc["entries"]}
    assert by_name["link"] == {"name": "link", "path": "link", "kind": "symlink", "size": by_name["link"]["size"],
                               "mode": by_name["link"]["mode"], "mtime": by_name["link"]["mtime"],
                               "target": "d0/sub0/f0.txt"}
    st = os.stat(served.folder / "odd name ü.txt")
    odd = by_name["odd name ü.txt"]
    assert (odd["kind"], odd["size"], odd["mode"], odd["target"]) == ("file", 3, f"{st.st_mode & 0o7777:04o}", None)
    assert odd["mtime"] is not None and odd["mtime"].endswith("Z") and len(odd["mtime"]) == 20
    # The undecodable name travels as a lone surrogate in JSON (\udce9), as everywhere in the API.
    assert b'"caf\\udce9.txt"' in r.body


def test_tree_in_a_subdirectory_and_latest(served: Served) -> None:
    r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/tree?path=d1")
    assert r.status == 200, r.body
    doc = json.loads(r.body)
    assert doc["snapshot"] == served.snap and doc["path"] == "d1"
    assert [(e["name"], e["path"], e["kind"]) for e in doc["entries"]] == [
        ("sub0", "d1/sub0", "dir"), ("sub1", "d1/sub1", "dir"), ("big.bin", "d1/big.bin", "file")]
    assert [e["name"] for e in json.loads(fetch(served.d, "/api/v1/projects/docs/snapshots/latest/tree?"
                                                          "path=d1/sub0").body)["entries"]] == ["f10.txt", "f4.txt"]
    assert json.loads(fetch(served.d, "/api/v1/projects/docs/snapshots/latest/tree?path=empty").body)["entries"] == []


@pytest.mark.parametrize(("url", "status", "code"), [
    ("/api/v1/projects/docs/snapshots/latest/tree?path=nope", 404, "path_unknown"),
    ("/api/v1/projects/docs/snapshots/latest/tree?path=d1/big.bin", 404, "path_unknown"),  # not a directory
    ("/api/v1/projects/docs/snapshots/latest/tree?path=link", 404, "path_unknown"),
    ("/api/v1/projects/docs/snapshots/20200101T000000.000Z-abcdef/tree", 404, "snapshot_unknown"),
    ("/api/v1/projects/docs/snapshots/nonsense/tree", 404, "snapshot_unknown"),
    ("/api/v1/projects/nope/snapshots/latest/tree", 404, "not_found"),
    ("/api/v1/snapshots/latest/files?path=empty.txt", 404, "snapshot_unknown"),  # latest needs a project
    ("/api/v1/projects/docs/snapshots/latest/files?path=nope.txt", 404, "path_unknown"),
    ("/api/v1/projects/docs/snapshots/latest/files?path=d1", 404, "path_unknown"),
    ("/api/v1/projects/docs/snapshots/latest/files", 404, "path_unknown"),
    ("/api/v1/projects/docs/snapshots/latest/files?path=link", 409, "not_a_file"),
])
def test_unknown_snapshots_paths_and_kinds(served: Served, url: str, status: int, code: str) -> None:
    r = fetch(served.d, url)
    assert (r.status, error_code(r)) == (status, code)


@pytest.mark.parametrize("path", [
    "../secret.txt", "..", "d0/../../secret.txt", "./d0", "d0//f0.txt", "d0/", "/etc/passwd",
    str(Path(tempfile.gettempdir()).resolve() / "secret.txt"), "d0\0x",
])
@pytest.mark.parametrize("endpoint", ["tree", "files"])
def test_path_traversal_is_refused_and_leaks_nothing(served: Served, path: str, endpoint: str) -> None:
    # Percent-encoded in the query (curl sends ../ as %2E%2E%2F): the daemon decodes, then refuses.
    r = fetch(served.d, f"/api/v1/projects/docs/snapshots/latest/{endpoint}?path={q(path)}")
    assert (r.status, error_code(r)) == (400, "path_invalid"), r.body
    assert SECRET not in r.body


def test_traversal_in_the_url_path_is_refused_by_the_http_layer(served: Served) -> None:
    for url in ("/api/v1/projects/docs/snapshots/latest/files/../../../secret.txt",
                "/api/v1/projects/docs/snapshots/%2E%2E/files?path=secret.txt",
                "/api/v1/snapshots/..%2F..%2Fsecret.txt/files?path=x"):
        r = fetch(served.d, url, "--path-as-is")
        assert r.status in (400, 404) and SECRET not in r.body, (url, r.status)


# --- downloads --------------------------------------------------------------------------------------

def test_download_of_a_multi_chunk_file_is_exact(served: Served) -> None:
    for url in (f"/api/v1/projects/docs/snapshots/{served.snap}/files?path=d1/big.bin",
                f"/api/v1/snapshots/{served.snap}/files?path=d1%2Fbig.bin"):
        r = fetch(served.d, url)
        assert (r.status, r.curl_exit) == (200, 0)
        assert r.body == served.big
        h = r.headers
        assert h["content-length"] == str(len(served.big)) and h["accept-ranges"] == "bytes"
        assert h["content-type"] == "application/octet-stream"
        assert h["content-disposition"] == "attachment; filename=\"big.bin\"; filename*=UTF-8''big.bin"
        assert h["etag"].startswith('"') and h["x-content-type-options"] == "nosniff"
        assert "sandbox" in h["content-security-policy"]
    assert fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d0/sub0/f0.txt").body == \
        (served.folder / "d0/sub0/f0.txt").read_bytes()
    empty = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=empty.txt")
    assert (empty.status, empty.body, empty.headers["content-length"]) == (200, b"", "0")
    assert empty.headers["content-type"] == "text/plain"


def test_head_answers_the_headers_without_the_body(served: Served) -> None:
    r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d1/big.bin", "-I")
    assert (r.status, r.curl_exit) == (200, 0)
    assert r.headers["content-length"] == str(len(served.big)) and r.headers["accept-ranges"] == "bytes"
    assert len(r.body) < 2000  # curl -I prints the head; no body was sent


@pytest.mark.parametrize(("spec", "first", "last"), [
    ("0-9", 0, 9),                       # first bytes
    ("1048570-1048589", 1048570, 1048589),  # across the first chunk boundary
    ("1500000-1600000", 1500000, 1600000),  # the middle of the second chunk
    ("-10", -10, -1),                    # suffix: the last 10 bytes
    ("2200000-", 2200000, -1),           # from an offset in the last chunk to the end
    ("0-99999999", 0, -1),               # past the end: cut at the end
])
def test_a_single_range_gets_206_with_exactly_those_bytes(served: Served, spec: str, first: int, last: int) -> None:
    size = len(served.big)
    first, last = first % size, last % size
    r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d1/big.bin", "-r", spec)
    assert (r.status, r.curl_exit) == (206, 0)
    assert r.body == served.big[first:last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert r.headers["content-length"] == str(last - first + 1)


def test_ranges_across_every_chunk_boundary_get_exactly_those_bytes(served: Served) -> None:
    # Content-defined chunks differ in size: where a range starts is found from the chunks' lengths.
    with Store.open(served.folder.parent / "store", writable=False) as store:
        entry = find_entry(store, served.snap, "d1/big.bin")
        assert entry is not None
        lengths = [loc.raw_length for loc in map(store.locate, entry.chunks) if loc is not None]
    assert len(lengths) >= 3 and len(set(lengths)) > 1 and sum(lengths) == len(served.big)
    boundary = 0
    for length in lengths[:-1]:
        boundary += length
        for first, last in ((boundary - 3, boundary + 2), (boundary, boundary), (boundary - 1, boundary - 1)):
            r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d1/big.bin", "-r",
                      f"{first}-{last}")
            assert (r.status, r.body) == (206, served.big[first:last + 1])


def test_unsatisfiable_range_gets_416(served: Served) -> None:
    size = len(served.big)
    for spec in (f"{size}-", f"{size + 5}-{size + 9}", "-0"):
        r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d1/big.bin", "-r", spec)
        assert (r.status, error_code(r), r.headers["content-range"]) == (416, "range_unsatisfiable", f"bytes */{size}")
    r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=empty.txt", "-r", "0-")
    assert (r.status, r.headers["content-range"]) == (416, "bytes */0")
    # Several ranges are not supported: ignored, as RFC 9110 allows, so the whole file comes.
    r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d1/big.bin", "-r", "0-1,5-6")
    assert (r.status, r.body) == (200, served.big)


def test_content_disposition_of_odd_and_undecodable_names(served: Served) -> None:
    r = fetch(served.d, f"/api/v1/projects/docs/snapshots/latest/files?path={q('odd name ü.txt')}")
    assert (r.status, r.body) == (200, b"odd")
    assert r.headers["content-disposition"] == \
        "attachment; filename=\"odd name _.txt\"; filename*=UTF-8''odd%20name%20%C3%BC.txt"
    assert r.headers["content-type"] == "text/plain"
    # The name's byte 0xE9 is not UTF-8: asked for by its byte (%E9), the JSON name's \udce9.
    r = fetch(served.d, f"/api/v1/projects/docs/snapshots/latest/files?path={q(b'caf' + bytes([0xE9]) + b'.txt')}")
    assert (r.status, r.body) == (200, b"undecodable")
    assert r.headers["content-disposition"] == \
        "attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%EF%BF%BD.txt"


def test_a_damaged_chunk_mid_download_ends_the_connection_not_with_wrong_bytes(short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    folder.mkdir()
    data = random.Random(3).randbytes(3 * MiB)
    (folder / "big.bin").write_bytes(data)
    d = start_daemon(short_tmp, {"docs": folder}, tcp="")
    try:
        sid = snapshot_now(d, "docs")
        with Store.open(short_tmp / "store", writable=False) as store:
            entry = find_entry(store, sid, "big.bin")
            assert entry is not None
            first, second = store.locate(entry.chunks[0]), store.locate(entry.chunks[1])
            assert first is not None and second is not None
            pack = store.pack_path(second.pack)
        flip_byte(pack, second.offset + second.length // 2)
        r = fetch(d, "/api/v1/projects/docs/snapshots/latest/files?path=big.bin")
        # The head promised 3 MiB; the first chunk came whole, then the connection ended (curl: 18, partial).
        assert (r.status, r.headers["content-length"], r.curl_exit) == (200, str(3 * MiB), 18)
        assert r.body == data[:first.raw_length]
        # A damaged first chunk is found before the head: a proper error, no body.
        r = fetch(d, "/api/v1/projects/docs/snapshots/latest/files?path=big.bin", "-r", f"{first.raw_length + 5}-")
        assert (r.status, error_code(r)) == (500, "store_error")
        # The daemon is fine afterwards.
        assert fetch(d, "/api/v1/projects/docs/snapshots/latest/files?path=big.bin", "-r", "0-9").body == data[:10]
    finally:
        d.proc.kill()
        d.proc.wait()


# --- the store view ---------------------------------------------------------------------------------

def test_store_view_before_and_after_a_check(short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=5)
    d = start_daemon(short_tmp, {"docs": folder}, tcp="")
    try:
        snapshot_now(d, "docs")
        r = fetch(d, "/api/v1/store")
        assert r.status == 200
        before = json.loads(r.body)
        assert before["snapshots"] == 1 and before["packs"] >= 1 and before["bytes_stored"] > 0
        assert (before["last_check"], before["check_running"]) == (None, None)
        pack_bytes = sum(p.stat().st_size for p in (short_tmp / "store/packs").rglob("*.pack"))
        assert before["bytes_stored"] == pack_bytes

        events = SseReader(d, "/api/v1/events")
        try:
            started = json.loads(d.curl("-X", "POST", "http://localhost/api/v1/check").stdout)
            final = events.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)
        finally:
            events.close()
        assert final["state"] == "completed"
        after = json.loads(fetch(d, "/api/v1/store").body)
        assert after["check_running"] is None
        last = after["last_check"]
        assert (last["run"], last["kind"], last["state"], last["project"]) == (started["run"], "check", "completed", None)
        assert last["ended_at"] is not None
    finally:
        d.proc.kill()
        d.proc.wait()


# --- the SSE stream cap -----------------------------------------------------------------------------

def sse_status(d: DaemonProcess, path: str) -> Reply:
    """The head of a stream request: curl gives up after 1 s on an accepted (endless) stream."""
    return fetch(d, path, "--max-time", "1")


def test_streams_beyond_max_streams_get_503_while_json_still_answers(short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=3)
    d = start_daemon(short_tmp, {"docs": folder}, tcp="", extra_daemon="max_streams = 2")
    readers: list[SseReader] = []
    try:
        for path in ("/api/v1/events", "/api/v1/projects/docs/progress/stream"):
            reader = SseReader(d, path)
            readers.append(reader)
            wait_until(lambda r=reader: r.events, 10, "the stream's first event")
        for path in ("/api/v1/events", "/api/v1/projects/docs/progress/stream"):
            r = sse_status(d, path)
            assert (r.status, r.headers.get("retry-after"), error_code(r)) == (503, "5", "unavailable")
            assert r.curl_exit == 0  # answered at once, not held open
        assert fetch(d, "/api/v1/projects").status == 200
        assert fetch(d, "/api/v1/projects/docs/progress").status == 200

        readers.pop(0).close()  # one stream ends: its slot is free again
        accepted = wait_until(lambda: sse_status(d, "/api/v1/events").status == 200, 10, "a free slot")
        assert accepted
        # The stream that was accepted ended too (curl's --max-time), so two fit again, and no more.
        second = SseReader(d, "/api/v1/events")
        readers.append(second)
        wait_until(lambda: second.events, 10, "the new stream's first event")
        assert sse_status(d, "/api/v1/events").status == 503
    finally:
        for reader in readers:
            reader.close()
        d.proc.kill()
        d.proc.wait()


def test_answers_come_from_the_store_not_the_live_folder(served: Served) -> None:
    live = served.folder / "d0/sub0/f0.txt"
    before = live.read_bytes()
    try:
        live.write_bytes(b"changed after the snapshot")
        (served.folder / "d0/sub0/new.txt").write_bytes(b"new")
        r = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d0/sub0/f0.txt")
        assert r.body == before
        listed = json.loads(fetch(served.d, "/api/v1/projects/docs/snapshots/latest/tree?path=d0/sub0").body)
        assert [e["name"] for e in listed["entries"]] == ["f0.txt", "f6.txt"]
        missing = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=d0/sub0/new.txt")
        assert (missing.status, error_code(missing)) == (404, "path_unknown")
    finally:
        live.write_bytes(before)
        (served.folder / "d0/sub0/new.txt").unlink()


def test_downloads_end_cleanly_with_nothing_in_the_log(served: Served) -> None:
    # A download's body is exactly Content-Length bytes, then the response is over: no error for the daemon's
    # log (the stream's end must not be framed like an SSE stream's final chunk). Runs last in this module:
    # it reads the log of every download above. The health request, a new curl process, comes after the
    # last download's connection has ended on the daemon's side.
    small = fetch(served.d, "/api/v1/projects/docs/snapshots/latest/files?path=empty.txt")
    assert small.status == 200
    assert fetch(served.d, "/api/v1/health").status == 200
    log = (served.d.base / "daemon.log").read_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
