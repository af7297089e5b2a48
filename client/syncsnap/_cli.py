"""The ``syncsnap`` command: talk to a running syncsnapd.

    syncsnap status                      is the daemon running? what are its projects doing?
    syncsnap projects                    the configured projects
    syncsnap snapshot PROJECT [--follow] start a snapshot (and follow it to its end)
    syncsnap follow [PROJECT] [--run R]  live progress of one project, or of all
    syncsnap snapshots PROJECT           the project's snapshots
    syncsnap runs PROJECT [--limit N]    the project's runs, newest first
    syncsnap run RUN                     one run, with the time spent in each step
    syncsnap stats PROJECT               success rate and durations of the project's snapshots
    syncsnap cancel PROJECT | --run RUN  cancel the running snapshot, or an operation run (and wait for its end)
    syncsnap diff PROJECT FROM [TO]      what changed between two snapshots, or since one (TO: the live folder)
    syncsnap restore PROJECT SNAPSHOT TARGET [--path P] [--overwrite] [--follow]
    syncsnap check [--read-data] [--follow]     verify the store
    syncsnap prune [--dry-run] [--follow]       apply retention policies, delete unused data
    syncsnap notify [--progress]         desktop notifications for every project (see _notify.py)

Restore, check and prune are runs of the daemon like snapshots: ``--follow`` shows them with the same
live display and exit codes. On a terminal, following shows a live progress bar; elsewhere, or with
``--json``, one JSON object per event (NDJSON). ``--transport ws`` follows over the daemon's WebSocket
instead of its SSE streams.
Exit codes: 0 completed (or success), 1 a followed run failed or was cancelled (or nothing was there to
cancel), 2 usage or connection errors, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import trio

from . import __version__
from ._client import AsyncClient, open_client
from ._errors import DaemonError, NotFound, ProtocolError, RunLost, SyncsnapError
from ._follow import TRANSPORTS, Follower, Transport
from ._format import human_bytes, human_duration, percent, plural, precise_duration
from ._models import (
    CheckResult,
    DiffChange,
    Progress,
    Project,
    PruneResult,
    RestoreResult,
    RunInfo,
    RunStarted,
    SnapshotInfo,
    step_names,
)
from ._view import JsonView, TerminalView, View, final_line

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="the daemon's Unix socket (default: SYNCSNAP_SOCKET, the discovery file)")
    common.add_argument("--url", metavar="URL", default=argparse.SUPPRESS,
                        help="talk TCP instead, e.g. http://127.0.0.1:8473 (default: SYNCSNAP_URL)")
    common.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS,
                        help="bearer token for --url (default: SYNCSNAP_TOKEN_FILE, the daemon's token file)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output: JSON, or NDJSON when following")
    common.add_argument("--transport", choices=TRANSPORTS, default=argparse.SUPPRESS,
                        help="how to follow progress: the daemon's SSE streams (default) or its WebSocket")
    p = argparse.ArgumentParser(prog="syncsnap", parents=[common],
                                description="Talk to syncsnapd: start snapshots and follow their progress.")
    p.add_argument("--version", action="version", version=f"syncsnap {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", parents=[common], help="whether the daemon runs, and what its projects do")
    sub.add_parser("projects", parents=[common], help="list the configured projects")
    s = sub.add_parser("snapshot", parents=[common], help="start a snapshot of a project")
    s.add_argument("project")
    s.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 completed, 1 not)")
    f = sub.add_parser("follow", parents=[common], help="follow live progress (of every project by default)")
    f.add_argument("project", nargs="?")
    f.add_argument("--run", help="follow only this run, and stop at its end (needs PROJECT)")
    sub.add_parser("snapshots", parents=[common], help="list a project's snapshots").add_argument("project")
    r = sub.add_parser("runs", parents=[common], help="list a project's runs, newest first")
    r.add_argument("project")
    r.add_argument("-n", "--limit", type=_limit, default=20, metavar="N", help="at most N runs (default 20)")
    sub.add_parser("run", parents=[common], help="show one run, with the time spent in each step").add_argument("run")
    sub.add_parser("stats", parents=[common], help="success rate and durations of a project's snapshots"
                   ).add_argument("project")
    c = sub.add_parser("cancel", parents=[common], help="cancel a project's running snapshot, or an operation run")
    c.add_argument("project", nargs="?")
    c.add_argument("--run", help="cancel this restore, check or prune run instead")
    c.add_argument("--no-wait", action="store_true", help="return once the daemon took the request, without "
                                                          "waiting for the run to end")
    d = sub.add_parser("diff", parents=[common], help="what changed between two snapshots, or since one")
    d.add_argument("project")
    d.add_argument("snapshot_from", metavar="FROM", help="a snapshot id, or latest")
    d.add_argument("snapshot_to", metavar="TO", nargs="?", help="a snapshot id, or latest (default: the live folder)")
    d.add_argument("-n", "--limit", type=_limit, default=None, metavar="N",
                   help="list at most N entries of each kind (the summary counts all)")
    rs = sub.add_parser("restore", parents=[common], help="restore a snapshot, or paths in it, into a directory")
    rs.add_argument("project")
    rs.add_argument("snapshot", help="a snapshot id, or latest")
    rs.add_argument("target", help="the directory to restore into (created if missing)")
    rs.add_argument("-p", "--path", action="append", dest="paths", default=[], metavar="P",
                    help="restore only this path of the snapshot (repeat for several)")
    rs.add_argument("--overwrite", action="store_true", help="restore over files that are already there")
    rs.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 completed, 1 not)")
    ck = sub.add_parser("check", parents=[common], help="verify the store")
    ck.add_argument("--read-data", action="store_true", help="also re-hash every object's content (slower)")
    ck.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 no problem, 1 not)")
    pr = sub.add_parser("prune", parents=[common], help="apply retention policies and delete unused data")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pr.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 completed, 1 not)")
    n = sub.add_parser("notify", parents=[common], help="send desktop notifications for every project")
    n.add_argument("--progress", action="store_true", help="also show progress while a snapshot runs")
    return p


def _limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 up (got {text!r})")
    return n


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``syncsnap`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "cancel" and (args.project is None) == (args.run is None):
        parser.error("cancel needs a PROJECT (its running snapshot) or --run RUN (an operation run)")
    try:
        return trio.run(_main, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _main(args: argparse.Namespace) -> int:
    try:
        async with open_client(socket=getattr(args, "socket", None), url=getattr(args, "url", None),
                               token_file=getattr(args, "token_file", None)) as client:
            if args.command == "notify":
                from ._notify import run_notifier

                return await run_notifier(client, progress=args.progress, transport=_transport(args))
            command = globals()[f"_cmd_{args.command}"]
            code: int = await command(client, args, bool(getattr(args, "json", False)))
            return code
    except RunLost as exc:
        print(f"syncsnap: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SyncsnapError as exc:
        print(f"syncsnap: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _print_json(obj: Any) -> None:
    JsonView().emit(obj)


def _project_json(p: Project) -> dict[str, Any]:
    d = asdict(p)
    d["progress"] = p.progress.to_json()
    return d


# --- commands --------------------------------------------------------------------------------------


async def _cmd_status(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    health = await client.health()
    projects = await client.projects()
    if as_json:
        _print_json({"health": asdict(health), "endpoint": client.endpoint.describe(),
                     "projects": [_project_json(p) for p in projects]})
        return EXIT_OK
    print(f"syncsnapd {health.version} is running (pid {health.pid}, up {human_duration(health.uptime_seconds)}) "
          f"on {client.endpoint.describe()} with {plural(health.projects, 'project')}.")
    for p in projects:
        print(f"  {p.id}: {_state_line(p.progress)}")
    return EXIT_OK


def _state_line(p: Progress) -> str:
    if p.state == "idle":
        return "idle"
    if p.terminal:
        return f"{p.state}: {p.message}"
    return f"step {p.step}/{p.steps} {p.step_name}, {p.percent:.1f}%: {p.message}"


async def _cmd_projects(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    projects = await client.projects()
    if as_json:
        _print_json({"projects": [_project_json(p) for p in projects]})
        return EXIT_OK
    rows = [("PROJECT", "STATE", "LAST SNAPSHOT", "PATH")]
    for p in projects:
        last = p.last_snapshot
        rows.append((p.id, p.state, f"{last.time} ({plural(last.files, 'file')})" if last else "never", p.path))
    _table(rows)
    return EXIT_OK


async def _cmd_snapshots(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    snaps: list[SnapshotInfo] = await client.snapshots(args.project)
    if as_json:
        _print_json({"snapshots": [asdict(s) for s in snaps]})
        return EXIT_OK
    if not snaps:
        print(f"{args.project} has no snapshots yet; take one with `syncsnap snapshot {args.project}`.")
        return EXIT_OK
    rows = [("SNAPSHOT", "TIME", "FILES", "SIZE", "ADDED", "DURATION", "WARNINGS")]
    for s in snaps:
        rows.append((s.id, s.time, f"{s.files:,}", human_bytes(s.bytes), human_bytes(s.bytes_added),
                     f"{s.duration_seconds:.1f} s", str(s.warnings)))
    _table(rows)
    return EXIT_OK


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _view(as_json: bool, status: Any = None, *, one_run: bool = True) -> View:
    if as_json or not sys.stdout.isatty():
        return JsonView()
    return TerminalView(status, drop_finished_operations=not one_run)


def _transport(args: argparse.Namespace) -> Transport:
    t: Transport = getattr(args, "transport", "sse")
    return t


async def _cmd_snapshot(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    if args.follow and _transport(args) == "ws":
        # Subscribed first, then started over the same WebSocket: every event of the run is seen.
        follower = client.follow(args.project, transport="ws")
        async with follower:
            started = await follower.start_snapshot()
            return await _follow(client, args.project, started.run, as_json, follower=follower,
                                 queued=started.progress.run != started.run)
    started = await client.start_snapshot(args.project)
    busy = started.progress.run != started.run
    if not args.follow:
        if as_json or not sys.stdout.isatty():
            _print_json({"run": started.run, "project": args.project, "queued": busy,
                         "progress": started.progress.to_json()})
        elif busy:
            print(f"Queued run {started.run} of {args.project}: it starts when the running snapshot ends.")
        else:
            print(f"Started run {started.run} of {args.project}; follow it with "
                  f"`syncsnap follow {args.project} --run {started.run}`.")
        return EXIT_OK
    # Resume just before the run's first event, so none of its steps is missed (the daemon replays them).
    return await _follow(client, args.project, started.run, as_json, queued=busy,
                         follower=client.follow_run(started, transport=_transport(args)))


async def _cmd_follow(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    if args.run is None:
        return await _follow(client, args.project, None, as_json, transport=_transport(args))
    # A restore, check or prune run is followed by its kind (and has its project, if any, with it).
    try:
        op = await client.operation(args.run)
    except NotFound:
        if not args.project:
            print("syncsnap: follow --run needs the run's PROJECT (for a snapshot run).", file=sys.stderr)
            return EXIT_USAGE
        return await _follow(client, args.project, args.run, as_json, transport=_transport(args))
    follower = client.follow(op.project, args.run, kind=op.kind, transport=_transport(args))
    return await _follow(client, op.project, args.run, as_json, follower=follower)


async def _follow(client: AsyncClient, project: str | None, run: str | None, as_json: bool, *,
                  last_event_id: int | None = None, queued: bool = False, transport: Transport = "sse",
                  follower: Follower | None = None) -> int:
    if follower is None:
        follower = client.follow(project, run, last_event_id=last_event_id, transport=transport)

    def status() -> str:
        if follower.statistics().mode == "poll":
            return "The daemon's progress stream is unavailable: polling every second."
        return ""

    last: Progress | None = None
    with _view(as_json, status, one_run=run is not None) as view:
        if queued and project is not None and isinstance(view, TerminalView):
            view.queued(project, f"Run {run} is queued: it starts when the running snapshot ends.")
        async with follower:
            async for p in follower:
                view.show(p)
                last = p
    if run is None or last is None:
        return EXIT_OK
    out = sys.stdout if sys.stdout.isatty() and not as_json else sys.stderr
    if out is sys.stderr:
        print(final_line(last), file=out)
    for line in _details(last):
        print(line, file=out)
    return EXIT_OK if last.state == "completed" else EXIT_FAILED


def _details(p: Progress) -> list[str]:
    """What an operation's end says beyond its final line: the problems a check found, what a prune removed."""
    if p.result is None:
        return []
    try:
        if p.kind == "check":
            return _check_details(CheckResult.from_json(p.result))
        if p.kind == "prune":
            return _prune_details(PruneResult.from_json(p.result))
    except ProtocolError:
        return []  # the final line said the essential
    return []


