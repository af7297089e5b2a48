"""Lock objects of a store shared by several processes (store/_locks.py): who blocks whom, what is stale,
refreshing, a snapshot waiting for another machine's prune, a daemon killed while holding its lock, and a
local store on a network filesystem.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), one per module, reset before
each test. Two "machines" are two store directories (two state dirs) on one bucket: each open store is its
own lock holder, exactly as two daemons are. Times are an injected clock: no test sleeps for a lock to age.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import trio

from helpers.daemon import DaemonProcess, make_env, make_tree, wait_until
from helpers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer
from helpers.store import commit_entries, snapshot
from syncsnapd.engine import SnapshotError
from syncsnapd.engine import _writing_lock as writing_lock_module
from syncsnapd.service import run_check
from syncsnapd.store import (
    RemoteSpec,
    Store,
    StoreLocked,
    StoreLocks,
    network_filesystem,
    pruning_lock,
    writing_lock,
)
from syncsnapd.store import _lockdirs as lockdirs_module
from syncsnapd.store import _locks as locks_module
from syncsnapd.store._locks import (
    STALE_AFTER,
    BucketLocks,
    DirectoryLocks,
    LockInfo,
    decode_lock,
    encode_lock,
)

PREFIX = "shared"
URL = f"s3://{BUCKET}/{PREFIX}"
HOST = os.uname().nodename


@pytest.fixture
def s3(bucket: MotoServer) -> MotoServer:
    """The bucket of conftest.py, under this module's name for it."""
    return bucket


def open_store(root: Path, endpoint: str, *, writable: bool = True) -> Store:
    from syncsnapd.store import prepare

    prepare(root, RemoteSpec(URL, endpoint=endpoint, path_style=True))
    return Store.open(root, writable=writable)


def bucket_keys(moto: MotoServer, folder: str = "") -> list[str]:
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    prefix = f"{PREFIX}/{folder}"
    out = sorted(o["Key"][len(PREFIX) + 1:]
                 for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                 for o in page.get("Contents", []))
    client.close()
    return out


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def other_machine(store: Store, clock: Clock, host: str = "elsewhere") -> StoreLocks:
    """The locks of another machine's daemon on the same bucket (its own host name and clock)."""
    assert isinstance(store.locks, StoreLocks)
    return StoreLocks(store.locks.dir, clock=clock, host=host)


def two_snapshots(store: Store) -> tuple[str, str]:
    old = commit_entries(store, "docs", [("a", "file", os.urandom(5000))])
    new = commit_entries(store, "docs", [("b", "file", os.urandom(5000))])
    return old, new


# --- format ---------------------------------------------------------------------------------------------

def test_a_lock_object_records_host_pid_user_time_and_kind() -> None:
    info = LockInfo("ab" * 32, True, "prune", "laptop", 4242, "ann", 1_800_000_000.5, 1_800_000_300.25)
    data = encode_lock(info)
    assert json.loads(data) == {"version": 1, "exclusive": True, "purpose": "prune", "host": "laptop",
                                "pid": 4242, "username": "ann", "created": "2027-01-15T08:00:00.500000Z",
                                "time": "2027-01-15T08:05:00.250000Z"}
    assert decode_lock(info.name, data) == info
    assert info.describe() == ("exclusive lock of a prune by ann@laptop (pid 4242), taken 2027-01-15T08:00:00Z, "
                               "refreshed 2027-01-15T08:05:00Z")


# --- who blocks whom ---------------------------------------------------------------------------------------

