"""Fairness: what a local client hammering the API costs a snapshot.

The same initial snapshot (fresh daemon and store each time) three ways, alternating within each round so
a drift in the machine's speed favours none of them:

- ``alone``: nothing but the bench's own event reader;
- ``poller``: one client polling ``GET /api/v1/projects/bench/progress`` back to back over TCP
  (:mod:`bench._poller` with interval 0);
- ``sse``: 1,000 subscribers on ``GET /api/v1/events`` over the Unix socket (:mod:`bench._fanout`, two
  processes), receiving every progress event of the run.

The figure per mode is the best time over the rounds; the ratio is each hammered mode's best over the
best time alone (target <= ``TARGET_RATIO``). The clients' own CPU counts against the machine's two cores,
as it would on a user's machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ._daemon import Daemon, timed_snapshot
from ._proc import machine_busy_seconds, process_cpu_seconds, terminate

MODES = ("alone", "poller", "sse")
TARGET_RATIO = 1.3
SSE_SUBSCRIBERS = 1000
SSE_CLIENTS = 2
REPO = Path(__file__).resolve().parent.parent


def _start_sse(d: Daemon, work: Path, n: int, clients: int) -> list[subprocess.Popen[str]]:
    assert d.unix is not None and d.unix.unix is not None
    procs: list[subprocess.Popen[str]] = []
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    for i, k in enumerate(per):
        out = work / f"fair-sse-{i}.json"
        procs.append(subprocess.Popen([sys.executable, "-m", "bench._fanout", d.unix.unix, str(k), str(out)],
                                      stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=REPO))
    connected = 0
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().split()  # "ready OK FAILED"
        if len(line) == 3 and line[0] == "ready":
            connected += int(line[1])
    if connected != n:
        for p in procs:
            terminate(p, grace=10)
        raise RuntimeError(f"only {connected} of {n} SSE subscribers connected")
    return procs


def run_one(mode: str, *, new_daemon: Callable[[str], Daemon], prepare: Callable[[str], None],
            start_daemon: Callable[[Daemon], None], start_poller: Callable[[Daemon, Path], Any],
            stop_poller: Callable[[Any, Path, tuple[int, int]], dict[str, Any]], work: Path) -> dict[str, Any]:
    """One initial snapshot on a fresh daemon in ``mode``; returns its seconds (and the poller's figures)."""
    d = new_daemon(f"fair-{mode}")
    prepare(mode)
    start_daemon(d)
    out: dict[str, Any] = {"mode": mode}
    try:
        poller = sse = None
        poll_file = work / "fair-poll.bin"
        if mode == "poller":
            poller = start_poller(d, poll_file)
        elif mode == "sse":
            sse = _start_sse(d, work, SSE_SUBSCRIBERS, SSE_CLIENTS)
        run = None
        cpu0, busy0 = process_cpu_seconds(d.pid), machine_busy_seconds()
        try:
            run = trio.run(partial(timed_snapshot, d.unix, "bench"))
            out["cpu_seconds"] = process_cpu_seconds(d.pid) - cpu0
            out["machine_busy_seconds"] = machine_busy_seconds() - busy0
        finally:
            if poller is not None:
                poll = stop_poller(poller, poll_file, run.window if run else (0, 0))
                poll.pop("_lat", None)
                out["poll"] = poll
            for p in sse or []:
                terminate(p, grace=10)
        if run.final.get("state") != "completed":
            raise RuntimeError(f"fairness ({mode}): the snapshot ended {run.final.get('state')}")
        out["seconds"] = run.seconds
        out["events"] = run.events
    finally:
        d.stop()
        d.cleanup()
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best seconds per mode, the ratios to ``alone`` and their verdicts."""
    res: dict[str, Any] = {"runs": runs, "target_ratio": TARGET_RATIO, "subscribers": SSE_SUBSCRIBERS}
    for mode in MODES:
        secs = [r["seconds"] for r in runs if r["mode"] == mode and "seconds" in r]
        if secs:
            best = min((r for r in runs if r["mode"] == mode and "seconds" in r), key=lambda r: r["seconds"])
            res[mode] = {"seconds": best["seconds"], "all_seconds": secs,
                         "cpu_seconds": best.get("cpu_seconds"),
                         "machine_busy_seconds": best.get("machine_busy_seconds")}
    alone = res.get("alone", {}).get("seconds")
    for mode in ("poller", "sse"):
        if alone and mode in res:
            res[mode]["ratio"] = res[mode]["seconds"] / alone
    polls = [r["poll"] for r in runs if "poll" in r]
    if polls:
        best = max(polls, key=lambda p: p.get("count", 0))
        res["poller"]["poll"] = best
    return res


def markdown_rows(f: dict[str, Any]) -> list[list[str]]:
    """[what, syncsnap, baseline, ratio, target, result] rows for the summary table."""
    rows: list[list[str]] = []
    alone = (f.get("alone") or {}).get("seconds")
    for mode, what in (("poller", "Fairness: initial with a back-to-back poller"),
                       ("sse", f"Fairness: initial with {f.get('subscribers', SSE_SUBSCRIBERS):,} SSE subscribers")):
        m = f.get(mode) or {}
        secs, ratio = m.get("seconds"), m.get("ratio")
        extra = ""
        poll = m.get("poll")
        if poll and secs:
            extra = f"; {poll.get('count', 0) / secs:,.0f} req/s"
            codes = poll.get("errors")
            if codes:
                extra += f", {codes:,} non-200"
        rows.append([what, f"{secs:.2f} s" if secs else "n/a",
                     f"alone {alone:.2f} s{extra}" if alone else "n/a",
                     f"{ratio:.2f}x" if ratio else "n/a", f"<= {TARGET_RATIO:g}x",
                     "n/a" if ratio is None else ("PASS" if ratio <= TARGET_RATIO else "MISS")])
    return rows
