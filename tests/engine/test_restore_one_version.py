"""Finding and writing one version of one path (``engine/_restore_version.py``) on a real store."""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
import trio

from helpers.store import commit_entries, snapshot
from syncsnapd.engine import TEMP_PREFIX, RestoreError, find_version, restore_version, version_name
from syncsnapd.engine import _restore_version as module
from syncsnapd.store import Store
from syncsnapd.store import _versions as versions_module

TIME = "2026-12-01T14:03:05Z"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store", writable=True)
    yield s
    s.close()


def history(store: Store, contents: list[bytes]) -> list[tuple[str, str, Store]]:
    """One snapshot per content of ``a.txt``; (id, time, store) newest first, as the daemon lists them."""
    sids = [commit_entries(store, "p", [("a.txt", "file", data)]) for data in contents]
    return [(sid, TIME, store) for sid in reversed(sids)]


def test_a_prefix_of_two_content_ids_is_ambiguous_and_names_both(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real content ids sharing 8 hex digits cannot be made on purpose (32 bits), so the content id
    function is replaced (in the engine and in the store's versions cache) by one giving ids that share a
    prefix; everything else is the real store."""
    snaps = history(store, [b"one", b"two", b"one"])

    ids = {b"one": "abcdef01" + "1" * 16, b"two": "abcdef01" + "2" * 16}
    fake = lambda e: ids[store.read_chunk(e.chunks[0])]  # noqa: E731
    monkeypatch.setattr(module, "content_id", fake)
    monkeypatch.setattr(versions_module, "content_id", fake)  # what the versions cache records
    with pytest.raises(RestoreError) as info:
        find_version(snaps, "a.txt", "abcdef01")
    assert info.value.code == "version_ambiguous"
    assert ids[b"one"] in info.value.message and ids[b"two"] in info.value.message
    # More digits tell them apart; the newest snapshot holding a version is the one named.
    found = find_version(snaps, "a.txt", "abcdef012")
    assert (found.content_id, found.snapshot_id) == (ids[b"two"], snaps[1][0])
    assert find_version(snaps, "a.txt", "ABCDEF011").snapshot_id == snaps[0][0]  # any case


@pytest.mark.parametrize(("name", "n", "want"), [
    ("b.txt", 1, "b (syncsnap 2026-12-01 14.03).txt"),
    ("b.txt", 2, "b (syncsnap 2026-12-01 14.03 2).txt"),
    ("archive.tar.gz", 1, "archive.tar (syncsnap 2026-12-01 14.03).gz"),
    (".bashrc", 3, ".bashrc (syncsnap 2026-12-01 14.03 3)"),
    ("Makefile", 1, "Makefile (syncsnap 2026-12-01 14.03)"),
    ("x" * 250 + ".txt", 1, "x" * (255 - len(" (syncsnap 2026-12-01 14.03)") - 4) + " (syncsnap 2026-12-01 14.03).txt"),
])
def test_names_of_restored_copies(name: str, n: int, want: str) -> None:
    got = version_name(name, TIME, n, UTC)
    assert got == want
    assert len(os.fsencode(got)) <= 255


def test_a_cancelled_restore_leaves_no_file_and_no_temporary(store: Store, tmp_path: Path) -> None:
    snaps = history(store, [b"content"])
    found = find_version(snaps, "a.txt", "latest")
    out = tmp_path / "out"
    out.mkdir()

    class Stop(Exception):
        pass

    def check() -> None:
        raise Stop

    with pytest.raises(Stop):
        restore_version(found, "a.txt", folder=tmp_path, to=out, check=check)
    assert os.listdir(out) == []
    assert restore_version(found, "a.txt", folder=tmp_path, to=out) == out / "a.txt"
    assert (out / "a.txt").read_bytes() == b"content" and os.listdir(out) == ["a.txt"]


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from syncsnapd.engine import find_version, restore_version
from syncsnapd.store import Store

store_dir, folder, sid = sys.argv[1:4]
calls = 0

def check():
    global calls
    calls += 1
    if calls == 3:  # two chunks are written: die as a power cut would stop it
        os.kill(os.getpid(), signal.SIGKILL)

with Store.open(Path(store_dir), writable=False) as store:
    found = find_version([(sid, "2026-12-01T14:03:05Z", store)], "big.bin", "latest")
    assert len(found.entry.chunks) > 3, found.entry.chunks
    restore_version(found, "big.bin", folder=Path(folder), check=check)
"""


async def test_a_restore_killed_mid_file_leaves_no_named_copy(tmp_path: Path) -> None:
    """SIGKILL while the copy is written (from the restore's own check between chunks, so it is always
    mid-file): no file under the copy's name, the live file as it was, and the next restore works."""
    folder = tmp_path / "docs"
    folder.mkdir()
    data = random.Random(9).randbytes(6 * (1 << 20))
    (folder / "big.bin").write_bytes(data)
    with Store.open(tmp_path / "store", writable=True) as store:
        await snapshot(store, folder)
        sid = store.list_snapshots()[-1].id
    (folder / "big.bin").write_bytes(b"changed since")
    before = os.stat(folder / "big.bin")
    with trio.fail_after(120):
        proc = await trio.run_process([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path / "store"), str(folder),
                                       sid], capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(os.listdir(folder))
    assert len(left) == 2 and left[0].startswith(TEMP_PREFIX) and left[1] == "big.bin", left
    assert (folder / "big.bin").read_bytes() == b"changed since"
    assert os.stat(folder / "big.bin").st_mtime_ns == before.st_mtime_ns
    with Store.open(tmp_path / "store", writable=False) as store:
        found = find_version([(sid, TIME, store)], "big.bin", "latest")
        out = restore_version(found, "big.bin", folder=folder, tz=UTC)
    assert out.read_bytes() == data and out.name == "big (syncsnap 2026-12-01 14.03).bin"
