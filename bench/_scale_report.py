"""The scale section's tables (console) and docs/benchmarks-scale.md, from the results of one run."""

from __future__ import annotations

from typing import Any

from ._report import _get, _num, _table, _verdict

MB = 1_000_000
MIB = 2**20
TOOLS = ("syncsnap", "restic", "borg")
SMALL_STEPS = (("initial", "initial"), ("nochange", "no-change"))
BIG_STEPS = (("initial", "initial"), ("append", "append 1 MiB"), ("middle", "change 1 MiB in the middle"),
             ("insert", "insert 1 byte at the start"))
MEASURES = (("seconds", "wall"), ("cpu_seconds", "CPU"), ("peak_rss_bytes", "peak RSS"),
            ("store_added_bytes", "store bytes added"))
# Where the issue sets each target (file counts, snapshots); a run without that size is judged at the
# nearest size it has, and says so.
TARGET_FILES = 400_000
TARGET_RSS_FILES = 100_000


GIB = 2**30
# The daemon's idle RSS is read this long after a run's terminal event (its threads and buffers settle).
IDLE_WAIT_SECONDS = 5.0


def size_label(n: int) -> str:
    """100000 -> '100k'; 4 GiB -> '4 GiB'; 64 MiB -> '64 MiB'."""
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0 and n < GIB:
        return f"{n // MIB} MiB"
    return f"{n / 1000:g}k" if n % 1000 == 0 else f"{n:,}"


def _fmt(key: str, v: Any) -> str:
    if not _num(v):
        return "n/a"
    if key in ("seconds", "cpu_seconds"):
        return f"{v * 1000:.1f} ms" if v < 0.1 else f"{v:.2f} s"
    if key == "peak_rss_bytes":
        return f"{v / MB:.0f} MB"
    return f"{v / MIB:,.1f} MiB" if v >= 0.1 * MIB or v == 0 else f"{v / 1024:,.1f} KiB"


def _cell(step: dict[str, Any] | None, key: str) -> str:
    if not step:
        return "n/a"
    text = _fmt(key, step.get(key))
    every = step.get("all_seconds") or []
    if key == "seconds" and len(every) > 1:
        text += f" ({', '.join(_fmt(key, x) for x in every)})"
    return text


def table_rows(r: dict[str, Any]) -> list[list[str]]:
    """[measure, syncsnap, restic, borg] rows: every size, step and measure, n/a where not measured."""
    rows: list[list[str]] = []
    for n, entry in sorted(r.get("small", {}).items(), key=lambda kv: int(kv[0])):
        where = f"{size_label(int(n))} files"
        for step, label in SMALL_STEPS:
            for key, what in MEASURES:
                rows.append([f"{where}: {label}, {what}"]
                            + [_cell(_get(entry, t, step), key) for t in TOOLS])
        idle = _get(entry, "syncsnap", "idle_rss_bytes")
        rows.append([f"{where}: idle RSS {IDLE_WAIT_SECONDS:.0f} s after the initial run", _fmt("peak_rss_bytes", idle),
                     "(exits)", "(exits)"])
        chk = _get(entry, "syncsnap", "check")
        rows.append([f"{where}: check (structure), 2 snapshots", _cell(chk, "seconds"), "", ""])
    for size, entry in sorted(r.get("big", {}).items(), key=lambda kv: int(kv[0])):
        where = f"{size_label(int(size))} file"
        for step, label in BIG_STEPS:
            for key, what in MEASURES:
                rows.append([f"{where}: {label}, {what}"] + [_cell(_get(entry, t, step), key) for t in TOOLS])
    h = r.get("history")
    if h:
        where = f"history ({size_label(h['files'])} files)"
        for count in sorted(h.get("points", {}), key=int):
            point = h["points"][count]
            for step, label in (("nochange", "no-change run"), ("list", "snapshot list"),
                                ("check", "check (structure)")):
                rows.append([f"{where}: {label} at {count} snapshots"]
                            + [_cell(_get(point, t, step), "seconds") for t in TOOLS])
    return rows


def _nearest(sizes: list[int], want: int) -> int | None:
    return min(sizes, key=lambda s: (abs(s - want), -s)) if sizes else None


