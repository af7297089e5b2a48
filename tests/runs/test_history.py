"""History that survives restarts, cancel, retry, concurrency and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from helpers.daemon import DaemonProcess, make_tree, spawn_daemon, write_config
from syncsnapd.core import ProjectConfig, RunProgress
from syncsnapd.engine import SnapshotError
from syncsnapd.runs import Event, RetryPolicy, Scheduler, Tracker
from syncsnapd.store import Store

TERMINAL = ("completed", "failed", "cancelled")


def _big_folder(root: Path, files: int = 40, size: int = 4 << 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i:03}.bin").write_bytes(os.urandom(size))
    return root


class Stream:
    """`curl -N` on an SSE endpoint, events collected by a thread."""

    def __init__(self, d: DaemonProcess, path: str, *headers: str) -> None:
        args = ["curl", "-sSN", "--unix-socket", d.socket]
        for h in headers:
            args += ["-H", h]
        self.proc = subprocess.Popen([*args, f"http://localhost{path}"], stdout=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.kinds: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        kind = "message"
        for line in self.proc.stdout:
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: "):
                self.kinds.append(kind)
                if kind == "progress":
                    self.events.append(json.loads(line[6:]))
                kind = "message"

    def wait_for(self, pred: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            time.sleep(0.01)
        raise AssertionError(f"no matching event; last: {self.events[-3:]}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _get(d: DaemonProcess, path: str, *args: str) -> Any:
    return json.loads(d.curl(*args, f"http://localhost{path}").stdout)


def _until(condition: Any, timeout: float = 10) -> None:
    """Poll ``condition`` until it holds (bounded): for state the daemon reaches asynchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _many_files(root: Path, dirs: int = 20, per_dir: int = 1000) -> Path:
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(per_dir):
            (root / f"d{d}" / f"f{i}").write_bytes(os.urandom(2048))
    return root


def test_sigkill_mid_run_restart_marks_interrupted_and_resumes_the_stream(short_tmp: Path) -> None:
    """Two runs in flight at SIGKILL: one waiting in step 1 for a Syncthing that does not answer (so it is
    certainly in flight), one snapshotting 20,000 files (killed wherever it is)."""
    big = _many_files(short_tmp / "big")
    synced = short_tmp / "synced"
    synced.mkdir()
    cfg = write_config(short_tmp, {"big": big})
    with open(cfg, "a") as f:  # its Syncthing (port 9, discard) never answers
        f.write(f'[[projects]]\nid = "synced"\npath = "{synced}"\n'
                'syncthing = { url = "http://127.0.0.1:9", api_key = "k", folder = "f" }\n')
    d = spawn_daemon(short_tmp, cfg)
    stream = Stream(d, "/api/v1/events")
    try:
        stream.wait_for(lambda e: e["project"] == "synced")
        stuck = _get(d, "/api/v1/projects/synced/snapshots", "-X", "POST")["run"]
        seen = stream.wait_for(lambda e: e["run"] == stuck and "not answering" in e["message"])
        run = _get(d, "/api/v1/projects/big/snapshots", "-X", "POST")["run"]
        stream.wait_for(lambda e: e["run"] == run and e["step"] >= 3)
        # Both runs are in the history (written asynchronously, a batch at a time): kill now.
        _until(lambda: all(d.curl("-w", "%{http_code}", "-o", "/dev/null",
                                  f"http://localhost/api/v1/runs/{r}").stdout == "200" for r in (stuck, run)))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        stream.close()
    last_seen = max(e["event_id"] for e in stream.events)

    d2 = spawn_daemon(short_tmp, cfg)
    try:
        rec = _get(d2, f"/api/v1/runs/{stuck}")
        assert rec["state"] == "failed" and rec["error"]["code"] == "interrupted"
        progress = _get(d2, "/api/v1/projects/synced/progress")
        assert progress["run"] == stuck and progress["state"] == "failed"
        assert progress["error"]["code"] == "interrupted"
        assert progress["event_id"] > last_seen  # ids never repeat across the restart
        # Resume from an event seen before the kill: what was missed, then the interrupted event, in order.
        resumed = Stream(d2, "/api/v1/events", f"Last-Event-ID: {seen['event_id']}")
        try:
            final = resumed.wait_for(lambda e: e["run"] == stuck and e["state"] == "failed")
        finally:
            resumed.close()
        ids = [e["event_id"] for e in resumed.events]
        assert ids == sorted(set(ids)) and ids[0] > seen["event_id"]
        assert final["error"]["code"] == "interrupted" and "gap" not in resumed.kinds
        # The big run either finished before the kill (then its snapshot is complete) or is interrupted
        # and left nothing visible; either way the store is intact.
        big_rec = _get(d2, f"/api/v1/runs/{run}")
        snaps = _get(d2, "/api/v1/projects/big/snapshots")["snapshots"]
        if big_rec["state"] == "completed":
            assert [s["files"] for s in snaps] == [20_000]
        else:
            assert big_rec["error"]["code"] == "interrupted" and snaps == []
        assert d2.cli("check").returncode == 0
        # And the next snapshot works.
        stream2 = Stream(d2, "/api/v1/projects/big/progress/stream")
        run2 = _get(d2, "/api/v1/projects/big/snapshots", "-X", "POST")["run"]
        done = stream2.wait_for(lambda e: e["run"] == run2 and e["state"] in TERMINAL)
        stream2.close()
        assert done["state"] == "completed" and done["snapshot"]["files"] == 20_000
    finally:
        d2.stop()


