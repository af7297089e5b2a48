"""An S3 store whose bucket is unreachable: opened from its cache (or made new), step 5 waits with backoff,
staging is bounded, and the bucket gets everything once, when it is back.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), reset before each test.
Requests go through :class:`ThrottlingProxy`, which forwards them untouched and logs them (to count what is
sent); a bucket that is down is the proxy not listening (connections refused), since moto keeps its state
in memory and would lose the bucket if it were stopped (tests/service/test_offline_start.py stops moto
itself). Waiting runs under trio's ``autojump_clock``: the backoff's times are exact virtual times, while
the requests themselves (in worker threads) are real.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import boto3
import pytest
import trio
import trio.testing

from helpers.daemon import make_tree
from helpers.s3 import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    MotoServer,
    ThrottlingProxy,
)
from helpers.store import snapshot
from syncsnapd.core import ConfigError, Progress, RunProgress, SyncsnapdError, load_config
from syncsnapd.engine import SnapshotError
from syncsnapd.store import RemoteSpec, Store, StoreError, prepare

URL = f"s3://{BUCKET}/machines/one"
PREFIX = "machines/one/"


def bucket(moto: MotoServer) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    try:
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
                for o in page.get("Contents", [])]
        return {k[len(PREFIX):]: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}
    finally:
        client.close()


def puts(proxy: ThrottlingProxy, since: int = 0) -> Counter[str]:
    """How many times each object of the store's data was sent (multipart requests count as their object
    once each); the run's lock objects (``locks/``, taken once the bucket answers) are not data."""
    sent: Counter[str] = Counter()
    for method, path in proxy.requests[since:]:
        if method == "PUT" and f"/{BUCKET}/{PREFIX}" in path:
            key = path.split("?", 1)[0].split(f"/{BUCKET}/{PREFIX}", 1)[1]
            if not key.startswith("locks/"):
                sent[key] += 1
    return sent


def mark(root: Path, endpoint: str) -> Path:
    prepare(root, RemoteSpec(URL, endpoint=endpoint, path_style=True))
    return root


class Waits:
    """A run's progress, recording the virtual time of each "store unreachable" message; calls
    ``at(n)`` when the n-th one is published."""

    def __init__(self, at: dict[int, object] | None = None) -> None:
        self.events: list[tuple[float, Progress]] = []
        self.waits: list[tuple[float, str]] = []
        self.at = at or {}

    def publish(self, p: Progress) -> None:
        now = trio.current_time()
        self.events.append((now, p))
        if p.message.startswith("store unreachable") and (not self.waits or self.events[-2][1].message != p.message):
            self.waits.append((now, p.message))
            action = self.at.get(len(self.waits))
            if callable(action):
                action()


async def test_opened_offline_from_its_cache_a_run_waits_with_backoff_then_sends_each_object_once(
        autojump_clock: trio.testing.MockClock, proxy: ThrottlingProxy, moto: MotoServer, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=20)
    root = mark(tmp_path / "staging", proxy.url)
    with Store.open(root, writable=True) as store:  # a first start, online: the cache is filled
        first = await snapshot(store, folder, "docs")
    proxy.down()
    (folder / "new.bin").write_bytes(os.urandom(3 << 20))

    with Store.open(root, writable=True, offline_ok=True) as store:
        assert store.remote is not None
        state = store.remote.reachability
        assert not state.reachable and state.code == "store_unreachable" and state.since
        assert [s.id for s in store.list_snapshots()] == [first.id]  # the cached snapshot list
        waits = Waits({3: proxy.up})
        start = trio.current_time()
        before = len(proxy.requests)
        info = await snapshot(store, folder, "docs", RunProgress("docs", "r1", waits.publish))
        end = trio.current_time()
        assert store.remote.reachable

    assert [m for _, m in waits.waits] == ["store unreachable, retrying in 5 s", "store unreachable, retrying in 10 s",
                                           "store unreachable, retrying in 20 s"]
    times = [t for t, _ in waits.waits]
    assert times[0] - start < 1 and (times[1] - times[0], times[2] - times[1], end - times[2]) == (5, 10, 20)
    first_wait = next(i for i, (_, p) in enumerate(waits.events) if p.message.startswith("store unreachable"))
    assert {p.step for _, p in waits.events[first_wait:]} == {5}  # it waited in step 5
    sent = puts(proxy, before)
    assert set(sent.values()) == {1}, sent  # nothing twice
    assert sorted(k.split("/")[0] for k in sent) == ["index", "packs", "snapshots"]
    assert f"snapshots/{info.id}.json" in bucket(moto)
    assert list((root / "packs").glob("*/*.pack")) == []  # nothing left staged


async def test_a_waiting_run_holds_while_paused_and_ends_at_once_when_cancelled(
        autojump_clock: trio.testing.MockClock, proxy: ThrottlingProxy, moto: MotoServer, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=5)
    proxy.down()
    root = mark(tmp_path / "staging", proxy.url)
    with Store.open(root, writable=True, offline_ok=True) as store:
        waits = Waits()
        progress = RunProgress("docs", "r1", waits.publish)
        waiting = trio.Event()  # no polling: a sleeping test would move the virtual clock while threads work
        waits.at[1] = lambda: (progress.pause(), waiting.set())
        # No outer deadline: while worker threads work, the virtual clock would jump to it.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(snapshot, store, folder, "docs", progress)
            await waiting.wait()
            paused_at = trio.current_time()
            await trio.sleep(120)  # no attempt while paused: still the first wait
            assert len(waits.waits) == 1
            assert waits.events[-1][1].message == ("Paused: resume to continue (was: store unreachable, "
                                                   "retrying in 5 s)")
            progress.cancel()
            nursery.cancel_scope.cancel()
            cancelled_at = trio.current_time()
        assert trio.current_time() == cancelled_at and cancelled_at - paused_at == 120
        assert store.list_snapshots() == []
    proxy.up()
    assert not any(k.startswith("snapshots/") for k in bucket(moto))