def target_rows(r: dict[str, Any]) -> list[list[str]]:
    """[target, measured at, syncsnap, baseline, ratio, result] rows, one per target of issue 14."""
    rows: list[list[str]] = []
    small = r.get("small", {})
    sizes = sorted(int(n) for n in small)

    def at(want: int) -> tuple[str, dict[str, Any]]:
        n = _nearest(sizes, want)
        if n is None:
            return "not run", {}
        note = "" if n == want else f" (target at {size_label(want)})"
        return f"{size_label(n)} files{note}", small[str(n)]

    def ratio_row(text: str, step: str, limit: float) -> None:
        where, e = at(TARGET_FILES)
        a, b = _get(e, "syncsnap", step, "seconds"), _get(e, "restic", step, "seconds")
        ratio = a / b if _num(a) and _num(b) and b else None
        rows.append([text, where, _fmt("seconds", a), f"restic {_fmt('seconds', b)}",
                     f"{ratio:.2f}x" if ratio is not None else "n/a",
                     _verdict(None if ratio is None else ratio <= limit)])

    ratio_row("initial snapshot <= 0.5x restic", "initial", 0.5)
    ratio_row("no-change snapshot <= 0.3x restic", "nochange", 0.3)

    where, e = at(TARGET_FILES)
    a, b = _get(e, "syncsnap", "initial", "peak_rss_bytes"), _get(e, "restic", "initial", "peak_rss_bytes")
    rows.append(["peak RSS <= restic's", where, _fmt("peak_rss_bytes", a), f"restic {_fmt('peak_rss_bytes', b)}",
                 f"{a / b:.2f}x" if _num(a) and _num(b) and b else "n/a",
                 _verdict(None if not (_num(a) and _num(b)) else a <= b)])
    where, e = at(TARGET_RSS_FILES)
    a = _get(e, "syncsnap", "initial", "peak_rss_bytes")
    rows.append(["peak RSS <= 150 MB", where, _fmt("peak_rss_bytes", a), "", "",
                 _verdict(None if not _num(a) else a <= 150 * MB)])

    n = sizes[-1] if sizes else None
    e = small[str(n)] if n is not None else {}
    idle, chunks = _get(e, "syncsnap", "idle_rss_bytes"), _get(e, "syncsnap", "check", "details", "chunks")
    limit = 80 * MB + 40 * MB * chunks / 1e6 if _num(chunks) else None
    rows.append(["idle RSS <= 80 MB + 40 MB per million chunks",
                 f"{size_label(n)} files" if n else "not run", _fmt("peak_rss_bytes", idle),
                 f"limit {_fmt('peak_rss_bytes', limit)} ({chunks:,} chunks)" if limit else "chunks unknown", "",
                 _verdict(None if not (_num(idle) and limit) else idle <= limit)])

    big = r.get("big", {})
    bsizes = sorted(int(s) for s in big)
    bn = _nearest(bsizes, 4 * 2**30)
    be = big[str(bn)] if bn is not None else {}
    bwhere = (f"{size_label(bn)} file" + ("" if bn == 4 * 2**30 else " (target at 4 GiB)")) if bn else "not run"
    for step, text, limit in (("insert", "insert 1 byte at the start adds < 5 MiB", 5 * MIB),
                              ("append", "append 1 MiB adds < 2 MiB", 2 * MIB)):
        a = _get(be, "syncsnap", step, "store_added_bytes")
        rows.append([text, bwhere, _fmt("store_added_bytes", a),
                     f"restic {_fmt('store_added_bytes', _get(be, 'restic', step, 'store_added_bytes'))}, "
                     f"borg {_fmt('store_added_bytes', _get(be, 'borg', step, 'store_added_bytes'))}", "",
                     _verdict(None if not _num(a) else a < limit)])

    h = r.get("history") or {}
    points = sorted((h.get("points") or {}), key=int)
    lo, hi = (points[0], points[-1]) if len(points) >= 2 else (None, None)
    hwhere = f"{size_label(h['files'])} files, {lo} vs {hi} snapshots" if lo else "not run"
    for step, text, limit in (("nochange", "no-change at 100+ snapshots no slower than at 2 (<= 1.10x)", 1.10),
                              ("check", "check at 100+ snapshots <= 3x at 2", 3.0)):
        a = _get(h, "points", hi, "syncsnap", step, "seconds") if hi else None
        b = _get(h, "points", lo, "syncsnap", step, "seconds") if lo else None
        ratio = a / b if _num(a) and _num(b) and b else None
        rows.append([text, hwhere, _fmt("seconds", a), f"at {lo}: {_fmt('seconds', b)}",
                     f"{ratio:.2f}x" if ratio is not None else "n/a",
                     _verdict(None if ratio is None else ratio <= limit)])
    return rows


TABLE_HEADER = ["measure", "syncsnap", "restic", "borg"]
TARGET_HEADER = ["target (issue 14)", "measured at", "syncsnap", "baseline", "ratio", "result"]


def _plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*row) for row in rows])


def console(r: dict[str, Any]) -> str:
    return _plain(TARGET_HEADER, target_rows(r)) + "\n\n" + _plain(TABLE_HEADER, table_rows(r))