def test_runs_history_pages_step_timings_event_export_and_stats(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=10)
    d: DaemonProcess = daemon_factory({"p": folder})
    stream = Stream(d, "/api/v1/projects/p/progress/stream")
    runs = []
    for i in range(3):
        (folder / f"new{i}.txt").write_text(str(i))
        run = _get(d, "/api/v1/projects/p/snapshots", "-X", "POST")["run"]
        stream.wait_for(lambda e, run=run: e["run"] == run and e["state"] in TERMINAL)
        runs.append(run)
    stream.close()
    # The history is written asynchronously: wait until it has the last run's end.
    _until(lambda: _get(d, f"/api/v1/runs/{runs[2]}").get("state") == "completed")
    page1 = _get(d, "/api/v1/projects/p/runs?limit=2")
    assert [r["run"] for r in page1["runs"]] == [runs[2], runs[1]] and page1["next"] == runs[1]
    page2 = _get(d, f"/api/v1/projects/p/runs?limit=2&before={page1['next']}")
    assert [r["run"] for r in page2["runs"]] == [runs[0]] and page2["next"] is None
    rec = _get(d, f"/api/v1/runs/{runs[0]}")
    assert rec["state"] == "completed" and rec["trigger"] == "api" and rec["snapshot"]["files"] == 12
    assert set(rec["step_seconds"]) == {"1", "2", "3", "4", "5"}
    assert abs(sum(rec["step_seconds"].values()) - rec["duration_seconds"]) < 0.05
    exported = _get(d, f"/api/v1/runs/{runs[0]}/events")
    steps = [e["step"] for e in exported["events"]]
    assert steps[0] == 1 and steps[-1] == 6 and steps == sorted(steps)
    ndjson = d.curl("-H", "Accept: application/x-ndjson", f"http://localhost/api/v1/runs/{runs[0]}/events").stdout
    assert [json.loads(line)["event_id"] for line in ndjson.splitlines()] == \
        [e["event_id"] for e in exported["events"]]
    stats = _get(d, "/api/v1/projects/p/stats")
    assert stats["runs"] == 3 and stats["completed"] == 3 and stats["success_rate"] == 1.0
    assert 0 < stats["mean_seconds"] <= stats["p95_seconds"] + 1e-9
    assert d.curl("-w", "%{http_code}", "http://localhost/api/v1/runs/nope").stdout.endswith("404")
    assert d.curl("-w", "%{http_code}", "http://localhost/api/v1/projects/p/runs?limit=0").stdout.endswith("400")


# --- cancel at every step (in-process, so the cancel lands exactly as the step begins) ----------------

@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
async def test_cancel_at_every_step_ends_cancelled_and_leaves_nothing_visible(tmp_path: Path, step: int) -> None:
    folder = _big_folder(tmp_path / "p", files=12, size=2 << 20)
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", folder)])
    cancelled_at: list[float] = []

    def on_event(ev: Event) -> bool:
        p = ev.progress
        if p.run is not None and p.step == step and not cancelled_at:
            cancelled_at.append(time.monotonic())
            assert sched.cancel_run("p") == p.run
        return True

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            watcher = tracker.subscribe(["p"])
            watcher.get_nowait()
            tracker.subscribe(["p"], last_event_id=tracker.last_event_id, fast_path=on_event)
            run, _ = sched.request_snapshot("p")
            events = []
            with trio.fail_after(30):
                async for ev in watcher:
                    events.append(ev.progress)
                    if ev.progress.terminal:
                        break
            ended = time.monotonic()
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    terminal = [p for p in events if p.terminal]
    assert [(p.run, p.state) for p in terminal] == [(run, "cancelled")]
    assert terminal[0].error == {"code": "cancelled", "message": "The snapshot was cancelled."}
    assert ended - cancelled_at[0] < 1.0  # promptly
    reopened = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=False))
    assert reopened.list_snapshots("p") == []
    assert (await trio.to_thread.run_sync(reopened.check)).ok


