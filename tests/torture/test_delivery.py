"""Delivery, the promise no peer makes: followers whose connections are cut at random, across daemon
restarts, against the history's own record of every run.

A real syncsnapd runs snapshots back to back (the folder changes before each, so every run has work in
steps 3-5). Four followers read it, each through its own :class:`FaultyProxy` (which only forwards the
daemon's bytes and closes connections when told): the library over SSE, over the WebSocket, the library
forced to poll (its proxy refuses every stream request, as a daemon at its connection cap for streams
would), and the ``syncsnap follow --json`` console script. A driver cuts one follower's connections at a
random moment, ``scale(100, 1000)`` times in all, and restarts the daemon 5 times (SIGKILL and SIGTERM in
turn) while the runs go on.

At the end every run's events are fetched from the history (``GET /api/v1/runs/{run}/events``) and each
streaming follower's output is compared with them: no event id twice, none out of order, every terminal
event exactly once, every intermediate event unless the follower was told of a gap (and then only for
events older than the replay window). The polling follower is held to what polling promises
(docs/api.md: current states only): no event twice nor out of order, and every terminal event yielded,
or the run's lane marked with a gap after it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import syncsnap
from helpers.client import SYNCSNAP, FaultyProxy
from helpers.daemon import DaemonProcess, make_tree, spawn_daemon, write_config
from helpers.torture import Deadline, record, scale

# Quick reconnects (the cuts come every 0.02-0.25 s); as with the default policy (31 s), streaming
# followers fall back to polling only after longer than a daemon restart takes (here ~5 s).
FAST = syncsnap.FollowPolicy(jitter=0.0, backoff_initial=0.05, backoff_max=1.0, attempts_before_polling=10,
                             stall_timeout=5.0)
POLLING = syncsnap.FollowPolicy(jitter=0.0, backoff_initial=0.05, backoff_max=0.1, attempts_before_polling=1,
                                poll_interval=0.05, stream_retry_interval=3600, stall_timeout=5.0)
REPLAY_EVENTS = 4096  # the daemon's replay window (docs/architecture.md, limits)
STREAM_TARGETS = (b"/api/v1/events", b"/progress/stream", b"/api/v1/ws")


class StreamRefusingProxy(FaultyProxy):
    """A :class:`FaultyProxy` that closes any connection on which a stream is asked for: the follower's
    streams always fail and it polls (the JSON requests go through)."""

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_unix_socket(self.target)
        except OSError:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            async with client, upstream, trio.open_nursery() as nursery:
                async def up() -> None:
                    try:
                        while data := await client.receive_some(65536):
                            if any(t in data for t in STREAM_TARGETS):
                                break
                            await upstream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                async def down() -> None:
                    try:
                        while data := await upstream.receive_some(65536):
                            await client.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(up)
                nursery.start_soon(down)
        self._scopes.remove(scope)


@dataclass
class Follower:
    name: str
    proxy: FaultyProxy
    got: list[dict[str, Any]] = field(default_factory=list)
    cuts: int = 0


class Daemon:
    """The daemon under test, restarted in place (same config, socket and state)."""

    def __init__(self, base: Path, folder: Path) -> None:
        self.base = base
        self.config = write_config(base, {"docs": folder}, heartbeat=1)
        self.d = spawn_daemon(base, self.config)
        self.restarts: list[str] = []

    async def restart(self, sig: int) -> None:
        d = self.d
        await trio.to_thread.run_sync(d.stop, sig)
        self.restarts.append("SIGKILL" if sig == signal.SIGKILL else "SIGTERM")
        self.d = await trio.to_thread.run_sync(spawn_daemon, self.base, self.config)


async def churn(daemon: Daemon, folder: Path, stop: trio.Event, started: list[str]) -> None:
    """Snapshots back to back, the folder changed before each; requests that meet a restart are retried."""
    n = 0
    while not stop.is_set():
        n += 1
        (folder / f"churn/{n % 7}.bin").parent.mkdir(exist_ok=True)
        (folder / f"churn/{n % 7}.bin").write_bytes(os.urandom(random.randrange(1, 3 << 20)))
        try:
            async with syncsnap.open_client(socket=daemon.d.socket) as client:
                run = await client.start_snapshot("docs")
                started.append(run.run)
                with trio.move_on_after(30):
                    async for p in client.follow("docs", run.run, last_event_id=run.progress.event_id - 1):
                        if p.terminal:
                            break
        except (syncsnap.SyncsnapError, OSError, syncsnap.RunLost):
            await trio.sleep(0.1)


async def follow_library(f: Follower, transport: str, policy: syncsnap.FollowPolicy, ready: trio.Event) -> None:
    async with syncsnap.open_client(socket=f.proxy.path, policy=policy) as client, \
            client.follow(transport=transport) as follower:  # type: ignore[arg-type]
        async for p in follower:
            f.got.append({**p.to_json(), "gap": p.gap})
            ready.set()


async def follow_cli(f: Follower, env: dict[str, str], ready: trio.Event) -> None:
    proc = await trio.lowlevel.open_process([SYNCSNAP, "follow", "--json", "--socket", str(f.proxy.path)],
                                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    buf = b""
    try:
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    f.got.append(json.loads(line))
                    ready.set()
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()


def history_export(d: DaemonProcess) -> dict[str, list[dict[str, Any]]]:
    """Every run of the project and its events, from the daemon's history."""
    runs: list[str] = []
    before = ""
    while True:
        out = d.curl(f"http://localhost/api/v1/projects/docs/runs?limit=500{before}")
        doc = json.loads(out.stdout)
        runs += [r["run"] for r in doc["runs"]]
        if not doc["next"]:
            break
        before = f"&before={doc['next']}"
    return {run: json.loads(d.curl(f"http://localhost/api/v1/runs/{run}/events").stdout)["events"] for run in runs}


