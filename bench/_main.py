"""``python -m bench``: snapshots (syncsnap vs restic vs borg), raw limits, JSON serving (vs hypercorn) and SSE
fan-out, in one run; prints a summary table and writes docs/benchmarks.md.

Environment:
    BENCH_SCALE             float, default 1.0: file counts (and large file sizes) of the tree.
    BENCH_POLL_INTERVAL_MS  progress poller period during the initial snapshot, default 10 (0: back to back).
    BENCH_ROUNDS            int, default 3: rounds of the snapshot comparison (best time of the rounds: on a
                            shared machine one round's time varies by 10-20%).
    BENCH_ONLY              comma list of sections to run (raw, syncsnap, restic, borg, serving, fanout, s3,
                            fairness, mount, versions); default all. A partial run writes bench/.work/benchmarks-partial.md.
                            E.g. BENCH_ONLY=fairness,fanout for the fairness and SSE fan-out rows alone.
    BENCH_VERSIONS_SNAPSHOTS, BENCH_VERSIONS_FILES, BENCH_VERSIONS_CHANGES: the versions section's size
                            (default 500 snapshots of 20,000 files, 5 changed between snapshots; bench/_versions.py).
"""

from __future__ import annotations

import array
import fcntl
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import _backup_tools, _env, _fairness, _mount, _raw, _report, _s3, _serving, _sse, _tree, _versions
from ._daemon import Daemon, timed_snapshot
from ._http import Connection
from ._proc import machine_busy_seconds, process_cpu_seconds

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
DOC = REPO / "docs" / "benchmarks.md"
SECTIONS = ("raw", "syncsnap", "restic", "borg", "serving", "fanout", "s3", "fairness", "mount", "versions")

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def _pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# Before each timed step: wait (up to QUIET_MAX_SECONDS) until the rest of the machine uses less than
# QUIET_CORES over a QUIET_WINDOW; this machine is shared with other work (tests, builds), and two cores
# leave no room to absorb it. What others still used during the step is recorded next to each figure.
QUIET_CORES = 0.3
QUIET_WINDOW = 0.5
QUIET_MAX_SECONDS = 30.0
# ... and at most this long over the whole run, so a busy machine cannot stretch the bench without end.
QUIET_BUDGET_SECONDS = 90.0
_waited = [0.0]


def _sync() -> None:
    """Flush dirty pages (so no tool pays for another's writeback), then wait for a quiet machine."""
    os.sync()
    t0 = time.monotonic()
    while True:
        b0 = machine_busy_seconds()
        time.sleep(QUIET_WINDOW)
        cores = (machine_busy_seconds() - b0) / QUIET_WINDOW
        if cores < QUIET_CORES:
            break
        if time.monotonic() - t0 > min(QUIET_MAX_SECONDS, QUIET_BUDGET_SECONDS - _waited[0]):
            log(f"  the machine is still busy ({cores:.1f} cores used by other work); measuring anyway")
            break
    waited = time.monotonic() - t0 - QUIET_WINDOW
    if waited > 1:
        log(f"  waited {waited:.0f} s for other work on the machine to calm down")
    _waited[0] += max(0.0, waited)


# --- syncsnap ------------------------------------------------------------------------------------------


def _start_poller(d: Daemon, interval_ms: float, out: Path) -> subprocess.Popen[str]:
    assert d.http is not None and d.http.tcp is not None and d.token
    host, port = d.http.tcp
    p = subprocess.Popen(
        [sys.executable, "-m", "bench._poller", host, str(port), d.token, "/api/v1/projects/bench/progress",
         str(out), str(interval_ms)],
        stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=REPO)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        p.wait()
        raise RuntimeError(f"progress poller did not start: {line!r}")
    return p


def _stop_poller(p: subprocess.Popen[str], out: Path, window: tuple[int, int], interval_ms: float
                 ) -> dict[str, Any]:
    p.terminate()
    try:
        tail, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        tail, _ = p.communicate()
    rec = array.array("q")
    with open(out, "rb") as f:
        rec.frombytes(f.read())
    lat = sorted(rec[i + 1] / 1e6 for i in range(0, len(rec), 2) if window[0] <= rec[i] <= window[1])
    parts = tail.split()
    errors = int(parts[2]) if len(parts) >= 4 and parts[0] == "done" else -1
    return {**_lat_stats(lat), "errors": errors, "interval_ms": interval_ms, "_lat": lat}