def test_cancel_endpoint(daemon_factory: Any, short_tmp: Path) -> None:
    folder = _big_folder(short_tmp / "big")
    d: DaemonProcess = daemon_factory({"big": folder})
    assert d.curl("-X", "DELETE", "-w", "%{http_code}",
                  "http://localhost/api/v1/projects/big/runs/current").stdout.endswith("404")
    stream = Stream(d, "/api/v1/projects/big/progress/stream")
    try:
        run = _get(d, "/api/v1/projects/big/snapshots", "-X", "POST")["run"]
        stream.wait_for(lambda e: e["run"] == run and e["step"] == 4)
        answer = _get(d, "/api/v1/projects/big/runs/current", "-X", "DELETE")
        assert answer == {"run": run, "state": "cancelling"}
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL, timeout=5)
    finally:
        stream.close()
    assert final["state"] == "cancelled" and final["error"]["code"] == "cancelled"
    assert _get(d, "/api/v1/projects/big/snapshots")["snapshots"] == []


# --- retry --------------------------------------------------------------------------------------------

async def test_failed_runs_are_retried_at_exact_backoff_times_and_a_new_run_supersedes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The step-1 waiter fails every run (as an unreachable Syncthing does), so no worker thread runs and
    the virtual times are exact."""
    starts: list[tuple[float, int, str | None, str | None]] = []

    async def failing_waiter(project: ProjectConfig, progress: RunProgress) -> None:
        starts.append((trio.current_time(), progress.current().attempt, progress.current().retry_of,
                       progress.current().trigger))
        raise SnapshotError("sync_unreachable", "Syncthing is not answering.")

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path)], waiter=failing_waiter,
                      retry=RetryPolicy(attempts=3, backoff=10))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            t0 = trio.current_time()
            first, _ = sched.request_snapshot("p")
            await trio.sleep(15)
            # A new request (here at 15 s) supersedes the retry pending for 30 s and starts its own chain.
            second, _ = sched.request_snapshot("p")
            await trio.sleep(500)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert [(round(t - t0, 6), a, rof, trig) for t, a, rof, trig in starts] == [
        (0.0, 1, None, "api"), (10.0, 2, first, "retry"),
        (15.0, 1, None, "api"), (25.0, 2, second, "retry"), (45.0, 3, second, "retry"),
    ]


async def test_cancelled_runs_are_not_retried(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def slow_waiter(project: ProjectConfig, progress: RunProgress) -> None:
        starts.append(trio.current_time())
        await trio.sleep(100)

    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", tmp_path)], waiter=slow_waiter,
                      retry=RetryPolicy(attempts=3, backoff=1))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            sched.request_snapshot("p")
            await trio.sleep(5)
            sched.cancel_run("p")
            await trio.sleep(500)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert len(starts) == 1 and tracker.latest("p").state == "cancelled"


async def test_concurrent_snapshots_are_limited_and_fair(tmp_path: Path) -> None:
    """At most max_concurrent snapshots run at once, and a project asking again queues behind the
    projects already waiting (first come, first served)."""
    folders = {f"p{i}": _big_folder(tmp_path / f"p{i}", files=6, size=2 << 20) for i in range(4)}
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig(pid, path) for pid, path in folders.items()],
                      max_concurrent=2)
    sub = tracker.subscribe()
    while sub.get_nowait():
        pass
    active: set[str] = set()
    most = 0
    starts: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            sched.request_snapshot("p0")
            await trio.testing.wait_all_tasks_blocked()  # p0 holds a slot
            for pid in ("p1", "p2", "p3"):
                sched.request_snapshot(pid)
            sched.request_snapshot("p0")  # a follow-up: must not overtake p2 and p3
            done = 0
            with trio.fail_after(60):
                async for ev in sub:
                    p = ev.progress
                    key = f"{p.project}:{p.run}"
                    if p.step >= 2 and not p.terminal and key not in active:
                        active.add(key)
                        starts.append(p.project)
                    if p.terminal:
                        active.discard(key)
                        done += 1
                        if done == 5:
                            break
                    most = max(most, len(active))
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert most == 2
    assert starts[0] == "p0" and starts[-1] == "p0" and sorted(starts[1:4]) == ["p1", "p2", "p3"]


def test_metrics_parse_and_count_what_happened(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=5)
    d: DaemonProcess = daemon_factory({"p": folder})
    stream = Stream(d, "/api/v1/projects/p/progress/stream")
    for _ in range(2):
        run = _get(d, "/api/v1/projects/p/snapshots", "-X", "POST")["run"]
        stream.wait_for(lambda e, run=run: e["run"] == run and e["state"] in TERMINAL)
    d.curl("http://localhost/api/v1/nope")
    text = d.curl("http://localhost/metrics").stdout
    stream.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("syncsnap_runs_total", (("kind", "snapshot"), ("outcome", "completed"), ("project", "p")))] == 2
    assert samples[("syncsnap_run_duration_seconds_count", (("kind", "snapshot"),))] == 2
    assert samples[("syncsnap_bytes_added_total", (("project", "p"),))] > 0
    assert samples[("syncsnap_subscribers", (("transport", "sse"),))] == 1
    assert samples[("syncsnap_http_requests_total", (("status", "404"),))] == 1
    assert samples[("syncsnap_http_requests_total", (("status", "202"),))] == 2
    assert samples[("syncsnap_store_packs", ())] >= 1
    assert samples[("syncsnap_events_published_total", ())] >= 10


async def test_cancel_while_step_one_connects_to_syncthing_still_ends_the_run(tmp_path: Path) -> None:
    """Regression: a cancel landing while step 1 is connecting to Syncthing (httpx connects inside an
    anyio task group, so the Cancelled arrives wrapped in an exception group, which our own cancel scope
    then absorbed) must still end the run with exactly one `cancelled` event. The "Syncthing" here is a
    listening socket whose backlog is full, so a connect hangs, as it does to a host that drops packets."""
    import socket as socketlib

    from syncsnapd.core import SyncthingConfig
    from syncsnapd.sources import wait_until_ready

    listener = socketlib.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue: later connects wait in SYN_SENT
        c = socketlib.socket()
        c.setblocking(False)
        c.connect_ex(listener.getsockname())
        fillers.append(c)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    project = ProjectConfig("s", tmp_path, syncthing=SyncthingConfig(url, "k", "f"))
    sched = Scheduler(store, tracker, [project], waiter=wait_until_ready)
    sub = tracker.subscribe(["s"])
    sub.get_nowait()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            run, _ = sched.request_snapshot("s")
            await trio.sleep(0.5)  # step 1 is now stuck in its first connect
            assert sched.cancel_run("s") == run
            with trio.fail_after(10):
                async for ev in sub:
                    if ev.progress.terminal:
                        break
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        for c in fillers:
            c.close()
        listener.close()
    assert (ev.progress.run, ev.progress.state, ev.progress.error) == (
        run, "cancelled", {"code": "cancelled", "message": "The snapshot was cancelled."})
    assert sub.get_nowait() is None  # exactly one terminal event


# --- a history database locked by another process ---------------------------------------------------

_HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""
LOCK_SECONDS = 15


def _metrics(d: DaemonProcess) -> dict[str, float]:
    text = d.curl("http://localhost/metrics").stdout
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


@pytest.mark.slow
def test_a_history_locked_by_another_process_loses_no_event_of_a_snapshot(daemon_factory: Any,
                                                                         short_tmp: Path) -> None:
    """Another process holds the history database's write lock for 15 s while a snapshot runs: the daemon
    stays up, the snapshot completes, and once the lock is gone the run and every one of its events (the
    same ids the SSE stream carried) are in the history."""
    folder = short_tmp / "p"
    make_tree(folder, files=30)
    d: DaemonProcess = daemon_factory({"p": folder})
    stream = Stream(d, "/api/v1/events")
    locker: subprocess.Popen[str] | None = None
    try:
        stream.wait_for(lambda e: e["project"] == "p")  # the stream is live
        locker = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(short_tmp / "state" / "history.sqlite3"),
                                   str(LOCK_SECONDS)], stdout=subprocess.PIPE, text=True)
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        run = _get(d, "/api/v1/projects/p/snapshots", "-X", "POST")["run"]
        done = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL)
        assert done["state"] == "completed"
        assert _get(d, "/api/v1/projects/p/progress")["state"] == "completed"
        # Still locked: the daemon answers, the run waits in memory, and /metrics says so.
        assert time.monotonic() - locked_at < LOCK_SECONDS - 3, "the snapshot took too long for this test"
        assert d.curl("-w", "%{http_code}", "-o", "/dev/null", f"http://localhost/api/v1/runs/{run}").stdout == "404"
        waiting = _metrics(d)
        assert waiting["syncsnap_history_events_pending"] > 0 and waiting["syncsnap_history_write_failures_total"] >= 1
        assert locker.wait(timeout=LOCK_SECONDS + 10) == 0
        _until(lambda: _get(d, f"/api/v1/runs/{run}").get("state") == "completed", timeout=40)
        seen = [e["event_id"] for e in stream.events if e["run"] == run]
        stored = [e["event_id"] for e in _get(d, f"/api/v1/runs/{run}/events")["events"]]
        assert stored == seen and len(seen) >= 6
        after = _metrics(d)
        assert after["syncsnap_history_events_lost_total"] == 0 and after["syncsnap_history_events_pending"] == 0
        assert d.proc.poll() is None
    finally:
        stream.close()
        if locker is not None and locker.poll() is None:
            locker.kill()
            locker.wait()
    assert d.stop() == 0
