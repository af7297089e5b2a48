"""The benchmark tree: a deterministic, seeded folder of about 20,000 files and 1.6 GiB (at scale 1.0).

Every file's path, size and content are a pure function of (seed, scale, index, version), so the tree can
be regenerated, checked, mutated ("1% changed + 100 new") and restored without keeping a second copy:

- most files are 1-64 KiB, a few (30 at scale 1.0) are 1-50 MiB (skewed towards the large end);
- content alternates blocks of random bytes (blake3 XOF, incompressible) and text drawn from a pool of
  repetitive words, about half and half, so zstd level 1 compresses the whole tree about 1.5x;
- files sit in nested directories (1 to 3 levels).

``BENCH_SCALE`` multiplies the file counts, and the sizes of the large files (floored at 1 MiB); the small
files keep their 1-64 KiB sizes, so a scaled tree still exercises both paths of an engine.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

# Bump when the content recipe changes, so cached trees are regenerated.
TREE_FORMAT = 3
SEED = 20261128

KIB = 1024
MIB = 1024 * KIB

FULL_FILES = 20_000
FULL_LARGE = 30
SMALL_MIN, SMALL_MAX = 1 * KIB, 64 * KIB
LARGE_MIN, LARGE_MAX = 1 * MIB, 50 * MIB
# The mutation: this share of the files gets new content of the same size; plus NEW_FILES new files.
CHANGE_SHARE = 0.01
FULL_NEW_FILES = 100

# Words of the repetitive text; a small vocabulary keeps it compressible like source code or logs.
_WORDS = (
    "the snapshot folder store chunk pack index manifest sync device file size mtime inode hash "
    "compress stream event progress daemon client project state step percent bytes files error "
    "warning completed failed cancelled browsing uploading waiting request response header body "
    "socket token host json trio thread worker queue buffer cache lorem ipsum dolor sit amet "
    "consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua"
).split()
TEXT_POOL_SIZE = 8 * MIB


@dataclass(frozen=True)
class FileSpec:
    index: int
    rel: str
    size: int


@dataclass(frozen=True)
class TreeSpec:
    """The expected content of the tree at one scale."""

    scale: float
    files: tuple[FileSpec, ...]
    changed: tuple[int, ...]  # indexes of files whose content the mutation rewrites
    new_files: tuple[FileSpec, ...]  # files the mutation adds
    # "" for the mixed tree of `make bench`; another recipe (e.g. "small") names a different tree.
    recipe: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def changed_bytes(self) -> int:
        return sum(self.files[i].size for i in self.changed)

    @property
    def new_bytes(self) -> int:
        return sum(f.size for f in self.new_files)


def _dir_for(index: int) -> str:
    # About 50 files per leaf directory, 1-3 levels deep.
    leaf = index // 50
    depth = 1 + leaf % 3
    parts = [f"p{leaf % 17:02d}", f"q{(leaf // 17) % 7:02d}", f"r{leaf:04d}"]
    return "/".join(parts[3 - depth :]) if depth < 3 else "/".join(parts)


_EXTS = (".txt", ".md", ".py", ".json", ".bin", ".log", ".dat", ".csv")


def build_spec(scale: float) -> TreeSpec:
    """The deterministic list of files (paths and sizes) for ``scale``."""
    rng = random.Random(SEED)
    n_files = max(20, round(FULL_FILES * scale))
    n_large = max(1, round(FULL_LARGE * scale))
    large_at = set(rng.sample(range(n_files), n_large))
    files: list[FileSpec] = []
    for i in range(n_files):
        if i in large_at:
            size = LARGE_MIN + int((LARGE_MAX - LARGE_MIN) * rng.random() ** 0.45)
            if scale < 1.0:
                size = max(LARGE_MIN, int(size * scale))
        else:
            size = rng.randint(SMALL_MIN, SMALL_MAX)
        ext = _EXTS[rng.randrange(len(_EXTS))]
        files.append(FileSpec(i, f"{_dir_for(i)}/f{i:05d}{ext}", size))
    mrng = random.Random(SEED + 1)
    n_changed = max(1, round(n_files * CHANGE_SHARE))
    changed = tuple(sorted(mrng.sample(range(n_files), n_changed)))
    n_new = max(1, round(FULL_NEW_FILES * scale))
    new_files = []
    for k in range(n_new):
        i = n_files + k
        # New files land in existing directories, spread over the tree.
        host = files[mrng.randrange(n_files)].rel.rsplit("/", 1)[0]
        new_files.append(FileSpec(i, f"{host}/new{k:04d}.txt", mrng.randint(SMALL_MIN, SMALL_MAX)))
    return TreeSpec(scale, tuple(files), changed, tuple(new_files))


# The scale section's trees (`python -m bench scale`): only small files, of the sizes a source tree or a
# folder of notes has, so that per-file costs (system calls, per-file objects, index entries) dominate.
SCALE_SMALL_MIN, SCALE_SMALL_MAX = 512, 8 * KIB


def build_small_spec(n_files: int) -> TreeSpec:
    """``n_files`` files of 512 B-8 KiB (about 4.3 KiB on average), no change set."""
    rng = random.Random(SEED + 3)
    files = tuple(FileSpec(i, f"{_dir_for(i)}/f{i:06d}{_EXTS[i % len(_EXTS)]}",
                           rng.randint(SCALE_SMALL_MIN, SCALE_SMALL_MAX)) for i in range(n_files))
    return TreeSpec(float(n_files), files, (), (), recipe="small")


_pool_cache: bytes | None = None


def _text_pool() -> bytes:
    global _pool_cache
    if _pool_cache is None:
        rng = random.Random(SEED + 2)
        lines: list[str] = []
        size = 0
        while size < TEXT_POOL_SIZE:
            line = " ".join(rng.choices(_WORDS, k=rng.randint(4, 14))) + "\n"
            lines.append(line)
            size += len(line)
        _pool_cache = "".join(lines).encode()[:TEXT_POOL_SIZE]
    return _pool_cache


def content(index: int, size: int, version: int = 0) -> bytes:
    """The bytes of file ``index`` at ``version`` (0 = pristine, 1 = after the mutation)."""
    key = blake3.blake3(f"syncsnap-bench/{SEED}/{index}/{version}".encode()).digest()
    rng = random.Random(key)
    pool = _text_pool()
    # Per file share of random bytes: many files all text or all random, the rest mixed; about 0.45 overall.
    kind = rng.random()
    rand_share = 0.0 if kind < 0.3 else 1.0 if kind < 0.5 else rng.random()
    xof = blake3.blake3(key)
    out = bytearray()
    seek = 0
    while len(out) < size:
        block = min(size - len(out), rng.randint(4 * KIB, 64 * KIB))
        if rng.random() < rand_share:
            out += xof.digest(length=block, seek=seek)
            seek += block
        else:
            start = rng.randrange(0, len(pool) - block)
            out += pool[start : start + block]
    return bytes(out)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".bench-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    # Replace by rename, as a sync tool does (new inode, new mtime).
    os.replace(tmp, path)


def _marker(root: Path) -> Path:
    return root.with_name(root.name + ".json")


def _iter_tree(root: Path) -> Iterator[tuple[str, int]]:
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    yield os.path.relpath(e.path, root), e.stat(follow_symlinks=False).st_size


def ensure_tree(root: Path, spec: TreeSpec, log: Callable[[str], None]) -> None:
    """Make ``root`` hold exactly the pristine tree of ``spec``: generate, or repair after a mutation."""
    marker = _marker(root)
    want: dict[str, object] = {"format": TREE_FORMAT, "seed": SEED, "scale": spec.scale, "files": len(spec.files)}
    if spec.recipe:
        want["recipe"] = spec.recipe
    ok = root.is_dir() and marker.is_file() and json.loads(marker.read_text()) == want
    if not ok:
        if root.exists():
            shutil.rmtree(root)
        marker.unlink(missing_ok=True)
        t0 = time.perf_counter()
        log(f"generating tree: {len(spec.files):,} files, {spec.total_bytes / MIB:,.0f} MiB in {root}")
        for n, f in enumerate(spec.files):
            _write(root / f.rel, content(f.index, f.size))
            if n and n % (5000 if len(spec.files) < 100_000 else 50_000) == 0:
                log(f"  ... {n:,} files")
        marker.write_text(json.dumps(want))
        log(f"generated tree in {time.perf_counter() - t0:.1f} s")
    restore(root, spec)
    have = dict(_iter_tree(root))
    expect = {f.rel: f.size for f in spec.files}
    if have != expect:
        bad = set(have.items()) ^ set(expect.items())
        log(f"tree differs from its spec in {len(bad)} entries; regenerating")
        marker.unlink()
        ensure_tree(root, spec, log)


def mutate(root: Path, spec: TreeSpec) -> None:
    """Apply the change set: rewrite 1% of the files (same size, new content) and add the new files."""
    for i in spec.changed:
        f = spec.files[i]
        _write(root / f.rel, content(f.index, f.size, version=1))
    for f in spec.new_files:
        _write(root / f.rel, content(f.index, f.size))


def restore(root: Path, spec: TreeSpec) -> None:
    """Undo :func:`mutate` (idempotent): pristine content back, new files removed."""
    for f in spec.new_files:
        (root / f.rel).unlink(missing_ok=True)
    for i in spec.changed:
        f = spec.files[i]
        p = root / f.rel
        want = content(f.index, f.size)
        try:
            with open(p, "rb") as fh:
                if fh.read() == want:
                    continue
        except FileNotFoundError:
            pass
        _write(p, want)


def rewrite(root: Path, f: FileSpec, version: int) -> None:
    """Give one file the content of ``version`` (0: pristine), by rename as a sync tool does."""
    _write(root / f.rel, content(f.index, f.size, version=version))


def file_list(root: Path, spec: TreeSpec) -> list[Path]:
    return [root / f.rel for f in spec.files]
