"""The pack writer under load: blobs placed by many threads at once, with buffers written out of the lock,
all read back; a buffer that cannot be written fails the run and leaves nothing behind."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from helpers.disk import fill, small_tmpfs
from syncsnapd.store import MasterKey, NewStore, Store, StoreError, _writer, hash_bytes

MiB = 1 << 20


def test_blobs_added_by_many_threads_at_once_all_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads add blobs of 1 byte to 300 KB (the same ones too, as equal files do), over packs of
    2 MiB written 64 KiB at a time (scaled down from 16 MiB and 4 MiB): buffers are handed out and
    written while other threads go on placing blobs, and seals wait for the writes in flight."""
    monkeypatch.setattr(_writer, "FLUSH_BYTES", 64 * 1024)
    Store.open(tmp_path / "store", writable=True).close()
    cfg = tmp_path / "store" / "config.json"
    cfg.write_text(cfg.read_text().replace(str(16 * MiB), str(2 * MiB)))
    rng = random.Random(14)
    # Half incompressible, half compressible, so stored sizes vary as in a real tree.
    blobs = [os.urandom(rng.randint(1, 300_000)) if i % 2 else bytes([i % 251]) * rng.randint(1, 300_000)
             for i in range(120)]
    errors: list[BaseException] = []

    with Store.open(tmp_path / "store", writable=True) as store:
        writer = store.begin_write()

        def add(order: list[bytes]) -> None:
            try:
                for data in order:
                    view = memoryview(bytearray(data))  # a reused buffer, as the engine's
                    writer.add_chunk(hash_bytes(data), view)
                    view[:] = b"\0" * len(view)  # the caller may reuse it at once
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(rng.sample(blobs, len(blobs)),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        writer.finish()
        writer.committed()
        assert writer.packs_written >= 4
        assert os.listdir(store.root / "tmp") == []
    with Store.open(tmp_path / "store", writable=False) as store:
        for data in blobs:
            assert store.read_chunk(hash_bytes(data)) == data
        assert store.check().ok


def test_a_buffer_that_cannot_be_written_fails_and_leaves_no_temporary_pack(tmp_path: Path) -> None:
    """A full disk, for real: the write of a full buffer fails with a store error naming the store, and
    aborting removes the half-written pack."""
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        with Store.open(disk / "store", writable=True) as store:
            writer = store.begin_write()
            fill(disk)
            with pytest.raises(StoreError, match="cannot write to store"):
                for _ in range(64):
                    data = os.urandom(MiB)
                    writer.add_chunk(hash_bytes(data), data)
            writer.abort()
            assert os.listdir(store.root / "tmp") == []


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_pack_of_more_blobs_than_one_write_takes_reads_back_whole(tmp_path: Path, encrypted: bool) -> None:
    """3,000 blobs of 1 to 40 bytes make one pack whose last write has more buffers than one ``pwritev``
    takes (IOV_MAX, 1,024 on Linux; two per blob when sealed): every blob reads back, and check is clean."""
    create = NewStore(master=MasterKey.generate()) if encrypted else None
    key = create.master if create is not None else None
    blobs = [i.to_bytes(2, "big") + os.urandom(i % 39) for i in range(3000)]
    with Store.open(tmp_path / "store", writable=True, create=create, key=key) as store:
        writer = store.begin_write()
        for data in blobs:
            writer.add_chunk(store.chunk_id(data), data)
        writer.finish()
        writer.committed()
        assert writer.packs_written == 1
    with Store.open(tmp_path / "store", writable=False, key=key) as store:
        assert [store.read_chunk(store.chunk_id(d)) for d in blobs] == blobs
        assert store.check(read_data=True).ok