def test_a_prune_blocked_by_a_live_shared_lock_says_who_holds_it_and_deletes_nothing(s3: MotoServer,
                                                                                      tmp_path: Path) -> None:
    """Another machine is writing a snapshot (its shared lock): forget and prune refuse, naming it; once it
    is done, they run."""
    with open_store(tmp_path / "a", s3.url) as mine, open_store(tmp_path / "b", s3.url) as theirs:
        old, new = two_snapshots(mine)
        with writing_lock(theirs):
            before = bucket_keys(s3)
            assert theirs.locks is not None
            [info], [] = theirs.locks.read_all()
            with pytest.raises(StoreLocked) as caught:
                mine.forget([old])
            message = str(caught.value)
            assert f"by {info.username}@{HOST} (pid {os.getpid()}), taken " in message
            assert "shared lock of a snapshot" in message
            assert "`syncsnapd unlock`" in message
            with pytest.raises(StoreLocked):
                mine.collect_garbage()
            assert bucket_keys(s3) == before  # nothing deleted, no lock of the prune left behind
        assert mine.forget([old]) == [old]
        stats = mine.collect_garbage()
        assert stats.packs_deleted >= 1
        assert bucket_keys(s3, "locks/") == []
        assert f"snapshots/{old}.json" not in bucket_keys(s3)
        assert mine.check(read_data=True).ok


def test_a_snapshot_run_and_a_prune_of_one_daemon_do_not_block_each_other(s3: MotoServer, tmp_path: Path) -> None:
    """Within one open store (one daemon) the writers' claims coordinate: its own locks never conflict."""
    with open_store(tmp_path / "a", s3.url) as store:
        old, _ = two_snapshots(store)
        with writing_lock(store), pruning_lock(store):
            assert store.forget([old]) == [old]
            store.collect_garbage()
            assert len(bucket_keys(s3, "locks/")) == 2
        assert bucket_keys(s3, "locks/") == []


def test_a_second_prune_elsewhere_is_refused_while_one_runs(s3: MotoServer, tmp_path: Path) -> None:
    with open_store(tmp_path / "a", s3.url) as mine, open_store(tmp_path / "b", s3.url) as theirs:
        two_snapshots(mine)
        with pruning_lock(theirs):
            with pytest.raises(StoreLocked, match="exclusive lock of a prune by"):
                mine.collect_garbage()
            with pytest.raises(StoreLocked, match="cannot take a shared lock .* for a snapshot"):
                with writing_lock(mine, wait=0):
                    pass


def test_a_check_holds_a_shared_lock_and_is_refused_while_a_prune_elsewhere_runs(s3: MotoServer,
                                                                               tmp_path: Path) -> None:
    """A prune deleting packs under a check would make them look missing: check takes the shared lock (so
    a prune elsewhere is refused while it runs) and is refused, naming the prune, while one runs."""
    with open_store(tmp_path / "a", s3.url) as mine, open_store(tmp_path / "b", s3.url) as theirs:
        old, _ = two_snapshots(mine)
        with pruning_lock(theirs):
            with pytest.raises(StoreLocked, match="exclusive lock of a prune by"):
                mine.check(read_data=True)
            out = io.StringIO()
            assert run_check(tmp_path / "a", out) == 2  # `syncsnapd check`: exit 2, saying why
            assert out.getvalue().startswith("Cannot check: ") and "exclusive lock of a prune by" in out.getvalue()
        refused: list[str] = []

        def prune_elsewhere_meanwhile(nbytes: int) -> None:
            if not refused:
                with pytest.raises(StoreLocked) as caught:
                    theirs.forget([old])
                refused.append(str(caught.value))

        assert mine.check(read_data=True, progress=prune_elsewhere_meanwhile).ok
        assert refused and "shared lock of a check by" in refused[0]
        assert bucket_keys(s3, "locks/") == []
        assert theirs.forget([old]) == [old]  # once the check is over


# --- staleness and refreshing (injected clock) ----------------------------------------------------------------

