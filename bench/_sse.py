"""SSE fan-out: N subscribers on ``/api/v1/events`` over the Unix socket while events are published.

Events are published by real snapshot runs of a tiny project (``fan``), paced to the target rate: each
run publishes its step events (waiting, browsing, compressing, uploading, completed) within a few
milliseconds, so publication comes in short bursts rather than evenly spaced. Latency per delivery is
(receipt wall time - the event's ``updated_at``); ``updated_at`` has millisecond precision (truncated),
so each figure is 0-1 ms above the true latency.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ._daemon import TERMINAL, Terminals
from ._http import Connection, Endpoint
from ._proc import terminate


@dataclass(frozen=True)
class Published:
    events: int
    runs: int
    wall_start: float
    wall_end: float


async def publish_by_snapshots(endpoint: Endpoint, project: str, rate: float, seconds: float,
                               before: Callable[[], None] = lambda: None) -> Published:
    """Trigger snapshot runs of ``project`` back to back, paced so events go out at about ``rate``/s.

    ``before`` runs once the publisher's own two connections are open (so subscribers cannot take the
    daemon's last connection slots from it), before the first run.
    """
    terminal = Terminals()
    counted = [0]
    first = trio.Event()
    async with Connection(endpoint) as sse, Connection(endpoint) as post, trio.open_nursery() as nursery:

        async def reader() -> None:
            async for _name, obj in sse.sse(f"/api/v1/projects/{project}/progress/stream"):
                if not first.is_set():
                    first.set()
                    continue
                counted[0] += 1
                if obj.get("state") in TERMINAL:
                    terminal.add(obj.get("run", ""), 0.0, 0, obj)

        nursery.start_soon(reader)
        with trio.fail_after(30):
            await first.wait()
        before()
        runs = 0
        wall0, t0 = time.time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            resp = await post.json("POST", f"/api/v1/projects/{project}/snapshots", expect=(202,))
            runs += 1
            with trio.fail_after(30):
                await terminal.wait_for(resp["run"])
            ahead = counted[0] / rate - (time.monotonic() - t0)
            left = seconds - (time.monotonic() - t0)
            if ahead > 0 and left > 0:
                await trio.sleep(min(ahead, left))
        wall1 = time.time()
        nursery.cancel_scope.cancel()
    return Published(counted[0], runs, wall0, wall1)


def _pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def fanout(endpoint: Endpoint, project: str, n: int, *, work: Path, seconds: float = 10.0,
           rate: float = 20.0, clients: int = 2, log: Any = print) -> dict[str, Any]:
    """Run one fan-out measurement with ``n`` subscribers split over ``clients`` processes."""
    assert endpoint.unix is not None
    work.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    connected = 0

    def start_subscribers() -> None:
        nonlocal connected
        for i, k in enumerate(per):
            out = work / f"fanout-{n}-{i}.json"
            out.unlink(missing_ok=True)
            p = subprocess.Popen([sys.executable, "-m", "bench._fanout", endpoint.unix, str(k), str(out)],
                                 stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                 cwd=Path(__file__).resolve().parent.parent)
            procs.append((p, out))
        for p, _ in procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()  # "ready OK FAILED"; bounded by the client's own MAX_SECONDS
            if len(line) == 3 and line[0] == "ready":
                connected += int(line[1])
        log(f"  {connected:,} of {n:,} subscribers connected; publishing {rate:g} events/s for {seconds:g} s")

    try:
        pub = trio.run(publish_by_snapshots, endpoint, project, rate, seconds, start_subscribers)
        time.sleep(0.5)  # let the last events arrive
    finally:
        for p, _ in procs:
            terminate(p, grace=30)
    lat: list[float] = []
    recv_at: list[float] = []
    agg = {"refused": 0, "failed": 0, "disconnected": 0, "open_at_end": 0, "silent": 0}
    for _p, out in procs:
        try:
            data = json.loads(out.read_text())
        except (OSError, ValueError):
            continue
        for k in agg:
            agg[k] += int(data.get(k, 0))
        # Only publications of this window: updated_at (truncated to ms) at or after its start.
        for la, ra, ts in zip(data["lat"], data["recv_at"], data["ts"], strict=True):
            if ts >= pub.wall_start - 0.002:
                lat.append(la * 1000.0)
                recv_at.append(ra)
    lat.sort()
    buckets: dict[int, int] = {}
    for ra in recv_at:
        buckets[int(ra)] = buckets.get(int(ra), 0) + 1
    # Whole seconds only: the first and last buckets are partial.
    full = sorted(buckets.items())[1:-1] or sorted(buckets.items())
    elapsed = pub.wall_end - pub.wall_start
    return {
        "subscribers": n,
        "connected": connected,
        **agg,
        "published_events": pub.events,
        "runs": pub.runs,
        "publish_rate": pub.events / elapsed if elapsed else 0.0,
        "deliveries": len(lat),
        "expected_deliveries": pub.events * connected,
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "max_deliveries_per_s": max((c for _, c in full), default=0),
        "clients": clients,
    }
