"""Several machines, one bucket (issue 15): each sees the others' snapshots, dedup holds across machines,
ids cannot collide, snapshots record their host.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), one per module, reset
before each test. Machines are real daemons (tests/helpers/daemon.py) with their own state directories
and configured hosts, or, in-process, stores opened on separate staging directories of one bucket.
:class:`ThrottlingProxy` stands in front of moto where a test needs the bucket to refuse a request.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from helpers.daemon import api
from helpers.s3 import MotoServer, ThrottlingProxy, fail_fast, ready_bucket
from helpers.shared_bucket import URL, bucket_objects, delete_object, start_machine, start_run, wait_run
from helpers.store import snapshot
from syncsnapd.engine import SnapshotError
from syncsnapd.store import RemoteSpec, Store, StoreError, prepare
from syncsnapd.store._format import SNAPSHOT_ID_RE, SnapshotStats, decode_snapshot, encode_snapshot

MiB = 1 << 20


@pytest.fixture
def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    ready_bucket(moto, monkeypatch, tmp_path)
    fail_fast(monkeypatch)
    return moto


def open_machine(root: Path, endpoint: str, host: str) -> Store:
    prepare(root, RemoteSpec(URL, endpoint=endpoint, path_style=True))
    store = Store.open(root, writable=True)
    store.host = host
    return store


def shared_files(root: Path) -> dict[str, bytes]:
    """Files two machines both hold (synced between them): 12 MiB that does not compress."""
    files = {f"shared/big{i}.bin": os.urandom(4 * MiB) for i in range(3)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in after.items() if k not in before}


def kinds(keys: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k.split("/", 1)[0]] = out.get(k.split("/", 1)[0], 0) + 1
    return out


def test_two_daemons_snapshot_into_one_bucket_at_once_see_each_other_and_dedup(bucket: MotoServer,
                                                                               short_tmp: Path) -> None:
    """The issue's test: two daemons, different state dirs and hosts, snapshot into one bucket at the same
    time; each sees the other's snapshots at its next run; the second machine then snapshotting files
    the first uploaded sends only what is new (counted in the bucket's objects and bytes)."""
    a_dir, b_dir = short_tmp / "fa", short_tmp / "fb"
    shared = shared_files(a_dir)
    (b_dir / "own").mkdir(parents=True)
    (b_dir / "own" / "notes.txt").write_bytes(os.urandom(64 << 10))
    a = start_machine(short_tmp / "a", "alpha", {"docs": a_dir}, bucket.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": b_dir}, bucket.url)
    try:
        # At the same time: both runs are asked for before either is waited for.
        run_a, run_b = start_run(a, "docs"), start_run(b, "docs")
        snap_a = wait_run(a, run_a)["snapshot"]["id"]  # type: ignore[index]
        snap_b = wait_run(b, run_b)["snapshot"]["id"]  # type: ignore[index]
        objects = bucket_objects(bucket.url)
        assert snap_a != snap_b and SNAPSHOT_ID_RE.match(snap_a) and SNAPSHOT_ID_RE.match(snap_b)
        assert {f"snapshots/{snap_a}.json", f"snapshots/{snap_b}.json"} <= set(objects)
        # Each machine uploaded its own packs (different content, different names), each with its index.
        assert kinds(objects)["packs"] == kinds(objects)["index"] >= 2

        # Machine beta now holds the shared files too (synced from alpha) and one new file.
        shutil.copytree(a_dir / "shared", b_dir / "shared")
        (b_dir / "own" / "new.txt").write_bytes(os.urandom(32 << 10))
        before = bucket_objects(bucket.url)
        second_b = wait_run(b, start_run(b, "docs"))["snapshot"]
        new = added(before, bucket_objects(bucket.url))
        # Only what is new: the new file and the changed list of files (one pack, its index) and the
        # snapshot file; none of the 12 MiB alpha uploaded.
        assert kinds(new) == {"packs": 1, "index": 1, "snapshots": 1}, new
        assert sum(new.values()) < 1 * MiB
        assert second_b["bytes_added"] < 1 * MiB  # type: ignore[index]
        # Beta's snapshot reads those files from alpha's packs.
        sid = second_b["id"]  # type: ignore[index]
        got = b.curl("-f", "-o", str(short_tmp / "big1.out"),
                     f"http://localhost/api/v1/snapshots/{sid}/files?path=shared/big1.bin")
        assert got.returncode == 0 and (short_tmp / "big1.out").read_bytes() == shared["shared/big1.bin"]

        # Each sees the other's snapshots at its next run (refresh_age is 60 s: no listing refreshed them).
        listed_b = api(b, "/snapshots")["snapshots"]
        assert {(s["id"], s["host"]) for s in listed_b} == {(snap_a, "alpha"), (snap_b, "beta"), (sid, "beta")}
        wait_run(a, start_run(a, "docs"))
        hosts_a = [(s["id"], s["host"]) for s in api(a, "/snapshots")["snapshots"]]
        assert {(snap_b, "beta"), (sid, "beta"), (snap_a, "alpha")} <= set(hosts_a) and len(hosts_a) == 4
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()


async def test_the_run_after_another_machines_upload_uploads_only_what_is_new(bucket: MotoServer,
                                                                            tmp_path: Path) -> None:
    """In-process: machine B opened its store before A's snapshot existed; its next run refreshes first,
    so A's indexes are in B's master index and A's blobs are not uploaded again."""
    a_dir, b_dir = tmp_path / "fa", tmp_path / "fb"
    shared_files(a_dir)
    shutil.copytree(a_dir, b_dir)
    (b_dir / "only-b.txt").write_bytes(b"beta's own file\n")
    with open_machine(tmp_path / "sa", bucket.url, "alpha") as a, open_machine(tmp_path / "sb", bucket.url, "beta") as b:
        first = await snapshot(a, a_dir, "docs")
        assert first.bytes_added >= 12 * MiB
        before = bucket_objects(bucket.url)
        second = await snapshot(b, b_dir, "docs")
        new = added(before, bucket_objects(bucket.url))
        assert kinds(new) == {"packs": 1, "index": 1, "snapshots": 1}
        assert sum(new.values()) < 64 << 10
        assert second.bytes_added < 64 << 10
        # B compared its folder with its own previous snapshot (it has none), not with A's: every file is
        # new to it, none "changed" (A's files have other inodes and times).
        assert (second.files_new, second.files_changed) == (4, 0)
        assert [(s.id, s.host) for s in b.list_snapshots()] == [(first.id, "alpha"), (second.id, "beta")]
        # A sees B's snapshot once it refreshes (a listing refreshes when its lists are old; a run always).
        assert [s.id for s in a.list_snapshots()] == [first.id]
        assert a.refresh() is True
        assert [(s.id, s.host) for s in a.list_snapshots()] == [(first.id, "alpha"), (second.id, "beta")]
        assert a.refresh() is False  # nothing new: two LISTs, no download


async def test_a_refused_refresh_leaves_the_cache_and_a_refused_run_leaves_no_snapshot(
        bucket: MotoServer, tmp_path: Path) -> None:
    """The bucket refuses a refresh's listing (a 403 the proxy answers once): the refresh says so and the
    cached lists stand. A run refreshes as it takes its lock (issue 15: once a lock is held, the lists
    must be the bucket's, or a prune elsewhere could be missed), so a run refused there fails with
    ``store_auth`` and writes nothing; the next one completes."""
    proxy = ThrottlingProxy(bucket.port)
    try:
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "a.txt").write_bytes(b"hello\n")
        with open_machine(tmp_path / "s", proxy.url, "alpha") as store:
            first = await snapshot(store, folder, "docs")
            proxy.throttle(1, "403 Forbidden", "AccessDenied")
            with pytest.raises(StoreError) as err:
                store.refresh()
            assert err.value.code == "store_auth"
            assert [s.id for s in store.list_snapshots()] == [first.id]
            (folder / "b.txt").write_bytes(b"more\n")
            proxy.throttle(1, "403 Forbidden", "AccessDenied")
            with pytest.raises(SnapshotError) as failed:
                await snapshot(store, folder, "docs")
            assert failed.value.code == "store_auth"
            assert [s.id for s in store.list_snapshots()] == [first.id]
            second = await snapshot(store, folder, "docs")
            assert [s.id for s in store.list_snapshots()] == [first.id, second.id]
    finally:
        proxy.close()


async def test_refresh_drops_what_the_bucket_no_longer_has(bucket: MotoServer, tmp_path: Path) -> None:
    """A snapshot file deleted from the bucket (another machine's forget) leaves the listing at the next
    refresh."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"hello\n")
    with open_machine(tmp_path / "s", bucket.url, "alpha") as store:
        one = await snapshot(store, folder, "docs")
        two = await snapshot(store, folder, "docs")
        delete_object(bucket.url, f"snapshots/{one.id}.json")
        assert store.refresh() is True
        assert [s.id for s in store.list_snapshots()] == [two.id]


async def test_refreshes_at_once_each_run_one_at_a_time(bucket: MotoServer, tmp_path: Path) -> None:
    """Refreshes from several threads (runs and listings at once) are one at a time; one that waited
    for another's finds it recent and skips (``max_age``)."""
    with open_machine(tmp_path / "s", bucket.url, "alpha") as store:
        assert store.remote is not None
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.append(store.refresh(max_age=60))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [False] * 4  # the open itself was the last refresh, seconds ago


def test_snapshot_files_record_their_host_and_ids_have_48_random_bits() -> None:
    stats = SnapshotStats(files=1)
    new_id = "20261207T140102.123Z-a1b2c3d4e5f6"
    old_id = "20261128T170102.123Z-a1b2c3"
    assert SNAPSHOT_ID_RE.match(new_id) and SNAPSHOT_ID_RE.match(old_id)
    assert not SNAPSHOT_ID_RE.match("20261128T170102.123Z-a1b2c3d4")
    with_host = encode_snapshot(new_id, "docs", "/x", [], stats, host="alpha")
    assert decode_snapshot(new_id, with_host).info.host == "alpha"
    # An older version's file (no host key) reads as host unknown.
    old = encode_snapshot(old_id, "docs", "/x", [], stats)
    assert "host" not in json.loads(old) and decode_snapshot(old_id, old).info.host is None
    # The checksum covers the host: changing it is damage.
    doc = json.loads(with_host)
    doc["host"] = "mallory"
    with pytest.raises(Exception, match="checksum mismatch"):
        decode_snapshot(new_id, json.dumps(doc).encode())
    with pytest.raises(ValueError, match="host"):
        encode_snapshot(new_id, "docs", "/x", [], stats, host="bad\nhost")


async def test_new_ids_have_a_12_digit_suffix(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    with Store.open(tmp_path / "store", writable=True) as store:
        s = await snapshot(store, folder, "docs")
        assert len(s.id.rsplit("-", 1)[1]) == 12
        assert store.list_snapshots()[0].host == store.host
