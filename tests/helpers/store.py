"""Helpers for the store/snapshot/restore tests, and a small command-line tool they run in subprocesses.

Command line (run with the project's venv Python)::

    python tests/helpers/store.py snapshot STORE ROOT PROJECT [--fault-at N] [--drop-dac]
    python tests/helpers/store.py crash-server

``snapshot`` takes one snapshot and prints its summary as JSON. ``--fault-at N`` kills the process with
SIGKILL right after the N-th durable-write step of the store (the store's ``on_durable_step`` hook, see
``Store.open``); each step reached is printed to stderr as ``step: LABEL``. ``crash-server`` does the
same for many runs, forking one child per run (see :class:`CrashRunner`), which is what the crash test
iterates over. ``--drop-dac`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH first, so that file
permissions apply even to root.

The store's benchmarks (``store-bench``, ``prune-bench``) are in ``bench/_store_bench.py``
(``python -m bench prune-bench DIR``).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import json
import os
import signal
import stat
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from syncsnapd.core import Progress, RunProgress, SnapshotSummary
from syncsnapd.engine import take_snapshot
from syncsnapd.store import Entry, SnapshotStats, Store, hash_bytes, make_snapshot_id
from syncsnapd.store._format import canonical, encode_snapshot

HERE = Path(__file__).resolve()


def new_progress(project: str = "p", events: list[Progress] | None = None) -> RunProgress:
    sink: list[Progress] = [] if events is None else events
    return RunProgress(project, "r-test", sink.append)


async def snapshot(store: Store, root: Path, project: str = "p", progress: RunProgress | None = None,
                   **kw: Any) -> SnapshotSummary:
    """Take a snapshot with a fresh progress reporter unless one is given."""
    return await take_snapshot(store, project, root, progress or new_progress(project), **kw)


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def commit_entries(store: Store, project: str, entries: list[tuple[str, str, bytes | str | None]]) -> str:
    """Commit a hand-made snapshot: (path, kind, content for files / target for symlinks / None)."""
    writer = store.begin_write()
    made: list[Entry] = []
    for path, kind, data in entries:
        if kind == "file":
            assert isinstance(data, bytes)
            h = hash_bytes(data)
            writer.add_chunk(h, data)
            made.append(Entry(path, "file", len(data), 1_600_000_000_000_000_000, 0o644, 0, [h]))
        elif kind == "symlink":
            assert isinstance(data, str)
            made.append(Entry(path, "symlink", 0, 1_600_000_000_000_000_000, 0o777, 0, data))
        else:
            made.append(Entry(path, kind, 0, 1_600_000_000_000_000_000, 0o755, 0, None))
    sid = make_snapshot_id()
    store.commit_snapshot(writer, snapshot_id=sid, project=project, root="/nowhere", entries=made,
                          stats=SnapshotStats())
    return sid


def commit_raw(store: Store, project: str, groups: list[Any], *,
               edit: Callable[[dict[str, Any]], None] | None = None) -> str:
    """Commit a crafted snapshot, as an attacker with write access to the store could: each of ``groups``
    is stored as a tree group blob (bytes as they are, anything else as its JSON), and ``edit(doc)`` may
    change the snapshot file's fields before its checksum is computed (so the checksum matches)."""
    writer = store.begin_write()
    tree: list[str] = []
    for group in groups:
        data = group if isinstance(group, bytes) else json.dumps(group).encode()
        h = hash_bytes(data)
        writer.add_chunk(h, data, metadata=True)
        tree.append(h)
    writer.finish()
    writer.committed()
    sid = make_snapshot_id()
    doc = json.loads(encode_snapshot(sid, project, "/nowhere", tree, SnapshotStats(files=1)))
    del doc["checksum"]
    if edit is not None:
        edit(doc)
    doc["checksum"] = hash_bytes(canonical(doc))
    store.files.write_durable(store.files.snapshot_path(sid), json.dumps(doc).encode(), "snapshot")
    return sid


