"""``python -m bench scale`` (``make bench-scale``): how syncsnap, restic and borg scale, side by side.

Sections, each for every tool, the tools alternating (syncsnap, restic, borg, then the reverse), best of
``BENCH_ROUNDS`` rounds:

- **small-file trees** (``100k``, ``400k``: files of 512 B-8 KiB): initial snapshot into a fresh store,
  then a no-change snapshot;
- **the big file** (``4g``): initial, then 1 MiB appended, 1 MiB changed in the middle, 1 byte inserted at
  the start (see :mod:`bench._bigfile`): time and store bytes added by each;
- **history** (on the smallest tree): ``BENCH_HISTORY`` snapshots, each after a one-file change, built for
  the three tools in turn; at 2 snapshots and at the end: a no-change run, the snapshot list, a structure
  check;
- **profile**: py-spy on the daemon during one more initial snapshot of the largest tree (not timed).

Each step records wall time, CPU time (user + system of the process tree), peak RSS (of the tree) and
store bytes added (apparent size of the store directory before and after); the daemon also its idle RSS
a few seconds after the initial snapshot. Writes docs/benchmarks-scale.md (``BENCH_SCALE_DOC``) and the
profile beside it, and prints the tables.

Environment:
    BENCH_SCALE       sizes, comma separated, default ``100k,400k,4g``: ``Nk`` a tree of N thousand small
                      files, ``Nm``/``Ng`` the big file of N MiB/GiB; ``tiny`` = ``2k,64m`` with a history
                      of 12 snapshots (the test's self-check).
    BENCH_ROUNDS      rounds, default 2.
    BENCH_HISTORY     snapshots built for the history section, default 102 (tiny: 12); 0 skips it.
    BENCH_PROFILE     0 skips the profile.
    BENCH_SCALE_WORK  where trees, stores and repositories go (default bench/.work/scale).
    BENCH_SCALE_DOC   the document to write (default docs/benchmarks-scale.md).
    BENCH_QUIET_BUDGET  seconds the whole run may wait for a quiet machine before timed steps (default 90,
                      as `make bench`); 0 for a self-test that does not care about the figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import _backup_tools, _bigfile, _env, _main, _profile, _raw, _report, _scale_report, _tree
from ._daemon import TERMINAL, Daemon, timed_snapshot
from ._http import Connection, Endpoint, get_json
from ._main import REPO, _dir_bytes, _lock, _sync, log, start_daemon
from ._proc import TreePeak, tree_cpu_seconds, tree_rss_bytes
from ._scale_report import GIB, IDLE_WAIT_SECONDS, size_label

TOOLS = ("syncsnap", "restic", "borg")
DEFAULT_SCALE = "100k,400k,4g"
DEFAULT_HISTORY = 102
# Kept free beyond the estimates below (logs, caches, other users of the disk).
DISK_MARGIN = 1 * GIB


@dataclass
class Plan:
    small: list[int] = field(default_factory=list)  # file counts
    big: list[int] = field(default_factory=list)  # bytes
    history: int = DEFAULT_HISTORY
    text: str = DEFAULT_SCALE


def parse_plan(text: str, history: str | None) -> Plan:
    """``BENCH_SCALE`` (and ``BENCH_HISTORY``) as a plan; ValueError with the sentence to print."""
    plan = Plan(text=text)
    tiny = False
    for tok in (t.strip().lower() for t in text.split(",") if t.strip()):
        if tok == "tiny":
            tiny = True
            plan.small.append(2000)
            plan.big.append(64 * 2**20)
        elif m := re.fullmatch(r"(\d+(?:\.\d+)?)k", tok):
            plan.small.append(int(float(m.group(1)) * 1000))
        elif m := re.fullmatch(r"(\d+)([mg])", tok):
            plan.big.append(int(m.group(1)) * (2**20 if m.group(2) == "m" else GIB))
        elif re.fullmatch(r"\d+(\.\d+)?", tok):
            raise ValueError(f"BENCH_SCALE={text}: a bare number is `make bench`'s tree scale; the scale "
                             f"section takes sizes such as {DEFAULT_SCALE} (or tiny)")
        else:
            raise ValueError(f"BENCH_SCALE: unknown size {tok!r} (expected e.g. 100k, 400k, 4g, 256m or tiny)")
    plan.small = sorted(set(plan.small))
    plan.big = sorted(set(plan.big))
    if not plan.small and not plan.big:
        raise ValueError("BENCH_SCALE names no size")
    plan.history = int(history) if history else (12 if tiny else DEFAULT_HISTORY)
    if plan.history and plan.history < 3:
        raise ValueError("BENCH_HISTORY: at least 3 snapshots (or 0 to skip the section)")
    return plan


# --- disk space ---------------------------------------------------------------------------------------


def _tree_disk_bytes(spec: _tree.TreeSpec) -> int:
    """On-disk size of a small-file tree: whole 4 KiB blocks, and one block per directory."""
    return sum(-(-f.size // 4096) * 4096 for f in spec.files) + 4096 * (len(spec.files) // 50 + 1)


def _generated(root: Path) -> bool:
    return root.with_name(root.name + ".json").is_file()


def disk_needs(plan: Plan, work: Path) -> dict[str, tuple[int, int]]:
    """Per section: (bytes of its tree not generated yet, bytes its stores may take). A store is estimated
    at the data's size plus a third (restic's cache, borg's segments before compaction); the big file's at
    twice the file (without content-defined chunks, the 1-byte insert stores it anew); the history keeps
    three stores at once."""
    needs: dict[str, tuple[int, int]] = {}
    for n in plan.small:
        spec = _tree.build_small_spec(n)
        tree = 0 if _generated(work / f"small-{n}") else _tree_disk_bytes(spec)
        needs[f"{size_label(n)} files"] = (tree, spec.total_bytes * 4 // 3)
    for size in plan.big:
        present = (work / f"big-{size}" / "big.bin").exists()
        needs[f"{size_label(size)} file"] = (0 if present else size, 2 * size)
    if plan.history and plan.small:
        spec = _tree.build_small_spec(plan.small[0])
        needs[f"history on {size_label(plan.small[0])} files"] = (0, 3 * spec.total_bytes * 4 // 3)
    return needs


def check_disk(plan: Plan, work: Path) -> str | None:
    """None when there is room for every tree still to generate plus the largest section's stores (one
    section at a time: each removes its stores when done); else the sentence to print."""
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    needs = disk_needs(plan, work)
    need = sum(t for t, _ in needs.values()) + max(st for _, st in needs.values()) + DISK_MARGIN
    if free >= need:
        return None
    detail = ", ".join(f"{what}: tree {t / GIB:.1f} GiB + stores {st / GIB:.1f} GiB"
                       for what, (t, st) in needs.items())
    return (f"not enough disk space in {work}: {free / GIB:.1f} GiB free, about {need / GIB:.1f} GiB needed "
            f"({detail}; plus {DISK_MARGIN / GIB:.0f} GiB to spare). Free some space, point BENCH_SCALE_WORK "
            "at a larger disk, or choose smaller sizes in BENCH_SCALE.")


# --- the tools, behind one interface ------------------------------------------------------------------


def _step(seconds: float, cpu: float | None, rss: int | None, added: int, **details: Any) -> dict[str, Any]:
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": rss, "store_added_bytes": added,
            "details": details}


class SyncsnapRunner:
    """One daemon with one project (``bench``) on the tree, kept running over the steps, as in use."""

    name = "syncsnap"

    def __init__(self, work: Path, tree: Path, res: dict[str, Any]) -> None:
        self.d = Daemon(work, {"bench": tree}, extra={"watch": False})
        self.res = res
        self.first = True

    @property
    def store(self) -> Path:
        return self.d.work / "store"

    def open(self) -> None:
        start_daemon(self.d, self.res)

    def snapshot(self, *, timed: bool = True) -> dict[str, Any]:
        pid = self.d.pid
        assert self.d.unix is not None
        before = _dir_bytes(self.store) if timed else 0
        if timed:
            _sync()
        cpu0 = tree_cpu_seconds(pid)
        peak = TreePeak(pid)
        try:
            run = trio.run(partial(timed_snapshot, self.d.unix, "bench", limit_seconds=3600))
        finally:
            rss = peak.stop(with_hwm=self.first)
        cpu = tree_cpu_seconds(pid) - cpu0
        self.first = False
        if run.final.get("state") != "completed":
            raise RuntimeError(f"syncsnap snapshot ended {run.final.get('state')}: {run.final.get('error')}")
        snap = run.final.get("snapshot") or {}
        added = _dir_bytes(self.store) - before if timed else 0
        return _step(run.seconds, cpu, rss, added, files=snap.get("files"), bytes_added=snap.get("bytes_added"))

    def idle_rss(self) -> int:
        time.sleep(IDLE_WAIT_SECONDS)
        return tree_rss_bytes(self.d.pid)

    def list_snapshots(self) -> dict[str, Any]:
        assert self.d.unix is not None
        t0 = time.perf_counter()
        body = trio.run(get_json, self.d.unix, "/api/v1/projects/bench/snapshots")
        return _step(time.perf_counter() - t0, None, None, 0, snapshots=len(body.get("snapshots", [])))

    def check(self) -> dict[str, Any]:
        """A structure check run by the daemon (``POST /api/v1/check``), timed to its terminal event: the
        store's work, without the start-up of a ``syncsnapd check`` process."""
        assert self.d.unix is not None
        pid = self.d.pid
        cpu0 = tree_cpu_seconds(pid)
        peak = TreePeak(pid)
        try:
            seconds, final = trio.run(_timed_check, self.d.unix)
        finally:
            rss = peak.stop(with_hwm=False)
        cpu = tree_cpu_seconds(pid) - cpu0
        result = final.get("result") or {}
        if final.get("state") != "completed" or not result.get("ok"):
            raise RuntimeError(f"syncsnap check ended {final.get('state')}: {final.get('error')} {result}")
        return _step(seconds, cpu, rss, 0, snapshots=result.get("snapshots"), chunks=result.get("chunks"))

    def close(self) -> None:
        code = self.d.stop()
        if code not in (0, None):
            self.res["errors"].append(f"syncsnapd exited {code} on SIGTERM: {self.d.log_tail(400)}")
        self.d.cleanup()