def test_a_lock_not_refreshed_for_30_minutes_is_stale_and_blocks_nobody(s3: MotoServer, tmp_path: Path) -> None:
    """Another machine's lock (so its pid cannot be checked) ages on an injected clock: up to 30 minutes
    after its last refresh it blocks a prune; after that it is stale, and the prune runs; unlock removes it."""
    clock = Clock()
    with open_store(tmp_path / "a", s3.url) as store:
        old, _ = two_snapshots(store)
        elsewhere = other_machine(store, clock)
        with elsewhere.hold(exclusive=False, purpose="snapshot"):
            pass  # released normally: no object left
        held = elsewhere._acquire(False, "snapshot", 0, None)  # and one that is never released (a dead machine)
        held._stop.set()
        mine = other_machine(store, clock, host=HOST)
        clock.now += STALE_AFTER - 1
        with pytest.raises(StoreLocked, match="shared lock of a snapshot by .*@elsewhere"):
            mine._acquire(True, "prune", 0, None)
        assert mine.remove() == ([], [held.info])  # unlock keeps a live lock
        clock.now += 2
        assert mine.is_stale(held.info)
        taken = mine._acquire(True, "prune", 0, None)  # the stale lock blocks nobody
        mine._release(True)
        assert taken.info.exclusive
        removed, kept = mine.remove()
        assert kept == [] and removed == ["stale " + held.info.describe()]
        assert bucket_keys(s3, "locks/") == []


def test_a_held_lock_is_refreshed_and_so_never_goes_stale(s3: MotoServer, tmp_path: Path) -> None:
    clock = Clock()
    with open_store(tmp_path / "a", s3.url) as store:
        assert isinstance(store.locks, StoreLocks)
        holder = StoreLocks(store.locks.dir, clock=clock, host="elsewhere", refresh_every=0.01)
        observer = other_machine(store, clock, host=HOST)
        with holder.hold(exclusive=False, purpose="snapshot") as held:
            created = held.info.time
            clock.now += 20 * 60  # the refresher thread writes the new time within a few of its periods
            wait_until(lambda: [i.time for i in observer.read_all()[0]] == [created + 20 * 60], 10,
                       "the lock's refreshed time in the bucket")
            clock.now += 20 * 60  # 40 minutes after it was taken, 20 after its last refresh
            wait_until(lambda: observer.read_all()[0][0].time == clock.now, 10, "a second refresh")
            assert not observer.is_stale(observer.read_all()[0][0])
        assert observer.read_all() == ([], [])