def markdown(r: dict[str, Any]) -> str:
    L: list[str] = ["# Benchmarks at scale", ""]
    L.append(f"Generated by `make bench-scale` (`python -m bench scale`); do not edit by hand. Run on {r['date']} "
             f"with `BENCH_SCALE={r['scale']}`, {r['rounds']} round(s); whole run {r.get('elapsed_seconds', 0):.0f} s."
             " The 20,000-file comparison, JSON serving and SSE fan-out are in [benchmarks.md](benchmarks.md).")
    L += ["", "## Targets", "", _table(TARGET_HEADER, target_rows(r)), ""]
    L.append("A target set at a size this run did not have is judged at the nearest size it had, and the "
             "row says so: only a run at the issue's sizes (`100k,400k,4g`) decides it.")
    L += ["", "## Measurements", "", _table(TABLE_HEADER, table_rows(r)), ""]
    L.append("Times are the best of the rounds, each round's in brackets; peak RSS and store bytes added "
             "are the largest of the rounds; the CPU time is of the best round.")
    L.append("")
    if r.get("profile"):
        p = r["profile"]
        L.append(f"Where syncsnap's time goes: [profile-initial.txt](profile-initial.txt), a py-spy profile of "
                 f"the daemon during an initial snapshot of {size_label(p['files'])} files.")
        L.append("")
    L += ["## Reproduce", "", "```",
          "make bench-scale                                     # 100k,400k,4g: about 45-60 min, ~15 GB free",
          "BENCH_SCALE=20k,256m .venv/bin/python -m bench scale # a few minutes",
          "BENCH_SCALE=tiny BENCH_ROUNDS=1 .venv/bin/python -m bench scale  # the self-test's size",
          "```", ""]
    L.append("`BENCH_HISTORY` sets the snapshots of the history section (default 102, 0 skips it), "
             "`BENCH_PROFILE=0` skips the profile, `BENCH_SCALE_WORK` moves the trees and stores (default "
             "`bench/.work/scale`, kept between runs: delete it to free the space). The bench refuses to "
             "start when the disk lacks room for the trees and the largest section's stores.")
    L += ["", "## Machine", "", _table(["", ""], [[k, v] for k, v in r.get("machine", {}).items()]), ""]
    L += ["## Tool versions", "", _table(["tool", "version"], [[k, v] for k, v in r.get("versions", {}).items()]), ""]
    L += ["## Method", ""] + [f"- {x}" for x in METHOD]
    h = r.get("history")
    if h:
        L.append(f"- **History**: {h['snapshots']} snapshots of the {size_label(h['files'])}-file tree per tool, "
                 "each after one file was given new content (renamed over the old one), the three tools in "
                 "turn after each change, all three stores kept. At 2 snapshots and at the last, each round "
                 "times the snapshot list, a structure check and a no-change run (which adds a snapshot: the "
                 "second round sees one more).")
    L.append("")
    for title, items in (("Notes", r.get("notes", [])), ("Not measured in this run", r.get("errors", []))):
        if items:
            L += [f"## {title}", ""] + [f"- {e}" for e in items] + [""]
    return "\n".join(L)


METHOD = (
    "**Trees**: files of 512 B-8 KiB (about 4.3 KiB on average) in nested directories of about 50 files, "
    "generated deterministically (seeded; random bytes and repetitive text, about 1.5x compressible by zstd), "
    "once per size under the work directory. **The big file**: the same content recipe, written 16 MiB at a "
    "time; its edits are cumulative (append 1 MiB at the end; overwrite 1 MiB in place 1,000 bytes past the "
    "middle; insert one byte at the start, shifting the rest in place). It is rewritten pristine before each "
    "tool.",
    "**Page cache**: not dropped. The tree (or file) is read right before each tool's initial snapshot so "
    "each sees a warm cache; `sync` runs before each timed step, and the bench waits (up to 30 s, 90 s in "
    "all) until other processes use less than 0.3 of a core.",
    "**Rounds**: the tools alternate (syncsnap, restic, borg, then the reverse), each round into a fresh store "
    "or repository and, for syncsnap, a fresh daemon kept running over that round's steps as in use.",
    "**syncsnap**: `syncsnapd --config` on a temporary TOML config (`watch = false`), timed from sending "
    "`POST /api/v1/projects/bench/snapshots` to receiving the run's terminal event on its progress stream. "
    "CPU time: user + system of the daemon and its descendants (/proc: its own, its reaped children's and "
    "its live descendants' ticks). Peak RSS: the summed VmRSS of the daemon and its descendants sampled "
    "every 50 ms, and the daemon's VmHWM for the first step of a fresh daemon. Idle RSS: the summed VmRSS "
    f"{IDLE_WAIT_SECONDS:.0f} s after the initial run's terminal event. Snapshot list: `GET /api/v1/projects/bench/snapshots`. "
    "Check: `syncsnapd --store STORE check` (structure and references, no data read), a process beside the "
    "running daemon; its chunk count is the one of the idle RSS target.",
    "**restic**: `restic backup --json TREE` per step (`restic init` first; its own cache dir), `restic "
    "snapshots --json`, `restic check` (structure, no data read). **borg**: `borg create --json REPO::NAME "
    "TREE` (`borg init -e none`), `borg list --json REPO`, `borg check --archives-only` (archive metadata "
    "and chunk references; its repository check would read every segment). Both with their default "
    "chunking and compression. Wall time from spawn to reap; CPU time and peak RSS from `wait4` of the "
    "process (its reaped children included).",
    "**Store bytes added**: the apparent size (sum of file sizes, `du -sb`) of the store or repository "
    "directory after the step less before it.",
    "**A shared machine**: 2 cores, shared with other work; times are the best of the rounds because other "
    "work only ever adds time.",
)
