"""The chunkers (store/_chunker.py): streamed cuts equal whole-content cuts, the cut points of a store's
default chunker stay pinned, small content stays one chunk, and a config's chunker is read strictly."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from syncsnapd.store import Chunker, FastCDC2020, FixedChunker
from syncsnapd.store._chunker import chunker_from_config
from syncsnapd.store._format import CDC_AVG, CDC_MAX, CDC_MIN, CDC_NORMALIZATION

MiB = 1 << 20
STORE_CDC = FastCDC2020(CDC_MIN, CDC_AVG, CDC_MAX, CDC_NORMALIZATION)


def pseudo_random(n: int, seed: bytes = b"syncsnap") -> bytes:
    return blake3.blake3(seed).digest(length=n)


def lengths_in_memory(c: Chunker, data: bytes) -> list[int]:
    return [len(p) for p in c.split_bytes(data)]


def lengths_from_file(c: Chunker, path: Path, size: int | None = None) -> list[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        view = memoryview(bytearray(c.buffer_size))
        return [len(p) for p in c.split(fd, view, os.fstat(fd).st_size if size is None else size)]
    finally:
        os.close(fd)


@pytest.mark.parametrize("chunker", [STORE_CDC, FastCDC2020(64 * 1024, 256 * 1024, 1024 * 1024, 1),
                                     FixedChunker(MiB)], ids=repr)
@pytest.mark.parametrize("size", [0, 1, 100_000, 3 * MiB + 17, 21 * MiB + 5])
def test_a_file_read_through_the_buffer_is_cut_as_the_whole_content(
        chunker: Chunker, size: int, tmp_path: Path) -> None:
    data = pseudo_random(size, size.to_bytes(8, "little"))
    (tmp_path / "f").write_bytes(data)
    whole = lengths_in_memory(chunker, data)
    assert lengths_from_file(chunker, tmp_path / "f") == whole
    assert sum(whole) == size and all(whole)


def test_reads_of_any_length_give_the_same_cuts() -> None:
    # The engine reads with os.readv; a read may return less than asked. The cuts must not care.
    data = pseudo_random(13 * MiB + 999)
    pos = 0
    steps = iter([1, 4095, 65536, 7, 1_000_003] * 1000)

    def readinto(b: memoryview) -> int:
        nonlocal pos
        n = min(len(b), next(steps), len(data) - pos)
        b[:n] = data[pos:pos + n]
        pos += n
        return n

    view = memoryview(bytearray(STORE_CDC.buffer_size))
    assert [len(p) for p in STORE_CDC.split_stream(readinto, view, len(data))] == \
        lengths_in_memory(STORE_CDC, data)


def test_a_file_that_is_shorter_than_its_size_ends_with_what_was_read(tmp_path: Path) -> None:
    data = pseudo_random(5 * MiB)
    (tmp_path / "f").write_bytes(data)
    assert lengths_from_file(STORE_CDC, tmp_path / "f", size=9 * MiB) == lengths_in_memory(STORE_CDC, data)
    # ... and reading stops at the size given, however long the file is now.
    assert sum(lengths_from_file(STORE_CDC, tmp_path / "f", size=MiB + 3)) == MiB + 3


def test_the_cut_points_of_new_stores_do_not_move() -> None:
    # Chunks already stored are re-used only while the cut points stay where they were: a pyfastcdc
    # upgrade (or a change of ours) that moved them would silently stop deduplicating against every
    # existing store. These are the cut points of version 2's chunker on a fixed input.
    lengths = lengths_in_memory(STORE_CDC, pseudo_random(8 * MiB))
    assert lengths == PINNED_LENGTHS
    assert STORE_CDC.describe() == {"algorithm": "fastcdc-2020", "min": 256 * 1024, "avg": 512 * 1024,
                                    "max": 2 * MiB, "normalization": 2}


# Recorded with pyfastcdc 0.3.1 when version 2 was made.
PINNED_LENGTHS = [475649, 600362, 665994, 718867, 585042, 541687, 458973, 864244, 540106, 709333, 806581,
                  533203, 643533, 245034]


def test_content_up_to_the_minimum_is_one_chunk_and_no_chunk_is_out_of_bounds() -> None:
    for size in (1, 4096, CDC_MIN):
        assert lengths_in_memory(STORE_CDC, pseudo_random(size)) == [size]
    lengths = lengths_in_memory(STORE_CDC, pseudo_random(40 * MiB))
    assert all(CDC_MIN <= n <= CDC_MAX for n in lengths[:-1]) and 0 < lengths[-1] <= CDC_MAX
    # Long runs of one byte never match the mask: cut at the maximum.
    assert lengths_in_memory(STORE_CDC, bytes(5 * MiB)) == [CDC_MAX, CDC_MAX, MiB]


@pytest.mark.parametrize(("spec", "message"), [
    ({"algorithm": "rabin", "min": 1, "avg": 2, "max": 3}, '"algorithm" is \'rabin\''),
    ({"min": 1}, '"algorithm" is missing'),
    ({"algorithm": "fastcdc-2020", "min": 262144, "avg": 524288, "max": 2097152, "normalization": 2,
      "seed": 7}, '"seed" is a parameter of fastcdc-2020'),
    ({"algorithm": "fastcdc-2020", "min": 262144, "avg": 500000, "max": 2097152, "normalization": 2},
     '"avg" is 500000, not a power of two'),
    ({"algorithm": "fastcdc-2020", "min": 262144, "avg": 524288, "max": 2097152, "normalization": 9},
     '"normalization" is 9'),
    ({"algorithm": "fastcdc-2020", "min": 262144, "avg": 524288, "normalization": 2}, '"max" is missing'),
    ({"algorithm": "fixed", "size": "1 MiB"}, '"size" is \'1 MiB\''),
])
def test_a_chunker_this_version_does_not_know_is_refused_by_name(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        chunker_from_config(spec)
    assert message in str(info.value)


def test_a_chunker_reads_back_from_what_it_writes() -> None:
    for c in (STORE_CDC, FixedChunker(MiB)):
        assert chunker_from_config(c.describe()).describe() == c.describe()