def patch_file(path: Path | bytes, offset: int, data: bytes) -> None:
    """Overwrite bytes in place (``offset`` -1 appends); creates the file if missing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if offset < 0:
            offset = os.fstat(fd).st_size
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def tree_state(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything a restore must reproduce, keyed by relative path as bytes (non-UTF-8 names stay exact)."""
    state: dict[bytes, tuple[Any, ...]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("symlink", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, digest)
    return state


def backdate(root: Path, seconds: int = 3600) -> None:
    """Move every mtime into the past, so that no file counts as just modified (see RACY_WINDOW_NS)."""
    past = time.time_ns() - seconds * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(past, past), follow_symlinks=False)
    os.utime(root, ns=(past, past))


# --- inotify: watching which files a snapshot opens -----------------------------------------------

IN_ACCESS = 0x001
IN_OPEN = 0x020
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_EVENT = struct.Struct("iIII")


class OpenWatcher:
    """Records the names of files opened or read below a directory tree, as the kernel reports them.

    Uses inotify (IN_OPEN, IN_ACCESS) on every directory of the tree, so it observes the real
    system calls of whatever code runs, not a hook inside the engine.
    """

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        # inotify instances are limited per user (128 here); other test suites on this machine may
        # briefly use them all (the watcher's tests exhaust them on purpose), so wait a little.
        deadline = time.monotonic() + 10
        while True:
            self.fd = self._libc.inotify_init1(_IN_NONBLOCK | os.O_CLOEXEC)
            if self.fd >= 0:
                break
            err = ctypes.get_errno()
            if err != errno.EMFILE or time.monotonic() > deadline:
                raise OSError(err, "inotify_init1")
            time.sleep(0.05)
        self._dirs: dict[int, bytes] = {}
        for dirpath, _dirnames, _filenames in os.walk(os.fsencode(root)):
            wd = self._libc.inotify_add_watch(self.fd, dirpath, IN_OPEN | IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch")
            self._dirs[wd] = dirpath

    def file_events(self) -> list[bytes]:
        """Paths of files (not directories) opened or read since the last call."""
        names: list[bytes] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if not mask & IN_ISDIR and name:
                    names.append(os.path.join(self._dirs.get(wd, b"?"), name))

    def close(self) -> None:
        os.close(self.fd)


# --- capabilities: make permissions apply to root --------------------------------------------------

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def drop_dac_capabilities() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this process (call before any thread starts).

    Root keeps its uid (and so owns the test files), but mode 000 then denies it reading, as for anyone.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # 2 x {effective, permitted, inheritable}
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0] &= mask  # effective (low word)
    data[1] &= mask  # permitted (low word)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


# --- the subprocess command line ------------------------------------------------------------------

