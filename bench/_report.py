"""The summary table (console) and docs/benchmarks.md, from the results dictionary of one run."""

from __future__ import annotations

import math
from typing import Any

from ._mount import summary_rows as mount_rows

MB = 1_000_000


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def _s(v: Any) -> str:
    return f"{v:.2f} s" if _num(v) else "n/a"


def _ms(v: Any) -> str:
    return f"{v:.1f} ms" if _num(v) else "n/a"


def _mb(v: Any) -> str:
    return f"{v / MB:.0f} MB" if _num(v) else "n/a"


def _rate(v: Any) -> str:
    return f"{v:,.0f} req/s" if _num(v) else "n/a"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def summary_rows(r: dict[str, Any]) -> list[list[str]]:
    """[what, syncsnap, baseline, ratio, target, result] rows."""
    rows: list[list[str]] = []
    snap = r.get("snapshots", {})

    def secs(tool: str, step: str) -> Any:
        return _get(snap, tool, step, "seconds")

    def ratio_row(what: str, step: str, base: str, limit: float, tool: str = "syncsnap") -> None:
        a, b = secs(tool, step), secs(base, step)
        ratio = a / b if _num(a) and _num(b) and b else None
        base_name = "syncsnap, not encrypted" if base == "syncsnap" else base
        rows.append([what, _s(a), f"{base_name} {_s(b)}", f"{ratio:.3f}x" if ratio is not None else "n/a",
                     f"<= {limit:.2f}x", _verdict(None if ratio is None else ratio <= limit)])

    ratio_row("Initial snapshot", "initial", "borg", 0.6)
    ratio_row("Initial snapshot", "initial", "restic", 0.35)
    ratio_row("No-change snapshot", "nochange", "restic", 0.25)
    ratio_row("1% changed + new files", "changed", "restic", 0.30)
    if "syncsnap-encrypted" in snap:
        ratio_row("Initial snapshot, encrypted store", "initial", "restic", 0.35, "syncsnap-encrypted")
        ratio_row("Encryption's cost, initial", "initial", "syncsnap", 1.15, "syncsnap-encrypted")
        ratio_row("Encryption's cost, 1% changed", "changed", "syncsnap", 1.15, "syncsnap-encrypted")
    s3 = r.get("s3", {})
    enc3, plain3, restic3 = (_get(s3, t, "initial", "seconds") for t in ("syncsnap-encrypted", "syncsnap", "restic"))
    for what, base, b, limit in (("Initial snapshot into S3, encrypted", "restic", restic3, 0.35),
                                 ("Encryption's cost, initial into S3", "syncsnap, not encrypted", plain3, 1.15)):
        if _num(enc3) and _num(b) and b:
            rows.append([what, _s(enc3), f"{base} {_s(b)}", f"{enc3 / b:.3f}x", f"<= {limit:.2f}x",
                         _verdict(enc3 / b <= limit)])

    rss = _get(snap, "syncsnap", "peak_rss_bytes")
    rows.append(["Daemon peak RSS (initial)", _mb(rss),
                 f"restic {_mb(_get(snap, 'restic', 'initial', 'max_rss_bytes'))}, "
                 f"borg {_mb(_get(snap, 'borg', 'initial', 'max_rss_bytes'))}",
                 "", "< 100 MB", _verdict(None if not _num(rss) else rss < 100 * MB)])
    p99 = _get(snap, "syncsnap", "poll", "p99_ms")
    rows.append(["Progress poll p99 during initial", _ms(p99),
                 f"p50 {_ms(_get(snap, 'syncsnap', 'poll', 'p50_ms'))}", "", "< 20 ms",
                 _verdict(None if not _num(p99) else p99 < 20)])

    h = _get(snap, "syncsnap", "hammered")
    if h:
        hp = _get(h, "poll", "p99_ms")
        n, secs = _get(h, "poll", "count") or 0, _get(h, "seconds")
        # Such a client is held to the rate bound (429 with Retry-After, then paused): its latency is the
        # daemon's policy, not its speed, so this row only informs; the Fairness rows carry the target.
        errs = _get(h, "poll", "errors") or 0
        rows.append(["Progress poll p99, back-to-back poller", _ms(hp),
                     (f"{n / secs:,.0f} req/s, {errs:,} non-200 (rate bound); initial took {_s(secs)}"
                      if _num(secs) and secs else ""), "", "(see Fairness)", "info"])

    if r.get("fairness"):
        from ._fairness import markdown_rows

        rows += markdown_rows(r["fairness"])
    if r.get("path_versions"):
        from ._versions import markdown_rows as versions_rows

        rows += versions_rows(r["path_versions"])

    sv = r.get("serving", {})
    a, b = _get(sv, "syncsnap", "req_s"), _get(sv, "hypercorn", "req_s")
    ratio = a / b if _num(a) and _num(b) and b else None
    rows.append(["JSON progress over TCP (wrk)", _rate(a), f"hypercorn {_rate(b)}",
                 f"{ratio:.2f}x" if ratio is not None else "n/a", ">= 4x",
                 _verdict(None if ratio is None else ratio >= 4)])
    # Issue 14's targets (they were 10 and 50 ms).
    for n, limit in (("100", 3.0), ("1000", 15.0)):
        f = _get(r, "fanout", n)
        p = _get(f, "p99_ms")
        ok = None if not _num(p) else p <= limit and _get(f, "connected") == int(n)
        conn = _get(f, "connected")
        short = f", only {conn:,} connected" if isinstance(conn, int) and conn != int(n) else ""
        rows.append([f"SSE fan-out p99, {int(n):,} subscribers", _ms(p),
                     f"p50 {_ms(_get(f, 'p50_ms'))}{short}", "", f"<= {limit:g} ms", _verdict(ok)])
    rows += mount_rows(r)  # issue 13: reading a mounted snapshot (bench/_mount.py)
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


