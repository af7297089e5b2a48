"""The scale section's big file: one deterministic file of a few GiB, and the edits made to it.

The content is generated piece by piece (16 MiB at a time, with :func:`bench._tree.content`: random
blocks and repetitive text, about 1.5x compressible), so a 4 GiB file never sits in memory. The edits are
cumulative, in the order the bench applies them:

- ``append``: 1 MiB of new content at the end;
- ``middle``: 1 MiB overwritten in place, starting 1,000 bytes past the middle (an edit knows nothing of
  chunk boundaries);
- ``insert``: one byte inserted at the start, every later byte shifted (done in place, from the end
  backwards, so no second copy of the file is needed).

:func:`restore` regenerates the pristine file when an edit was made (a marker file says so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ._tree import MIB, content

PIECE = 16 * MIB
# Content indexes of the pieces, far from the trees' file indexes.
_BASE = 1_000_000_000
EDIT = MIB
STEPS = ("initial", "append", "middle", "insert")


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".state.json")


def _write_pristine(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "r+b" if path.exists() else "wb") as f:
        for k, off in enumerate(range(0, size, PIECE)):
            f.write(content(_BASE + k, min(PIECE, size - off)))
        f.truncate(size)


def restore(path: Path, size: int, log: Callable[[str], None]) -> None:
    """Make ``path`` the pristine file of ``size`` bytes (generated, or regenerated after edits)."""
    marker = _marker(path)
    want = {"size": size, "state": "pristine"}
    try:
        ok = json.loads(marker.read_text()) == want and path.stat().st_size == size
    except (OSError, ValueError):
        ok = False
    if ok:
        return
    log(f"writing the pristine {size / 2**30:.2f} GiB file {path}")
    marker.unlink(missing_ok=True)
    _write_pristine(path, size)
    os.sync()
    marker.write_text(json.dumps(want))


def _dirty(path: Path, size: int) -> None:
    _marker(path).write_text(json.dumps({"size": size, "state": "edited"}))


def append(path: Path, size: int) -> None:
    _dirty(path, size)
    with open(path, "ab") as f:
        f.write(content(_BASE - 1, EDIT, version=1))


def middle(path: Path, size: int) -> None:
    _dirty(path, size)
    with open(path, "r+b") as f:
        f.seek(size // 2 + 1000)
        f.write(content(_BASE - 2, EDIT, version=1))


def insert(path: Path, size: int) -> None:
    """One byte inserted at the start: blocks moved one byte later, from the end backwards."""
    _dirty(path, size)
    fd = os.open(path, os.O_RDWR)
    try:
        end = os.fstat(fd).st_size
        pos = end
        while pos > 0:
            start = max(0, pos - PIECE)
            block = os.pread(fd, pos - start, start)
            os.pwrite(fd, block, start + 1)
            pos = start
        os.pwrite(fd, b"\x01", 0)
    finally:
        os.close(fd)


EDITS: dict[str, Callable[[Path, int], None]] = {"append": append, "middle": middle, "insert": insert}