async def _timed_check(endpoint: Endpoint) -> tuple[float, dict[str, Any]]:
    """POST /api/v1/check with the event stream already open; (seconds to the terminal event, that event)."""
    subscribed = trio.Event()
    finals: dict[str, dict[str, Any]] = {}
    arrived = trio.Event()
    async with Connection(endpoint) as sse, Connection(endpoint) as post, trio.open_nursery() as nursery:

        async def reader() -> None:
            async for _name, obj in sse.sse("/api/v1/events"):
                subscribed.set()
                if obj.get("kind") == "check" and obj.get("state") in TERMINAL and obj.get("run"):
                    finals[obj["run"]] = obj
                    arrived.set()

        nursery.start_soon(reader)
        with trio.fail_after(30):
            await subscribed.wait()
        t0 = time.perf_counter()
        run = (await post.json("POST", "/api/v1/check", {"read_data": False}, expect=(202,)))["run"]
        with trio.fail_after(3600):
            while run not in finals:
                await arrived.wait()
                arrived = trio.Event()
        seconds = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return seconds, finals[run]


class ToolRunner:
    """restic or borg: a fresh repository, one process per command."""

    def __init__(self, name: str, work: Path, tree: Path) -> None:
        self.name = name
        cls = {"restic": _backup_tools.Restic, "borg": _backup_tools.Borg}[name]
        self.tool: Any = cls(work, tree)
        self.n = 0

    def open(self) -> None:
        self.tool.setup()

    def snapshot(self, *, timed: bool = True) -> dict[str, Any]:
        before = _dir_bytes(self.tool.repo) if timed else 0
        if timed:
            _sync()
        self.n += 1
        r = self.tool.snapshot(f"s{self.n}")
        added = _dir_bytes(self.tool.repo) - before if timed else 0
        return _step(r.seconds, r.cpu_seconds, r.max_rss_bytes, added, **r.details)

    def list_snapshots(self) -> dict[str, Any]:
        r = self.tool.list_snapshots()
        return _step(r.seconds, r.cpu_seconds, r.max_rss_bytes, 0, **r.details)

    def check(self) -> dict[str, Any]:
        r = self.tool.check()
        return _step(r.seconds, r.cpu_seconds, r.max_rss_bytes, 0)

    def close(self) -> None:
        self.tool.teardown()


