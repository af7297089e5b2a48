"""Hostile trees: generated folders with every kind of odd name and file type, some unreadable, some
changing while the snapshot runs. Every completed snapshot must restore byte for byte (content, modes
without setuid/setgid/sticky, mtimes) to what each path was during the run, or the run must have named
the path in its warnings.

Trees are real files on the real filesystem (hypothesis draws them); the snapshot is the real engine
(``take_snapshot``) and the restore the real ``restore_snapshot``. Changes during a run are made at
exact points of the run through the engine's own callbacks, so they are reproducible: the walk's
``ignore(path)`` (step 3, between two entries) and ``RunProgress.add_done`` (step 4, between two chunks
of a large file being read). Paths here can be longer than PATH_MAX, so everything is reached through
directory descriptors.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.store import HERE as STORE_HELPER
from helpers.torture import record, scale
from syncsnapd.core import Progress, RunProgress
from syncsnapd.engine import restore_snapshot, take_snapshot
from syncsnapd.store import Store

MiB = 1 << 20
T_PAST = 1_600_000_000_000_000_000
SETTINGS = settings(max_examples=scale(12, 400), deadline=None, derandomize=False, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- reading a tree (through descriptors: paths may exceed PATH_MAX) -----------------------------

State = tuple[Any, ...]
SPECIAL = ("fifo", "socket", "device")


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, MiB)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def state_of(root: Path) -> dict[bytes, State]:
    """Every entry below ``root``: (kind, mode, mtime, content) as a restore must reproduce it (special
    files as their kind only)."""
    out: dict[bytes, State] = {}

    def walk(dfd: int, prefix: bytes) -> None:
        for name in sorted(os.listdir(dfd)):
            nb = os.fsencode(name)
            rel = prefix + nb
            st = os.stat(nb, dir_fd=dfd, follow_symlinks=False)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                sub = os.open(nb, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    walk(sub, rel + b"/")
                finally:
                    os.close(sub)
            elif fmt == stat.S_IFREG:
                fd = os.open(nb, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    data = _read_all(fd)
                finally:
                    os.close(fd)
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, data)
            elif fmt == stat.S_IFLNK:
                out[rel] = ("symlink", os.readlink(nb, dir_fd=dfd), st.st_mtime_ns)
            else:
                out[rel] = ({stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(fmt, "device"),)

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(fd, b"")
    finally:
        os.close(fd)
    return out


def as_restored(s: State | None) -> State | None:
    """What a restore makes of an entry: setuid, setgid and sticky cleared; special files are skipped."""
    if s is None or s[0] in SPECIAL:
        return None
    if s[0] in ("file", "dir"):
        return (s[0], s[1] & 0o777, *s[2:])
    return s


@contextmanager
def opened(path: Path | bytes) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


# --- generated trees ------------------------------------------------------------------------------

HOSTILE_NAMES = [b"\xff\xfe", b"new\nline", b"\x1b[31mred\x1b[0m", b"\x1b]0;title\x07", b"a" * 255, b"-rf",
                 b" ", b"\xe2\x80\xaeevil", b"caf\xc3\xa9", b"cafe\xcc\x81", b"*", b"\\", b"..." , b".hidden",
                 b"\t", b"\r", b"\x7f", b"%s%n"]
names = st.one_of(st.sampled_from(HOSTILE_NAMES),
                  st.binary(min_size=1, max_size=255).filter(lambda b: b"/" not in b and b"\0" not in b
                                                             and b not in (b".", b"..")))
KINDS = ["file", "file", "file", "empty", "sparse", "big", "dir", "dir", "symlink", "fifo", "socket", "device"]
MODES = [0o644, 0o755, 0o600, 0o444, 0o4755, 0o2750, 0o6711, 0o1777, 0o000, 0o700, 0o7777]
TARGETS = [b"/", b"/etc/passwd", b"../" * 40, b"nonexistent", b".", b"..", b"\xff\xfe", b"x" * 4000, b"SELF"]


@dataclass
class Spec:
    kind: str
    parent: int
    name: bytes
    mode: int
    content: bytes = b""
    target: bytes = b""


@st.composite
def trees(draw: st.DrawFn) -> list[Spec]:
    specs: list[Spec] = []
    dirs = [-1]
    used: set[tuple[int, bytes]] = set()
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(KINDS))
        parent = draw(st.sampled_from(dirs))
        name = draw(names)
        if (parent, name) in used:
            continue
        used.add((parent, name))
        spec = Spec(kind, parent, name, draw(st.sampled_from(MODES)))
        if kind == "file":
            spec.content = draw(st.binary(max_size=3000))
        elif kind == "big":
            spec.content = draw(st.binary(min_size=1, max_size=64)) * (MiB // 32 + 7)
        elif kind == "symlink":
            spec.target = draw(st.sampled_from(TARGETS))
            spec.target = name if spec.target == b"SELF" else spec.target  # a loop
        elif kind == "dir":
            dirs.append(len(specs))
        specs.append(spec)
    return specs


def deep_chain(root_fd: int) -> None:
    """A chain of directories with 250-byte names and a file at the bottom, deeper than PATH_MAX."""
    fd = os.dup(root_fd)
    n = 0
    try:
        while n < 17:  # 17 x 251 bytes: past PATH_MAX (4096) from the tree's root
            name = bytes([0x61 + n]) * 250
            os.mkdir(name, 0o755, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            n += 1
        leaf = os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"at the bottom")
        os.close(leaf)
    finally:
        os.close(fd)


def build(root: Path, specs: list[Spec], *, deep: bool) -> None:
    os.mkdir(root)
    paths: list[bytes] = []
    with opened(root) as rfd:
        for spec in specs:
            parent = b"" if spec.parent < 0 else paths[spec.parent] + b"/"
            rel = parent + spec.name
            paths.append(rel)
            full = os.fsencode(root) + b"/" + rel
            if spec.kind in ("file", "empty", "big"):
                with open(full, "wb") as f:
                    f.write(spec.content)
            elif spec.kind == "sparse":
                with open(full, "wb") as f:
                    f.truncate(3 * MiB)
                    f.seek(2 * MiB + 77)
                    f.write(b"island in a hole")
            elif spec.kind == "dir":
                os.mkdir(full)
            elif spec.kind == "symlink":
                os.symlink(spec.target, full)
            elif spec.kind == "fifo":
                os.mkfifo(full)
            elif spec.kind == "socket":
                os.mknod(full, stat.S_IFSOCK | 0o600)
            elif os.geteuid() == 0:
                os.mknod(full, stat.S_IFCHR | 0o600, os.makedev(1, 3))
            else:
                os.mkfifo(full)
        if deep:
            deep_chain(rfd)
    # Modes last (a 0o000 directory must still be filled), deepest first; then distinct past mtimes.
    for spec, rel in sorted(zip(specs, paths, strict=True), key=lambda sr: -sr[1].count(b"/")):
        if spec.kind in ("file", "empty", "big", "sparse", "dir"):
            os.chmod(os.fsencode(root) + b"/" + rel, spec.mode)
    backdate_all(root)


def backdate_all(root: Path) -> None:
    """Distinct past mtimes on everything (deepest first, so setting them is not undone)."""
    entries = sorted(state_of(root), key=lambda p: -p.count(b"/"))
    with opened(root) as rfd:
        for i, rel in enumerate(entries):
            t = T_PAST + i * 1_000_000_007
            head, _, name = rel.rpartition(b"/")
            fd = rfd
            parts = head.split(b"/") if head else []
            fds = []
            for part in parts:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                fds.append(fd)
            try:
                os.utime(name, ns=(t, t), dir_fd=fd, follow_symlinks=False)
            finally:
                for f in reversed(fds):
                    os.close(f)


# --- the engine, watched --------------------------------------------------------------------------

class WatchedProgress(RunProgress):
    """The real progress object, with every warning kept (a run's own list keeps the first 10) and a hook
    called between chunks of large files (``add_done`` with bytes only: the engine reading chunk by
    chunk)."""

    def __init__(self, on_chunk: Callable[[], None] | None = None) -> None:
        self.events: list[Progress] = []
        super().__init__("p", "r-torture", self.events.append)
        self.warned: dict[str, str] = {}
        self._on_chunk = on_chunk

    def warn(self, path: str, reason: str) -> None:
        super().warn(path, reason)
        self.warned[path] = reason

    def add_done(self, files: int = 0, nbytes: int = 0) -> None:
        super().add_done(files, nbytes)
        if self._on_chunk is not None and files == 0 and nbytes > 0:
            self._on_chunk()


def take(store: Store, root: Path, progress: WatchedProgress,
         ignore: Callable[[str], bool] | None = None) -> str:
    summary = trio.run(lambda: take_snapshot(store, "p", root, progress, ignore=ignore))
    return summary.id


@dataclass
class Figures:
    trees: int = 0
    entries: int = 0
    snapshots: int = 0
    special_skipped: int = 0
    unreadable: int = 0
    mutations: int = 0
    warnings: int = 0
    restored_mismatches: int = 0
    unreported_changes: int = 0
    problems: list[str] = field(default_factory=list)


FIGURES = Figures()


def compare(expected: dict[bytes, State], restored: dict[bytes, State], figures: Figures) -> None:
    want = {p: r for p, s in expected.items() if (r := as_restored(s)) is not None}
    for path in sorted(set(want) | set(restored)):
        if want.get(path) != restored.get(path):
            figures.restored_mismatches += 1
            figures.problems.append(f"{path!r}: expected {str(want.get(path))[:120]}, "
                                    f"restored {str(restored.get(path))[:120]}")


# --- static hostile trees -------------------------------------------------------------------------

@SETTINGS
@given(specs=trees(), deep=st.booleans())
def test_hostile_trees_restore_exactly(specs: list[Spec], deep: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        build(src, specs, deep=deep)
        expected = state_of(src)
        with Store.open(Path(tmp) / "store", writable=True) as store:
            progress = WatchedProgress()
            sid = take(store, src, progress)
            special = sum(1 for s in expected.values() if s[0] in SPECIAL)
            restore_snapshot(store, sid, out)
            # A second snapshot of the unchanged tree re-uses everything and restores the same.
            sid2 = take(store, src, WatchedProgress())
            restore_snapshot(store, sid2, Path(tmp) / "out2")
        restored = state_of(out)
        FIGURES.trees += 1
        FIGURES.entries += len(expected)
        FIGURES.snapshots += 2
        FIGURES.special_skipped += special
        before = FIGURES.restored_mismatches
        compare(expected, restored, FIGURES)
        compare(expected, state_of(Path(tmp) / "out2"), FIGURES)
        assert progress.warned == {}, progress.warned
        assert FIGURES.restored_mismatches == before, FIGURES.problems[-5:]


# --- unreadable entries ---------------------------------------------------------------------------

@settings(SETTINGS, max_examples=scale(4, 60))
@given(specs=trees())
def test_unreadable_entries_are_named_and_the_rest_restores(specs: list[Spec]) -> None:
    """The snapshot runs without CAP_DAC_OVERRIDE (as any user would: `--drop-dac` of the store helper), so
    mode 0o000 files cannot be read and 0o000 directories cannot be listed: each is named in the warnings
    (a file left out, a directory kept empty), and everything else restores exactly."""
    for spec in specs:  # only 0o000 makes an entry unreadable; other modes keep it readable by its owner
        if spec.mode & 0o400 == 0 or (spec.kind == "dir" and spec.mode & 0o500 != 0o500):
            spec.mode = 0o000
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        build(src, specs, deep=False)
        state = state_of(src)
        blocked = [p for p, s in state.items() if s[0] == "dir" and s[1] == 0]
        expected = {p: s for p, s in state.items() if not any(p.startswith(b + b"/") for b in blocked)}
        unreadable = {p for p, s in expected.items() if s[0] == "file" and s[1] & 0o400 == 0}
        for p in unreadable:
            del expected[p]
        proc = subprocess.run([sys.executable, str(STORE_HELPER), "snapshot", str(Path(tmp) / "store"),
                               str(src), "p", "--drop-dac"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)["summary"]
        named = {os.fsencode(w.rsplit(": ", 2)[0]) for w in summary["warning_paths"]}
        with Store.open(Path(tmp) / "store", writable=False) as store:
            restore_snapshot(store, summary["id"], out)
        FIGURES.trees += 1
        FIGURES.entries += len(state)
        FIGURES.snapshots += 1
        FIGURES.unreadable += len(unreadable) + len(blocked)
        FIGURES.warnings += summary["warnings"]
        before = FIGURES.restored_mismatches
        compare(expected, state_of(out), FIGURES)
        assert FIGURES.restored_mismatches == before, FIGURES.problems[-5:]
        listed_blocked = {p for p in blocked if p in expected}
        assert summary["warnings"] == len(unreadable) + len(listed_blocked), summary
        if summary["warnings"] <= 10:
            assert named == unreadable | listed_blocked, summary["warning_paths"]


# --- trees that change while the snapshot runs ----------------------------------------------------

OPS = ["grow", "shrink", "vanish", "replace", "rewrite", "chmod", "create"]


class Mutator:
    """Changes files of a tree at exact points of a run, and keeps every state each path has had."""

    def __init__(self, root: Path, staging: Path, plan: list[tuple[str, int, str, int]],
                 files: list[bytes]) -> None:
        self.root, self.staging = root, staging
        self.plan = plan
        self.files = files
        self.states: dict[bytes, list[State | None]] = {p: [as_restored(s)] for p, s in state_of(root).items()}
        self.counts = {"walk": 0, "read": 0}
        self.done = 0
        self._lock = threading.Lock()

    def state(self, rel: bytes) -> State | None:
        full = os.fsencode(self.root) + b"/" + rel
        try:
            st_ = os.lstat(full)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st_.st_mode):
            return as_restored(("dir", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns))
        with open(full, "rb") as f:
            return as_restored(("file", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns, f.read()))

    def note(self, *rels: bytes) -> None:
        for rel in rels:
            self.states.setdefault(rel, [None]).append(self.state(rel))

    def at(self, point: str) -> None:
        with self._lock:
            k = self.counts[point]
            self.counts[point] += 1
            for when, index, op, target in self.plan:
                if when == point and index == k:
                    self.apply(op, self.files[target % len(self.files)])

    def apply(self, op: str, rel: bytes) -> None:
        full = os.fsencode(self.root) + b"/" + rel
        parent = rel.rpartition(b"/")[0]
        exists = os.path.lexists(full)
        if op == "create" or not exists:
            rel = rel + b".new" if exists else rel
            full = os.fsencode(self.root) + b"/" + rel
            if os.path.lexists(full):
                return
            with open(full, "wb") as f:
                f.write(os.urandom(100))
        elif op == "grow":
            with open(full, "ab") as f:
                f.write(os.urandom(1000))
        elif op == "shrink":
            os.truncate(full, os.path.getsize(full) // 2)
        elif op == "vanish":
            os.unlink(full)
        elif op == "replace":
            tmp = self.staging / f"r{self.done}"
            tmp.write_bytes(os.urandom(5000))
            os.rename(tmp, full)
        elif op == "rewrite":
            size = os.path.getsize(full)
            fd = os.open(full, os.O_WRONLY)
            try:
                os.pwrite(fd, os.urandom(size), 0)
            finally:
                os.close(fd)
        else:
            os.chmod(full, 0o600 if stat.S_IMODE(os.lstat(full).st_mode) != 0o600 else 0o640)
        self.done += 1
        self.note(rel, *([parent] if parent else []))


def brief(s: State | None) -> str:
    return "absent" if s is None else f"{s[0]} {s[1]:o} t{(s[2] - T_PAST) // 1_000_000_007} {len(s[3])}B"


plans = st.lists(st.tuples(st.sampled_from(["walk", "read"]), st.integers(0, 30), st.sampled_from(OPS),
                           st.integers(0, 1000)), min_size=1, max_size=8)


@settings(SETTINGS, max_examples=scale(12, 400))
@given(plan1=plans, plan2=plans, sizes=st.lists(st.sampled_from([0, 10, 5000, 3 * MiB + 5]), min_size=3,
                                                 max_size=12))
def test_trees_changing_during_snapshots(plan1: list[tuple[str, int, str, int]],
                                         plan2: list[tuple[str, int, str, int]], sizes: list[int]) -> None:
    """Files grow, shrink, vanish, are replaced, rewritten in place, chmod'ed and created while the walk
    runs and between the chunks of large files being read; two snapshots in a row (the second re-uses
    what the walk finds unchanged). Each path restores to a state it had during the run; and each file
    whose restored state is not what it was when the run started is named in the run's warnings."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        src, staging = Path(tmp) / "src", Path(tmp) / "staging"
        staging.mkdir()
        files: list[bytes] = []
        for i, size in enumerate(sizes):
            rel = f"d{i % 2}/f{i}".encode() if i % 3 else f"f{i}".encode()
            (src / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            (src / os.fsdecode(rel)).write_bytes(os.urandom(size))
            files.append(rel)
        backdate_all(src)
        with Store.open(Path(tmp) / "store", writable=True) as store:
            for n, plan in enumerate((plan1, plan2)):
                mutator = Mutator(src, staging, plan, files)
                initial = {p: s[0] for p, s in mutator.states.items()}
                progress = WatchedProgress(lambda m=mutator: m.at("read"))  # type: ignore[misc]

                def ignore(rel: str, m: Mutator = mutator) -> bool:
                    m.at("walk")
                    return False

                sid = take(store, src, progress, ignore)
                out = Path(tmp) / f"out{n}"
                restore_snapshot(store, sid, out)
                restored = state_of(out)
                warned = {os.fsencode(p) for p in progress.warned}
                FIGURES.snapshots += 1
                FIGURES.mutations += mutator.done
                FIGURES.warnings += len(progress.warned)
                FIGURES.entries += len(restored)
                for path in sorted(set(restored) | set(mutator.states)):
                    got = restored.get(path)
                    allowed = mutator.states.get(path, [None])
                    if got not in allowed and path not in warned:
                        FIGURES.unreported_changes += 1
                        FIGURES.problems.append(f"{path!r} restored as {brief(got)}, never that during the run "
                                                f"(round {n}, states {[brief(a) for a in allowed]}, plan {plan})")
                    elif got is not None and got[0] == "file" and got != initial.get(path) and path not in warned:
                        FIGURES.unreported_changes += 1
                        FIGURES.problems.append(f"{path!r} changed during the run without a warning: "
                                                f"{str(initial.get(path))[:100]} -> {str(got)[:100]}")
                    elif path not in mutator.states or len(allowed) == 1:
                        if got != allowed[0] and path not in warned:
                            FIGURES.restored_mismatches += 1
                            FIGURES.problems.append(f"{path!r} untouched but restored as {str(got)[:100]}")
                backdate_all(src)  # the next run starts from a quiet tree again
        FIGURES.trees += 1
        assert FIGURES.unreported_changes == 0 and FIGURES.restored_mismatches == 0, FIGURES.problems[-5:]


def test_hostile_trees_record() -> None:
    """Runs after the generated trees above (file order) and records their figures."""
    record("hostile trees", trees=FIGURES.trees, entries=FIGURES.entries, snapshots=FIGURES.snapshots,
           special_skipped=FIGURES.special_skipped, unreadable=FIGURES.unreadable, mutations=FIGURES.mutations,
           warnings=FIGURES.warnings, restored_mismatches=FIGURES.restored_mismatches,
           unreported_changes=FIGURES.unreported_changes)
    assert FIGURES.restored_mismatches == 0 and FIGURES.unreported_changes == 0, FIGURES.problems[:10]