def _fault_hook(fault_at: int | None, steps_file: Path | None, steps: list[str]) -> Any:
    steps_fd = os.open(steps_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if steps_file else 2

    def fault(label: str) -> None:
        steps.append(label)
        os.write(steps_fd, f"step: {label}\n".encode())  # unbuffered: the parent learns what was reached
        if fault_at is not None and len(steps) == fault_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def prune_store(store: Store, keep_last: int = 1) -> Any:
    """Forget all but the newest ``keep_last`` snapshots of every project, then collect garbage."""
    from syncsnapd.core import KeepPolicy
    from syncsnapd.store import plan_forget

    snaps = store.list_snapshots()
    decisions = plan_forget(snaps, {s.project: KeepPolicy(last=keep_last) for s in snaps})
    store.forget([sid for d in decisions.values() for sid in d.forget])
    return store.collect_garbage()


def run_prune_command(store_root: Path, fault_at: int | None, steps_file: Path | None = None) -> dict[str, Any]:
    steps: list[str] = []
    with Store.open(store_root, writable=True, on_durable_step=_fault_hook(fault_at, steps_file, steps)) as store:
        stats = prune_store(store)
    return {"stats": stats.to_json(), "steps": steps}


def run_snapshot_command(store_root: Path, root: Path, project: str, fault_at: int | None,
                         steps_file: Path | None = None) -> dict[str, Any]:
    steps: list[str] = []
    fault = _fault_hook(fault_at, steps_file, steps)

    async def main() -> dict[str, Any]:
        store = Store.open(store_root, writable=True, on_durable_step=fault)
        try:
            # One worker thread at a time: with two, the order in which chunks reach the packs (and so
            # how many packs, and how many durable steps, a run has) depends on timing, and a crash test
            # stepping through them one by one could miss a step under load.
            summary = await take_snapshot(store, project, root, new_progress(project),
                                          limiter=trio.CapacityLimiter(1))
        finally:
            store.close()
        return {"summary": asdict(summary), "steps": steps}

    return trio.run(main)


def crash_server() -> None:
    """Serve crash runs: read ``{"store", "root", "project", "fault_at"}`` lines on stdin; for each, fork a
    child that takes the snapshot (or prunes the store, keeping the newest snapshot of each project, when
    ``root`` is null), SIGKILLed at step ``fault_at``; answer ``{"code", "steps"}``.

    This process imports everything once and never starts a thread (only its children run Trio), so
    forking it is safe; a crash run then costs a fork instead of a Python start-up.
    """
    for line in sys.stdin:
        req = json.loads(line)
        steps_file = Path(req["store"] + ".steps")
        pid = os.fork()
        if pid == 0:
            try:
                if req["root"] is None:
                    run_prune_command(Path(req["store"]), req["fault_at"], steps_file)
                else:
                    run_snapshot_command(Path(req["store"]), Path(req["root"]), req["project"], req["fault_at"],
                                         steps_file)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        steps = [ln[6:] for ln in steps_file.read_text().splitlines() if ln.startswith("step: ")]
        steps_file.unlink()
        print(json.dumps({"code": code, "steps": steps}), flush=True)


class CrashRunner:
    """The test side of :func:`crash_server` (a context manager)."""

    def __init__(self) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, str(HERE), "crash-server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, store: Path, root: Path | None, project: str, fault_at: int) -> tuple[int, list[str]]:
        """Snapshot ``root`` into ``store`` (prune ``store`` if ``root`` is None) in a child killed at step
        ``fault_at``: (exit code, steps)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"store": str(store), "root": None if root is None else str(root),
                                          "project": project, "fault_at": fault_at}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["code"], reply["steps"]

    def __enter__(self) -> CrashRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_in_subprocess(*args: str, check: bool = True) -> tuple[int, dict[str, Any] | None, str]:
    """Run this file with ``args``; return (returncode, parsed JSON output or None, stderr)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        out = None
    if check and proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"helper failed ({proc.returncode}): {proc.stderr}")
    return proc.returncode, out, proc.stderr


def main(argv: list[str]) -> int:
    # Run as a script, this folder is sys.path[0], and its http.py would shadow the standard library's
    # `http` for whatever imports it later (boto3, for a crash run on an S3 store).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(HERE.parent)]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("store", type=Path)
    s.add_argument("root", type=Path)
    s.add_argument("project")
    s.add_argument("--fault-at", type=int)
    s.add_argument("--drop-dac", action="store_true")
    sub.add_parser("crash-server")
    args = parser.parse_args(argv)
    if args.cmd == "snapshot":
        if args.drop_dac:
            drop_dac_capabilities()
        result = run_snapshot_command(args.store, args.root, args.project, args.fault_at)
        print(json.dumps(result))
    else:
        crash_server()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))



def assert_restores(store: Store, expected: dict[str, Any], out: Path) -> None:
    """``check --read-data`` is clean and every listed snapshot restores (under ``out``) byte-identical to
    ``expected[its id]`` (a :func:`tree_state`)."""
    import shutil

    from syncsnapd.engine import restore_snapshot

    report = store.check(read_data=True)
    assert report.ok, report
    out.mkdir(parents=True, exist_ok=True)
    for info in store.list_snapshots():
        target = out / info.id
        restore_snapshot(store, info.id, target)
        assert tree_state(target) == expected[info.id], info.id
        shutil.rmtree(target)