def _lat_stats(lat: list[float]) -> dict[str, Any]:
    lat = sorted(lat)
    return {"count": len(lat), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "max_ms": lat[-1] if lat else float("nan")}


class _CpuWindow:
    """CPU-seconds a process, and everything else on the machine, used from now until ``end()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.busy0 = machine_busy_seconds()
        self.cpu0 = process_cpu_seconds(pid)

    def end(self) -> dict[str, float]:
        cpu = process_cpu_seconds(self.pid) - self.cpu0
        busy = machine_busy_seconds() - self.busy0
        return {"cpu_seconds": cpu, "others_cpu_seconds": max(0.0, busy - cpu)}


def _snap_details(final: dict[str, Any]) -> dict[str, Any]:
    s = final.get("snapshot") or {}
    keys = ("files", "files_new", "files_changed", "files_unchanged", "bytes_added", "duration_seconds",
            "warnings")
    d = {k: s[k] for k in keys if k in s}
    if final.get("state") != "completed":
        d["state"] = final.get("state")
        d["error"] = final.get("error")
    return d


# 1,000 SSE subscribers plus the driver's own connections need more than the default connection and
# stream caps.
# watch = false: no start-up check and no file watcher, so the only runs are the ones the bench asks for.
MAX_CONNECTIONS = 1100


def new_daemon(tree: Path, fan_tree: Path, name: str = "syncsnap", *, encrypted: bool = False) -> Daemon:
    """A daemon on a fresh store; ``encrypted``: a store made by ``syncsnapd init --encrypt`` whose master
    key is in a key file (as an unattended daemon runs: no passphrase, so no scrypt at start)."""
    extra: dict[str, int | str | bool] = {"max_connections": MAX_CONNECTIONS, "max_streams": MAX_CONNECTIONS,
                                          "watch": False}
    if encrypted:
        extra["key_file"] = "{work}/config/master.key"
    return Daemon(WORK / "runs" / name, {"bench": tree, "fan": fan_tree}, extra=extra,
                  init_args=("--encrypt",) if encrypted else None)


def run_syncsnap_hammered(tree: Path, fan_tree: Path, spec: _tree.TreeSpec, res: dict[str, Any]) -> None:
    """An extra initial snapshot (fresh daemon and store) while one client polls back to back: what an
    aggressive poller costs the engine, and the latency it sees."""
    d = new_daemon(tree, fan_tree, "syncsnap-hammered")
    rewarm(tree, spec, res, "syncsnap (back-to-back poller)")
    _sync()
    start_daemon(d, res)
    try:
        poll_file = WORK / "runs" / "poll-hammered.bin"
        poller = _start_poller(d, 0, poll_file)
        run = None
        try:
            run = trio.run(partial(timed_snapshot, d.unix, "bench"))
        finally:
            poll = _stop_poller(poller, poll_file, run.window if run else (0, 0), 0)
        _check(run.final, "initial (back-to-back poller)")
        poll.pop("_lat", None)
        res["snapshots"]["syncsnap"]["hammered"] = {"seconds": run.seconds, "poll": poll}
        log(f"syncsnap initial with a back-to-back poller: {run.seconds:.2f} s, {poll['count']:,} requests "
            f"({poll['count'] / run.seconds:,.0f}/s), p99 {poll['p99_ms']:.1f} ms")
    finally:
        d.stop()
        d.cleanup()


def start_daemon(d: Daemon, res: dict[str, Any]) -> None:
    d.start()
    for k in d.dropped:
        why = {"max_connections": " (its built-in connection cap applies)",
               "watch": " (its watcher may start runs of its own)"}.get(k, "")
        msg = f"syncsnapd has no `[daemon] {k}` setting: started without it{why}"
        if msg not in res["notes"]:
            res["notes"].append(msg)


def rewarm(tree: Path, spec: _tree.TreeSpec, res: dict[str, Any], who: str) -> None:
    """Read the tree again right before a tool's initial snapshot: cheap when it is still cached, and it
    puts back whatever other processes on the machine evicted meanwhile (a slow read is logged)."""
    s, n = _raw.warm(_tree.file_list(tree, spec))
    res.setdefault("rewarm", {})[who] = s
    if s > 0.1 and n / 2**20 / s < 1000:
        log(f"  re-warming the tree before {who} took {s:.2f} s: part of it had left the page cache")


def run_syncsnap(tree: Path, fan_tree: Path, spec: _tree.TreeSpec, poll_interval: float,
                 res: dict[str, Any], name: str = "syncsnap") -> Daemon:
    """One round of three timed snapshots on a fresh daemon and store; returns the daemon, still
    running, for the serving benchmarks. ``name`` "syncsnap-encrypted": into an encrypted store."""
    out: dict[str, Any] = {}
    res["snapshots"].setdefault(name, {}).setdefault("rounds", []).append(out)
    d = new_daemon(tree, fan_tree, name, encrypted=name == "syncsnap-encrypted")
    _tree.restore(tree, spec)
    rewarm(tree, spec, res, name)
    _sync()
    start_daemon(d, res)
    out["start_seconds"] = d.started_seconds
    out["idle_rss_bytes"] = d.status("VmRSS")
    log(f"syncsnapd started in {d.started_seconds:.2f} s (pid {d.pid}, "
        f"RSS {(out['idle_rss_bytes'] or 0) / 1e6:.0f} MB)")
    try:
        poller = None
        poll_file = WORK / "runs" / "poll.bin"
        if d.http is not None:
            poller = _start_poller(d, poll_interval, poll_file)
        run = None
        cpu = _CpuWindow(d.pid)
        try:
            run = trio.run(partial(timed_snapshot, d.unix, "bench", rss_of=d))
        finally:
            if poller is not None:
                out["poll"] = _stop_poller(poller, poll_file, run.window if run else (0, 0), poll_interval)
        hwm = d.status("VmHWM") or 0
        out["initial"] = {"seconds": run.seconds, "details": _snap_details(run.final), "events": run.events,
                          "timeline": run.timeline, **cpu.end()}
        out["peak_rss_bytes"] = max([hwm, *run.rss_samples])
        _check(run.final, "initial")
        log(f"{name} initial: {run.seconds:.2f} s, peak RSS {out['peak_rss_bytes'] / 1e6:.0f} MB, "
            f"poll p99 {out.get('poll', {}).get('p99_ms', float('nan')):.1f} ms, "
            f"CPU {out['initial']['cpu_seconds']:.2f} s (others {out['initial']['others_cpu_seconds']:.2f} s)")

        _sync()
        cpu = _CpuWindow(d.pid)
        run = trio.run(partial(timed_snapshot, d.unix, "bench"))
        out["nochange"] = {"seconds": run.seconds, "details": _snap_details(run.final), "timeline": run.timeline,
                           **cpu.end()}
        _check(run.final, "no-change")
        log(f"{name} no-change: {run.seconds:.2f} s")

        _tree.mutate(tree, spec)
        _sync()
        cpu = _CpuWindow(d.pid)
        run = trio.run(partial(timed_snapshot, d.unix, "bench"))
        out["changed"] = {"seconds": run.seconds, "details": _snap_details(run.final), "timeline": run.timeline,
                          **cpu.end()}
        _check(run.final, "1% changed")
        log(f"{name} 1% changed: {run.seconds:.2f} s")
        out["peak_rss_any_bytes"] = d.status("VmHWM")
        out["store_bytes"] = _dir_bytes(d.work / "store")
    except BaseException:
        log(f"daemon log tail:\n{d.log_tail()}")
        d.stop()
        raise
    finally:
        _tree.restore(tree, spec)
    return d


def aggregate(tool: dict[str, Any]) -> None:
    """Fold a tool's rounds into one figure per step: the best time of the rounds (noise from other
    work on the machine only ever adds time), the largest RSS, and latencies over all rounds' samples."""
    rounds = tool.get("rounds", [])
    for step in ("initial", "nochange", "changed"):
        runs = [r[step] for r in rounds if step in r]
        if not runs:
            continue
        best = dict(min(runs, key=lambda x: x["seconds"]))
        best["all_seconds"] = [x["seconds"] for x in runs]
        rss = [x["max_rss_bytes"] for x in runs if x.get("max_rss_bytes")]
        if rss:
            best["max_rss_bytes"] = max(rss)
        tool[step] = best
    for key in ("peak_rss_bytes", "peak_rss_any_bytes", "store_bytes", "idle_rss_bytes"):
        vals = [r[key] for r in rounds if r.get(key)]
        if vals:
            tool[key] = max(vals)
    polls = [r["poll"] for r in rounds if "poll" in r]
    if polls:
        lat = [x for p in polls for x in p.pop("_lat", [])]
        tool["poll"] = {**_lat_stats(lat), "errors": sum(p["errors"] for p in polls),
                        "interval_ms": polls[0]["interval_ms"], "rounds": len(polls)}


