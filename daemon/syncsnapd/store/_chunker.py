"""Cutting file content into chunks, as a store's ``config.json`` says: fixed-size chunks (format version
1) or content-defined chunks (FastCDC 2020, version 2), read through one reused buffer per worker.

Content-defined chunking puts a cut where a rolling hash of the last bytes matches a mask, so a cut point
depends on the bytes around it, not on its offset: one byte inserted at the start of a large file changes
one chunk, where fixed chunks shift and every chunk after the insert is new (docs/chunking.md measures
both). The cutting itself is ``pyfastcdc``'s compiled FastCDC 2020 (Xia et al., "The Design of Fast
Content-Defined Chunking for Data Deduplication Based Storage Systems", IEEE TPDS 2020: gear hash, cut-
point skipping up to ``min``, normalized chunking, two bytes rolled per step), which releases the GIL
while it scans, so two workers cut in parallel.

``"fastcdc-2020"`` in a store's config names exactly these cut points: pyfastcdc's gear table (the
paper's reference code, seed 0), its masks for ``avg`` and the normalization level, no cut before
``min``, a forced cut at ``max``. Chunks already stored are only re-used while the cut points stay the
same, so tests/store/test_chunking.py pins the cut points of a fixed input: a library upgrade that moved
them would fail there rather than silently stop deduplicating against existing stores.

Streaming: a cut decision looks at most ``max`` bytes past the chunk's start, so the reader keeps a
buffer of ``max`` plus a read unit (:attr:`Chunker.buffer_size`); chunks whose cut is certain are handed
out as views into that buffer, and the undecided tail (the start of a chunk whose cut is not in the
buffer yet) moves to its front before the next read.
Memory is that one buffer per worker, whatever the file size, and the cut points are exactly those of the
whole file in one piece.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pyfastcdc

__all__ = ["Chunker", "FastCDC2020", "FixedChunker", "chunker_from_config"]

# The read unit past the largest chunk: reads of at least this many bytes; the tail moved to the buffer's
# front each time is at most ``max`` bytes (a memmove, cheap next to hashing and compressing them).
READ_UNIT = 4 << 20


class Chunker:
    """How a store cuts content into chunks; immutable, shared by every worker thread."""

    #: The size a worker's reusable buffer must have (see :meth:`split`).
    buffer_size: int
    #: Content up to this size is always one chunk.
    single_chunk_limit: int

    def describe(self) -> dict[str, Any]:
        """The ``"chunker"`` object of ``config.json`` that names this chunker."""
        raise NotImplementedError

    def _cuts(self, buf: memoryview, final: bool) -> Iterator[int]:
        """Lengths of the chunks at the start of ``buf`` whose end is decided (all of ``buf`` if
        ``final``, the end of the content), in order."""
        raise NotImplementedError

    def split(self, fd: int, view: memoryview, size: int) -> Iterator[memoryview]:
        """The chunks of the first ``size`` bytes of open file ``fd`` (fewer if it ends sooner), read
        into ``view`` (at least :attr:`buffer_size` bytes). Each chunk is a view into ``view``, valid
        until the next one is asked for.

        Raises:
            OSError: a read failed.
        """
        return self.split_stream(lambda b: os.readv(fd, (b,)), view, size)

    def split_stream(self, readinto: Callable[[memoryview], int], view: memoryview,
                     size: int) -> Iterator[memoryview]:
        """As :meth:`split`, from any source: ``readinto(b)`` fills the start of ``b`` and returns how
        many bytes it put there (0 at the end)."""
        if len(view) < self.buffer_size:
            raise ValueError(f"buffer of {len(view)} bytes, this chunker needs {self.buffer_size}")
        capacity = len(view)
        filled = 0
        remaining = size
        while True:
            while filled < capacity and remaining > 0:
                n = readinto(view[filled:filled + min(capacity - filled, remaining)])
                if n == 0:
                    remaining = 0  # shorter than it was: what was read is the content
                    break
                filled += n
                remaining -= n
            final = remaining == 0
            start = 0
            for length in self._cuts(view[:filled], final):
                yield view[start:start + length]
                start += length
            if final:
                return
            view[:filled - start] = view[start:filled]  # memoryview assignment is a memmove
            filled -= start

    def split_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """The chunks of ``data``, all in memory (views into it)."""
        view = memoryview(data)
        start = 0
        for length in self._cuts(view, True):
            yield view[start:start + length]
            start += length


class FixedChunker(Chunker):
    """Chunks of ``size`` bytes, the last one shorter: format version 1."""

    def __init__(self, size: int) -> None:
        self.size = self.buffer_size = self.single_chunk_limit = size

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "fixed", "size": self.size}

    def _cuts(self, buf: memoryview, final: bool) -> Iterator[int]:
        size = self.size
        rest = len(buf)
        while rest >= size:
            yield size
            rest -= size
        if final and rest:
            yield rest

    def __repr__(self) -> str:
        return f"FixedChunker({self.size})"


class FastCDC2020(Chunker):
    """FastCDC 2020 (pyfastcdc): chunks of ``min`` to ``max`` bytes, about ``avg`` + ``min`` on
    average (cut-point skipping adds ``min``); ``normalization`` is the paper's NC level."""

    def __init__(self, min_size: int, avg_size: int, max_size: int, normalization: int) -> None:
        self.min_size = self.single_chunk_limit = min_size
        self.avg_size = avg_size
        self.max_size = max_size
        self.normalization = normalization
        self.buffer_size = max_size + READ_UNIT
        self._cdc = pyfastcdc.FastCDC(avg_size, min_size=min_size, max_size=max_size,
                                      normalized_chunking=normalization)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "fastcdc-2020", "min": self.min_size, "avg": self.avg_size,
                "max": self.max_size, "normalization": self.normalization}

    def _cuts(self, buf: memoryview, final: bool) -> Iterator[int]:
        # pyfastcdc scans a chunk from ``min`` on, for at most ``max`` bytes, and cuts at the first
        # position whose gear hash matches the mask; with fewer bytes than that it scans a prefix of the
        # same positions with the same masks, and cuts at the end of what it has when nothing matched.
        # So a cut before the end of ``buf`` (a match) or at ``max`` is the one of the whole content;
        # only a chunk that runs to the end of ``buf`` short of ``max`` is undecided until more is read.
        total = len(buf)
        limit = self.max_size
        for chunk in self._cdc.cut_buf(buf):
            length = chunk.length
            if not final and chunk.offset + length == total and length < limit:
                return
            yield length

    def __repr__(self) -> str:
        return (f"FastCDC2020(min={self.min_size}, avg={self.avg_size}, max={self.max_size}, "
                f"normalization={self.normalization})")


