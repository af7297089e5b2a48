"""The client library against a real syncsnapd (a subprocess, as users run it).

The no-loss tests compare what ``follow`` yields with what curl, connected straight to the daemon,
received: the same events, in the same order, while the follower's own connections are cut, stalled
(through :class:`FaultyProxy`, which only forwards the real daemon's bytes) or refused with the daemon's
own 503 (its connection limit filled), and across a daemon restart.
"""

from __future__ import annotations

import os
import resource
import signal
import socket as stdsocket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import syncsnap
from helpers.client import CurlEvents, FaultyProxy  # noqa: E402
from helpers.daemon import DaemonProcess, make_tree, start_daemon
from syncsnap.transport import HttpConnection

Factory = Callable[..., DaemonProcess]
# Quick reconnects keep these tests short; the timings themselves are proven in test_client_follow_timing.
FAST = syncsnap.FollowPolicy(jitter=0.0, backoff_initial=0.1, stall_timeout=0.5)


async def start(daemon_factory: Any, short_tmp: Path, files: int = 40, heartbeat: float = 0.2) -> DaemonProcess:
    """A daemon whose streams send a keep-alive every 0.2 s, well within FAST's stall timeout."""
    folder = short_tmp / "docs"
    make_tree(folder, files=files)
    d: DaemonProcess = await trio.to_thread.run_sync(lambda: daemon_factory({"docs": folder}, heartbeat=heartbeat))
    return d


def client(path: str | Path, policy: syncsnap.FollowPolicy = FAST) -> syncsnap.AsyncClient:
    return syncsnap.AsyncClient(syncsnap.find_endpoint({}, socket=path), policy=policy)


