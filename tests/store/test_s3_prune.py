"""Prune and garbage collection on an S3 store: what is deleted from and written to the bucket, in which
order; that nothing a snapshot needs is lost while another daemon snapshots into the same bucket, nor after
a crash at any step of a prune.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), one per module, reset before
each test. Another machine is another state directory (its own cache of the bucket) on the same bucket.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio

from helpers.daemon import DaemonProcess, spawn_daemon, wait_until
from helpers.s3 import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    MotoServer,
    plaintext_store,
)
from helpers.store import CrashRunner, assert_restores, prune_store, snapshot, tree_state
from syncsnapd.store import RemoteSpec, Store, StoreLocked, prepare, pruning_lock

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def s3(bucket: MotoServer) -> MotoServer:
    """The bucket of conftest.py, under this module's name for it."""
    return bucket


def client(moto: MotoServer) -> Any:
    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY)


def bucket_keys(moto: MotoServer, prefix: str) -> dict[str, int]:
    c = client(moto)
    out = {o["Key"][len(prefix) + 1:]: int(o["Size"])
           for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
           for o in page.get("Contents", [])}
    c.close()
    return out


def open_store(root: Path, moto: MotoServer, prefix: str = "shared", *, writable: bool = True) -> Store:
    prepare(root, RemoteSpec(f"s3://{BUCKET}/{prefix}", endpoint=moto.url, path_style=True))
    return Store.open(root, writable=writable)


def small_packs_in_bucket(moto: MotoServer, tmp_path: Path, prefix: str = "shared", size: int = 128 * KiB) -> None:
    """A new store in the bucket whose packs are ``size`` bytes (so a few files make several packs)."""
    local = tmp_path / "config-maker"
    Store.open(local, writable=True).close()
    config = (local / "config.json").read_text().replace(str(16 * MiB), str(size))
    c = client(moto)
    c.put_object(Bucket=BUCKET, Key=f"{prefix}/config.json", Body=config.encode())
    c.close()


def write(folder: Path, name: str, size: int = 30 * KiB) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(os.urandom(size))


async def three_snapshots(store: Store, src: Path) -> dict[str, Any]:
    """Three snapshots of a changing folder; each run's new data goes into packs of its own. After a prune
    keeping the newest, the first run's pack is wholly unused (deleted) and the second's partly (repacked).
    Returns snapshot id -> the folder's state."""
    expected: dict[str, Any] = {}
    for i in range(4):
        write(src, f"a{i}")
    s1 = await snapshot(store, src)
    expected[s1.id] = tree_state(src)
    for i in range(4):
        write(src, f"b{i}")
    s2 = await snapshot(store, src)
    expected[s2.id] = tree_state(src)
    for name in ("a0", "a1", "a2", "a3", "b0"):
        (src / name).unlink()
    write(src, "h")
    s3_ = await snapshot(store, src)
    expected[s3_.id] = tree_state(src)
    return expected


def packs_without_index(keys: dict[str, int]) -> set[str]:
    packs = {k.rsplit("/", 1)[-1][:-5] for k in keys if k.startswith("packs/")}
    return packs - {k[len("index/"):-4] for k in keys if k.startswith("index/")}


# --- what a prune does to the bucket --------------------------------------------------------------------------