def _check_details(r: CheckResult) -> list[str]:
    lines = [f"  {plural(len(r.problems), 'problem')}:"] if r.problems else []
    for problem in r.problems:
        where = f" in pack {_short(problem.pack)}" if problem.pack else ""
        detail = f" ({problem.detail})" if problem.detail else ""
        lines.append(f"    {problem.kind} {problem.object} {_short(problem.id)}{where}{detail}")
    if r.damaged:
        lines.append(f"  {plural(len(r.damaged), 'snapshot')} cannot be fully restored:")
    for d in r.damaged:
        what = "part of its file list is lost" if d.listing else f"{plural(d.files, 'file')} damaged"
        shown = f": {', '.join(d.paths)}" + (", ..." if d.files > len(d.paths) else "") if d.paths else ""
        lines.append(f"    {d.snapshot}: {what}{shown}")
    return lines


def _short(object_id: str) -> str:
    """A hash shortened for people, as git does (``--json`` has it whole); other ids as they are."""
    if len(object_id) == 64 and all(c in "0123456789abcdef" for c in object_id):
        return object_id[:12]
    return object_id


def _prune_details(r: PruneResult) -> list[str]:
    lines = []
    for project, (kept, removed) in sorted(r.projects.items()):
        lines.append(f"  {project}: {plural(kept, 'snapshot')} kept, {removed:,} {'to remove' if r.dry_run else 'removed'}")
    for sid in r.snapshots_removed:
        lines.append(f"    {'would remove' if r.dry_run else 'removed'} {sid}")
    return lines