def test_the_lock_of_a_dead_process_on_this_host_is_stale_at_once(s3: MotoServer, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    clock = Clock(time.time())
    with open_store(tmp_path / "a", s3.url) as store:
        assert isinstance(store.locks, StoreLocks)
        now = time.time()
        info = LockInfo("cd" * 32, False, "snapshot", HOST, dead.pid, "ann", now, now)
        store.locks.dir.put(info.name, encode_lock(info))
        mine = StoreLocks(store.locks.dir, clock=clock)
        assert mine.is_stale(decode_lock(info.name, encode_lock(info)))
        old, _ = two_snapshots(store)
        assert store.forget([old]) == [old]  # not blocked
        assert mine.remove() == (["stale " + info.describe()], [])


def test_an_unreadable_lock_object_blocks_until_unlock_removes_it(s3: MotoServer, tmp_path: Path) -> None:
    with open_store(tmp_path / "a", s3.url) as store:
        assert isinstance(store.locks, StoreLocks)
        old, _ = two_snapshots(store)
        store.locks.dir.put("ee" * 32, b"not a lock")
        with pytest.raises(StoreLocked, match=f"an unreadable lock object locks/{'ee' * 32}"):
            store.forget([old])
        assert store.locks.remove() == ([f"unreadable lock object locks/{'ee' * 32}"], [])
        assert store.forget([old]) == [old]


# --- a snapshot run meets another machine's prune (virtual time) ---------------------------------------------

async def test_a_snapshot_waits_for_the_prune_of_another_machine_then_completes(
        s3: MotoServer, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    folder = tmp_path / "docs"
    make_tree(folder)
    with open_store(tmp_path / "a", s3.url) as mine, open_store(tmp_path / "b", s3.url) as theirs:
        assert theirs.locks is not None
        theirs.locks._acquire(True, "prune", 0, None)
        done: list[float] = []

        async def run() -> None:
            await snapshot(mine, folder, "docs")
            done.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(60)
            assert not done and bucket_keys(s3, "snapshots/") == []  # still waiting
            await trio.to_thread.run_sync(theirs.locks._release, True)
        assert done and done[0] >= 60
        assert len(bucket_keys(s3, "snapshots/")) == 1
        assert bucket_keys(s3, "locks/") == []


async def test_a_snapshot_blocked_too_long_fails_with_store_locked_naming_the_holder(
        s3: MotoServer, tmp_path: Path, autojump_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writing_lock_module, "WRITER_LOCK_WAIT", 60.0)
    folder = tmp_path / "docs"
    make_tree(folder)
    with open_store(tmp_path / "a", s3.url) as mine, open_store(tmp_path / "b", s3.url) as theirs:
        assert theirs.locks is not None
        with theirs.locks.hold(exclusive=True, purpose="prune"):
            with pytest.raises(SnapshotError) as caught:
                await snapshot(mine, folder, "docs")
        assert caught.value.code == "store_locked"
        assert f"exclusive lock of a prune by {locks_module._username()}@{HOST} (pid {os.getpid()})" in str(caught.value)
        assert trio.current_time() >= 60
        assert bucket_keys(s3, "snapshots/") == [] and bucket_keys(s3, "locks/") == []


async def test_a_snapshot_after_a_prune_elsewhere_stores_again_what_that_prune_deleted(
        s3: MotoServer, tmp_path: Path) -> None:
    """Machine A has stored a file; machine B forgets the only snapshot holding it and prunes it from the
    bucket. A's next run takes its lock, sees the bucket's indexes again, and uploads the file anew rather
    than referring to a pack that is gone: a third machine restores it byte for byte."""
    folder = tmp_path / "docs"
    folder.mkdir()
    content = os.urandom(40_000)
    (folder / "x.bin").write_bytes(content)
    with open_store(tmp_path / "a", s3.url) as a, open_store(tmp_path / "b", s3.url) as b:
        first = await snapshot(a, folder, "docs")
        (folder / "x.bin").unlink()
        (folder / "y.bin").write_bytes(b"y")
        await snapshot(a, folder, "docs")
        assert b.forget([first.id]) == [first.id]
        assert b.collect_garbage().chunks_unused >= 1
        (folder / "x.bin").write_bytes(content)  # back on A, which still had it in its index
        last = await snapshot(a, folder, "docs")
    with open_store(tmp_path / "c", s3.url, writable=False) as c:
        assert c.check(read_data=True).ok
        [entry] = [e for e in c.load_entries(last.id) if e.path == "x.bin"]
        assert b"".join(c.read_chunk(h) for h in entry.chunks) == content


# --- a daemon killed while holding its lock -------------------------------------------------------------------

def start_s3_daemon(base: Path, folder: Path, endpoint: str) -> DaemonProcess:
    from helpers.daemon import spawn_daemon
    from helpers.s3 import plaintext_store

    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""',
        f'store = "{URL}"', f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false",
        "retry_attempts = 1",
        "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true",
        "[[projects]]", 'id = "docs"', f'path = "{folder}"', "keep = { last = 1 }", ""]))
    plaintext_store(base, cfg)  # the store these tests open in process, without a key
    return spawn_daemon(base, cfg)