Runner = SyncsnapRunner | ToolRunner


def _order(r: int) -> tuple[str, ...]:
    return TOOLS if r % 2 == 0 else TOOLS[::-1]


# --- sections -----------------------------------------------------------------------------------------


class Scale:
    def __init__(self, plan: Plan, work: Path, rounds: int, res: dict[str, Any]) -> None:
        self.plan, self.work, self.rounds, self.res = plan, work, rounds, res
        self.skip: set[str] = set()

    def runner(self, name: str, tree: Path, tag: str) -> Runner:
        if name == "syncsnap":
            return SyncsnapRunner(self.work / "runs" / f"syncsnap-{tag}", tree, self.res)
        return ToolRunner(name, self.work / "runs" / f"{name}-{tag}", tree)

    def guarded(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - each part reports its own failure and the run goes on
            msg = f"{what}: {type(exc).__name__}: {exc}"
            log(f"FAILED {msg}")
            traceback.print_exc()
            self.res["errors"].append(msg)

    def each_tool(self, what: str, one: Callable[[str, int], None]) -> None:
        """``one(tool, round)`` for every round, the tools in that round's order, each guarded."""
        for r in range(self.rounds):
            for name in _order(r):
                if name not in self.skip:
                    self.guarded(f"{what}, {name}", partial(one, name, r))

    def room_for(self, what: str) -> bool:
        tree, stores = disk_needs(self.plan, self.work)[what]
        need = tree + stores
        free = shutil.disk_usage(self.work).free
        if free >= need + DISK_MARGIN:
            return True
        self.res["errors"].append(f"{what}: skipped, {free / GIB:.1f} GiB free in {self.work} and about "
                                  f"{(need + DISK_MARGIN) / GIB:.1f} GiB needed")
        log(f"skipping {what}: not enough disk space")
        return False

    def small(self, n: int) -> None:
        spec = _tree.build_small_spec(n)
        tree = self.work / f"small-{n}"
        if not self.room_for(f"{size_label(n)} files"):
            return
        _tree.ensure_tree(tree, spec, log)
        out = self.res["small"].setdefault(str(n), {"files": n, "bytes": spec.total_bytes})
        files = _tree.file_list(tree, spec)

        def one(name: str, r: int) -> None:
            log(f"{size_label(n)} files: {name} (round {r + 1} of {self.rounds})")
            rnd: dict[str, Any] = {}
            out.setdefault(name, {"rounds": []})["rounds"].append(rnd)
            _raw.warm(files)
            run = self.runner(name, tree, f"small-{n}")
            run.open()
            try:
                rnd["initial"] = run.snapshot()
                if isinstance(run, SyncsnapRunner):
                    rnd["idle_rss_bytes"] = run.idle_rss()
                rnd["nochange"] = run.snapshot()
                if isinstance(run, SyncsnapRunner) and r == self.rounds - 1:
                    rnd["check"] = run.check()
            finally:
                run.close()
            log("  " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in rnd.items()
                                 if isinstance(v, dict)))

        self.each_tool(f"{size_label(n)} files", one)

    def big(self, size: int) -> None:
        label = f"{size_label(size)} file"
        if not self.room_for(label):
            return
        bdir = self.work / f"big-{size}"
        path = bdir / "big.bin"
        out = self.res["big"].setdefault(str(size), {"bytes": size})

        def one(name: str, r: int) -> None:
            log(f"{label}: {name} (round {r + 1} of {self.rounds})")
            rnd: dict[str, Any] = {}
            out.setdefault(name, {"rounds": []})["rounds"].append(rnd)
            _bigfile.restore(path, size, log)
            _raw.warm([path])
            run = self.runner(name, bdir, f"big-{size}")
            run.open()
            try:
                for step in _bigfile.STEPS:
                    if step != "initial":
                        _bigfile.EDITS[step](path, size)
                    rnd[step] = run.snapshot()
            finally:
                run.close()
            log("  " + ", ".join(f"{k} {v['seconds']:.2f} s, +{v['store_added_bytes'] / 2**20:.1f} MiB"
                                 for k, v in rnd.items()))

        self.each_tool(label, one)

    def history(self) -> None:
        n = self.plan.small[0]
        spec = _tree.build_small_spec(n)
        tree = self.work / f"small-{n}"
        what = f"history on {size_label(n)} files"
        if not self.room_for(what):
            return
        _tree.ensure_tree(tree, spec, log)
        out: dict[str, Any] = {"files": n, "snapshots": self.plan.history, "points": {}}
        self.res["history"] = out
        runners = {name: self.runner(name, tree, "history") for name in TOOLS if name not in self.skip}
        opened: list[Runner] = []
        changed = spec.files[0]
        failed: set[str] = set()
        try:
            for run in runners.values():
                run.open()
                opened.append(run)
            points = (2, self.plan.history)
            t0 = time.monotonic()
            for i in range(self.plan.history):
                # A one-file change, so each snapshot differs from the last (as hourly snapshots would).
                _tree.rewrite(tree, changed, i + 1)
                for name in _order(i):
                    if name in runners and name not in failed:
                        before = len(self.res["errors"])
                        self.guarded(f"{what}, {name} snapshot {i + 1}",
                                     partial(runners[name].snapshot, timed=False))
                        if len(self.res["errors"]) > before:
                            failed.add(name)  # its history is cut short: measured no further
                if (i + 1) % 10 == 0:
                    log(f"  {what}: {i + 1} of {self.plan.history} snapshots "
                        f"({time.monotonic() - t0:.0f} s)")
                if i + 1 in points:
                    live = {k: v for k, v in runners.items() if k not in failed}
                    self._history_point(i + 1, live, out["points"].setdefault(str(i + 1), {}))
        finally:
            for run in opened:
                run.close()
            _tree.rewrite(tree, changed, 0)

    def _history_point(self, count: int, runners: dict[str, Runner], out: dict[str, Any]) -> None:
        log(f"history: measuring at {count} snapshots")
        for r in range(self.rounds):
            for name in _order(r):
                if name not in runners:
                    continue
                run = runners[name]

                def one(name: str = name, run: Runner = run) -> None:
                    mine = out.setdefault(name, {"rounds": []})
                    rnd: dict[str, Any] = {}
                    mine["rounds"].append(rnd)
                    _sync()
                    rnd["list"] = run.list_snapshots()
                    _sync()
                    rnd["check"] = run.check()
                    rnd["nochange"] = run.snapshot()  # adds one snapshot: round 2 sees one more
                    log(f"  {name}: " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in rnd.items()))

                self.guarded(f"history at {count}, {name}", one)

    def profile(self, doc_dir: Path) -> None:
        pyspy = _profile.find_pyspy()
        if pyspy is None:
            self.res["errors"].append("profile: py-spy is not installed (the bench extra installs it: "
                                      "pip install -e '.[bench]')")
            return
        n = self.plan.small[-1]
        spec = _tree.build_small_spec(n)
        tree = self.work / f"small-{n}"
        _tree.ensure_tree(tree, spec, log)
        _raw.warm(_tree.file_list(tree, spec))
        log(f"profile: py-spy on syncsnapd during an initial snapshot of {size_label(n)} files")
        run = SyncsnapRunner(self.work / "runs" / "syncsnap-profile", tree, self.res)
        raw = self.work / "profile-initial.folded"
        run.open()
        try:
            try:
                rec = _profile.Recording(pyspy, run.d.pid, raw)
            except RuntimeError as exc:
                log(f"  {exc}; trying again without --native")
                rec = _profile.Recording(pyspy, run.d.pid, raw, native=False)
            try:
                step = run.snapshot()
            finally:
                rec.stop()
        finally:
            run.close()
        title = (f"py-spy profile of syncsnapd during an initial snapshot of {size_label(n)} small files "
                 f"({spec.total_bytes / 2**20:,.0f} MiB), {step['seconds']:.2f} s under the profiler; written "
                 f"by `python -m bench scale` on {self.res['date']}. Raw stacks: {raw} (flamegraph.pl or "
                 "https://www.speedscope.app read them).")
        doc_dir.mkdir(parents=True, exist_ok=True)
        (doc_dir / "profile-initial.txt").write_text(_profile.summarize(raw, title=title))
        self.res["profile"] = {"file": str(doc_dir / "profile-initial.txt"), "seconds": step["seconds"],
                               "files": n}


