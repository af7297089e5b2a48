"""The run's per-file records (``engine/_entrylog.py``): entries come back exactly as they went in, in walk
order, however the buffers grow and whichever threads fill them; and a snapshot large enough to grow them
records every file."""

from __future__ import annotations

import threading
from pathlib import Path

from helpers.store import backdate, snapshot, write_files
from syncsnapd.engine._entrylog import EntryLog, Records, pack_entry
from syncsnapd.store import Entry, Store, iter_entries


def _file(i: int) -> Entry:
    # Long paths and many chunks, so a few thousand entries outgrow the first 1 MiB of the buffers.
    name = f"d{i % 7}/{'n' * 150}-{i}\udcff\u00e9.txt"
    chunks = [f"{(i * 31 + k) % 2**256:064x}" for k in range(i % 5)]
    return Entry(name, "file", i * 1000, -5 + i * 10**9, 0o644, 2**63 + i, chunks)


def test_entries_round_trip_in_walk_order_across_growth_and_threads() -> None:
    log = EntryLog()
    try:
        expected: list[Entry | None] = []
        reserved: list[tuple[int, Entry | None]] = []
        for i in range(20_000):
            if i % 3 == 0:
                pos = log.reserve()  # filled later by a "reader"; every 9th omitted
                e = None if i % 9 == 0 else _file(i)
                reserved.append((pos, e))
                expected.append(e)
            elif i % 3 == 1:
                e = Entry(f"dir{i}", "dir", 0, i, 0o755, i, None)
                assert log.add(*e) == len(expected)
                expected.append(e)
            else:
                e = Entry(f"link{i}", "symlink", 3, i, 0o777, i, f"../t\udc80{i}")
                log.add(*e)
                expected.append(e)
        dropped = log.add("gone", "dir", 0, 1, 0o755, 1, None)
        expected.append(None)
        log.drop(dropped)

        def reader(part: list[tuple[int, Entry | None]]) -> None:
            for pos, e in part:
                if e is not None:
                    log.fill(pos, pack_entry(*e))

        threads = [threading.Thread(target=reader, args=(reserved[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        entries = log.entries()
        want = [e for e in expected if e is not None]
        assert len(entries) == len(want)
        assert entries[0] == want[0] and entries[-1] == want[-1]
        # As the store's grouping reads it: iterate, slicing each group just iterated.
        got: list[Entry] = []
        start = 0
        for i, _e in enumerate(entries):
            if i % 257 == 256:
                got.extend(entries[start:i + 1])
                start = i + 1
        got.extend(entries[start:])
        assert got == want
        assert list(entries) == want  # and once more, straight through
    finally:
        log.close()


def test_records_grow_past_their_first_mapping() -> None:
    records = Records()
    try:
        blobs = [bytes([i % 251]) * (100_000 + i) for i in range(40)]  # ~4 MB: several doublings
        offsets = [records.append(b) for b in blobs]
        for at, b in zip(offsets, blobs, strict=True):
            assert records.buffer[at:at + len(b)] == b
    finally:
        records.close()


async def test_a_snapshot_of_many_files_records_each_exactly(tmp_path: Path) -> None:
    # Enough files for the run's buffers to grow several times; names that are not UTF-8 included.
    src = tmp_path / "src"
    files = {f"d{i % 13}/{'x' * 150}{i}.txt": b"%d" % i for i in range(8_000)}
    write_files(src, files | {"d0/caf\udce9": b"latin-1"})  # b"caf\xe9" on disk
    backdate(src)
    store = Store.open(tmp_path / "store", writable=True)
    try:
        summary = await snapshot(store, src)
        got = {e.path: e for e in iter_entries(store, summary.id)}
        assert {p for p, e in got.items() if e.kind == "file"} == set(files) | {"d0/caf\udce9"}
        assert got["d5/" + "x" * 150 + "5.txt"].size == 1
        # Unchanged on a second run: every file re-used from the first, none read again.
        again = await snapshot(store, src)
        assert again.files_unchanged == len(files) + 1 and again.files_new == 0
        assert list(iter_entries(store, again.id)) == list(iter_entries(store, summary.id))
    finally:
        store.close()