def syncsnapd(base: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = make_env(base)
    return subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_daemon_killed_while_holding_its_lock_unlock_clears_it_and_prune_runs(
        s3: MotoServer, short_tmp: Path) -> None:
    """A daemon's run holds its shared lock (paused mid-run); a prune from another state dir is refused,
    naming the daemon's host and pid; `unlock` keeps a live lock (exit 1). The daemon is SIGKILLed: its lock
    is stale at once (its pid is gone on this host), `unlock` removes it (exit 0), and the prune runs."""
    folder = short_tmp / "docs"
    make_tree(folder, files=10)
    for i in range(4):
        (folder / f"big{i}.bin").write_bytes(os.urandom(8 << 20))
    a, b = short_tmp / "a", short_tmp / "b"
    a.mkdir()
    b.mkdir()
    d = start_s3_daemon(a, folder, s3.url)
    try:
        for _ in range(2):  # two snapshots: the first one is for the prune to forget
            d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots")
            wait_until(lambda: json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
                       .get("state") == "completed", 60, "the snapshot")
            (folder / "d0" / "new.txt").write_bytes(os.urandom(100))
        for attempt in range(5):  # a run that ends before the pause reaches it is followed by a bigger one
            for i in range(4):  # new data: steps 4 and 5 take a while after the lock is taken in step 2
                (folder / f"new{attempt}-{i}.bin").write_bytes(os.urandom(16 << 20))
            d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots")
            wait_until(lambda: bucket_keys(s3, "locks/"), 60, "the run's lock in the bucket")
            d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/pause")
            progress = json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
            if progress["state"] not in ("completed", "failed"):
                break
            assert progress["state"] == "completed", progress
            d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/resume")
        else:
            raise AssertionError("five runs each ended before their pause")
        snapshots = len(bucket_keys(s3, "snapshots/"))
        cfg_b = start_config(b, folder, s3.url)
        refused = syncsnapd(b, cfg_b, "prune")
        assert refused.returncode == 2, refused
        assert "shared lock of a snapshot by " in refused.stdout
        assert f"@{HOST} (pid {d.proc.pid}), taken " in refused.stdout
        assert len(bucket_keys(s3, "snapshots/")) == snapshots >= 2  # nothing forgotten
        live = syncsnapd(b, cfg_b, "unlock")
        assert live.returncode == 1, live
        assert f"(pid {d.proc.pid})" in live.stdout and "Kept 1 lock still held" in live.stdout
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        assert len(bucket_keys(s3, "locks/")) == 1  # left behind
        cleared = syncsnapd(b, cfg_b, "unlock")
        assert cleared.returncode == 0, cleared
        assert cleared.stdout.startswith("Removed the stale shared lock of a snapshot by ")
        assert f"(pid {d.proc.pid})" in cleared.stdout
        assert bucket_keys(s3, "locks/") == []
        pruned = syncsnapd(b, cfg_b, "prune")
        assert pruned.returncode == 0, pruned
        assert len(bucket_keys(s3, "snapshots/")) == 1
        check = syncsnapd(b, cfg_b, "check", "--read-data")
        assert check.returncode == 0, check
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def start_config(base: Path, folder: Path, endpoint: str) -> Path:
    """The config of another machine (its own state dir) on the same bucket; no daemon runs on it."""
    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{URL}"',
        f'state_dir = "{base}/state"', "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true",
        "[[projects]]", 'id = "docs"', f'path = "{folder}"', "keep = { last = 1 }", ""]))
    return cfg


# --- a local store on a network filesystem ---------------------------------------------------------------------

def test_a_store_on_a_local_disk_has_no_lock_objects(tmp_path: Path) -> None:
    assert network_filesystem(tmp_path) is None
    with Store.open(tmp_path / "store", writable=True) as store:
        assert store.locks is None
        old, _ = two_snapshots(store)
        store.forget([old])
        store.collect_garbage()
    assert not (tmp_path / "store" / "locks").exists()


