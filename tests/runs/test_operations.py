"""Snapshot operations through the daemon: diff, restore, check and prune over the API (a real syncsnapd
with curl), and the run rules in-process: one check or prune at a time, cancelling, shutting down."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers.curl import TERMINAL, SseReader
from helpers.daemon import DaemonProcess, make_tree, spawn_daemon
from helpers.store import backdate, commit_entries, flip_byte, snapshot, tree_state, write_files
from syncsnapd.api import http_status
from syncsnapd.core import KeepPolicy, Progress, ProjectConfig
from syncsnapd.engine import TEMP_PREFIX
from syncsnapd.runs import OperationError, Operations, Scheduler, Tracker
from syncsnapd.store import ChunkLocation, ChunkReader, Store

KiB, MiB = 1 << 10, 1 << 20


def start(base: Path, projects: dict[str, tuple[Path, str]]) -> DaemonProcess:
    """syncsnapd as a subprocess, with extra TOML lines per project (``keep = {...}``)."""
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{base}/store"',
             f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false"]
    for pid, (path, extra) in projects.items():
        lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"', extra]
    cfg = base / "syncsnapd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return spawn_daemon(base, cfg)


@pytest.fixture
def daemons(short_tmp: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def call(d: DaemonProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    args = ["-X", method, "-w", "\n%{http_code}", f"http://localhost{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = d.curl(*args).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text)


def snapshot_now(d: DaemonProcess, stream: SseReader, project: str) -> dict[str, Any]:
    status, started = call(d, "POST", f"/api/v1/projects/{project}/snapshots")
    assert status == 202
    final = stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)
    assert final["state"] == "completed", final
    return final


# --- through the daemon ---------------------------------------------------------------------------

def test_diff_and_restore_through_the_daemon(daemons: list[DaemonProcess], short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=12)
    os.mkfifo(folder / "fifo")  # skipped by snapshots, so not in any diff either
    os.chmod(folder / "d1", 0o750)
    d = start(short_tmp, {"docs": (folder, "")})
    daemons.append(d)
    stream = SseReader(d, "/api/v1/projects/docs/progress/stream")
    try:
        first = snapshot_now(d, stream, "docs")["snapshot"]["id"]
        os.unlink(folder / "fifo")
        expected = tree_state(folder)

        # diff: from a snapshot to the live folder, and between snapshots.
        (folder / "d0/sub0/f0.txt").write_bytes(b"changed")
        os.chmod(folder / "odd name ü.txt", 0o600)
        (folder / "new.txt").write_bytes(b"new!")
        status, diff = call(d, "GET", f"/api/v1/projects/docs/diff?from={first}")
        assert status == 200 and diff["from"] == first and diff["to"] == "live"
        assert diff["added"] == [{"path": "new.txt", "kind": "file", "size": 4}] and diff["removed"] == []
        assert [(m["path"], m["change"]) for m in diff["modified"]] == [("d0/sub0/f0.txt", ["content"]),
                                                                      ("odd name ü.txt", ["mode"])]
        assert diff["summary"]["modified"] == 2 and diff["truncated"] is False
        second = snapshot_now(d, stream, "docs")["snapshot"]["id"]
        status, between = call(d, "GET", f"/api/v1/projects/docs/diff?from={first}&to=latest")
        assert status == 200 and between["to"] == second
        assert (between["added"], between["modified"]) == (diff["added"], diff["modified"])
        assert call(d, "GET", "/api/v1/projects/docs/diff")[1]["error"]["code"] == "bad_request"
        status, err = call(d, "GET", "/api/v1/projects/docs/diff?from=20200101T000000.000Z-abcdef")
        assert (status, err["error"]["code"]) == (404, "snapshot_unknown")

        # restore: the whole first snapshot, with its own steps on the project's stream.
        target = short_tmp / "out"
        status, started = call(d, "POST", "/api/v1/projects/docs/restore",
                               {"snapshot": first, "target": str(target)})
        assert status == 202 and started["stream"] == "/api/v1/projects/docs/progress/stream"
        assert (started["progress"]["kind"], started["progress"]["step"], started["progress"]["steps"]) == \
            ("restore", 1, 4)
        run = started["run"]
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL)
        assert final["state"] == "completed", final
        assert tree_state(target) == expected
        events = [e for e in stream.events if e["run"] == run]
        assert {e["kind"] for e in events} == {"restore"}
        assert [e["step"] for e in events] == sorted(e["step"] for e in events)
        assert {1, 2, 3, 4} <= {e["step"] for e in events}
        assert final["result"] == {"snapshot": first, "target": str(target), "paths": [], "files": 13, "dirs": 9,
                                   "symlinks": 1, "bytes": sum(v[3] for v in expected.values() if v[0] == "file")}
        assert call(d, "GET", f"/api/v1/operations/{run}")[1]["event_id"] == final["event_id"]
        # The project's own state stays its snapshot runs'.
        assert call(d, "GET", "/api/v1/projects/docs/progress")[1]["kind"] == "snapshot"

        # A path inside the snapshot; then overwriting into a target that has files.
        status, started = call(d, "POST", "/api/v1/projects/docs/restore",
                               {"snapshot": "latest", "target": str(short_tmp / "part"), "paths": ["d0/sub0/"]})
        assert status == 202
        assert stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)["state"] == "completed"
        assert sorted(str(p.relative_to(short_tmp / "part")) for p in (short_tmp / "part").rglob("*")) == \
            ["d0", "d0/sub0", *sorted(f"d0/sub0/{p.name}" for p in (folder / "d0/sub0").iterdir())]
        assert (short_tmp / "part/d0/sub0/f0.txt").read_bytes() == b"changed"
        status, err = call(d, "POST", "/api/v1/projects/docs/restore", {"snapshot": first, "target": str(target)})
        assert (status, err["error"]["code"]) == (409, "target_not_empty")
        (target / "d0/sub0/f0.txt").write_bytes(b"local edit")
        (target / "mine.txt").write_bytes(b"not in the snapshot")
        status, started = call(d, "POST", "/api/v1/projects/docs/restore",
                               {"snapshot": second, "target": str(target), "overwrite": True})
        assert status == 202
        assert stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)["state"] == "completed"
        assert (target / "d0/sub0/f0.txt").read_bytes() == b"changed"
        assert (target / "mine.txt").read_bytes() == b"not in the snapshot"
        assert not [p for p in target.rglob(f"{TEMP_PREFIX}*")]

        # Refused before any run starts, each with its code.
        for body, code in [({"snapshot": "20200101T000000.000Z-abcdef", "target": str(short_tmp / "x")},
                            (404, "snapshot_unknown")),
                           ({"snapshot": first, "target": "relative/dir"}, (400, "target_invalid")),
                           ({"snapshot": first, "target": str(short_tmp / "store" / "x")},
                            (400, "target_forbidden")),
                           ({"snapshot": first, "target": str(short_tmp / "x"), "paths": ["../etc"]},
                            (400, "path_invalid")),
                           ({"snapshot": first, "target": str(short_tmp / "no/such/parent")},
                            (400, "target_invalid")),
                           ({"snapshot": first}, (400, "bad_request"))]:
            status, err = call(d, "POST", "/api/v1/projects/docs/restore", body)
            assert (status, err["error"]["code"]) == code, body
        assert call(d, "POST", "/api/v1/projects/nope/restore", {"snapshot": first, "target": "/x"})[0] == 404
        # A path the snapshot does not have: the run fails with its code.
        status, started = call(d, "POST", "/api/v1/projects/docs/restore",
                               {"snapshot": first, "target": str(short_tmp / "y"), "paths": ["no/such"]})
        final = stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)
        assert (final["state"], final["error"]["code"]) == ("failed", "path_unknown")
    finally:
        stream.close()


def test_check_and_prune_through_the_daemon_while_snapshots_run(daemons: list[DaemonProcess],
                                                                 short_tmp: Path) -> None:
    """Prune (keep the newest snapshot) while a snapshot that re-uses data of forgotten snapshots runs, a
    few times over; then check at both levels is clean and every remaining snapshot restores exactly.
    Then a deliberately corrupted chunk is found by a read_data check through the daemon."""
    folder = short_tmp / "docs"
    pool = [os.urandom(1 * MiB + i) for i in range(12)]
    folder.mkdir()
    d = start(short_tmp, {"docs": (folder, "keep = { last = 1 }")})
    daemons.append(d)
    events = SseReader(d, "/api/v1/events")
    expected: dict[str, Any] = {}
    removed: list[str] = []
    freed = overlapped = 0
    try:
        for round_ in range(4):
            shutil.rmtree(folder, ignore_errors=True)
            write_files(folder, {f"f{i}.bin": pool[(round_ * 3 + i) % len(pool)] for i in range(8)})
            write_files(folder, {"unique.bin": os.urandom(24 * MiB)})  # so that the prune overlaps the run
            backdate(folder)
            state = tree_state(folder)
            status, snap = call(d, "POST", "/api/v1/projects/docs/snapshots")
            assert status == 202
            events.wait_for(lambda e, run=snap["run"]: e["run"] == run and e["step"] >= 3)
            status, prune = call(d, "POST", "/api/v1/prune", {})
            assert status == 202 and prune["progress"]["project"] is None and prune["progress"]["kind"] == "prune"
            done = events.wait_for(lambda e, run=snap["run"]: e["run"] == run and e["state"] in TERMINAL)
            pruned = events.wait_for(lambda e, run=prune["run"]: e["run"] == run and e["state"] in TERMINAL)
            assert done["state"] == "completed" and pruned["state"] == "completed", (done, pruned)
            expected[done["snapshot"]["id"]] = state
            removed += pruned["result"]["snapshots_removed"]
            freed += pruned["result"]["bytes_freed"]
            overlapped += pruned["event_id"] < done["event_id"]
        assert len(removed) >= 2 and freed > 40 * MiB and overlapped >= 2
        for read_data in (False, True):
            status, check = call(d, "POST", "/api/v1/check", {"read_data": read_data})
            assert status == 202 and check["progress"]["kind"] == "check"
            final = events.wait_for(lambda e, run=check["run"]: e["run"] == run and e["state"] in TERMINAL)
            assert final["state"] == "completed" and final["result"]["ok"] is True, final
            assert final["result"]["read_data"] is read_data
        with Store.open(short_tmp / "store", writable=False) as store:
            listed = [s.id for s in store.list_snapshots()]
            assert len(listed) <= 2 and not set(listed) & set(removed)
            (short_tmp / "out").mkdir()
            for sid in listed:
                target = short_tmp / "out" / sid
                assert d.cli("restore", sid, str(target)).returncode == 0
                assert tree_state(target) == expected[sid]
            entry = next(e for e in store.load_entries(listed[-1]) if e.path == "unique.bin")
            loc = store.locate(entry.chunks[1])
            assert loc is not None
        flip_byte(store.pack_path(loc.pack), loc.offset + 100)
        status, check = call(d, "POST", "/api/v1/check", {"read_data": True})
        final = events.wait_for(lambda e, run=check["run"]: e["run"] == run and e["state"] in TERMINAL)
        assert (final["state"], final["error"]["code"]) == ("failed", "problems_found")
        (problem,) = final["result"]["problems"]
        assert (problem["kind"], problem["object"], problem["id"], problem["pack"]) == \
            ("corrupt", "chunk", entry.chunks[1], loc.pack)
        assert problem["damages"] == [{"snapshot": listed[-1], "files": 1, "paths": ["unique.bin"],
                                       "listing": False}]
        assert call(d, "POST", "/api/v1/check", {"read_data": "yes"})[0] == 400
        # The offline commands on the same store, while the daemon runs.
        out = d.cli("check", "--read-data")
        assert out.returncode == 1 and out.stdout.startswith(f"corrupt: chunk {entry.chunks[1]} in pack {loc.pack}")
        assert d.cli("check").returncode == 0  # the fast level does not read file content
        out = d.cli("prune", "--dry-run")  # read-only: works beside the daemon
        assert out.returncode == 0 and out.stdout.startswith("docs: keeping 1, would forget ")
        out = d.cli("prune")
        assert out.returncode == 2 and "Prune through the daemon instead" in out.stdout
        out = d.cli("diff", listed[-1], "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["summary"]["modified"] == 0
    finally:
        events.close()


# --- in-process: the rules of operation runs ------------------------------------------------------

@asynccontextmanager
async def running_operations(tmp_path: Path, projects: list[ProjectConfig]) -> AsyncIterator[
        tuple[Operations, Tracker, Store]]:
    store = Store.open(tmp_path / "store", writable=True)
    tracker = Tracker()
    scheduler = Scheduler(store, tracker, projects)
    ops = Operations(scheduler, tracker, exclude=(tmp_path / "store",))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.serve)
            scope = trio.CancelScope()

            async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await ops.serve(task_status=task_status)

            await nursery.start(serve)
            yield ops, tracker, store
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def wait_terminal(tracker: Tracker, first: Progress) -> Progress:
    with trio.fail_after(20), tracker.subscribe(last_event_id=first.event_id) as sub:
        async for ev in sub:
            if ev.progress.run == first.run and ev.progress.terminal:
                return ev.progress
    raise AssertionError("no terminal event")


async def test_one_check_or_prune_at_a_time(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    async with running_operations(tmp_path, [ProjectConfig("p", folder, keep=KeepPolicy(last=1))]) as (
            ops, tracker, store):
        commit_entries(store, "p", [("a", "file", b"a")])
        first = ops.start_check()
        for start in (ops.start_check, ops.start_prune):
            with pytest.raises(OperationError) as exc:
                start()
            assert (http_status(exc.value.code), exc.value.code) == (409, "busy")
        assert (await wait_terminal(tracker, first)).state == "completed"
        prune = ops.start_prune(dry_run=True)
        with pytest.raises(OperationError):
            ops.start_check()
        final = await wait_terminal(tracker, prune)
        assert final.state == "completed" and final.result is not None and final.result["dry_run"] is True
        assert (await wait_terminal(tracker, ops.start_check(read_data=True))).state == "completed"
        assert [p.kind for p in ops.operations()] == ["check", "prune", "check"]


async def test_a_cancelled_restore_leaves_whole_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the store is slowed down (a slow disk: the real one is too fast to cancel mid-way
    reliably), the restore is cancelled while it writes; every file it left is whole and under its
    name, no temporary file remains, and the run ends `cancelled`."""
    folder = tmp_path / "p"
    files = {f"d/f{i:02d}.bin": os.urandom(300 * KiB) for i in range(40)}
    write_files(folder, files)
    real_read = ChunkReader.read

    def slow_read(self: ChunkReader, chunk: str) -> bytes:
        time.sleep(0.01)
        return real_read(self, chunk)

    async with running_operations(tmp_path, [ProjectConfig("p", folder)]) as (ops, tracker, store):
        sid = (await snapshot(store, folder)).id
        monkeypatch.setattr(ChunkReader, "read", slow_read)
        target = tmp_path / "out"
        first = await ops.start_restore("p", sid, str(target))
        assert first.run is not None
        with trio.fail_after(10), tracker.subscribe(last_event_id=first.event_id) as sub:
            async for ev in sub:
                if (ev.progress.step == 2 and ev.progress.files_done >= 5) or ev.progress.terminal:
                    break
        assert ops.cancel(first.run)
        final = await wait_terminal(tracker, first)
        assert final.state == "cancelled" and final.error == {"code": "cancelled",
                                                              "message": "The run was cancelled on request."}
        assert ops.get(first.run) == final
    left = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert 5 <= len(left) < len(files)
    for rel in left:
        assert (target / rel).read_bytes() == files[rel]


