"""Reads of the mount's files from the store's chunks, called in-process on the filesystem's operations
(without the kernel, so that what is read from the store can be counted): the cache stays within its
bound, a read starts reading the next chunk ahead, and no pack file stays open once it is closed."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from helpers.store import snapshot
from syncsnapd.mount._catalog import Catalog
from syncsnapd.mount._chunks import ChunkCache
from syncsnapd.mount._inodes import Node
from syncsnapd.mount._ops import AHEAD_CHUNKS, MountOps
from syncsnapd.store import Store

MIB = 1 << 20


async def open_big(tmp_path: Path, size: int) -> tuple[Store, bytes, str]:
    (tmp_path / "src").mkdir()
    data = os.urandom(size)
    (tmp_path / "src" / "big").write_bytes(data)
    with Store.open(tmp_path / "store", writable=True) as store:
        summary = await snapshot(store, tmp_path / "src", "p")
    return Store.open(tmp_path / "store", writable=False), data, summary.id


async def test_a_read_reads_the_next_chunk_ahead_and_the_cache_stays_bounded(tmp_path: Path) -> None:
    store, data, sid = await open_big(tmp_path, 12 * MIB)
    with store:
        catalog = Catalog([store])
        await catalog.refresh()
        async with trio.open_nursery() as nursery:
            ops = MountOps(catalog, [store], background=nursery)
            cache: ChunkCache = ops.caches()[0]
            cache._limit = 3 * MIB  # a small bound, to see it hold
            info = await ops.open(ops.inodes.inode(Node("entry", "p", sid, "big")), os.O_RDONLY, None)  # type: ignore[arg-type]
            starts = ops._files[info.fh].starts
            assert len(starts) >= 5, "the file should span several chunks"
            assert await ops.read(info.fh, 0, 4096) == data[:4096]
            # The next AHEAD_CHUNKS chunks are being read ahead: reading the second waits for that read, and
            # reads only one more chunk ahead.
            with trio.fail_after(30):
                assert await ops.read(info.fh, starts[1], 4096) == data[starts[1]:starts[1] + 4096]
            assert 2 <= cache.reads <= 2 + AHEAD_CHUNKS
            got = bytearray()
            for at in range(0, len(data), 128 * 1024):
                got += await ops.read(info.fh, at, 128 * 1024)
                assert cache._size <= 3 * MIB
            assert bytes(got) == data
            await ops.release(info.fh)
            nursery.cancel_scope.cancel()
        # Unmounted: no pack file of the store is left open (worker threads may outlive the mount).
        cache.close()
        assert open_packs(tmp_path / "store") == []


def open_packs(store: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(store)) and target.endswith(".pack"):
            out.append(target)
    return out