def _check(final: dict[str, Any], what: str) -> None:
    if final.get("state") != "completed":
        raise RuntimeError(f"syncsnap {what} snapshot ended {final.get('state')}: {final.get('error')}")


def run_fairness(tree: Path, fan_tree: Path, spec: _tree.TreeSpec, rounds: int, res: dict[str, Any]) -> None:
    """The initial snapshot alone, with a back-to-back poller and with 1,000 SSE subscribers (see
    bench/_fairness.py), modes alternating within each round."""

    def prepare(mode: str) -> None:
        _tree.restore(tree, spec)
        rewarm(tree, spec, res, f"syncsnap (fairness, {mode})")
        _sync()

    runs = []
    for r in range(rounds):
        modes = _fairness.MODES if r % 2 == 0 else _fairness.MODES[::-1]
        for mode in modes:
            out = _fairness.run_one(
                mode, new_daemon=lambda name: new_daemon(tree, fan_tree, name), prepare=prepare,
                start_daemon=lambda d: start_daemon(d, res), start_poller=lambda d, f: _start_poller(d, 0, f),
                stop_poller=lambda p, f, w: _stop_poller(p, f, w, 0), work=WORK / "runs")
            runs.append(out)
            log(f"fairness, round {r + 1}, {mode}: {out['seconds']:.2f} s, daemon CPU {out['cpu_seconds']:.2f} s, "
                f"machine busy {out['machine_busy_seconds']:.2f} core-s")
    res["fairness"] = f = _fairness.summarize(runs)
    for mode in ("poller", "sse"):
        if "ratio" in f.get(mode, {}):
            log(f"fairness {mode}: {f[mode]['seconds']:.2f} s vs alone {f['alone']['seconds']:.2f} s, "
                f"{f[mode]['ratio']:.2f}x (target <= {_fairness.TARGET_RATIO:g}x)")


