"""Chunking: fixed 1 MiB chunks (store format 1) against content-defined chunking, ``pyfastcdc`` (FastCDC
2020, Cython) and ``fastcdc`` (ronomon-style FastCDC, Cython path), and the average chunk size::

    python -m bench chunking [--mib 256] [--dedup-mib 1024] [--trials 16] [--rounds 3] [--no-doc]

Measures, on this machine, with no daemon:

* throughput (MiB/s) of cutting alone and of cutting + blake3 per chunk, in memory and from a file
  (warm page cache, through the store's own streaming loop with one reused buffer, as the engine reads),
  over ``--mib`` of random and of compressible (text-like) data; best of ``--rounds``, candidates
  alternating within each round, so a machine shared with other work skews them alike;
* dedup: the bytes a snapshot would add after a 1-byte insert at the start, a 4 KiB overwrite in the
  middle and a 1 MiB append, on one ``--dedup-mib`` random file, and as mean / max over ``--trials``
  random 32 MiB files (one large file is one sample of where its last cut falls);
* the number and mean size of chunks (each chunk costs an index record, a hash and a compressor call).

Prints the tables and writes docs/chunking.md. Needs ``pyfastcdc`` (a store dependency); ``fastcdc`` is
measured when installed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import blake3

from syncsnapd.store import Chunker, FastCDC2020, FixedChunker
from syncsnapd.store._chunker import READ_UNIT

from . import _env

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
DOC = REPO / "docs" / "chunking.md"
KiB, MiB = 1 << 10, 1 << 20


class _RonomonFastCDC(Chunker):
    """``fastcdc`` 1.7 (iscc), its compiled path, behind the store's streaming loop (bench only)."""

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        from fastcdc.fastcdc_cy import fastcdc_cy  # type: ignore[import-not-found]
        self._fn = fastcdc_cy
        self.min_size = self.single_chunk_limit = min_size
        self.avg_size, self.max_size = avg_size, max_size
        self.buffer_size = max_size + READ_UNIT

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "fastcdc-ronomon", "min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    def _cuts(self, buf: memoryview, final: bool) -> Iterator[int]:
        total = len(buf)
        for chunk in self._fn(buf, self.min_size, self.avg_size, self.max_size):
            if not final and total - chunk.offset < self.max_size:
                return
            yield chunk.length


@dataclass
class Candidate:
    name: str
    library: str
    chunker: Chunker
    results: dict[str, float] = field(default_factory=dict)


def candidates(full: bool) -> list[Candidate]:
    """Today's fixed chunks; pyfastcdc at 512 KiB to 4 MiB average (the store's choice is 256K/512K/2M
    nc2; restic averages 1 MiB, borg 2 MiB, kopia 4 MiB); fastcdc at the store's sizes."""
    import pyfastcdc
    pv = f"pyfastcdc {pyfastcdc.__version__}"
    out = [Candidate("fixed 1 MiB", "(today)", FixedChunker(MiB))]
    sizes = [(256 * KiB, 512 * KiB, 2 * MiB, 2)]
    if full:
        sizes = [(128 * KiB, 512 * KiB, 2 * MiB, 2), *sizes, (256 * KiB, MiB, 4 * MiB, 1),
                 (256 * KiB, MiB, 4 * MiB, 2), (512 * KiB, MiB, 8 * MiB, 2), (512 * KiB, 2 * MiB, 8 * MiB, 2),
                 (MiB, 4 * MiB, 16 * MiB, 2)]
    for low, avg, high, nc in sizes:
        out.append(Candidate(f"cdc {_size(low)}/{_size(avg)}/{_size(high)} nc{nc}", pv,
                             FastCDC2020(low, avg, high, nc)))
    try:
        import fastcdc
        out.append(Candidate("ronomon 256K/512K/2M", f"fastcdc {fastcdc.__version__}",
                             _RonomonFastCDC(256 * KiB, 512 * KiB, 2 * MiB)))
    except ImportError:
        print("fastcdc is not installed: not measured", file=sys.stderr)
    return out