@dataclass
class Verdict:
    events_compared: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    gaps: int = 0
    not_in_history: int = 0
    problems: list[str] = field(default_factory=list)


def compare(name: str, got: list[dict[str, Any]], export: dict[str, list[dict[str, Any]]], *,
            polling: bool = False) -> Verdict:
    v = Verdict()
    got = [p for p in got if p.get("run")]  # idle states (no run) are no run's events
    if not got:
        v.problems.append(f"{name}: nothing received")
        return v
    ids = [p["event_id"] for p in got]
    counts = Counter(ids)
    v.duplicated = sum(n - 1 for n in counts.values())
    v.out_of_order = sum(1 for a, b in zip(ids, ids[1:], strict=False) if b <= a and b != a)
    first = ids[0]
    reference = sorted((e for events in export.values() for e in events if e["event_id"] > first),
                       key=lambda e: e["event_id"])
    last = max(ids)
    reference = [e for e in reference if e["event_id"] <= last]
    known = {e["event_id"] for events in export.values() for e in events}
    v.not_in_history = sum(1 for i in counts if i not in known and i > first)
    seen = set(ids)
    gaps = [(i, p) for i, p in enumerate(got) if p.get("gap")]
    v.gaps = len(gaps)
    for e in reference:
        v.events_compared += 1
        if e["event_id"] in seen:
            continue
        terminal = e["state"] in ("completed", "failed", "cancelled")
        # A gap excuses what it covers: the next event of the lane is marked; without polling, only for
        # events that had left the replay window (more than REPLAY_EVENTS before it).
        later = [p for p in got if p["event_id"] > e["event_id"] and p.get("kind", "snapshot") == "snapshot"]
        marked = bool(later) and bool(later[0].get("gap"))
        if polling and (marked or not terminal):
            continue
        if marked and later[0]["event_id"] - e["event_id"] > REPLAY_EVENTS:
            continue
        v.lost += 1
        if len(v.problems) < 5:
            v.problems.append(f"{name}: event {e['event_id']} ({e['run']} {e['state']}) never arrived"
                              + (" (a gap was told, but it was within the replay window)" if marked else ""))
    for run, events in export.items():
        ends = [e for e in events if e["state"] in ("completed", "failed", "cancelled")]
        if ends and ends[0]["event_id"] > first and ends[0]["event_id"] <= last:
            n = sum(1 for p in got if p["run"] == run and p["state"] in ("completed", "failed", "cancelled"))
            if n > 1:
                v.duplicated += n - 1
    if v.duplicated or v.out_of_order:
        v.problems.append(f"{name}: {v.duplicated} duplicated, {v.out_of_order} out of order: {ids[:50]}")
    return v


