"""Range requests, HEAD and the download headers of the files endpoint, with real ``curl -r`` (issue 13,
item 2: ``GET /api/v1/snapshots/{id}/files?path=P``; docs/api.md, "Browsing and downloading").

Several ranges in one request (``-r 0-1,5-6``) are answered with the whole file (200, no Content-Range):
RFC 9110 lets a server ignore a Range header, and the daemon sends no multipart/byteranges."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers.curl import TERMINAL, SseReader
from helpers.daemon import DaemonProcess, start_daemon

SIZE = 3 * (1 << 20) + 4321  # several chunks


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Served:
    d: DaemonProcess
    snap: str
    big: bytes


def curl(d: DaemonProcess, path: str | bytes, *args: str, snap: str = "latest") -> Got:
    url = f"http://localhost/api/v1/projects/docs/snapshots/{snap}/files?path={quote(os.fsencode(path), safe='')}"
    proc = subprocess.run(["curl", "-sS", "-D", "/dev/stderr", "--unix-socket", d.socket, *args, url],
                          capture_output=True, timeout=60)
    headers: dict[str, str] = {}
    status = 0
    for line in proc.stderr.decode("latin-1").splitlines():
        if line.startswith("HTTP/"):
            status = int(line.split()[1])
        elif ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return Got(status, headers, proc.stdout)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    base = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    folder = base / "docs"
    folder.mkdir()
    big = random.Random(3).randbytes(SIZE)
    (folder / "big.bin").write_bytes(big)
    (folder / "page.html").write_bytes(b"<script>alert(1)</script>")
    (folder / "data.json").write_bytes(b"{}")
    (folder / "README").write_bytes(b"plain")
    (folder / 'q"uote\\ and\nnewline.txt').write_bytes(b"odd")
    with open(os.path.join(os.fsencode(folder), b"na\xefve \xff.txt"), "wb") as f:
        f.write(b"not utf-8")
    d = start_daemon(base, {"docs": folder}, tcp="")
    stream = SseReader(d, "/api/v1/projects/docs/progress/stream")
    try:
        run = json.loads(d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots").stdout)["run"]
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL)
        stream.close()
        yield Served(d, final["snapshot"]["id"], big)
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(("spec", "first", "last"), [
    ("0-99", 0, 99),                       # the first bytes
    ("1048570-2097160", 1048570, 2097160),  # the middle, across chunk boundaries
    ("-100", SIZE - 100, SIZE - 1),        # a suffix: the last 100 bytes
    ("3000000-", 3000000, SIZE - 1),       # from an offset to the end
    (f"0-{SIZE + 1000}", 0, SIZE - 1),     # a last byte past the end is cut to the end
])
def test_curl_r_gets_206_with_exactly_those_bytes(served: Served, spec: str, first: int, last: int) -> None:
    got = curl(served.d, "big.bin", "-r", spec)
    assert got.status == 206
    assert got.body == served.big[first:last + 1]
    assert got.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert got.headers["content-length"] == str(last - first + 1)


def test_a_range_past_the_end_is_416_and_several_ranges_get_the_whole_file(served: Served) -> None:
    got = curl(served.d, "big.bin", "-r", f"{SIZE}-")
    assert (got.status, got.headers["content-range"]) == (416, f"bytes */{SIZE}")
    assert json.loads(got.body)["error"]["code"] == "range_unsatisfiable"
    got = curl(served.d, "big.bin", "-r", "0-1,5-6")
    assert (got.status, got.body, "content-range" in got.headers) == (200, served.big, False)


def test_head_answers_the_headers_of_a_get_without_a_body(served: Served) -> None:
    head = curl(served.d, "big.bin", "-I")
    got = curl(served.d, "big.bin")
    assert (head.status, head.body[:0], got.status) == (200, b"", 200)
    for name in ("content-length", "content-type", "content-disposition", "etag", "last-modified", "accept-ranges"):
        assert head.headers[name] == got.headers[name], name
    assert head.headers["content-length"] == str(SIZE) and got.body == served.big
    ranged = curl(served.d, "big.bin", "-I", "-r", "10-19")
    assert (ranged.status, ranged.headers["content-length"]) == (206, "10")


@pytest.mark.parametrize(("name", "content_type"), [
    ("big.bin", "application/octet-stream"), ("data.json", "application/json"), ("README", "application/octet-stream"),
    ("page.html", "text/html"),
])
def test_content_type_from_the_name_and_never_rendered_in_our_origin(served: Served, name: str,
                                                                     content_type: str) -> None:
    got = curl(served.d, name)
    assert got.headers["content-type"].split(";")[0] == content_type
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]


def test_content_disposition_of_odd_and_undecodable_names(served: Served) -> None:
    got = curl(served.d, 'q"uote\\ and\nnewline.txt')
    assert got.body == b"odd"
    # Quotes, backslashes and control characters never reach the header raw.
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"q_uote_ and_newline.txt\"; filename*=UTF-8''q%22uote%5C%20and%0Anewline.txt")
    got = curl(served.d, b"na\xefve \xff.txt")
    assert got.body == b"not utf-8"
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"na_ve _.txt\"; filename*=UTF-8''na%EF%BF%BDve%20%EF%BF%BD.txt")