async def _start_operation(client: AsyncClient, args: argparse.Namespace, as_json: bool, started: RunStarted,
                           what: str) -> int:
    """After a restore, check or prune was started: say so, or follow it to its end."""
    if args.follow:
        follower = client.follow_run(started, transport=_transport(args))
        return await _follow(client, started.progress.project, started.run, as_json, follower=follower)
    if as_json or not sys.stdout.isatty():
        _print_json({"run": started.run, "kind": started.progress.kind, "project": started.progress.project,
                     "progress": started.progress.to_json()})
    else:
        where = f"{started.progress.project} " if started.progress.project else ""
        print(f"Started {what} run {started.run}; follow it with `syncsnap follow {where}--run {started.run}`.")
    return EXIT_OK


async def _cmd_restore(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    started = await client.start_restore(args.project, args.snapshot, args.target, paths=args.paths,
                                         overwrite=args.overwrite)
    return await _start_operation(client, args, as_json, started, f"restore of {args.project}")


async def _cmd_check(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    started = await client.start_check(read_data=args.read_data)
    return await _start_operation(client, args, as_json, started, "check")


async def _cmd_prune(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    started = await client.start_prune(dry_run=args.dry_run)
    return await _start_operation(client, args, as_json, started, "prune (dry run)" if args.dry_run else "prune")


async def _cmd_diff(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    diff = await client.diff(args.project, args.snapshot_from, args.snapshot_to, limit=args.limit)
    if as_json:
        _print_json(diff.raw)
        return EXIT_OK
    rows: list[tuple[str, str, str]] = []
    rows += [(e.path, "+", _side(e.kind, e.size)) for e in diff.added]
    rows += [(e.path, "-", _side(e.kind, e.size)) for e in diff.removed]
    rows += [(c.path, _change_mark(c), _change(c)) for c in diff.modified]
    for path, mark, detail in sorted(rows):
        print(f"{mark} {path}" + (f"  ({detail})" if detail else ""))
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


# --- history ---------------------------------------------------------------------------------------


def _outcome(r: RunInfo) -> str:
    """What a run produced, in a few words, for the runs table."""
    if r.snapshot is not None:
        return f"{r.snapshot.id} ({plural(r.snapshot.files, 'file')}, {human_bytes(r.snapshot.bytes_added)} added)"
    if r.error is not None:
        return f"{r.error.code}: {r.error.message}"
    return ""


async def _cmd_runs(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    runs: list[RunInfo] = []
    before: str | None = None
    while len(runs) < args.limit:  # the daemon answers at most 500 a page
        page = await client.runs(args.project, limit=min(500, args.limit - len(runs)), before=before)
        runs += page.runs
        if page.next is None:
            break
        before = page.next
    if as_json:
        _print_json({"runs": [r.to_json() for r in runs]})
        return EXIT_OK
    if not runs:
        print(f"{args.project} has no runs yet; start one with `syncsnap snapshot {args.project}`.")
        return EXIT_OK
    rows = [("RUN", "KIND", "TRIGGER", "STATE", "STARTED", "DURATION", "OUTCOME")]
    for r in runs:
        trigger = (r.trigger or "-") + (f" #{r.attempt}" if r.attempt > 1 else "")
        rows.append((r.run, r.kind, trigger, r.state, r.started_at or "-",
                     "-" if r.duration_seconds is None else precise_duration(r.duration_seconds), _outcome(r)))
    _table(rows)
    return EXIT_OK


async def _cmd_run(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    r = await client.run(args.run)
    if as_json:
        _print_json(r.to_json())
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


async def _cmd_stats(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    st = await client.stats(args.project)
    if as_json:
        _print_json(asdict(st))
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


async def _cmd_cancel(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    project, kind = args.project, "snapshot"
    try:
        if args.run is not None:
            op = await client.operation(args.run)
            project, kind = op.project, op.kind
            answer = await client.cancel_operation(args.run)
        else:
            answer = await client.cancel(args.project)
    except NotFound as exc:
        if exc.code != "no_run":
            raise
        print(f"syncsnap: {exc.message} Nothing to cancel.", file=sys.stderr)
        return EXIT_FAILED
    except DaemonError as exc:
        if exc.code != "finished":
            raise
        print(f"syncsnap: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    if args.no_wait:
        if as_json:
            _print_json(asdict(answer))
        else:
            print(f"Cancelling run {answer.run}" + (f" of {project}." if project else "."))
        return EXIT_OK
    last: Progress | None = None
    async with client.follow(project, answer.run, kind=kind, transport=_transport(args)) as follower:
        async for p in follower:
            last = p
    assert last is not None and last.terminal
    if as_json:
        _print_json(last.to_json())
    else:
        print(final_line(last))
    if last.state == "cancelled":
        return EXIT_OK
    if not as_json:
        print(f"syncsnap: run {answer.run} ended {last.state} before the cancel took effect.", file=sys.stderr)
    return EXIT_FAILED