async def test_prune_on_s3_forgets_deletes_and_repacks_in_the_bucket(s3: MotoServer, tmp_path: Path) -> None:
    small_packs_in_bucket(s3, tmp_path)
    src = tmp_path / "src"
    with open_store(tmp_path / "a", s3) as store:
        expected = await three_snapshots(store, src)
        newest = store.list_snapshots()[-1].id
        before = bucket_keys(s3, "shared")
        stats = prune_store(store)
        assert stats.packs_deleted >= 1 and stats.packs_repacked >= 1 and stats.packs_written >= 1
        after = bucket_keys(s3, "shared")
        assert [k for k in after if k.startswith("snapshots/")] == [f"snapshots/{newest}.json"]
        gone = {k for k in before if k.startswith("packs/")} - set(after)
        assert len(gone) == stats.packs_deleted + stats.packs_repacked
        assert not any(f"index/{k.rsplit('/', 1)[-1][:-5]}.idx" in after for k in gone)
        assert packs_without_index(after) == set()
        assert not any(k.startswith("locks/") for k in after)
        # Freed what it says: the bucket's packs and indexes shrank by the bytes deleted less those written.
        forgotten = sum(v for k, v in before.items() if k.startswith("snapshots/") and k not in after)
        assert sum(before.values()) - sum(after.values()) - forgotten == stats.bytes_freed
        assert list((tmp_path / "a" / "packs").glob("*/*.pack")) == []  # nothing left staged
        assert_restores(store, {newest: expected[newest]}, tmp_path / "out-a")
    # Another machine, from the bucket alone.
    with open_store(tmp_path / "b", s3, writable=False) as other:
        assert [s.id for s in other.list_snapshots()] == [newest]
        assert_restores(other, {newest: expected[newest]}, tmp_path / "out-b")


async def test_a_second_machine_sees_what_a_prune_deleted(s3: MotoServer, tmp_path: Path) -> None:
    small_packs_in_bucket(s3, tmp_path)
    src = tmp_path / "src"
    with open_store(tmp_path / "a", s3) as a:
        expected = await three_snapshots(a, src)
    with open_store(tmp_path / "b", s3) as b:
        prune_store(b)
        newest = b.list_snapshots()[-1].id
    with open_store(tmp_path / "a", s3) as a:  # A's cache still had every pack's index and snapshot
        assert [s.id for s in a.list_snapshots()] == [newest]
        assert_restores(a, {newest: expected[newest]}, tmp_path / "out")
        write(src, "later")
        later = await snapshot(a, src)
        assert_restores(a, {newest: expected[newest], later.id: tree_state(src)}, tmp_path / "out2")


# --- prune while another daemon snapshots ------------------------------------------------------------------------

def start_s3_daemon(base: Path, folder: Path, endpoint: str) -> DaemonProcess:
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""',
        f'store = "s3://{BUCKET}/shared"', f'state_dir = "{base}/state"', f'token_file = "{base}/token"',
        "watch = false", "retry_attempts = 1",
        "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true",
        "[[projects]]", 'id = "docs"', f'path = "{folder}"', ""]))
    plaintext_store(base, cfg)  # the store these tests open in process, without a key
    return spawn_daemon(base, cfg)


def progress(d: DaemonProcess) -> dict[str, Any]:
    return json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)  # type: ignore[no-any-return]


def run_done(d: DaemonProcess, run: str) -> dict[str, Any] | None:
    p = progress(d)
    return p if p.get("run") == run and p.get("state") in ("completed", "failed", "cancelled") else None


