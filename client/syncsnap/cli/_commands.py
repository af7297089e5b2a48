"""The commands that ask the daemon and print the answer: status, projects, snapshots, diff, runs, run, stats;
and the dashboard's open and logout."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from dataclasses import asdict
from typing import Any

import trio

from .._client import AsyncClient
from .._errors import NotFound, ProtocolError
from ..models import (
    CheckResult,
    DiffChange,
    Progress,
    Project,
    PruneResult,
    RestoreResult,
    RunInfo,
    SnapshotInfo,
    step_names,
)
from ._format import display_path, human_bytes, human_duration, percent, plural, precise_duration
from ._output import EXIT_OK, EXIT_USAGE, print_json, print_table
from ._view import end_sentence


def no_run_named(run: str) -> NotFound:
    """The error for a run id the daemon knows nowhere (neither its history nor its operations)."""
    return NotFound(f"no run named {run!r}; `syncsnap runs PROJECT` lists a project's runs.", status=404,
                    code="not_found")


def project_json(p: Project) -> dict[str, Any]:
    d = asdict(p)
    d["progress"] = p.progress.to_json()
    return d


async def cmd_status(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    health = await client.health()
    projects = await client.projects()
    if as_json:
        print_json({"health": asdict(health), "endpoint": client.endpoint.describe(),
                     "projects": [project_json(p) for p in projects]})
        return EXIT_OK
    print(f"syncsnapd {health.version} is running (pid {health.pid}, up {human_duration(health.uptime_seconds)}) "
          f"on {client.endpoint.describe()} with {plural(health.projects, 'project')}.")
    for warning in health.warnings:
        # The daemon's own words about something the user must fix (a config without projects, ...).
        print(f"warning: {warning}", flush=True)
    for p in projects:
        print(f"  {p.id}: {_state_line(p.progress)}")
    return EXIT_OK


def _state_line(p: Progress) -> str:
    if p.state == "idle":
        return "idle"
    if p.terminal:
        return end_sentence(p)
    return f"step {p.step}/{p.steps} {p.step_name}, {p.percent:.1f}%: {p.message}"


async def cmd_projects(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    projects = await client.projects()
    if as_json:
        print_json({"projects": [project_json(p) for p in projects]})
        return EXIT_OK
    rows = [("PROJECT", "STATE", "LAST SNAPSHOT", "PATH")]
    for p in projects:
        last = p.last_snapshot
        rows.append((p.id, f"{p.state} (paused)" if p.paused else p.state, f"{last.time} ({plural(last.files, 'file')})" if last else "never",
                     display_path(p.path)))
    print_table(rows)
    return EXIT_OK


async def cmd_snapshots(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    snaps: list[SnapshotInfo] = await client.snapshots(args.project, host=args.host)
    if as_json:
        print_json({"snapshots": [asdict(s) for s in snaps]})
        return EXIT_OK
    if not snaps:
        on = "" if args.host is None else f" taken on {display_path(args.host)}"
        if args.project is None:
            print(f"No snapshots{on} yet.")
        else:
            print(f"{args.project} has no snapshots{on} yet; take one with `syncsnap snapshot {args.project}`.")
        return EXIT_OK
    # HOST: the machine that took it ("-": not recorded, by an older version); every project's list
    # names the project too.
    head = ("SNAPSHOT", *(("PROJECT",) if args.project is None else ()), "HOST", "TIME", "FILES", "SIZE", "ADDED",
            "DURATION", "WARNINGS")
    rows = [head]
    for s in snaps:
        rows.append((s.id, *((display_path(s.project),) if args.project is None else ()),
                     display_path(s.host) if s.host is not None else "-", s.time, f"{s.files:,}",
                     human_bytes(s.bytes), human_bytes(s.bytes_added), f"{s.duration_seconds:.1f} s", str(s.warnings)))
    print_table(rows)
    return EXIT_OK


async def cmd_diff(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    diff = await client.diff(args.project, args.snapshot_from, args.snapshot_to, limit=args.limit)
    if as_json:
        print_json(diff.raw)
        return EXIT_OK
    rows: list[tuple[str, str, str]] = []
    rows += [(e.path, "+", _side(e.kind, e.size)) for e in diff.added]
    rows += [(e.path, "-", _side(e.kind, e.size)) for e in diff.removed]
    rows += [(c.path, _change_mark(c), _change(c)) for c in diff.modified]
    for path, mark, detail in sorted(rows):
        # File names are anyone's bytes: escaped, or they could drive the terminal (colours, cursor, title).
        print(f"{mark} {display_path(path)}" + (f"  ({detail})" if detail else ""))
    sm = diff.summary
    to = "the live folder" if diff.to == "live" else diff.to
    if rows:
        print()
    print(f"{diff.from_} -> {to}: {sm.added:,} added ({human_bytes(sm.size_added)}), {sm.removed:,} removed "
          f"({human_bytes(sm.size_removed)}), {sm.modified:,} modified, {sm.unchanged:,} unchanged; "
          f"{human_bytes(sm.size_before)} -> {human_bytes(sm.size_after)}")
    if diff.truncated:
        print(f"(lists cut at {len(max(diff.added, diff.removed, diff.modified, key=len)):,} entries each; "
              "--limit N shows more, --json gives them to scripts)")
    return EXIT_OK


def _side(kind: str, size: int) -> str:
    return human_bytes(size) if kind == "file" else kind


def _change_mark(c: DiffChange) -> str:
    return "T" if "type" in c.change else "M"


def _change(c: DiffChange) -> str:
    parts = []
    if "type" in c.change:
        parts.append(f"{c.kind_before} -> {c.kind_after}")
    if "content" in c.change:
        parts.append(f"content {human_bytes(c.size_before)} -> {human_bytes(c.size_after)}"
                     if c.kind_after == "file" else "target")
    if "mode" in c.change:
        parts.append(f"mode {c.mode_before} -> {c.mode_after}")
    return ", ".join(parts)


def _outcome(r: RunInfo) -> str:
    """What a run produced, in a few words, for the runs table."""
    if r.snapshot is not None:
        return f"{r.snapshot.id} ({plural(r.snapshot.files, 'file')}, {human_bytes(r.snapshot.bytes_added)} added)"
    if r.error is not None:
        return f"{r.error.code}: {r.error.message}"
    return ""


async def cmd_runs(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    runs: list[RunInfo] = []
    before: str | None = None
    while len(runs) < args.limit:  # the daemon answers at most 500 a page
        page = await client.runs(args.project, limit=min(500, args.limit - len(runs)), before=before)
        runs += page.runs
        if page.next is None:
            break
        before = page.next
    if as_json:
        print_json({"runs": [r.to_json() for r in runs]})
        return EXIT_OK
    if not runs:
        print(f"{args.project} has no runs yet; start one with `syncsnap snapshot {args.project}`.")
        return EXIT_OK
    rows = [("RUN", "KIND", "TRIGGER", "STATE", "STARTED", "DURATION", "OUTCOME")]
    for r in runs:
        trigger = (r.trigger or "-") + (f" #{r.attempt}" if r.attempt > 1 else "")
        rows.append((r.run, r.kind, trigger, r.state, r.started_at or "-",
                     "-" if r.duration_seconds is None else precise_duration(r.duration_seconds), _outcome(r)))
    print_table(rows)
    return EXIT_OK


async def cmd_run(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    try:
        r = await client.run(args.run)
    except NotFound as exc:
        raise no_run_named(args.run) from exc
    if as_json:
        print_json(r.to_json())
        return EXIT_OK
    subject = r.project if r.project is not None else "the store"
    print(f"Run {r.run}: {r.kind} of {subject}, {r.state}")
    trigger = r.trigger or "unknown"
    if r.attempt > 1:
        trigger += f", attempt {r.attempt}" + (f" (retry of {r.retry_of})" if r.retry_of else "")
    lines = [("trigger", trigger), ("started", r.started_at or "-")]
    if r.ended_at:
        took = "" if r.duration_seconds is None else f" (after {precise_duration(r.duration_seconds)})"
        lines.append(("ended", r.ended_at + took))
    if r.snapshot is not None:
        s = r.snapshot
        lines.append(("snapshot", f"{s.id}: {plural(s.files, 'file')} ({human_bytes(s.bytes)}), "
                                  f"{human_bytes(s.bytes_added)} added"))
        lines.append(("files", f"{s.files_new:,} new, {s.files_changed:,} changed, {s.files_unchanged:,} unchanged"
                               + (f", {plural(s.warnings, 'warning')}" if s.warnings else "")))
    result = r.result
    if result is None and r.kind != "snapshot" and r.terminal:
        # The history's run record has no result: the run's last event has it.
        events = await client.run_events(r.run)
        result = events[-1].result if events else None
    if result is not None:
        lines += _result_lines(r.kind, result)
    if r.error is not None:
        lines.append(("error", f"{r.error.code}: {r.error.message}"))
    for key, value in lines:
        print(f"  {key:<9} {value}")
    if r.step_seconds:
        names = step_names(r.kind)
        total = sum(r.step_seconds.values()) or 1.0
        print("  steps:")
        for step, secs in r.step_seconds.items():
            name = names.get(step, f"step {step}")
            bar = "█" * round(20 * secs / total)
            print(f"    {step} {name:<30} {precise_duration(secs):>9}  {bar}".rstrip())
    return EXIT_OK


def _result_lines(kind: str, result: dict[str, Any]) -> list[tuple[str, str]]:
    """What a finished restore, check or prune produced, for ``syncsnap run``."""
    try:
        if kind == "restore":
            rr = RestoreResult.from_json(result)
            return [("restored", f"{rr.snapshot} into {rr.target}: {plural(rr.files, 'file')} "
                                 f"({human_bytes(rr.bytes)}), {plural(rr.dirs, 'directory', 'directories')}, "
                                 f"{plural(rr.symlinks, 'symlink')}"
                                 + (f" (only {', '.join(rr.paths)})" if rr.paths else ""))]
        if kind == "check":
            cr = CheckResult.from_json(result)
            level = "data re-hashed" if cr.read_data else "structure and references"
            found = "no problem" if cr.ok else f"{plural(len(cr.problems), 'problem')}, " \
                                                f"{plural(len(cr.damaged), 'damaged snapshot')}"
            return [("checked", f"{plural(cr.snapshots, 'snapshot')}, {plural(cr.packs, 'pack')} ({level}): {found}")]
        if kind == "prune":
            pr = PruneResult.from_json(result)
            verb = "would remove" if pr.dry_run else "removed"
            return [("pruned", f"{verb} {plural(len(pr.snapshots_removed), 'snapshot')}, "
                               f"{plural(pr.packs_deleted, 'pack')}; {'would free' if pr.dry_run else 'freed'} "
                               f"{human_bytes(max(0, pr.bytes_freed))}")]
    except ProtocolError:
        pass
    return []


async def cmd_stats(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    st = await client.stats(args.project)
    if as_json:
        print_json(asdict(st))
        return EXIT_OK
    if not st.runs:
        print(f"{st.project} has no finished snapshot runs yet.")
        return EXIT_OK
    line = (f"{st.project}: {plural(st.runs, 'finished snapshot run')}: {st.completed:,} completed, "
            f"{st.failed:,} failed, {st.cancelled:,} cancelled")
    if st.success_rate is not None:
        line += f" (success rate {percent(st.success_rate)})"
    print(line)
    if st.mean_seconds is not None and st.p95_seconds is not None:
        durations = f"  duration: mean {precise_duration(st.mean_seconds)}, p95 {precise_duration(st.p95_seconds)}"
        if st.seconds_per_gib is not None:
            durations += f"; {precise_duration(st.seconds_per_gib)} per GiB"
        print(durations)
    return EXIT_OK


# --- the dashboard (docs/api.md, "Dashboard and login") ----------------------------------------------------


async def cmd_open(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    """Log the default browser in to the dashboard with a one-time code (or only print its URL)."""
    if client.endpoint.transport != "unix":
        print("syncsnap: `syncsnap open` asks the daemon for a login code over its Unix socket; run it as the "
              "daemon's user without --url (or SYNCSNAP_URL).", file=sys.stderr)
        return EXIT_USAGE
    login = await client.login_code()
    if as_json:
        print_json(asdict(login))
        return EXIT_OK
    if args.print:
        print(login.url)
        return EXIT_OK
    # A text-mode browser runs in this terminal until it is closed: off the event loop.
    opened = await trio.to_thread.run_sync(webbrowser.open, login.url)
    wait = f"{login.expires_in_seconds} s"
    if opened:
        print(f"Opened the dashboard in your browser (the login link works once, within {wait}).")
    else:
        print(f"No browser could be started here; open this link within {wait} (it works once):\n{login.url}")
    return EXIT_OK


async def cmd_logout(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    """End every browser session of the dashboard."""
    revoked = await client.revoke_sessions()
    if as_json:
        print_json({"revoked": revoked})
    else:
        print(f"Logged out {plural(revoked, 'browser session')}.")
    return EXIT_OK