@pytest.fixture(params=["sse", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    """Both of follow's transports: the daemon's SSE streams and its WebSocket."""
    return str(request.param)


async def test_every_method_over_the_unix_socket_found_through_the_discovery_file(
        daemon_factory: Any, short_tmp: Path) -> None:
    d = await start(daemon_factory, short_tmp)
    async with syncsnap.open_client(env=d.env) as c:
        assert c.endpoint.path == d.socket and "discovery file" in c.endpoint.source
        health = await c.health()
        assert (health.status, health.pid, health.projects) == ("ok", d.proc.pid, 1)
        [project] = await c.projects()
        assert (project.id, project.path, project.state, project.last_snapshot) == (
            "docs", str(short_tmp / "docs"), "idle", None)
        assert project.progress.event_id == 0 and project.progress.step == 0
        started = await c.start_snapshot("docs")
        assert started.run.startswith("r-") and started.progress.run == started.run
        assert started.stream == "/api/v1/projects/docs/progress/stream"
        seen = [p async for p in c.follow("docs", run=started.run, last_event_id=started.progress.event_id - 1)]
        assert [p.step for p in seen][0] == 1 and seen[-1].step == 6
        assert [p.event_id for p in seen] == sorted({p.event_id for p in seen})
        final = seen[-1]
        assert final.state == "completed" and final.snapshot is not None and final.snapshot.files == 41
        assert await c.progress("docs") == final
        [snap] = await c.snapshots("docs")
        assert snap.id == final.snapshot.id and snap.files == 41 and snap.project == "docs"
        assert (await c.project("docs")).last_snapshot == snap
        with pytest.raises(syncsnap.NotFound, match="No project named 'nope'"):
            await c.project("nope")
        with pytest.raises(syncsnap.NotFound):
            await c.start_snapshot("nope")


async def test_tcp_with_the_token_and_errors_that_say_what_to_do(daemon_factory: Any, short_tmp: Path) -> None:
    d = await start(daemon_factory, short_tmp)
    env = {**d.env, "SYNCSNAP_URL": f"http://{d.tcp}"}
    async with syncsnap.open_client(env=env) as c:  # the token file comes from the discovery file
        assert c.endpoint.transport == "tcp" and c.endpoint.token == d.token
        assert (await c.health()).pid == d.proc.pid
        run = (await c.start_snapshot("docs")).run
        async for p in c.follow("docs", run=run):
            last = p
        assert last.state == "completed"

    bad = short_tmp / "bad-token"
    bad.write_text("nope\n")
    async with syncsnap.open_client(env={**env, "SYNCSNAP_TOKEN_FILE": str(bad)}) as c:
        with pytest.raises(syncsnap.Unauthorized) as info:
            await c.health()
    assert str(info.value) == (
        f"syncsnapd at http://{d.tcp} refused the request (unauthorized): the token file {bad} "
        "(SYNCSNAP_TOKEN_FILE) holds a token the daemon does not accept. Point SYNCSNAP_TOKEN_FILE at the "
        "daemon's token file (its `token_file` setting), or use the Unix socket.")

    d.stop()
    async with syncsnap.open_client(env=d.env) as c:
        with pytest.raises(syncsnap.DaemonNotRunning) as info2:
            await c.health()
    assert str(info2.value) == (f"syncsnapd is not running: no socket at {d.socket} (from the default location); "
                                "start it with `syncsnapd`.")


async def test_websocket_over_tcp_with_the_token_and_the_same_refusals(daemon_factory: Any, short_tmp: Path) -> None:
    d = await start(daemon_factory, short_tmp)
    env = {**d.env, "SYNCSNAP_URL": f"http://{d.tcp}"}
    async with syncsnap.open_client(env=env) as c:
        async with c.follow("docs", transport="ws") as f:
            started = await f.start_snapshot()  # over the follower's own WebSocket
            seen = [p async for p in f]
        assert f.statistics().transport == "ws" and f.statistics().streams_opened == 1
        assert [p.step for p in seen] == [1, 2, 3, 4, 5, 6] and seen[-1].state == "completed"
        assert {p.run for p in seen} == {started.run} and started.stream == "/api/v1/ws"
        with pytest.raises(syncsnap.NotFound, match=r"^No project named 'nope'\. \(`syncsnap projects`"):
            async for _ in c.follow("nope", transport="ws"):
                pass

    bad = short_tmp / "bad-token"
    bad.write_text("nope\n")
    async with syncsnap.open_client(env={**env, "SYNCSNAP_TOKEN_FILE": str(bad)}, policy=FAST) as c:
        with pytest.raises(syncsnap.Unauthorized) as info:  # at once: a wrong token does not heal
            async for _ in c.follow(transport="ws"):
                pass
    assert str(info.value).startswith(f"syncsnapd at http://{d.tcp} refused the request (unauthorized): the "
                                      f"token file {bad} (SYNCSNAP_TOKEN_FILE) holds a token the daemon does "
                                      "not accept.")


async def test_start_snapshot_over_the_websocket_sees_a_queued_run_from_its_first_step(
        daemon_factory: Any, short_tmp: Path) -> None:
    """Subscribed before the request goes out, the follower sees the run however late it starts: here it
    is queued behind a running snapshot, whose events are not the followed run's."""
    folder = short_tmp / "docs"
    folder.mkdir()
    for i in range(300):
        (folder / f"f{i}").write_bytes(os.urandom(64 * 1024))
    d: DaemonProcess = await trio.to_thread.run_sync(lambda: daemon_factory({"docs": folder}))
    async with syncsnap.open_client(env=d.env, policy=FAST) as c:
        first = await c.start_snapshot("docs")
        async with c.follow("docs", first.run) as running:
            async for p in running:
                if p.step >= 3:
                    break
        async with c.follow("docs", transport="ws") as f:
            started = await f.start_snapshot()
            assert started.progress.run == first.run  # queued: the answer shows the running run
            seen = [p async for p in f]
        assert {p.run for p in seen} == {started.run}
        assert [p.step for p in seen] == [1, 2, 3, 4, 5, 6] and seen[-1].state == "completed"
        # The daemon's history lags its event stream by about 0.25 s (it writes in batches).
        with trio.fail_after(5):
            while not (await c.runs("docs")).runs[0].run == started.run:  # noqa: ASYNC110 - polling the daemon
                await trio.sleep(0.02)
        page = await c.runs("docs")
        assert [(r.run, r.state, r.trigger) for r in page.runs] == [
            (started.run, "completed", "api"), (first.run, "completed", "api")]
        assert page.next is None and sorted(page.runs[0].step_seconds) == [1, 2, 3, 4, 5]


def test_blocking_client_has_the_same_methods(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=10)
    d = daemon_factory({"docs": folder})
    with syncsnap.Client(env={**d.env, "SYNCSNAP_SOCKET": d.socket}) as c:
        assert c.endpoint.source == "SYNCSNAP_SOCKET"
        assert c.health().pid == d.proc.pid
        assert [p.id for p in c.projects()] == ["docs"]
        started = c.start_snapshot("docs")
        states = [p.state for p in c.follow("docs", run=started.run, last_event_id=started.progress.event_id - 1)]
        assert states[0] == "waiting" and states[-1] == "completed"
        started = c.start_snapshot("docs")
        states = [p.state for p in c.follow("docs", run=started.run, last_event_id=started.progress.event_id - 1,
                                            transport="ws")]
        assert states[0] == "waiting" and states[-1] == "completed"
        assert c.progress("docs").state == "completed"
        assert len(c.snapshots("docs")) == 2 and c.project("docs").last_snapshot is not None
        with pytest.raises(syncsnap.NotFound):
            c.snapshots("nope")
        # Breaking out of a follow closes it; the client stays usable.
        for p in c.follow():
            assert p.project == "docs"
            break
        assert c.health().status == "ok"


BLOCKING_CTRL_C = """
import os, signal, sys, threading, time
import syncsnap
c = syncsnap.Client()
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    for p in c.follow():
        print("event", p.state, flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("health", c.health().status, flush=True)
c.close()
print("threads", threading.active_count(), flush=True)
"""


def test_blocking_follow_stops_on_ctrl_c_and_the_client_stays_usable(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    d = daemon_factory({"docs": short_tmp / "docs"})
    r = subprocess.run([sys.executable, "-c", BLOCKING_CTRL_C], env=d.env, capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.splitlines() == ["event idle", "interrupted", "health ok", "threads 1"], r.stderr


# --- no loss ------------------------------------------------------------------------------------------


Fault = Callable[[FaultyProxy, syncsnap.Follower, int], Awaitable[None]]


class Churn:
    """Runs snapshots back to back over one keep-alive connection opened up front (so it keeps working
    while the daemon refuses new connections); calls ``fault`` right after starting each run."""

    def __init__(self, d: DaemonProcess, runs: int, fault: Callable[[int], Awaitable[None]]) -> None:
        self.d = d
        self.runs = runs
        self.fault = fault
        self.started: list[str] = []

    async def run(self) -> None:
        conn = await HttpConnection.open(syncsnap.find_endpoint({}, socket=self.d.socket))
        try:
            for i in range(self.runs):
                resp = await conn.request("POST", "/api/v1/projects/docs/snapshots")
                assert resp.status == 202, resp.body
                run = resp.json()["run"]
                self.started.append(run)
                await self.fault(i)
                while True:  # wait for the run's end, polling on the same connection
                    p = (await conn.request("GET", "/api/v1/projects/docs/progress")).json()
                    if p["run"] == run and p["state"] in ("completed", "failed", "cancelled"):
                        break
                    await trio.sleep(0.02)
        finally:
            await conn.aclose()


async def follow_into(follower: syncsnap.Follower, out: list[syncsnap.Progress]) -> None:
    async with follower:
        async for p in follower:
            out.append(p)


async def wait_until(pred: Callable[[], bool]) -> None:
    """Wait for a condition on other tasks' state (statistics, lists) that signals no event; 15 s at most."""
    with trio.fail_after(15):
        while not pred():  # noqa: ASYNC110 - nothing to wait on: these are plain counters
            await trio.sleep(0.01)


def streaming(follower: syncsnap.Follower) -> bool:
    st = follower.statistics()
    return st.mode == "stream" and st.streams_opened > st.streams_lost


def compact(events: list[dict[str, Any]]) -> list[tuple[int, str | None, str]]:
    return [(e["event_id"], e["run"], e["state"]) for e in events]


async def check_no_loss(d: DaemonProcess, short_tmp: Path, fault: Fault, transport: str, runs: int = 8
                        ) -> tuple[syncsnap.Follower, list[syncsnap.Progress]]:
    proxy = FaultyProxy(short_tmp / "proxy.sock", d.socket)
    ref = CurlEvents(d.socket)
    got: list[syncsnap.Progress] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        await nursery.start(ref.run)
        follower = client(proxy.path).follow(transport=transport)
        nursery.start_soon(follow_into, follower, got)
        await wait_until(lambda: len(got) == 1)

        async def inject(i: int) -> None:
            await fault(proxy, follower, i)

        churn = Churn(d, runs, inject)
        await churn.run()
        last = await ref.wait_for(lambda e: e["run"] == churn.started[-1] and e["state"] == "completed")
        await wait_until(lambda: bool(got) and got[-1].event_id >= last["event_id"])
        nursery.cancel_scope.cancel()
    assert compact([p.to_json() for p in got]) == compact(ref.events)
    assert not any(p.gap for p in got)
    assert {p.run for p in got if p.state == "completed"} == set(churn.started)
    return follower, got


async def test_no_loss_when_the_stream_is_cut_again_and_again(daemon_factory: Any, short_tmp: Path,
                                                             transport: str) -> None:
    d = await start(daemon_factory, short_tmp)

    async def cut(proxy: FaultyProxy, follower: syncsnap.Follower, i: int) -> None:
        await wait_until(lambda: streaming(follower) and follower.statistics().streams_opened == i + 1)
        assert proxy.cut() == 1

    follower, got = await check_no_loss(d, short_tmp, cut, transport)
    st = follower.statistics()
    # Each of the 8 cuts hit a live stream (see `cut`); the follower may still be noticing the last one,
    # which may come after the last event went through.
    assert st.streams_opened >= 8 and st.streams_lost >= 7 and st.stream_attempts_failed == 0
    assert len(got) > 8 * 6  # every run has at least 6 events: steps 1-5 and its end


async def test_no_loss_when_the_stream_stalls(daemon_factory: Any, short_tmp: Path,
                                             transport: str) -> None:
    d = await start(daemon_factory, short_tmp)

    async def stall(proxy: FaultyProxy, follower: syncsnap.Follower, i: int) -> None:
        if i % 2 == 0:
            await wait_until(lambda: streaming(follower) and follower.statistics().streams_opened == i // 2 + 1)
            assert proxy.stall() == 1

    follower, _ = await check_no_loss(d, short_tmp, stall, transport)
    assert follower.statistics().streams_lost in (3, 4)


def fill_connection_slots(path: str, hogs: list[stdsocket.socket]) -> bytes:
    """Open idle connections until the daemon answers a probe with its 503; returns that answer.

    Whatever the daemon's limit is (256, 4,096, ...): batches of 256, each followed by a probe that the
    daemon accepts (in order) only after the batch. Idle connections cost the daemon nothing but a slot,
    and it closes them only after its request-head timeout (10 s), far beyond this test.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    while len(hogs) < 16384:
        for _ in range(256):
            s = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            s.connect(path)
            hogs.append(s)
        with stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as probe:
            probe.settimeout(10)
            probe.connect(path)
            probe.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = probe.recv(4096)
        if answer.startswith(b"HTTP/1.1 503 "):
            return answer
    raise AssertionError(f"no 503 after {len(hogs)} connections")


async def test_no_loss_when_the_daemon_refuses_with_503(daemon_factory: Any, short_tmp: Path,
                                                       transport: str) -> None:
    """The daemon's own connection limit is filled with idle connections: new connections get its 503,
    while runs go on (started over a connection opened before)."""
    d = await start(daemon_factory, short_tmp)
    refused_answers: list[bytes] = []
    hogs: list[stdsocket.socket] = []

    async def refuse(proxy: FaultyProxy, follower: syncsnap.Follower, i: int) -> None:
        if i == 1:
            await wait_until(lambda: streaming(follower))
            assert proxy.cut() == 1  # the follower's stream is gone...
            await wait_until(lambda: not streaming(follower))
            # ... and its slot with it. Fill every slot (blocking calls: the follower cannot reconnect
            # before this is done), so that its reconnects meet the limit.
            refused_answers.append(fill_connection_slots(d.socket, hogs))
        if i == 4:  # runs 2, 3 and 4 went on meanwhile
            await wait_until(lambda: follower.statistics().stream_attempts_failed >= 2)
            for s in hogs:
                s.close()

    try:
        follower, _ = await check_no_loss(d, short_tmp, refuse, transport)
    finally:
        for s in hogs:
            s.close()
    assert refused_answers[0].startswith(b"HTTP/1.1 503 ")
    st = follower.statistics()
    assert st.stream_attempts_failed >= 2 and st.streams_opened == 2


async def test_daemon_restart_is_followed_through(daemon_factory: Any, short_tmp: Path, transport: str) -> None:
    """SIGTERM mid-run: the run's `cancelled` event arrives once; the new daemon's events follow. A daemon
    that keeps its event log across restarts replays seamlessly (ids keep growing, no gap); one that starts
    its ids again answers the resume with a gap, and the first state after it is marked."""
    folder = short_tmp / "docs"
    folder.mkdir()
    for i in range(400):
        (folder / f"f{i}").write_bytes(os.urandom(64 * 1024))
    d = await trio.to_thread.run_sync(lambda: daemon_factory({"docs": folder}))
    got: list[syncsnap.Progress] = []
    async with trio.open_nursery() as nursery:
        follower = client(d.socket, syncsnap.FollowPolicy(jitter=0.0, backoff_initial=0.3)).follow(
            "docs", transport=transport)
        nursery.start_soon(follow_into, follower, got)
        async with syncsnap.open_client(env=d.env) as c:
            run1 = (await c.start_snapshot("docs")).run
            await wait_until(lambda: any(p.run == run1 and p.step >= 3 for p in got))
        assert await trio.to_thread.run_sync(d.stop) == 0
        d2 = await trio.to_thread.run_sync(lambda: start_daemon(short_tmp, {"docs": folder}))
        try:
            await wait_until(lambda: follower.statistics().streams_opened == 2)
            async with syncsnap.open_client(env=d2.env) as c:
                run2 = (await c.start_snapshot("docs")).run
            await wait_until(lambda: got[-1].run == run2 and got[-1].terminal)
        finally:
            d2.stop(signal.SIGKILL)
        nursery.cancel_scope.cancel()
    assert follower.statistics().restarts == 1
    ends = [p for p in got if p.run == run1 and p.terminal]
    assert len(ends) == 1 and ends[0].state == "cancelled"
    assert ends[0].error is not None and ends[0].error.code == "shutdown"
    last1 = got.index(ends[0])
    assert all(p.run in (None, run1) and not p.gap for p in got[:last1 + 1])
    after = got[last1 + 1:]
    gaps = [p for p in after if p.gap]
    if gaps:  # a daemon without an event log: its current state first, marked
        assert gaps == [after[0]] and after[0].run in (None, run1)
        after = after[1:]
    else:  # the daemon kept its event log: one sequence across both processes
        assert [p.event_id for p in got] == sorted({p.event_id for p in got})
    assert all(p.run == run2 and not p.gap for p in after) and after[-1].state == "completed"
    assert [p.event_id for p in after] == sorted({p.event_id for p in after})


def test_operations_with_typed_results_in_the_blocking_api(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=6)
    d = daemon_factory({"docs": folder})
    with syncsnap.Client(env=d.env) as c:
        *_, done = c.follow_run(c.start_snapshot("docs"))
        assert done.state == "completed" and done.snapshot is not None
        (folder / "new.txt").write_bytes(b"new\n")
        diff = c.diff("docs", "latest")
        assert (diff.from_, diff.to, diff.truncated) == (done.snapshot.id, "live", False)
        assert diff.added == (syncsnap.DiffEntry("new.txt", "file", 4),) and diff.removed == diff.modified == ()
        assert (diff.summary.added, diff.summary.unchanged) == (1, 17)

        started = c.start_restore("docs", "latest", short_tmp / "out", paths=["d0"])
        assert started.progress.kind == "restore" and started.progress.project == "docs"
        events = list(c.follow_run(started))
        assert [p.step for p in events][0] == 1 and events[-1].state == "completed"
        restored = syncsnap.RestoreResult.from_json(events[-1].result)
        assert (restored.snapshot, restored.target, restored.paths, restored.files) == (
            done.snapshot.id, str(short_tmp / "out"), ("d0",), 2)
        with pytest.raises(syncsnap.DaemonError) as refused:
            c.start_restore("docs", "latest", short_tmp / "out")
        assert refused.value.code == "target_not_empty" and refused.value.status == 409

        check = c.start_check(read_data=True)
        assert check.progress.project is None and check.stream == "/api/v1/events"
        *_, last = c.follow_run(check, transport="ws")
        report = syncsnap.CheckResult.from_json(last.result)
        report_json = last.result
        assert (last.state, report.ok, report.read_data, report.snapshots, report.problems) == (
            "completed", True, True, 1, ())
        *_, last = c.follow_run(c.start_prune(dry_run=True))
        pruned = syncsnap.PruneResult.from_json(last.result)
        assert (pruned.dry_run, pruned.snapshots_removed, pruned.projects) == (True, (), {"docs": (1, 0)})

        final = c.operation(check.run)
        assert (final.state, final.kind, final.result) == ("completed", "check", report_json)
        assert [p.kind for p in c.operations()] == ["prune", "check", "restore"]
        with pytest.raises(syncsnap.NotFound):
            c.operation("r-nope")