def start_run(d: DaemonProcess) -> str:
    return str(json.loads(d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots").stdout)["run"])


def prune_keeping_newest(store: Store) -> bool:
    """One prune as another machine runs it: False if refused because a snapshot is being written."""
    try:
        with pruning_lock(store):
            snaps = store.list_snapshots("docs")
            store.forget([s.id for s in snaps[:-1]])
            store.collect_garbage()
    except StoreLocked:
        return False
    return True


def test_prune_on_s3_while_another_daemon_snapshots_deletes_nothing_referenced(s3: MotoServer,
                                                                               short_tmp: Path) -> None:
    """A daemon snapshots a changing folder into the bucket while another machine prunes it: (1) a prune
    holding its lock makes the daemon's run wait, which then completes; (2) prunes started at every moment
    of the daemon's runs either run or are refused. Then a third machine finds check --read-data clean, and
    every snapshot left restores byte-identical."""
    folder = short_tmp / "docs"
    for i in range(6):
        write(folder, f"f{i}", 200 * KiB)
    d = start_s3_daemon(short_tmp / "b", folder, s3.url)
    states: dict[str, Any] = {}
    try:
        for i in range(2):  # two snapshots: the older one is for the first prune to forget
            write(folder, f"first{i}", 200 * KiB)
            first = start_run(d)
            wait_until(lambda first=first: run_done(d, first), 60, "a first snapshot")
        with open_store(short_tmp / "a", s3) as pruner:
            # (1) The prune holds the bucket's exclusive lock; the daemon's run waits for it.
            (folder / "f0").unlink()
            write(folder, "g0", 200 * KiB)
            with pruning_lock(pruner):
                run = start_run(d)
                log = short_tmp / "b" / "daemon.log"
                wait_until(lambda: "exclusive lock of a prune by" in log.read_text(), 60,
                           "the daemon's run to wait for the prune's lock")
                assert run_done(d, run) is None
                assert len(pruner.forget([s.id for s in pruner.list_snapshots("docs")[:-1]])) == 1
                assert pruner.collect_garbage().chunks_unused >= 1
                assert len(pruner.list_snapshots()) == 1
            end = wait_until(lambda: run_done(d, run), 60, "the waiting run to complete")
            assert end["state"] == "completed", end
            # (2) Prunes racing the daemon's runs at whatever point they reach.
            ran = refused = 0
            for i in range(4):
                (folder / f"f{i + 1}").unlink(missing_ok=True)
                write(folder, f"g{i + 1}", 200 * KiB)
                run = start_run(d)
                while run_done(d, run) is None:
                    if prune_keeping_newest(pruner):
                        ran += 1
                    else:
                        refused += 1
                end = run_done(d, run)
                assert end is not None and end["state"] == "completed", end
                states[end["snapshot"]["id"]] = tree_state(folder)
            assert prune_keeping_newest(pruner)  # the daemon is idle: nothing holds a lock
            assert ran + refused >= 4
    finally:
        d.stop()
    with open_store(short_tmp / "c", s3, writable=False) as third:
        left = third.list_snapshots()
        assert [s.id for s in left] == [max(states)]
        assert_restores(third, states, short_tmp / "out")
    assert bucket_keys(s3, "shared/locks") == {}


# --- a crash at every step of a prune --------------------------------------------------------------------------

def copy_prefix(moto: MotoServer, src: str, dst: str) -> None:
    c = client(moto)
    for key in bucket_keys(moto, src):
        c.copy_object(Bucket=BUCKET, Key=f"{dst}/{key}", CopySource={"Bucket": BUCKET, "Key": f"{src}/{key}"})
    c.close()


def test_crash_at_every_step_of_a_prune_on_s3_leaves_every_snapshot_restorable(s3: MotoServer,
                                                                               tmp_path: Path) -> None:
    """SIGKILL at each durable step of a prune of an S3 store (forgetting snapshots, repacking, uploading
    the new packs, deleting indexes, then packs: in a forked child, as tests/store's local crash tests do).
    After each: every snapshot still listed restores byte-identical and check --read-data is clean, from
    the killed machine's cache and from another machine; no pack in the bucket lacks its index once the
    next prune has run; that prune completes the job (its lock is not blocked by the dead one's)."""
    small_packs_in_bucket(s3, tmp_path, "pristine")
    pristine = tmp_path / "pristine"
    src = tmp_path / "src"

    async def make() -> dict[str, Any]:
        with open_store(pristine, s3, "pristine") as store:
            return await three_snapshots(store, src)

    expected = trio.run(make)
    newest = max(expected)
    seen: set[str] = set()
    with CrashRunner() as runner:
        for n in range(1, 300):
            root = tmp_path / f"crash{n}"
            shutil.copytree(pristine, root)
            copy_prefix(s3, "pristine", f"crash{n}")
            prepare(root, RemoteSpec(f"s3://{BUCKET}/crash{n}", endpoint=s3.url, path_style=True))
            code, reached = runner.run(root, None, "", n)
            if code == 0:
                assert len(reached) == n - 1
                break
            assert code == -9 and len(reached) == n, (n, code, reached)
            seen.add(reached[-1])
            with Store.open(root, writable=True) as store:
                assert newest in [s.id for s in store.list_snapshots()]
                assert_restores(store, expected, tmp_path / f"out{n}")
            with open_store(tmp_path / f"other{n}", s3, f"crash{n}", writable=False) as other:
                assert_restores(other, expected, tmp_path / f"other-out{n}")
            with Store.open(root, writable=True) as store:
                prune_store(store)
                assert [s.id for s in store.list_snapshots()] == [newest]
                assert_restores(store, expected, tmp_path / f"out{n}")
            assert packs_without_index(bucket_keys(s3, f"crash{n}")) == set()
            shutil.rmtree(tmp_path / f"other{n}")
            with open_store(tmp_path / f"other{n}", s3, f"crash{n}", writable=False) as other:
                assert [s.id for s in other.list_snapshots()] == [newest]
                assert_restores(other, expected, tmp_path / f"other-out{n}")
            shutil.rmtree(root)
            shutil.rmtree(tmp_path / f"other{n}")
        else:
            raise AssertionError("the prune never completed")
    assert {"forget:unlinked", "forget:deleted", "pack:fsynced", "index:renamed", "gc:pack-uploaded",
            "gc:index-uploaded", "gc:index-unlinked", "gc:index-deleted", "gc:pack-deleted",
            "gc:pack-unlinked"} <= seen


# --- prune through the daemon ---------------------------------------------------------------------------------

def wait_operation(d: DaemonProcess, run: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        p = json.loads(d.curl(f"http://localhost/api/v1/operations/{run}").stdout)
        return p if p.get("state") in ("completed", "failed", "cancelled") else None

    return wait_until(ended, 120, f"the operation {run}")  # type: ignore[no-any-return]


def test_a_prune_through_the_daemon_on_s3_is_refused_while_another_machine_writes(s3: MotoServer,
                                                                                   short_tmp: Path) -> None:
    """POST /api/v1/prune on a daemon whose store is a bucket another machine is writing a snapshot to:
    the run fails with store_locked, naming that machine's lock; once it is done, the prune completes and
    deletes what the keep policy no longer needs."""
    folder = short_tmp / "docs"
    write(folder, "a", 100 * KiB)
    base = short_tmp / "b"
    d = start_s3_daemon(base, folder, s3.url)
    cfg = base / "config.toml"
    cfg.write_text(cfg.read_text() + "keep = { last = 1 }\n")
    d.stop()
    d = spawn_daemon(base, cfg)
    try:
        for name in ("b", "c"):
            run = start_run(d)
            wait_until(lambda run=run: run_done(d, run), 60, "a snapshot")
            write(folder, name, 100 * KiB)
            (folder / "a").unlink(missing_ok=True)
        with open_store(short_tmp / "other", s3) as other:
            assert len(other.list_snapshots()) == 2
            with other.locks.hold(exclusive=False, purpose="snapshot"):  # type: ignore[union-attr]
                refused = json.loads(d.curl("-X", "POST", "http://localhost/api/v1/prune").stdout)
                end = wait_operation(d, refused["run"])
                assert end["state"] == "failed"
                assert end["error"]["code"] == "store_locked"
                assert "shared lock of a snapshot by " in end["error"]["message"]
                assert f"(pid {os.getpid()})" in end["error"]["message"]
                assert len(bucket_keys(s3, "shared/snapshots")) == 2
        done = json.loads(d.curl("-X", "POST", "http://localhost/api/v1/prune").stdout)
        end = wait_operation(d, done["run"])
        assert end["state"] == "completed", end
        assert len(end["result"]["snapshots_removed"]) == 1
        assert len(bucket_keys(s3, "shared/snapshots")) == 1
        assert bucket_keys(s3, "shared/locks") == {}
    finally:
        d.stop()