async def test_operations_end_cancelled_when_the_daemon_stops(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p"
    write_files(folder, {f"f{i}.bin": os.urandom(100 * KiB) for i in range(30)})
    real_read = ChunkReader.read_at

    def slow_read(self: ChunkReader, chunk: str, loc: ChunkLocation) -> bytes:
        time.sleep(0.01)
        return real_read(self, chunk, loc)

    firsts: list[Progress] = []
    async with running_operations(tmp_path, [ProjectConfig("p", folder)]) as (ops, tracker, store):
        sid = (await snapshot(store, folder)).id
        monkeypatch.setattr(ChunkReader, "read_at", slow_read)
        firsts += [await ops.start_restore("p", sid, str(tmp_path / "out")), ops.start_check(read_data=True)]
        sub = tracker.subscribe(last_event_id=firsts[0].event_id)
        await trio.sleep(0.05)
    finals = {}
    while (ev := sub.get_nowait()) is not None:
        if ev.progress.terminal:
            finals[ev.progress.run] = ev.progress
    for first in firsts:
        final = finals[first.run]
        assert final.state == "cancelled" and final.error is not None and final.error["code"] == "shutdown"


async def test_a_cancelled_prune_leaves_the_store_consistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying blobs is slowed down (as on a slow disk) so that the prune is cancelled while repacking;
    the store then checks clean, every snapshot restores, and the next prune finishes the job."""
    folder = tmp_path / "p"
    write_files(folder, {f"f{i:02d}.bin": os.urandom(200 * KiB) for i in range(24)})
    backdate(folder)
    real = ChunkReader._read_verified

    def slow(self: ChunkReader, chunk: str, loc: ChunkLocation) -> tuple[bytes, bytes]:
        time.sleep(0.05)
        return real(self, chunk, loc)

    async with running_operations(tmp_path, [ProjectConfig("p", folder, keep=KeepPolicy(last=1))]) as (
            ops, tracker, store):
        await snapshot(store, folder)
        for i in range(0, 24, 2):
            (folder / f"f{i:02d}.bin").unlink()
        backdate(folder)
        expected = tree_state(folder)
        kept = (await snapshot(store, folder)).id
        monkeypatch.setattr(ChunkReader, "_read_verified", slow)
        first = ops.start_prune()
        assert first.run is not None
        with trio.fail_after(10), tracker.subscribe(last_event_id=first.event_id) as sub:
            async for ev in sub:
                if (ev.progress.step == 3 and ev.progress.bytes_done > 0) or ev.progress.terminal:
                    break
        assert ops.cancel(first.run)
        final = await wait_terminal(tracker, first)
        assert final.state == "cancelled" and final.step == 5 and 0 < final.bytes_done < final.bytes_total
        monkeypatch.undo()
        assert os.listdir(store.root / "tmp") == []
        assert store.check(read_data=True).ok
        restore_out = tmp_path / "out"
        from syncsnapd.engine import restore_snapshot

        restore_snapshot(store, kept, restore_out)
        assert tree_state(restore_out) == expected
        done = await wait_terminal(tracker, ops.start_prune())
        assert done.state == "completed" and done.result is not None and done.result["packs_repacked"] > 0
        assert store.check(read_data=True).ok


@pytest.mark.parametrize("kind", ["restore", "check", "prune"])
async def test_an_operation_cancelled_while_its_worker_thread_is_mid_step_ends_in_one_cancelled_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The run's worker thread is held inside its first read of the store (mid-step) while the run is
    cancelled; once released it stops at its next check. The run ends `cancelled` with exactly one
    terminal event, and nothing of it is published after that. (The same run lifecycle serves snapshot
    runs; test_executor.py covers the cancellation wrapped in an exception group for every kind.)"""
    folder = tmp_path / "p"
    write_files(folder, {f"f{i:02d}.bin": os.urandom(200 * KiB) for i in range(24)})
    backdate(folder)
    entered, go = threading.Event(), threading.Event()
    real = ChunkReader._read_verified

    def held(self: ChunkReader, chunk: str, loc: ChunkLocation) -> tuple[bytes, bytes]:
        entered.set()
        go.wait()
        return real(self, chunk, loc)

    async with running_operations(tmp_path, [ProjectConfig("p", folder, keep=KeepPolicy(last=1))]) as (
            ops, tracker, store):
        sid = (await snapshot(store, folder)).id
        for i in range(0, 24, 2):
            (folder / f"f{i:02d}.bin").unlink()
        backdate(folder)
        await snapshot(store, folder)
        monkeypatch.setattr(ChunkReader, "_read_verified", held)
        if kind == "restore":
            first = await ops.start_restore("p", sid, str(tmp_path / "out"))
        elif kind == "check":
            first = ops.start_check(read_data=True)
        else:
            first = ops.start_prune()
        assert first.run is not None
        sub = tracker.subscribe(last_event_id=first.event_id - 1)
        assert await trio.to_thread.run_sync(lambda: entered.wait(20))
        assert ops.cancel(first.run)
        go.set()
        final = await wait_terminal(tracker, first)
        assert ops.get(first.run) == final
    # The operations have shut down: everything the run published is in the subscription by now.
    mine = []
    while (ev := sub.get_nowait()) is not None:
        if ev.progress.run == first.run:
            mine.append(ev.progress)
    assert mine[0] == first and mine[-1] == final
    assert [(p.kind, p.state, p.error) for p in mine if p.terminal] == [
        (kind, "cancelled", {"code": "cancelled", "message": "The run was cancelled on request."})]