# What pyfastcdc accepts (its documented bounds); the average must be a power of two, so that its masks
# (bit counts from log2 of the average) name it exactly.
_CDC_BOUNDS = {"min": (64, 1 << 20), "avg": (256, 4 << 20), "max": (1024, 16 << 20), "normalization": (0, 3)}
_FIXED_BOUNDS = (1 << 10, 1 << 26)


def _param(spec: dict[str, Any], key: str, low: int, high: int) -> int:
    value = spec.get(key)
    if type(value) is not int or not low <= value <= high:
        shown = "missing" if key not in spec else repr(value)[:40]
        raise ValueError(f'"{key}" is {shown}, not a whole number from {low} to {high}')
    return value


def chunker_from_config(spec: dict[str, Any]) -> Chunker:
    """The chunker a ``config.json`` ``"chunker"`` object names (what :meth:`Chunker.describe` writes).

    Raises:
        ValueError: an algorithm, a key or a value this syncsnapd does not know (named in the message).
    """
    algorithm = spec.get("algorithm")
    if algorithm == "fastcdc-2020":
        keys = {"algorithm", *_CDC_BOUNDS}
    elif algorithm == "fixed":
        keys = {"algorithm", "size"}
    else:
        shown = "missing" if "algorithm" not in spec else repr(algorithm)[:40]
        raise ValueError(f'"algorithm" is {shown}, which this syncsnapd does not know '
                         '(it knows "fastcdc-2020" and "fixed")')
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise ValueError(f'"{unknown[0]}" is a parameter of {algorithm} this syncsnapd does not know')
    if algorithm == "fixed":
        return FixedChunker(_param(spec, "size", *_FIXED_BOUNDS))
    low, avg, high, nc = (_param(spec, k, *bounds) for k, bounds in _CDC_BOUNDS.items())
    if avg & (avg - 1):
        raise ValueError(f'"avg" is {avg}, not a power of two')
    if not low <= avg <= high:
        raise ValueError(f'"min" {low}, "avg" {avg} and "max" {high} are not in order')
    return FastCDC2020(low, avg, high, nc)