def test_a_store_on_a_network_filesystem_is_locked_with_lock_objects(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """TEST DOUBLE: no NFS server can run here, so ``statfs`` is made to answer NFS's magic number for the
    store's directory (the code that reads f_type is the same). Another machine's live lock in ``locks/``
    then blocks the prune, naming it; once gone, the prune runs under a lock object of its own."""
    root = tmp_path / "store"
    monkeypatch.setattr(lockdirs_module, "_statfs_type",
                        lambda path: 0x6969 if str(path).startswith(str(root)) else 0xEF53)
    assert network_filesystem(root) == "nfs"
    assert network_filesystem(tmp_path / "elsewhere") is None
    with Store.open(root, writable=True) as store:
        assert isinstance(store.locks, StoreLocks) and isinstance(store.locks.dir, DirectoryLocks)
        old, _ = two_snapshots(store)
        clock = Clock(time.time())
        elsewhere = StoreLocks(DirectoryLocks(root), clock=clock, host="nfs-client-2")
        with elsewhere.hold(exclusive=False, purpose="snapshot"):
            assert len(os.listdir(root / "locks")) == 1
            with pytest.raises(StoreLocked, match="shared lock of a snapshot by .*@nfs-client-2"):
                store.forget([old])
        seen: list[list[str]] = []
        gc_steps = store.files._on_durable_step

        def watch(label: str) -> None:
            seen.append(os.listdir(root / "locks"))
            if gc_steps is not None:
                gc_steps(label)

        store.files._on_durable_step = watch
        assert store.forget([old]) == [old]
        assert seen and all(len(names) == 1 for names in seen)  # its own exclusive lock, while deleting
        assert os.listdir(root / "locks") == []


def test_bucket_lock_names_are_random_and_unique(s3: MotoServer, tmp_path: Path) -> None:
    with open_store(tmp_path / "a", s3.url) as store:
        assert isinstance(store.locks, StoreLocks) and isinstance(store.locks.dir, BucketLocks)
        names = set()
        for _ in range(3):
            with store.locks.hold(exclusive=False, purpose="snapshot") as held:
                names.add(held.info.name)
        assert len(names) == 3 and all(len(n) == 64 for n in names)


def test_a_prune_whose_lock_was_removed_stops_before_deleting(s3: MotoServer, tmp_path: Path) -> None:
    """`unlock --remove-all` on another machine while a prune holds its lock: the prune finds its lock gone
    before it deletes anything, stops with a clear error, and does not take the lock again by refreshing."""
    clock = Clock(time.time())
    with open_store(tmp_path / "a", s3.url) as store:
        old, _ = two_snapshots(store)
        with pruning_lock(store) as held:
            assert held is not None
            removed, _ = other_machine(store, clock).remove(everything=True)
            assert len(removed) == 1
            with pytest.raises(StoreLocked, match="lock .* was removed .*: stopping before anything is deleted"):
                store.forget([old])
            held.refresh()
            assert bucket_keys(s3, "locks/") == []
        assert old in [s.id for s in store.list_snapshots()]
        assert f"snapshots/{old}.json" in bucket_keys(s3, "snapshots/")


def test_a_lock_that_could_not_be_removed_is_removed_at_the_next_take(s3: MotoServer, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket is unreachable when a run ends (its lock stays there, through a stopped proxy: the test
    double of a service that is down, as in test_s3_store.py); the same daemon's prune is not blocked by it,
    and removes it."""
    from helpers.s3 import ThrottlingProxy
    from syncsnapd.core import _s3 as s3_settings

    monkeypatch.setattr(s3_settings, "BOTOCORE_ATTEMPTS", 2)
    monkeypatch.setattr(s3_settings, "RETRY_DELAYS", (0.2,))
    monkeypatch.setattr(s3_settings, "CONNECT_TIMEOUT", 2.0)
    proxy = ThrottlingProxy(s3.port)
    try:
        with open_store(tmp_path / "a", proxy.url) as store:
            old, _ = two_snapshots(store)
            with writing_lock(store):
                [left] = bucket_keys(s3, "locks/")
                proxy.down()
            proxy.up()
            assert bucket_keys(s3, "locks/") == [left]  # the release failed
            assert store.forget([old]) == [old]  # ours: it blocks nothing of ours
            assert bucket_keys(s3, "locks/") == []  # and is gone with the next take
    finally:
        proxy.close()