async def wait_caught_up(followers: list[Follower], last: int, deadline: float) -> None:
    with trio.move_on_at(deadline):
        while not all(f.got and max(p["event_id"] for p in f.got) >= last for f in followers):  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_followers_lose_nothing_through_cuts_and_restarts(short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=40)
    daemon = await trio.to_thread.run_sync(Daemon, short_tmp, folder)
    rng = random.Random(int(os.environ.get("SYNCSNAP_TORTURE_SEED", time.time_ns() % 1_000_000)))
    cuts_wanted = scale(100, 1000)
    restarts_wanted = 5
    budget = Deadline(scale(90, 270))
    followers = [Follower("sse", FaultyProxy(short_tmp / "p-sse.sock", daemon.d.socket)),
                 Follower("ws", FaultyProxy(short_tmp / "p-ws.sock", daemon.d.socket)),
                 Follower("cli", FaultyProxy(short_tmp / "p-cli.sock", daemon.d.socket)),
                 Follower("poll", StreamRefusingProxy(short_tmp / "p-poll.sock", daemon.d.socket))]
    started: list[str] = []
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            ready = []
            for f in followers:
                await nursery.start(f.proxy.serve)
            for f in followers:
                ev = trio.Event()
                ready.append(ev)
                if f.name == "cli":
                    nursery.start_soon(follow_cli, f, daemon.d.env, ev)
                else:
                    nursery.start_soon(follow_library, f, "ws" if f.name == "ws" else "sse",
                                       POLLING if f.name == "poll" else FAST, ev)
            with trio.fail_after(30):
                for ev in ready:
                    await ev.wait()
            nursery.start_soon(churn, daemon, folder, stop, started)
            cuts = 0
            restart_at = {cuts_wanted * (k + 1) // (restarts_wanted + 1) for k in range(restarts_wanted)}
            while cuts < cuts_wanted and not budget.expired:
                await trio.sleep(rng.uniform(0.02, 0.25))
                f = rng.choice(followers[:3] if rng.random() < 0.9 else followers)
                if f.proxy.cut():
                    f.cuts += 1
                    cuts += 1
                    if cuts in restart_at:
                        await daemon.restart(signal.SIGKILL if len(daemon.restarts) % 2 == 0 else signal.SIGTERM)
            stop.set()
            while len(daemon.restarts) < restarts_wanted and not budget.expired:
                await daemon.restart(signal.SIGKILL if len(daemon.restarts) % 2 == 0 else signal.SIGTERM)
            # One last run, which every follower must see the end of.
            async with syncsnap.open_client(socket=daemon.d.socket) as c:
                final = await c.start_snapshot("docs")
                async for p in c.follow("docs", final.run, last_event_id=final.progress.event_id - 1):
                    last_id = p.event_id
            await wait_caught_up(followers, last_id, trio.current_time() + 30)
            nursery.cancel_scope.cancel()
        export = await trio.to_thread.run_sync(history_export, daemon.d)
    finally:
        daemon.d.stop(signal.SIGKILL)
    verdicts = {f.name: compare(f.name, f.got, export, polling=f.name == "poll") for f in followers}
    total = Verdict()
    for v in verdicts.values():
        for k in ("events_compared", "lost", "duplicated", "out_of_order", "gaps", "not_in_history"):
            setattr(total, k, getattr(total, k) + getattr(v, k))
        total.problems += v.problems
    terminals_twice = sum(1 for events in export.values()
                          if sum(e["state"] in ("completed", "failed", "cancelled") for e in events) > 1)
    record("delivery", cuts=sum(f.cuts for f in followers), restarts=len(daemon.restarts),
           restarts_sigkill=daemon.restarts.count("SIGKILL"), runs=len(export),
           events_compared=total.events_compared, lost=total.lost, duplicated=total.duplicated,
           out_of_order=total.out_of_order, events_not_in_history=total.not_in_history,
           gaps_told_streaming=sum(verdicts[n].gaps for n in ("sse", "ws", "cli")),
           gaps_told_polling=verdicts["poll"].gaps,
           runs_with_duplicated_terminals=terminals_twice,
           **{f"cuts_{f.name}": f.cuts for f in followers})
    assert not total.problems, "\n".join(total.problems)
    assert terminals_twice == 0
    assert len(daemon.restarts) == restarts_wanted
    assert sum(f.cuts for f in followers) >= min(cuts_wanted, 50)
    assert all(f.got for f in followers)