# --- restic, borg --------------------------------------------------------------------------------------


def run_tool(tool: Any, tree: Path, spec: _tree.TreeSpec, res: dict[str, Any]) -> None:
    """One round of three timed backups into a fresh repository."""
    out: dict[str, Any] = {}
    res["snapshots"].setdefault(tool.name, {}).setdefault("rounds", []).append(out)
    _tree.restore(tree, spec)
    tool.setup()
    rewarm(tree, spec, res, tool.name)
    try:
        for step, label in (("initial", "initial"), ("nochange", "no-change"), ("changed", "1% changed")):
            if step == "changed":
                _tree.mutate(tree, spec)
            _sync()
            busy0 = machine_busy_seconds()
            r = tool.snapshot(step)
            busy = machine_busy_seconds() - busy0
            out[step] = {"seconds": r.seconds, "max_rss_bytes": r.max_rss_bytes, "details": r.details,
                         "cpu_seconds": r.cpu_seconds, "others_cpu_seconds": max(0.0, busy - (r.cpu_seconds or 0))}
            log(f"{tool.name} {label}: {r.seconds:.2f} s, RSS {r.max_rss_bytes / 1e6:.0f} MB, "
                f"CPU {r.cpu_seconds:.2f} s (others {out[step]['others_cpu_seconds']:.2f} s)")
        out["store_bytes"] = _dir_bytes(tool.repo)
    finally:
        _tree.restore(tree, spec)
        tool.teardown()


# --- serving -------------------------------------------------------------------------------------------


async def _fetch_body(d: Daemon) -> bytes:
    assert d.http is not None
    async with Connection(d.http) as c:
        status, body = await c.request("GET", "/api/v1/projects/bench/progress")
    if status != 200:
        raise RuntimeError(f"GET progress over TCP answered {status}: {body[:200]!r}")
    return body