def aggregate(res: dict[str, Any]) -> None:
    """Best time of the rounds per step (noise only adds time), with every round's time; the largest
    peak RSS and store bytes added of the rounds; the largest idle RSS."""

    def fold(tool: dict[str, Any]) -> None:
        rounds = tool.get("rounds", [])
        steps = {k for r in rounds for k, v in r.items() if isinstance(v, dict)}
        for step in steps:
            runs = [r[step] for r in rounds if step in r]
            best = dict(min(runs, key=lambda x: x["seconds"]))
            best["all_seconds"] = [x["seconds"] for x in runs]
            for key in ("peak_rss_bytes", "store_added_bytes"):
                vals = [x[key] for x in runs if x.get(key) is not None]
                best[key] = max(vals) if vals else None
            tool[step] = best
        idle = [r["idle_rss_bytes"] for r in rounds if r.get("idle_rss_bytes")]
        if idle:
            tool["idle_rss_bytes"] = max(idle)

    for section in ("small", "big"):
        for entry in res[section].values():
            for name in TOOLS:
                if name in entry:
                    fold(entry[name])
    for point in (res.get("history") or {}).get("points", {}).values():
        for name in TOOLS:
            if name in point:
                fold(point[name])


def main() -> int:
    try:
        plan = parse_plan(os.environ.get("BENCH_SCALE") or DEFAULT_SCALE, os.environ.get("BENCH_HISTORY"))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    work = Path(os.environ.get("BENCH_SCALE_WORK") or REPO / "bench" / ".work" / "scale")
    doc = Path(os.environ.get("BENCH_SCALE_DOC") or REPO / "docs" / "benchmarks-scale.md")
    rounds = max(1, int(os.environ.get("BENCH_ROUNDS", "2")))
    short = check_disk(plan, work)
    if short:
        print(short, file=sys.stderr)
        return 2
    lock = _lock(log)  # noqa: F841 - one bench at a time; released at exit
    _main.QUIET_BUDGET_SECONDS = float(os.environ.get("BENCH_QUIET_BUDGET", _main.QUIET_BUDGET_SECONDS))
    t0 = time.monotonic()
    res: dict[str, Any] = {"scale": plan.text, "rounds": rounds, "history_planned": plan.history,
                           "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "small": {}, "big": {},
                           "errors": [], "notes": []}
    log(f"syncsnap scale bench, BENCH_SCALE={plan.text} (small trees {[size_label(n) for n in plan.small]}, "
        f"big file {[size_label(b) for b in plan.big]}, history {plan.history}), {rounds} rounds, in {work}")
    missing = _env.ensure_debian_tools(log)
    res["machine"] = _env.machine(work)
    res["versions"] = _env.versions()
    s = Scale(plan, work, rounds, res)
    s.skip = {cmd for pkg, cmd in (("restic", "restic"), ("borgbackup", "borg")) if pkg in missing}
    res["errors"] += [f"{cmd}: not installed" for cmd in sorted(s.skip)]
    for n in plan.small:
        s.guarded(f"{size_label(n)} files", partial(s.small, n))
    for size in plan.big:
        s.guarded(f"{size_label(size)} file", partial(s.big, size))
    if plan.history and plan.small:
        s.guarded("history", s.history)
    if plan.small and os.environ.get("BENCH_PROFILE", "1") != "0":
        s.guarded("profile", partial(s.profile, doc.parent))
    aggregate(res)
    res["elapsed_seconds"] = time.monotonic() - t0
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(_scale_report.markdown(res))
    _report.print_run(_scale_report.console(res), res)
    log(f"wrote {doc} and {work / 'results.json'}")
    return 0