async def test_a_store_never_seen_is_made_offline_then_created_in_the_bucket(
        autojump_clock: trio.testing.MockClock, proxy: ThrottlingProxy, moto: MotoServer, tmp_path: Path) -> None:
    moto.reset()  # not even the bucket exists yet
    folder = tmp_path / "docs"
    make_tree(folder, files=10)
    proxy.down()
    root = mark(tmp_path / "staging", proxy.url)
    with Store.open(root, writable=True, offline_ok=True) as store:
        assert (root / "remote-pending").exists() and (root / "config.json").exists()
        waits = Waits({1: proxy.up})
        before = len(proxy.requests)
        info = await snapshot(store, folder, "docs", RunProgress("docs", "r1", waits.publish))
    assert len(waits.waits) == 1
    objects = bucket(moto)
    assert objects["config.json"] == (root / "config.json").read_bytes()
    assert f"snapshots/{info.id}.json" in objects
    assert set(puts(proxy, before).values()) == {1}
    assert not (root / "remote-pending").exists()
    # The next open is an ordinary one: the store is the bucket's.
    with Store.open(root, writable=True) as store:
        assert [s.id for s in store.list_snapshots()] == [info.id]


async def test_a_store_made_offline_is_not_mixed_into_another_store_in_the_bucket(
        proxy: ThrottlingProxy, moto: MotoServer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    with Store.open(mark(other, proxy.url), writable=True):
        pass  # another machine made the store in the bucket
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    config = json.loads(client.get_object(Bucket=BUCKET, Key=PREFIX + "config.json")["Body"].read())
    config["pack_size"] //= 2  # with other settings
    client.put_object(Bucket=BUCKET, Key=PREFIX + "config.json", Body=json.dumps(config).encode())
    client.close()
    folder = tmp_path / "docs"
    make_tree(folder, files=3)
    proxy.down()
    root = mark(tmp_path / "staging", proxy.url)
    with Store.open(root, writable=True, offline_ok=True) as store:
        proxy.up()
        with pytest.raises(SnapshotError) as info:
            await snapshot(store, folder, "docs")
    assert info.value.code == "store_error"
    assert "holds another store" in info.value.message and str(root) in info.value.message
    assert not any(k.startswith("snapshots/") for k in bucket(moto))


async def test_staging_is_bounded_while_the_bucket_is_unreachable(proxy: ThrottlingProxy, moto: MotoServer,
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"big{i}.bin").write_bytes(os.urandom(3 << 20))
    proxy.down()
    root = mark(tmp_path / "staging", proxy.url)
    with Store.open(root, writable=True, offline_ok=True) as store:
        assert store.remote is not None
        store.remote.staging_max = 4 << 20
        with pytest.raises(SyncsnapdError) as info:
            await snapshot(store, folder, "docs")
        assert info.value.code == "staging_full"
        assert "daemon.s3.staging_max" in info.value.message and "unreachable" in info.value.message
        assert store.remote.staged_bytes() <= 8 << 20  # it stopped near the bound, not at 12 MiB
        # Back: the bound does not apply to a bucket that answers, and what was staged goes with this run.
        proxy.up()
        done = await snapshot(store, folder, "docs")
        assert done.files_new == 4
        assert store.remote.staged_bytes() == 0
    assert f"snapshots/{done.id}.json" in bucket(moto)


def test_staging_max_is_configured_with_a_size(tmp_path: Path) -> None:
    def load(value: str) -> int:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[daemon]\nstore = "s3://bkt/p"\nstate_dir = "{tmp_path}/st"\n[daemon.s3]\n'
                       f"staging_max = {value}\n")
        c = load_config(cfg, env={"HOME": str(tmp_path)})
        assert c.s3 is not None
        return c.s3.staging_max

    assert load('"4 GiB"') == 4 << 30
    assert load('"500MiB"') == 500 << 20
    assert load(str(100 << 20)) == 100 << 20
    for bad in ('"1 MiB"', '"lots"', "true", '"4 GB"'):
        with pytest.raises(ConfigError, match="daemon.s3.staging_max"):
            load(bad)
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[daemon]\nstore = "s3://bkt/p"\nstate_dir = "{tmp_path}/st"\n')
    s3 = load_config(cfg, env={"HOME": str(tmp_path)}).s3
    assert s3 is not None and s3.staging_max == 4 << 30


def test_the_daemon_open_of_an_unreachable_bucket_fails_without_offline_ok(proxy: ThrottlingProxy,
                                                                           tmp_path: Path) -> None:
    """The offline commands (check, restore, ...) still say the bucket is unreachable."""
    proxy.down()
    with pytest.raises(StoreError) as info:
        Store.open(mark(tmp_path / "staging", proxy.url), writable=True)
    assert info.value.code == "store_unreachable"