def run_serving(d: Daemon, res: dict[str, Any], seconds: int) -> None:
    assert d.http is not None and d.http.tcp is not None and d.token
    body = trio.run(_fetch_body, d)
    out: dict[str, Any] = {"body_bytes": len(body), "runs": []}
    res["serving"] = out
    host, port = d.http.tcp
    ss_url = f"http://{host}:{port}/api/v1/projects/bench/progress"
    hc = _serving.Hypercorn(body, d.token, WORK / "runs" / "hypercorn")
    hc.start()
    try:
        urls = {"syncsnap": ss_url, "hypercorn": hc.url}
        for name, url in urls.items():  # warm-up, not recorded
            _serving.run_wrk(name, url, d.token, seconds=1)
        for _ in range(2):
            for name, url in urls.items():
                r = _serving.run_wrk(name, url, d.token, seconds=seconds)
                out["runs"].append(asdict(r))
                log(f"wrk {name}: {r.req_s:,.0f} req/s, p99 {r.p99_ms:.1f} ms"
                    + ("" if r.ok else f" ({r.non_2xx} non-2xx, {r.socket_errors} socket errors)"))
    finally:
        hc.stop()
    for name in ("syncsnap", "hypercorn"):
        runs = [x for x in out["runs"] if x["target"] == name]
        out[name] = {"req_s": sum(x["req_s"] for x in runs) / len(runs),
                     "p99_ms": max(x["p99_ms"] for x in runs),
                     "errors": sum(x["non_2xx"] + x["socket_errors"] for x in runs)}
        if out[name]["errors"]:
            res["errors"].append(f"wrk saw {out[name]['errors']} errors against {name}")


# --- main ----------------------------------------------------------------------------------------------


def _section(name: str, only: set[str], res: dict[str, Any], fn: Callable[[], Any]) -> Any:
    if only and name not in only:
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every section reports its own failure and the run goes on
        msg = f"{name}: {type(exc).__name__}: {exc}"
        log(f"FAILED {msg}")
        traceback.print_exc()
        res["errors"].append(msg)
        return None


def run_daemon_sections(d: Daemon, only: set[str], res: dict[str, Any]) -> None:
    """JSON serving and SSE fan-out against the daemon left running by the snapshot section."""

    def serving() -> None:
        log("JSON serving: wrk against syncsnapd and hypercorn, alternating")
        run_serving(d, res, int(os.environ.get("BENCH_WRK_SECONDS", "10")))

    _section("serving", only, res, serving)

    for n in (100, 1000):
        def fan(n: int = n) -> None:
            assert d.unix is not None
            log(f"SSE fan-out, {n:,} subscribers")
            f = _sse.fanout(d.unix, "fan", n, work=WORK / "runs", log=log,
                            seconds=float(os.environ.get("BENCH_FANOUT_SECONDS", "10")))
            res["fanout"][str(n)] = f
            log(f"  p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, max {f['max_ms']:.1f} ms, "
                f"{f['deliveries']:,} of {f['expected_deliveries']:,} deliveries, "
                f"max {f['max_deliveries_per_s']:,}/s; {f['published_events']} events in {f['runs']} runs")

        _section("fanout", only, res, fan)


