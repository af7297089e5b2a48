"""The ``syncsnap`` command: talk to a running syncsnapd.

    syncsnap status                      is the daemon running? what are its projects doing?
    syncsnap projects                    the configured projects
    syncsnap snapshot PROJECT [--follow] start a snapshot (and follow it to its end)
    syncsnap follow [PROJECT] [--run R]  live progress of one project, or of all
    syncsnap snapshots PROJECT           the project's snapshots
    syncsnap notify [--progress]         desktop notifications for every project (see _notify.py)

On a terminal, following shows a live progress bar; elsewhere, or with ``--json``, one JSON object per
event (NDJSON). Exit codes: 0 completed (or success), 1 a followed run failed or was cancelled,
2 usage or connection errors, 130 interrupted (Ctrl-C).
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
from ._errors import RunLost, SyncsnapError
from ._format import human_bytes, human_duration, plural
from ._models import Progress, Project, SnapshotInfo
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
    n = sub.add_parser("notify", parents=[common], help="send desktop notifications for every project")
    n.add_argument("--progress", action="store_true", help="also show progress while a snapshot runs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``syncsnap`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) and not args.project:
        parser.error("follow --run needs the run's PROJECT")
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

                return await run_notifier(client, progress=args.progress)
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


def _view(as_json: bool, status: Any = None) -> View:
    if as_json or not sys.stdout.isatty():
        return JsonView()
    return TerminalView(status)


async def _cmd_snapshot(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
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
    first = started.progress.event_id
    after = max(first - 1, 0) if not busy else first
    return await _follow(client, args.project, started.run, as_json, last_event_id=after, queued=busy)


async def _cmd_follow(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    return await _follow(client, args.project, args.run, as_json)


async def _follow(client: AsyncClient, project: str | None, run: str | None, as_json: bool, *,
                  last_event_id: int | None = None, queued: bool = False) -> int:
    follower = client.follow(project, run, last_event_id=last_event_id)

    def status() -> str:
        if follower.statistics().mode == "poll":
            return "The daemon's progress stream is unavailable: polling every second."
        return ""

    last: Progress | None = None
    with _view(as_json, status) as view:
        if queued and project is not None and isinstance(view, TerminalView):
            view.queued(project, f"Run {run} is queued: it starts when the running snapshot ends.")
        async with follower:
            async for p in follower:
                view.show(p)
                last = p
    if run is None or last is None:
        return EXIT_OK
    if as_json or not sys.stdout.isatty():
        print(final_line(last), file=sys.stderr)
    return EXIT_OK if last.state == "completed" else EXIT_FAILED