def _size(n: int) -> str:
    return f"{n // MiB}M" if n >= MiB and n % MiB == 0 else f"{n // KiB}K"


# --- data ----------------------------------------------------------------------------------------

def random_data(n: int, seed: int) -> bytes:
    """``n`` pseudo-random bytes (blake3's extendable output: fast, any length, the same every run)."""
    return bytes(blake3.blake3(seed.to_bytes(8, "little")).digest(length=n))


def compressible_data(n: int, seed: int) -> bytes:
    """Text-like bytes: random bytes mapped onto letters, with English-like letter and space frequencies
    (zstd -1 makes them about 1.6× smaller)."""
    letters = b"eeeeeeeeeeeettttttttaaaaaaaaooooooooiiiiiiinnnnnnnssssssrrrrrrhhhhhhllllddddcccuuummmwwffggyypbvk"
    alphabet = (letters + b"     " * 8 + b"\n")
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    return random_data(n, seed).translate(table)


class _Segments:
    """Read the concatenation of byte strings without copying them into one (for the edited files)."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self._parts = [memoryview(p) for p in parts]
        self.size = sum(len(p) for p in self._parts)
        self._i = 0
        self._at = 0

    def readinto(self, b: memoryview) -> int:
        while self._i < len(self._parts):
            part = self._parts[self._i]
            n = min(len(b), len(part) - self._at)
            if n > 0:
                b[:n] = part[self._at:self._at + n]
                self._at += n
                return n
            self._i, self._at = self._i + 1, 0
        return 0


# --- measurements --------------------------------------------------------------------------------

def _timed(fn: Callable[[], int]) -> float:
    t = time.perf_counter()
    nbytes = fn()
    return nbytes / MiB / (time.perf_counter() - t)


def _cut_memory(c: Chunker, data: bytes, hashing: bool) -> int:
    total = 0
    if hashing:
        h = blake3.blake3
        for piece in c.split_bytes(data):
            h(piece).digest()
            total += len(piece)
    else:
        for piece in c.split_bytes(data):
            total += len(piece)
    return total


def _cut_file(c: Chunker, path: Path, view: memoryview) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        h = blake3.blake3
        for piece in c.split(fd, view, os.fstat(fd).st_size):
            h(piece).digest()
            total += len(piece)
        return total
    finally:
        os.close(fd)


def throughput(cands: list[Candidate], mib: int, rounds: int) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    for kind, make in (("random", random_data), ("text", compressible_data)):
        path = WORK / f"chunking-{kind}.bin"
        try:
            _throughput_of(cands, kind, make(mib * MiB, 7), path, rounds)
        finally:
            path.unlink(missing_ok=True)


def _throughput_of(cands: list[Candidate], kind: str, data: bytes, path: Path, rounds: int) -> None:
    path.write_bytes(data)
    _cut_file(FixedChunker(MiB), path, memoryview(bytearray(MiB)))  # warm the page cache
    for r in range(rounds):
        for c in cands if r % 2 == 0 else cands[::-1]:
            view = memoryview(bytearray(c.chunker.buffer_size))
            runs: tuple[tuple[str, Callable[[], int]], ...] = (
                (f"cut {kind}", partial(_cut_memory, c.chunker, data, False)),
                (f"cut+blake3 {kind}", partial(_cut_memory, c.chunker, data, True)),
                (f"file {kind}", partial(_cut_file, c.chunker, path, view)))
            for key, fn in runs:
                c.results[key] = max(c.results.get(key, 0.0), _timed(fn))
        print(f"  throughput {kind}: round {r + 1}/{rounds} done", flush=True)


def _digests(c: Chunker, source: _Segments, view: memoryview) -> Iterator[tuple[bytes, int]]:
    h = blake3.blake3
    for piece in c.split_stream(source.readinto, view, source.size):
        yield h(piece).digest(), len(piece)


def added_bytes(c: Chunker, base: Sequence[bytes | memoryview], edited: Sequence[bytes | memoryview],
                view: memoryview, known: set[bytes] | None = None) -> tuple[int, set[bytes]]:
    """What a snapshot of ``edited`` adds to a store holding ``base`` (and the base's chunk set)."""
    if known is None:
        known = {d for d, _ in _digests(c, _Segments(base), view)}
    added = 0
    seen = set(known)
    for d, n in _digests(c, _Segments(edited), view):
        if d not in seen:
            seen.add(d)
            added += n
    return added, known


def _edits(base: bytes, rng: random.Random) -> dict[str, list[bytes | memoryview]]:
    v = memoryview(base)
    mid = len(base) // 2 + rng.randrange(-len(base) // 8, len(base) // 8)
    return {"insert 1 B at start": [b"!", v],
            "4 KiB changed in the middle": [v[:mid], rng.randbytes(4 * KiB), v[mid + 4 * KiB:]],
            "1 MiB appended": [v, rng.randbytes(MiB)]}


def dedup(cands: list[Candidate], dedup_mib: int, trials: int) -> None:
    base = random_data(dedup_mib * MiB, 11)
    rng = random.Random(5)
    edits = _edits(base, rng)
    for c in cands:
        view = memoryview(bytearray(c.chunker.buffer_size))
        known: set[bytes] | None = None
        sizes = [n for _, n in _digests(c.chunker, _Segments([base]), view)]
        c.results["chunks"] = len(sizes)
        c.results["mean chunk"] = statistics.fmean(sizes)
        c.results["stdev chunk"] = statistics.pstdev(sizes)
        for name, edited in edits.items():
            added, known = added_bytes(c.chunker, [base], edited, view, known)
            c.results[f"big {name}"] = added
        print(f"  dedup {dedup_mib} MiB: {c.name} done", flush=True)
    del base, edits
    for c in cands:
        view = memoryview(bytearray(c.chunker.buffer_size))
        per: dict[str, list[int]] = {}
        for t in range(trials):
            small = random_data(32 * MiB, 100 + t)
            known = None
            for name, edited in _edits(small, random.Random(t)).items():
                added, known = added_bytes(c.chunker, [small], edited, view, known)
                per.setdefault(name, []).append(added)
        for name, values in per.items():
            c.results[f"mean {name}"] = statistics.fmean(values)
            c.results[f"max {name}"] = max(values)
        print(f"  dedup trials: {c.name} done", flush=True)


# --- report --------------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mib(n: float) -> str:
    return f"{n / MiB:.2f}" if n < 10 * MiB else f"{n / MiB:,.0f}"


def report(cands: list[Candidate], args: argparse.Namespace, started: str, seconds: float) -> str:
    env = _env.machine(WORK)
    kinds = ("random", "text")
    t1 = _table(["chunker", "library", *(f"{k} {w}" for k in kinds for w in ("cut", "cut+blake3", "file+blake3"))],
                [[c.name, c.library, *(f"{c.results[f'{w} {k}']:,.0f}" for k in kinds
                                       for w in ("cut", "cut+blake3", "file"))] for c in cands])
    edits = ("insert 1 B at start", "4 KiB changed in the middle", "1 MiB appended")
    t2 = _table(["chunker", "chunks", "mean size (MiB)", "stdev (MiB)", *edits],
                [[c.name, f"{c.results['chunks']:,.0f}", _mib(c.results["mean chunk"]),
                  _mib(c.results["stdev chunk"]), *(_mib(c.results[f"big {e}"]) for e in edits)] for c in cands])
    t3 = _table(["chunker", *(f"{e}: mean / max" for e in edits)],
                [[c.name, *(f"{_mib(c.results[f'mean {e}'])} / {_mib(c.results[f'max {e}'])}" for e in edits)]
                 for c in cands])
    return f"""# Chunking: fixed against content-defined

Generated by `python -m bench chunking --mib {args.mib} --dedup-mib {args.dedup_mib} --trials {args.trials}
--rounds {args.rounds}` on {started} ({seconds:.0f} s). Machine: {env.get('CPU', '?')}, {os.cpu_count()} cores,
Python {sys.version.split()[0]}. **The machine was shared** with other engineers' test runs: the figures
are the best of {args.rounds} rounds with the candidates alternating in each round; compare rows with each
other, not with other documents. `cdc MIN/AVG/MAX ncN` is pyfastcdc's FastCDC 2020 with those sizes and
normalization level N; its chunks average about AVG + MIN (cut-point skipping).

## Throughput (MiB/s, one thread)

`cut`: cutting {args.mib} MiB held in memory; `cut+blake3`: the same, plus blake3 of every chunk;
`file+blake3`: reading a {args.mib} MiB file (warm page cache) through the store's streaming loop with one
reused buffer (`Chunker.split`, what the engine runs), cutting and hashing. For scale: zstd level 1 runs at
about 255 MiB/s per thread here (FIELD-NOTES.md), so anything well above that is not what limits a snapshot.

{t1}

## Dedup on a {args.dedup_mib} MiB random file (MiB added by the edited version)

{t2}

## Dedup over {args.trials} random 32 MiB files (MiB added: mean / max)

One large file is one sample of where its last cut falls (what an append re-stores) and of the chunk an
edit lands in; these trials show the spread.

{t3}

## Choice

New stores (format version 2) use **pyfastcdc, `cdc 256K/512K/2M nc2`** (store/_format.py, CDC_*):

- **pyfastcdc over fastcdc**: it is the 2020 paper's FastCDC (64-bit gear, two bytes rolled per step,
  normalization level configurable), its scan runs with the GIL released (`with nogil`), so two workers
  cut in parallel, and it hands out zero-copy views. `fastcdc` 1.7's compiled path is the older
  ronomon variant (32-bit gear, normalization fixed at 1), holds the GIL in its scan loop and imports
  `click` on import; it was not faster in any run here.
- **512 KiB average, not restic's 1 MiB or borg's 2 MiB**: the issue's targets are a 1-byte insert < 5 MiB
  and a 1 MiB append < 2 MiB. Every CDC row meets the first; the append re-stores the last chunk plus the
  new MiB, so it needs small last chunks: with a 1 MiB average the append reached 2.26 MiB on the large
  file and 2.55 MiB at worst in the trials, with 512 KiB 1.26 MiB and 1.77 MiB at worst. The cost is
  ~1,700 chunks per GiB instead of 1,024 (index records; hash and compressor calls are per MiB anyway).
- **min 256 KiB**: same cut points as 128 KiB in practice at level 2, but the scan skips more of every
  chunk; content up to 256 KiB is always one chunk.
- **normalization 2**: narrower sizes than level 1 (stdev 0.33 against 0.62 MiB at 1 MiB average) and a
  smaller worst case for every edit.
- **Throughput**: cutting plus blake3 from a file ran at 2.1-2.3 GiB/s per thread on a quiet machine
  (0.7-0.9 GiB/s in earlier runs while others' tests ran), against 4.3 GiB/s for fixed chunks, and
  several times zstd -1's ~255 MiB/s: CDC does not limit a snapshot; it costs about 0.2-0.5 ms of CPU
  per MiB of new data (the same order as blake3).
"""



def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench chunking")
    parser.add_argument("--mib", type=int, default=256, help="throughput data size (MiB)")
    parser.add_argument("--dedup-mib", type=int, default=1024, help="the large file of the dedup test (MiB)")
    parser.add_argument("--trials", type=int, default=16, help="32 MiB files of the dedup trials")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only fixed, one CDC size and fastcdc")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not write docs/chunking.md")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    cands = candidates(not args.quick)
    print(f"chunking bench: {len(cands)} candidates", flush=True)
    throughput(cands, args.mib, args.rounds)
    dedup(cands, args.dedup_mib, args.trials)
    text = report(cands, args, started, time.monotonic() - t0)
    print(text)
    if not args.no_doc:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    return 0
