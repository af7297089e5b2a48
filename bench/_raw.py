"""Raw limits of this machine on the bench tree: warm read, sha256, blake3 and zstd level 1, one thread.

Each pass opens every file and reads it with ``readinto`` into one reused 1 MiB buffer (a single
``f.read()`` of a large file caps hashing speed; see FIELD-NOTES), feeding a view of what was read to the
hash or compressor. The figures bound what any single-threaded engine can do here, and justify blake3.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import zstandard

BUF = 1024 * 1024
LARGE = 1024 * 1024


@dataclass(frozen=True)
class RawResult:
    name: str
    seconds: float
    bytes: int
    note: str = ""

    @property
    def mib_s(self) -> float:
        return self.bytes / 2**20 / self.seconds if self.seconds else 0.0


def _pass(files: list[Path], new: Callable[[], Any] | None) -> tuple[float, int, int]:
    """Read every file; with ``new``, feed each file to a fresh ``new()`` object's ``update``/``compress``.

    Returns (seconds, bytes read, bytes of compressor output).
    """
    buf = bytearray(BUF)
    view = memoryview(buf)
    total = out = 0
    t0 = time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            if new is None:
                while n := f.readinto(buf):
                    total += n
                continue
            obj = new()
            if hasattr(obj, "update"):  # a hash
                while n := f.readinto(buf):
                    total += n
                    obj.update(view[:n])
                obj.digest()
            else:  # a zstd compressobj
                while n := f.readinto(buf):
                    total += n
                    out += len(obj.compress(view[:n]))
                out += len(obj.flush())
    return time.perf_counter() - t0, total, out


def warm(files: list[Path]) -> tuple[float, int]:
    """Read everything once so every tool sees the same warm page cache."""
    s, n, _ = _pass(files, None)
    return s, n


def measure(files: list[Path], log: Callable[[str], None]) -> list[RawResult]:
    results: list[RawResult] = []

    def add(name: str, files: list[Path], new: Callable[[], Any] | None, note: str = "") -> None:
        s, n, out = _pass(files, new)
        if out:
            note = f"ratio {n / out:.2f}"
        results.append(RawResult(name, s, n, note))
        log(f"  {name}: {s:.2f} s, {n / 2**20 / s:,.0f} MiB/s {note}".rstrip())

    add("read (warm, 1 MiB buffer)", files, None)
    add("read + sha256 (hashlib)", files, hashlib.sha256)
    add("read + blake3", files, blake3.blake3)
    big = [p for p in files if p.stat().st_size > LARGE]
    if big:
        add("read + sha256, files > 1 MiB only", big, hashlib.sha256)
        add("read + blake3, files > 1 MiB only", big, blake3.blake3)
    cctx = zstandard.ZstdCompressor(level=1)
    add("read + zstd level 1", files, cctx.compressobj)
    return results