SUMMARY_HEADER = ["measure", "syncsnap", "baseline", "ratio", "target", "result"]


def console(r: dict[str, Any]) -> str:
    rows = summary_rows(r)
    widths = [max(len(x) for x in col) for col in zip(SUMMARY_HEADER, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*SUMMARY_HEADER), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    L: list[str] = []
    scale = r["scale"]
    tree = r.get("tree", {})
    L.append("# Benchmarks")
    L.append("")
    L.append("Generated by `make bench` (`python -m bench`); do not edit by hand. "
             f"Run on {r['date']} at `BENCH_SCALE={scale:g}`"
             + (" (a reduced run: not the reference figures)." if scale != 1.0 else ".")
             + f" Whole run: {r.get('elapsed_seconds', 0):.0f} s.")
    L.append("")
    L.append("## Summary")
    L.append("")
    L.append(_table(SUMMARY_HEADER, summary_rows(r)))
    L.append("")
    L.append("Ratios are syncsnap's time over the baseline's (lower is better), except for the JSON "
             "endpoint, where it is syncsnap's request rate over hypercorn's (higher is better).")
    L.append("")
    L.append("At scale (100k and 400k files, a 4 GiB file with append, middle change and 1-byte insert, many "
             "snapshots), with targets: [benchmarks-scale.md](benchmarks-scale.md), `make bench-scale`.")
    L.append("")

    L.append("## Reproduce")
    L.append("")
    L.append("```")
    L.append("make bench                                   # full run, BENCH_SCALE=1.0")
    L.append("BENCH_SCALE=0.05 .venv/bin/python -m bench   # quick run on a small tree")
    L.append("```")
    L.append("")
    L.append("The bench installs restic, borg and wrk from Debian when missing (apt-get, as root or with sudo). "
             "The tree is generated once per scale under `bench/.work/` (git-ignored) and repaired at each run.")
    L.append("")

    L.append("## Machine")
    L.append("")
    L.append(_table(["", ""], [[k, v] for k, v in r.get("machine", {}).items()]))
    L.append("")
    L.append("## Tool versions")
    L.append("")
    L.append(_table(["tool", "version"], [[k, v] for k, v in r.get("versions", {}).items()]))
    L.append("")

    L.append("## Method")
    L.append("")
    L.append(f"- **Tree**: {tree.get('files', 0):,} files, {tree.get('bytes', 0) / 2**30:.2f} GiB in nested "
             "directories, generated deterministically (seeded): most files 1-64 KiB, "
             f"{tree.get('large', 0)} of 1-50 MiB; content mixes random bytes and repetitive text "
             f"(zstd level 1 ratio {tree.get('zstd_ratio', float('nan')):.2f} over the tree). "
             "`BENCH_SCALE` multiplies the file counts and the large files' sizes.")
    L.append(f"- **Change set** (\"1% changed\"): {tree.get('changed', 0):,} files get new content of the same "
             f"size ({tree.get('changed_bytes', 0) / 2**20:.1f} MiB), written to a temporary name and renamed "
             f"over the old file as a sync tool does, and {tree.get('new', 0)} new files "
             f"({tree.get('new_bytes', 0) / 2**20:.1f} MiB) appear in existing directories. Every tool gets "
             "the same tree: the change set is undone (pristine content rewritten, new files removed) before "
             "the next tool starts.")
    rw = r.get("rewarm", {})
    L.append("- **Page cache**: it is not dropped. The tree is read once before the first tool, and again "
             "right before each tool's initial snapshot, so every tool (and the raw limits) sees a warm "
             "cache"
             + (" (re-reads took " + ", ".join(f"{k} {v:.2f} s" for k, v in rw.items()) + ")" if rw else "")
             + "; `sync` runs before each timed step so one tool's writeback does not land in another's "
             "time. Each tool writes to its own fresh repository or store on the same disk.")
    L.append("- **A shared machine**: before each timed step the bench waits (up to 30 s, 90 s in all) "
             "until other processes use less than 0.3 of a core over half a second"
             + (f" (it waited {r['quiet_wait_seconds']:.0f} s in all)" if r.get("quiet_wait_seconds") else "")
             + "; what other work still used during each step is in the snapshot table below.")
    L.append("- **syncsnap**: `syncsnapd --config` on a temporary TOML config (Unix socket, loopback TCP on "
             "port 0, fresh store), one daemon for the three snapshots. A snapshot is timed from sending "
             "`POST /api/v1/projects/bench/snapshots` to receiving that run's terminal event on "
             "`/api/v1/projects/bench/progress/stream`, opened beforehand (both on the Unix socket). Peak "
             "RSS is the larger of VmRSS sampled every 20 ms during the initial snapshot and VmHWM right "
             "after it (the daemon was freshly started). The daemon keeps running between snapshots, as it "
             "would in use; restic and borg start a new process for each backup.")
    poll = _get(r, "snapshots", "syncsnap", "poll") or {}
    iv = poll.get("interval_ms")
    L.append("- **Progress latency**: a separate client process polls `GET /api/v1/projects/bench/progress` "
             "over TCP with the bearer token, one keep-alive connection, one request at a time"
             + (f", one request every {iv:g} ms (about {1000 / iv:.0f} requests/s, a busy UI, so the "
                "poller does not slow the snapshot it watches)" if iv else ", back to back")
             + "; latencies of the requests sent during the initial snapshot count. A second initial "
             "snapshot (fresh daemon and store, not used for the ratios) runs with the client polling back "
             "to back, to show what an aggressive poller costs the engine.")
    nr = r.get("rounds", 1)
    if nr > 1:
        L.append(f"- **Rounds**: the three-step comparison runs {nr} times, alternating the order of the "
                 "tools (syncsnap, syncsnap into an encrypted store, restic, borg, then the reverse), each round into a fresh "
                 "repository or store (and a fresh daemon). Times are the best of the rounds (other work on "
                 "the machine only ever adds time), every round's time is shown in brackets; RSS is the "
                 "largest of the rounds; latencies are taken over the samples of all rounds.")
    L.append("- **Encrypted store**: the same three steps on a fresh daemon whose store was made by "
             "`syncsnapd init --encrypt` with `key_file` set (AES-256-GCM on this CPU, keyed chunk ids; the "
             "daemon reads its master key from the file, so no scrypt at start), alternating with the "
             "other tools. restic always encrypts; borg runs with `-e none`.")
    L.append("- **restic**: `restic init`, then `restic backup --json TREE` (repository in a temporary "
             "directory, `RESTIC_PASSWORD` set, its own cache dir). **borg**: `borg init -e none`, then "
             "`borg create --json REPO::NAME TREE` (temporary `BORG_BASE_DIR`). Both with their default "
             "chunking and compression. Wall time of the process; peak RSS from `wait4` of that process.")
    L.append("- **Raw limits**: one thread, every file opened and read into one reused 1 MiB buffer, fed "
             "to hashlib.sha256, blake3 or a zstd level 1 compressor.")
    L.append("- **JSON serving**: `wrk -t2 -c32 -d10s --latency` with `Authorization: Bearer` and "
             "`Host: 127.0.0.1` against `GET /api/v1/projects/bench/progress` over TCP, alternating "
             "with `hypercorn --worker-class trio` (one worker) serving a minimal ASGI app "
             "(`bench/_hypercorn_app.py`) that checks the same token and returns the same body, fetched "
             "once from the daemon. The figures are the means of the alternating runs.")
    L.append("- **SSE fan-out**: N subscribers on `GET /api/v1/events` over the Unix socket, split over "
             "two client processes that read raw non-blocking sockets with one epoll loop each. Events are "
             "published by snapshot runs of a second, tiny project (`fan`), triggered back to back and paced "
             "to the target rate; each run publishes its step events within a few milliseconds, so "
             "publication is bursty. Latency = receipt wall time (when epoll returned) - the event's "
             "`updated_at`; `updated_at` is truncated to milliseconds, so each figure reads 0-1 ms high. "
             "Deliveries/s is the most events received in one whole second, over all subscribers.")
    L.append("")

    snap = r.get("snapshots", {})
    if snap:
        L.append("## Snapshots")
        L.append("")
        rows = []
        def cell(t: str, step: str) -> str:
            best, every = _get(snap, t, step, "seconds"), _get(snap, t, step, "all_seconds") or []
            if len(every) > 1:
                return f"{_s(best)} ({', '.join(f'{x:.2f}' for x in every)})"
            return _s(best)

        tools = ("syncsnap", "syncsnap-encrypted", "restic", "borg")
        for step, label in (("initial", "initial"), ("nochange", "no change"),
                            ("changed", "1% changed + new files")):
            rows.append([label] + [cell(t, step) for t in tools])
        def cpu(t: str, step: str, key: str) -> str:
            v = _get(snap, t, step, key)
            return f"{v:.2f} s" if _num(v) else "n/a"

        for step, label in (("initial", "initial"), ("nochange", "no change"), ("changed", "1% changed")):
            rows.append([f"CPU time of the tool, {label}"] + [cpu(t, step, "cpu_seconds") for t in tools])
        for step, label in (("initial", "initial"), ("nochange", "no change"), ("changed", "1% changed")):
            rows.append([f"CPU time of everything else, {label}"]
                        + [cpu(t, step, "others_cpu_seconds") for t in tools])
        ours = ("syncsnap", "syncsnap-encrypted")
        rows.append(["peak RSS, initial"] + [_mb(_get(snap, t, "peak_rss_bytes")) for t in ours]
                    + [_mb(_get(snap, t, "initial", "max_rss_bytes")) for t in ("restic", "borg")])
        rows.append(["peak RSS, any step"] + [_mb(_get(snap, t, "peak_rss_any_bytes")) for t in ours]
                    + [_mb(max((_get(snap, t, s, "max_rss_bytes") or 0 for s in ("initial", "nochange", "changed")),
                               default=0) or None) for t in ("restic", "borg")])
        rows.append(["store / repository size"] + [_mb(_get(snap, t, "store_bytes")) for t in tools])
        L.append(_table(["", "syncsnap", "syncsnap, encrypted store", "restic", "borg"], rows))
        L.append("")
        L.append("CPU times are of the round shown (the best). \"Everything else\" is the machine's busy "
                 "CPU time during the step (both cores, from /proc/stat) less the tool's own: the harness "
                 "(for syncsnap, its progress poller and event reader) and any other work on the machine. "
                 "When it is large, that step's wall time was inflated by contention for the 2 cores.")
        L.append("")
        details = []
        for t in tools:
            for step in ("initial", "nochange", "changed"):
                d = _get(snap, t, step, "details")
                if d:
                    details.append(f"{t} {step}: " + ", ".join(f"{k}={v}" for k, v in d.items()))
        if details:
            L.append("What each tool reported (to check that all saw the same changes):")
            L.append("")
            L += [f"- {d}" for d in details]
            L.append("")
        if poll:
            L.append(f"Progress polling during the initial snapshot: {poll.get('count', 0):,} requests, "
                     f"p50 {_ms(poll.get('p50_ms'))}, p99 {_ms(poll.get('p99_ms'))}, "
                     f"max {_ms(poll.get('max_ms'))}, errors {poll.get('errors', 0)}.")
            L.append("")
        h = _get(snap, "syncsnap", "hammered")
        if h:
            hp = h["poll"]
            L.append(f"With a client polling back to back instead (a separate initial snapshot, fresh daemon "
                     f"and store): {hp['count']:,} requests in {_s(h['seconds'])} "
                     f"({hp['count'] / h['seconds']:,.0f}/s), p50 {_ms(hp['p50_ms'])}, p99 {_ms(hp['p99_ms'])}, "
                     f"max {_ms(hp['max_ms'])}; the snapshot took {_s(h['seconds'])} against "
                     f"{_s(_get(snap, 'syncsnap', 'initial', 'seconds'))} with the paced poller.")
            L.append("")

    fair = r.get("fairness")
    if fair:
        from ._fairness import MODES

        L.append("## Fairness (initial snapshot, fresh daemon and store each time)")
        L.append("")
        L.append(f"The same initial snapshot alone, with one client polling progress back to back over TCP, and "
                 f"with {fair.get('subscribers', 0):,} SSE subscribers on `/api/v1/events` (two client "
                 f"processes); modes alternate within each round, best of rounds. The clients' own CPU "
                 f"shares the two cores, as on a user's machine; a client beyond the per-connection rate "
                 f"bound gets 429 with Retry-After and is not read until then (docs/api.md).")
        L.append("")
        rows = []
        for mode in MODES:
            m = fair.get(mode) or {}
            if not m:
                continue
            poll = m.get("poll") or {}
            rows.append([mode, _s(m.get("seconds")), ", ".join(f"{x:.2f}" for x in m.get("all_seconds", [])),
                         _s(m.get("cpu_seconds")), f"{m['ratio']:.2f}x" if _num(m.get("ratio")) else "",
                         f"{poll.get('count', 0):,} requests, {poll.get('errors', 0):,} non-200" if poll else ""])
        L.append(_table(["mode", "best", "all rounds (s)", "daemon CPU", "ratio to alone", "client"], rows))
        L.append("")

    raw = r.get("raw", [])
    if raw:
        L.append("## Raw limits of this machine (one thread, warm cache)")
        L.append("")
        L.append(_table(["pass", "seconds", "MiB/s", "note"],
                        [[x["name"], f"{x['seconds']:.2f}", f"{x['mib_s']:,.0f}", x.get("note", "")] for x in raw]))
        L.append("")
        by = {x["name"]: x for x in raw}
        sha, b3 = by.get("read + sha256 (hashlib)"), by.get("read + blake3")
        if sha and b3:
            L.append(f"blake3 hashes the tree {sha['seconds'] / b3['seconds']:.1f}x as fast as hashlib.sha256 "
                     "on one thread (reading included), which is why the store uses blake3.")
            L.append("")

    sv = r.get("serving", {})
    if sv.get("runs"):
        L.append("## JSON serving (wrk)")
        L.append("")
        L.append(_table(["run", "server", "req/s", "p50", "p99", "requests", "errors (non-2xx + socket)"],
                        [[str(i + 1), x["target"], f"{x['req_s']:,.0f}", _ms(x["p50_ms"]), _ms(x["p99_ms"]),
                          f"{x['requests']:,}", str(x["non_2xx"] + x["socket_errors"])]
                         for i, x in enumerate(sv["runs"])]))
        L.append("")
        if sv.get("body_bytes"):
            L.append(f"Response body: {sv['body_bytes']} bytes of JSON.")
            L.append("")

    fo = r.get("fanout", {})
    if fo:
        L.append("## SSE fan-out (Unix socket)")
        L.append("")
        rows = []
        for n, f in sorted(fo.items(), key=lambda kv: int(kv[0])):
            if "error" in f:
                rows.append([f"{int(n):,}", "error: " + f["error"]] + [""] * 8)
                continue
            rows.append([f"{int(n):,}", f"{f['connected']:,}", f"{f['published_events']} ({f['publish_rate']:.1f}/s)",
                         f"{f['deliveries']:,} of {f['expected_deliveries']:,}", _ms(f["p50_ms"]), _ms(f["p99_ms"]),
                         _ms(f["max_ms"]), f"{f['max_deliveries_per_s']:,}",
                         str(f.get("disconnected", 0)),
                         str(f.get("refused", 0) + f.get("failed", 0) + f.get("silent", 0))])
        L.append(_table(["subscribers", "connected", "events published", "deliveries", "p50", "p99", "max",
                         "max deliveries/s", "disconnected", "refused or silent"], rows))
        L.append("")

    notes = r.get("notes", [])
    if notes:
        L.append("## Notes")
        L.append("")
        L += [f"- {e}" for e in notes]
        L.append("")
    errs = r.get("errors", [])
    if errs:
        L.append("## Not measured in this run")
        L.append("")
        L += [f"- {e}" for e in errs]
        L.append("")
    return "\n".join(L)


def print_run(table: str, res: dict[str, Any]) -> None:
    """Print a run's table, then what it could not measure and its notes."""
    print()
    print(table)
    print()
    for e in res["errors"]:
        print(f"not measured: {e}")
    for e in res["notes"]:
        print(f"note: {e}")
