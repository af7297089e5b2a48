"""Packs go to the bucket while a run still reads files (store/_early_upload.py), so step 5 sends only the rest.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), reset before each test,
through :class:`ThrottlingProxy`, which forwards requests untouched and logs them (to count uploads). Each
test pauses its run in step 4 once 40 MiB are read (two 16 MiB packs full), so what reaches the bucket
before the run goes on was sent early, whatever the machine's speed.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
import trio

from helpers.daemon import make_tree
from helpers.s3 import BUCKET, MotoServer, ThrottlingProxy
from helpers.shared_bucket import bucket_objects
from helpers.store import snapshot
from syncsnapd.core import Progress, RunCancelled, RunProgress
from syncsnapd.engine import SnapshotError
from syncsnapd.store import RemoteSpec, Store, prepare

URL = f"s3://{BUCKET}/machines/one"
MiB = 1 << 20


def open_store(root: Path, endpoint: str) -> Store:
    prepare(root, RemoteSpec(URL, endpoint=endpoint, path_style=True))
    return Store.open(root, writable=True)


def puts(proxy: ThrottlingProxy, folder: str) -> collections.Counter[str]:
    """How many times each object under ``folder/`` was PUT (packs are under the multipart threshold)."""
    prefix = f"/{BUCKET}/machines/one/{folder}/"
    return collections.Counter(path.split("?", 1)[0] for method, path in proxy.requests
                               if method == "PUT" and path.startswith(prefix))


def tree(folder: Path) -> None:
    make_tree(folder, files=30)
    (folder / "big.bin").write_bytes(os.urandom(96 * MiB))  # incompressible: ~6 packs, read first


async def paused_with_a_pack_sent(progress: RunProgress, proxy: ThrottlingProxy) -> None:
    """Pause the run in step 4 once 40 MiB are read (two packs full), then wait until a pack is in the
    bucket while the run stays paused there."""
    with trio.fail_after(60):
        # Polled: the workers count bytes from their threads, and the proxy logs from its own.
        while not (progress.current().step == 4 and progress.current().bytes_done >= 40 * MiB):  # noqa: ASYNC110
            await trio.sleep(0.002)
        assert progress.pause()
        while not puts(proxy, "packs"):  # noqa: ASYNC110
            await trio.sleep(0.02)
    assert progress.current().step == 4


async def test_packs_reach_the_bucket_during_step_4_and_none_is_sent_twice(proxy: ThrottlingProxy,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    tree(folder)
    events: list[Progress] = []
    progress = RunProgress("docs", "r-test", events.append)
    with open_store(tmp_path / "staging", proxy.url) as store:
        async with trio.open_nursery() as nursery:
            result: list[object] = []

            async def run() -> None:
                result.append(await snapshot(store, folder, "docs", progress))

            nursery.start_soon(run)
            await paused_with_a_pack_sent(progress, proxy)
            progress.resume()
        packs = puts(proxy, "packs")
        assert len(packs) >= 6 and set(packs.values()) == {1}  # every pack sent once
        assert set(puts(proxy, "index").values()) == {1}
        # Step 5 counted only what it sent itself, exactly.
        step5 = progress.current()
        assert step5.step == 5 and step5.bytes_done == step5.bytes_total
        assert list((tmp_path / "staging" / "packs").glob("*/*.pack")) == []
        assert store.check().ok


async def test_a_run_cancelled_after_sending_packs_early_leaves_nothing_to_send_twice(
        proxy: ThrottlingProxy, tmp_path: Path) -> None:
    """The packs it sent stay in the bucket (unreferenced, as after a kill in step 5); the next run finds
    their blobs in the index and sends neither them nor their data again."""
    folder = tmp_path / "docs"
    tree(folder)
    progress = RunProgress("docs", "r-test", lambda _: None)
    with open_store(tmp_path / "staging", proxy.url) as store:
        async def run() -> None:
            with pytest.raises(RunCancelled):
                await snapshot(store, folder, "docs", progress)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await paused_with_a_pack_sent(progress, proxy)
            progress.cancel()
        assert store.list_snapshots() == []
        assert os.listdir(tmp_path / "staging" / "tmp") == []
        sent_early = set(puts(proxy, "packs"))
        done = await snapshot(store, folder, "docs")
        assert done.files_new == done.files > 30  # no snapshot before: every file is new
        packs = puts(proxy, "packs")
        assert set(packs.values()) == {1}
        assert sent_early < set(packs)
        assert store.check().ok


async def test_a_bucket_that_goes_down_in_step_4_gets_the_rest_in_step_5_once_back(proxy: ThrottlingProxy,
                                                                                  tmp_path: Path) -> None:
    """Sending early fails once the bucket is gone; the packs stay staged, the run waits in step 5 saying
    so, and sends them (each once) when the bucket answers again."""
    folder = tmp_path / "docs"
    tree(folder)
    progress = RunProgress("docs", "r-test", lambda _: None)
    with open_store(tmp_path / "staging", proxy.url) as store:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(snapshot, store, folder, "docs", progress)
            await paused_with_a_pack_sent(progress, proxy)
            proxy.down()
            progress.resume()
            with trio.fail_after(60):
                while "store unreachable, retrying in" not in (progress.current().message or ""):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert progress.current().step == 5
            proxy.up()
        assert len(store.list_snapshots()) == 1
        packs = puts(proxy, "packs")
        assert len(packs) >= 6 and set(packs.values()) == {1}
        assert list((tmp_path / "staging" / "packs").glob("*/*.pack")) == []
        assert store.check().ok


async def test_credentials_refused_while_sending_early_end_the_run_before_every_file_is_read(
        proxy: ThrottlingProxy, moto: MotoServer, tmp_path: Path) -> None:
    """The run cannot succeed: it fails with store_auth at its next chunk, in step 4, not after reading the
    whole folder."""
    folder = tmp_path / "docs"
    tree(folder)
    progress = RunProgress("docs", "r-test", lambda _: None)
    failed: list[SnapshotError] = []
    with open_store(tmp_path / "staging", proxy.url) as store:
        async def run() -> None:
            with pytest.raises(SnapshotError) as info:
                await snapshot(store, folder, "docs", progress)
            failed.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            with trio.fail_after(60):
                while not (progress.current().step == 4 and progress.current().bytes_done >= 40 * MiB):  # noqa: ASYNC110
                    await trio.sleep(0.002)
                assert progress.pause()
                moto.enforce_auth()  # the key stops being accepted (revoked) while the run is paused
                while not puts(proxy, "packs"):  # noqa: ASYNC110 - a pack sent early, and refused
                    await trio.sleep(0.02)
            await trio.sleep(2)  # its answer (403) reaches the run, still paused in step 4
            progress.resume()
        moto.accept_any_credentials()
    assert failed[0].code == "store_auth"
    assert progress.current().step == 4  # ended there, at its next chunk: step 5 never began
    assert not any(k.startswith("snapshots/") for k in bucket_objects(moto.url, "machines/one/"))