def _lock(log: Callable[[str], None]) -> Any:
    """One bench at a time on a machine: they share the tree (which the change set mutates) and two at
    once on 2 cores would spoil each other's figures. Waits up to LOCK_WAIT_SECONDS for another run."""
    WORK.mkdir(parents=True, exist_ok=True)
    f = open(WORK / "lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        log(f"another bench run holds {WORK / 'lock'} ({f.read().strip()}); waiting for it")
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit("gave up waiting for the other bench run") from None
                time.sleep(1)
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


LOCK_WAIT_SECONDS = 900


def main() -> int:
    scale = float(os.environ.get("BENCH_SCALE", "1.0"))
    poll_interval = float(os.environ.get("BENCH_POLL_INTERVAL_MS", "10"))
    only = {s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"BENCH_ONLY: unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    res: dict[str, Any] = {"scale": scale, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                           "errors": [], "notes": [], "snapshots": {}, "fanout": {}}
    log(f"syncsnap bench, BENCH_SCALE={scale:g}")
    lock = _lock(log)  # noqa: F841 - released at exit
    nofile = _env.raise_nofile(8192)
    missing = _env.ensure_debian_tools(log)
    for pkg in missing:
        res["errors"].append(f"{pkg}: not installed and could not be installed")
    res["machine"] = _env.machine(WORK.parent)
    res["versions"] = _env.versions()
    log(f"machine: {res['machine']['nproc']} cores, {res['machine']['RAM']}, {res['machine']['CPU']}; "
        f"open files limit {nofile}")

    WORK.mkdir(parents=True, exist_ok=True)
    spec = _tree.build_spec(scale)
    tree = WORK / f"tree-s{scale:g}"
    _tree.ensure_tree(tree, spec, log)
    fan_tree = WORK / "fan-tree"
    for i in range(3):
        p = fan_tree / f"note{i}.txt"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_tree.content(10_000_000 + i, 2048))
    files = _tree.file_list(tree, spec)
    res["tree"] = {"files": len(spec.files), "bytes": spec.total_bytes,
                   "large": sum(1 for f in spec.files if f.size > _tree.SMALL_MAX),
                   "changed": len(spec.changed), "changed_bytes": spec.changed_bytes,
                   "new": len(spec.new_files), "new_bytes": spec.new_bytes, "zstd_ratio": float("nan")}
    s, n = _raw.warm(files)
    log(f"tree warm: {len(files):,} files, {n / 2**30:.2f} GiB read in {s:.2f} s")

    def raw() -> None:
        log("raw limits")
        rr = _raw.measure(files, log)
        res["raw"] = [dict(asdict(x), mib_s=x.mib_s) for x in rr]
        for x in rr:
            if x.name.startswith("read + zstd") and x.note.startswith("ratio"):
                res["tree"]["zstd_ratio"] = float(x.note.split()[1])

    _section("raw", only, res, raw)

    daemon: Daemon | None = None
    rounds = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
    res["rounds"] = rounds

    def syncsnap(r: int) -> None:
        nonlocal daemon
        log(f"syncsnap snapshots (round {r + 1} of {rounds})")
        d = run_syncsnap(tree, fan_tree, spec, poll_interval, res)
        if r < rounds - 1:
            d.stop()
            d.cleanup()
        else:
            daemon = d  # the last round's daemon serves the later sections

    def encrypted(r: int) -> None:
        log(f"syncsnap snapshots into an encrypted store (round {r + 1} of {rounds})")
        d = run_syncsnap(tree, fan_tree, spec, poll_interval, res, "syncsnap-encrypted")
        d.stop()
        d.cleanup()

    def tool_round(name: str, r: int) -> None:
        cls = {"restic": _backup_tools.Restic, "borg": _backup_tools.Borg}[name]
        tool = cls(WORK / "runs" / name, tree)
        log(f"{name} snapshots (round {r + 1} of {rounds})")
        run_tool(tool, tree, spec, res)

    # Rounds alternate the order of the tools, so a drift in the machine's speed favours none of them.
    order = ["syncsnap", "syncsnap-encrypted", "restic", "borg"]
    skip = {"restic"} if "restic" in missing else set()
    skip |= {"borg"} if "borgbackup" in missing else set()
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            if name in skip:
                continue
            if name == "syncsnap":
                _section(name, only, res, partial(syncsnap, r))
            elif name == "syncsnap-encrypted":
                _section("syncsnap", only, res, partial(encrypted, r))
            else:
                _section(name, only, res, partial(tool_round, name, r))
    for tool in res["snapshots"].values():
        aggregate(tool)
    if daemon is not None and poll_interval and (not only or "syncsnap" in only):
        _section("syncsnap", only, res, partial(run_syncsnap_hammered, tree, fan_tree, spec, res))

    _section("s3", only, res, partial(_s3.run, tree, WORK / "runs", res, log))
    _section("fairness", only, res, partial(run_fairness, tree, fan_tree, spec, rounds, res))
    _section("mount", only, res, partial(_mount.run, tree, WORK / "runs", res, log))  # BENCH_MOUNT_TREE: bench/_mount.py
    _section("versions", only, res, partial(_versions.run, WORK / "runs", res, log))

    needs_daemon = {"serving", "fanout"} & (only or set(SECTIONS))
    if daemon is None and needs_daemon:
        def start() -> None:
            nonlocal daemon
            d = new_daemon(tree, fan_tree)
            start_daemon(d, res)
            daemon = d

        _section(sorted(needs_daemon)[0], set(), res, start)

    if daemon is not None:
        d = daemon
        try:
            run_daemon_sections(d, only, res)
        finally:
            code = d.stop()
            log(f"syncsnapd stopped (exit {code})")
            if code not in (0, None):
                res["errors"].append(f"syncsnapd exited {code} on SIGTERM: {d.log_tail(400)}")
            d.cleanup()

    res["elapsed_seconds"] = time.monotonic() - _T0
    res["quiet_wait_seconds"] = _waited[0]
    (WORK / "results.json").write_text(json.dumps(res, indent=1, default=str))
    # A partial run (BENCH_ONLY) must not replace the document of a whole one.
    doc = WORK / "benchmarks-partial.md" if only else DOC
    doc.write_text(_report.markdown(res) + _s3.markdown(res) + _mount.markdown(res) + "\n")
    _report.print_run(_report.console(res), res)
    log(f"wrote {doc.relative_to(REPO)} and {(WORK / 'results.json').relative_to(REPO)}")
    return 0
