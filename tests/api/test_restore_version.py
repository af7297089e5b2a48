"""Restoring one version of one file (issue 13, item 2) against a real syncsnapd with curl as the client:
``POST /api/v1/projects/{id}/restore`` with ``path`` and ``version`` (docs/api.md, "Restore one version")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from helpers.curl import snapshot_now
from helpers.daemon import DaemonProcess, start_daemon
from syncsnapd.store import Store, content_id, find_entry

NON_UTF8 = b"caf\xe9 \xff.txt"
ODD = 'say "hi"\nand \\ bye ü.txt'


def restore(d: DaemonProcess, body: dict[str, Any], project: str = "docs") -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(["curl", "-sS", "--unix-socket", d.socket, "-o", "/dev/stdout", "-w", "\n%{http_code}",
                           "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(body),
                           f"http://localhost/api/v1/projects/{project}/restore"], capture_output=True, timeout=60)
    text, _, status = proc.stdout.rpartition(b"\n")
    return int(status), json.loads(text)


def stamp(snapshot_id: str) -> str:
    """The local time of a snapshot as restored copies are named (the daemon runs in our time zone)."""
    i = snapshot_id
    utc = datetime.fromisoformat(f"{i[:4]}-{i[4:6]}-{i[6:8]}T{i[9:11]}:{i[11:13]}:{i[13:15]}+00:00")
    return utc.astimezone().strftime("%Y-%m-%d %H.%M")


def state(path: Path | bytes) -> tuple[bytes, int, int, int]:
    """What a user would notice of a live file: content, inode, mtime, mode."""
    st = os.stat(path, follow_symlinks=False)
    with open(path, "rb") as f:
        return f.read(), st.st_ino, st.st_mtime_ns, st.st_mode


@dataclass
class History:
    d: DaemonProcess
    base: Path
    folder: Path
    snaps: list[str]
    versions: dict[str, list[bytes | None]] = field(default_factory=dict)  # path -> content per snapshot

    def cid(self, path: str, snap: int) -> str:
        """The content id of ``path`` in snapshot ``snap``, read from the store as an offline reader."""
        with Store.open(self.base / "store", writable=False) as store:
            e = find_entry(store, self.snaps[snap], path)
        assert e is not None
        cid = content_id(e)
        assert cid is not None
        return cid


@pytest.fixture(scope="module")
def hist() -> Iterator[History]:
    """A project whose ``a.txt`` changes in snapshots 0, 1, is deleted in 2 and re-created in 3; beside it a
    symlink that changes target, a directory, odd and undecodable names, a dotfile and a name without
    extension. Each state is snapshotted by a real daemon."""
    base = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    folder = base / "docs"
    (folder / "dir").mkdir(parents=True)
    contents: list[bytes | None] = [b"first version\n", b"second version, longer\n", None, b"third\n"]
    snaps: list[str] = []
    d = start_daemon(base, {"docs": folder}, tcp="")
    try:
        for i, data in enumerate(contents):
            a = folder / "dir" / "a.txt"
            if data is None:
                a.unlink()
            else:
                a.write_bytes(data)
                os.chmod(a, 0o640 if i == 0 else 0o600)
                os.utime(a, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i * 1_000_000_000))
            if i == 0:
                os.symlink("a.txt", folder / "dir" / "ln")
                (folder / ".bashrc").write_bytes(b"alias ll='ls -l'\n")
                (folder / "Makefile").write_bytes(b"all:\n")
                with open(os.path.join(os.fsencode(folder), NON_UTF8), "wb") as f:
                    f.write(b"\x00\xffundecodable")
                (folder / ODD).write_bytes(b"odd")
            if i == 1:
                (folder / "dir" / "ln").unlink()
                os.symlink("../Makefile", folder / "dir" / "ln")
            snaps.append(snapshot_now(d, "docs"))
        yield History(d, base, folder, snaps, {"dir/a.txt": contents})
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean(hist: History) -> Iterator[None]:
    """Each test starts with no restored copy in the live folder."""
    yield
    for root, _dirs, files in os.walk(os.fsencode(hist.folder)):
        for name in files:
            if b"(syncsnap " in name:
                os.unlink(os.path.join(root, name))


def copies(h: History, rel: str = "dir") -> list[str]:
    return sorted(n for n in os.listdir(h.folder / rel) if "(syncsnap " in n)


# --- next to the live file ------------------------------------------------------------------------------

def test_a_version_named_by_content_id_is_restored_next_to_the_live_file(hist: History) -> None:
    live = hist.folder / "dir" / "a.txt"
    before = state(live)
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.cid("dir/a.txt", 0)[:8]})
    assert status == 200, doc
    # Snapshot 0 is the only one holding the first version: its time names the copy.
    want = hist.folder / "dir" / f"a (syncsnap {stamp(hist.snaps[0])}).txt"
    assert doc["restored_to"] == str(want)
    assert (doc["content_id"], doc["snapshot"]["id"], doc["kind"], doc["size"]) == (
        hist.cid("dir/a.txt", 0), hist.snaps[0], "file", len(b"first version\n"))
    assert want.read_bytes() == b"first version\n"
    st = os.stat(want)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_700_000_000_000_000_000)
    assert state(live) == before  # the live file is untouched
    assert [n for n in os.listdir(hist.folder / "dir") if n.startswith(".syncsnap-restore-")] == []


def test_a_second_restore_of_the_same_version_is_numbered_and_overwrite_replaces_the_first(hist: History) -> None:
    body = {"path": "dir/a.txt", "version": hist.cid("dir/a.txt", 1)}
    first = restore(hist.d, body)[1]["restored_to"]
    status, doc = restore(hist.d, body)
    assert status == 200, doc
    name = f"a (syncsnap {stamp(hist.snaps[1])}"
    assert (Path(first).name, Path(doc["restored_to"]).name) == (f"{name}).txt", f"{name} 2).txt")
    assert Path(doc["restored_to"]).read_bytes() == b"second version, longer\n"
    Path(first).write_bytes(b"edited by the user")
    status, doc = restore(hist.d, {**body, "overwrite": True})
    assert (status, doc["restored_to"]) == (200, first)
    assert Path(first).read_bytes() == b"second version, longer\n"
    assert copies(hist) == [f"{name} 2).txt", f"{name}).txt"]


def test_a_snapshot_id_and_latest_name_the_version_in_that_snapshot(hist: History) -> None:
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.snaps[1]})
    assert status == 200, doc
    assert Path(doc["restored_to"]).read_bytes() == b"second version, longer\n"
    assert doc["content_id"] == hist.cid("dir/a.txt", 1)
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": "latest"})
    assert status == 200, doc
    assert (doc["snapshot"]["id"], Path(doc["restored_to"]).read_bytes()) == (hist.snaps[3], b"third\n")


def test_a_symlink_version_is_restored_as_a_symlink(hist: History) -> None:
    live = os.readlink(hist.folder / "dir" / "ln")
    status, doc = restore(hist.d, {"path": "dir/ln", "version": hist.snaps[0]})
    assert status == 200, doc
    assert (doc["kind"], doc["target"], doc["size"]) == ("symlink", "a.txt", None)
    out = Path(doc["restored_to"])
    assert out.name == f"ln (syncsnap {stamp(hist.snaps[0])})"
    assert out.is_symlink() and os.readlink(out) == "a.txt"
    assert os.readlink(hist.folder / "dir" / "ln") == live == "../Makefile"


@pytest.mark.parametrize(("path", "name"), [
    (".bashrc", ".bashrc (syncsnap {})"),
    ("Makefile", "Makefile (syncsnap {})"),
    (ODD, 'say "hi"\nand \\ bye ü (syncsnap {}).txt'),
    (os.fsdecode(NON_UTF8), os.fsdecode(b"caf\xe9 \xff (syncsnap {}).txt")),
])
def test_dotfiles_names_without_extension_odd_and_undecodable_names(hist: History, path: str, name: str) -> None:
    status, doc = restore(hist.d, {"path": path, "version": "latest"})
    assert status == 200, doc
    want = hist.folder / name.format(stamp(hist.snaps[3]))
    assert doc["restored_to"] == str(want)
    assert want.read_bytes() == (hist.folder / path).read_bytes()
    assert os.fsencode(want.name) in os.listdir(os.fsencode(hist.folder))


# --- --to -----------------------------------------------------------------------------------------------

def test_to_a_directory_keeps_the_name_and_to_a_file_takes_it(hist: History, tmp_path: Path) -> None:
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.snaps[0], "to": str(tmp_path)})
    assert (status, doc["restored_to"]) == (200, str(tmp_path / "a.txt"))
    assert (tmp_path / "a.txt").read_bytes() == b"first version\n"
    # The name is taken now: refused, unless overwrite.
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.snaps[1], "to": str(tmp_path)})
    assert (status, doc["error"]["code"]) == (409, "target_exists")
    assert (tmp_path / "a.txt").read_bytes() == b"first version\n"
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.snaps[1], "to": str(tmp_path),
                                   "overwrite": True})
    assert status == 200 and (tmp_path / "a.txt").read_bytes() == b"second version, longer\n"
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.snaps[3],
                                   "to": str(tmp_path / "renamed.bin")})
    assert (status, doc["restored_to"]) == (200, str(tmp_path / "renamed.bin"))
    assert (tmp_path / "renamed.bin").read_bytes() == b"third\n"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "renamed.bin"]
    assert copies(hist) == []


def test_to_never_replaces_a_directory_and_needs_an_existing_parent(hist: History, tmp_path: Path) -> None:
    (tmp_path / "a.txt").mkdir()
    (tmp_path / "a.txt" / "keep").write_bytes(b"k")
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": "latest", "to": str(tmp_path),
                                   "overwrite": True})
    # The copy would be tmp_path/a.txt, a directory: never replaced, even with overwrite.
    assert (status, doc["error"]["code"]) == (409, "target_exists")
    assert os.listdir(tmp_path / "a.txt") == ["keep"] and sorted(os.listdir(tmp_path)) == ["a.txt"]
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": "latest", "to": str(tmp_path / "no" / "x")})
    assert (status, doc["error"]["code"]) == (400, "target_invalid")
    assert "does not exist" in doc["error"]["message"]


# --- refused --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "code"), [
    ({"path": "dir/a.txt", "version": "0000000000"}, 404, "version_unknown"),
    ({"path": "dir/a.txt", "version": "1234567"}, 400, "version_invalid"),  # 7 digits: too short
    ({"path": "dir/a.txt", "version": "not-a-version"}, 400, "version_invalid"),
    ({"path": "dir/a.txt", "version": "x" * 500}, 400, "version_invalid"),
    ({"path": "dir/a.txt", "version": "20200101T000000.000Z-000000000000"}, 400, "version_invalid"),
    ({"path": "dir", "version": "latest"}, 409, "not_a_file"),
    ({"path": "nothing.txt", "version": "latest"}, 404, "path_unknown"),
    ({"path": "../secret", "version": "latest"}, 400, "path_invalid"),
    ({"path": "dir/../../x", "version": "latest"}, 400, "path_invalid"),
    ({"path": "/etc/passwd", "version": "latest"}, 400, "path_invalid"),
    ({"path": "dir/a.txt", "version": "latest", "to": "relative/x"}, 400, "target_invalid"),
    ({"path": "dir/a.txt", "version": "latest", "to": "/tmp/a\u0000b"}, 400, "target_invalid"),
    ({"path": "dir/a.txt"}, 400, "bad_request"),
    ({"path": "dir/a.txt", "version": "latest", "snapshot": "latest"}, 400, "bad_request"),
    ({"path": "dir/a.txt", "version": "latest", "overwrite": "yes"}, 400, "bad_request"),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else str(v))
def test_bad_requests_get_a_clear_error_and_write_nothing(hist: History, body: dict[str, Any], status: int,
                                                          code: str) -> None:
    got, doc = restore(hist.d, body)
    assert (got, doc["error"]["code"]) == (status, code), doc
    assert copies(hist) == [] and copies(hist, ".") == []


def test_a_deleted_version_is_404_naming_the_deletion(hist: History) -> None:
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": hist.snaps[2]})
    assert (status, doc["error"]["code"]) == (404, "path_unknown")
    assert "deleted" in doc["error"]["message"] and hist.snaps[2] in doc["error"]["message"]


def test_a_to_inside_the_store_is_refused_like_todays_restore(hist: History) -> None:
    status, doc = restore(hist.d, {"path": "dir/a.txt", "version": "latest", "to": str(hist.base / "store")})
    assert (status, doc["error"]["code"]) == (400, "target_forbidden")
    old = restore(hist.d, {"snapshot": "latest", "target": str(hist.base / "store" / "x")})
    assert old[1]["error"]["code"] == "target_forbidden"


def test_a_live_directory_replaced_by_a_symlink_is_not_followed(hist: History, tmp_path: Path) -> None:
    """The copy must stay inside the project folder: a symlink where the snapshot had ``dir`` would lead it
    out, so it is refused (the user can give ``to``)."""
    live = hist.folder / "dir"
    moved = hist.base / "dir-moved"
    live.rename(moved)
    os.symlink(tmp_path, live)
    try:
        status, doc = restore(hist.d, {"path": "dir/a.txt", "version": "latest"})
        assert (status, doc["error"]["code"]) == (400, "target_invalid")
        assert "symlink" in doc["error"]["message"]
        assert os.listdir(tmp_path) == []
    finally:
        live.unlink()
        moved.rename(live)


def test_the_old_body_still_restores_a_snapshot_into_a_directory(hist: History, tmp_path: Path) -> None:
    status, doc = restore(hist.d, {"snapshot": hist.snaps[0], "target": str(tmp_path / "out"),
                                   "paths": ["dir/a.txt"]})
    assert status == 202 and doc["progress"]["kind"] == "restore"
