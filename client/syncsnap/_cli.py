"""The ``syncsnap`` command: talk to a running syncsnapd.

    syncsnap status                      is the daemon running? what are its projects doing?
    syncsnap projects                    the configured projects
    syncsnap snapshot PROJECT [--follow] start a snapshot (and follow it to its end)
    syncsnap follow [PROJECT] [--run R]  live progress of one project, or of all
    syncsnap snapshots PROJECT           the project's snapshots
    syncsnap runs PROJECT [--limit N]    the project's runs, newest first
    syncsnap run RUN                     one run, with the time spent in each step
    syncsnap stats PROJECT               success rate and durations of the project's snapshots
    syncsnap cancel PROJECT              cancel the running snapshot (and wait until it ended)
    syncsnap notify [--progress]         desktop notifications for every project (see _notify.py)

On a terminal, following shows a live progress bar; elsewhere, or with ``--json``, one JSON object per
event (NDJSON). ``--transport ws`` follows over the daemon's WebSocket instead of its SSE streams.
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
from ._errors import NotFound, RunLost, SyncsnapError
from ._follow import TRANSPORTS, Follower, Transport
from ._format import human_bytes, human_duration, percent, plural, precise_duration
from ._models import Progress, Project, RunInfo, SnapshotInfo, step_names
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
    c = sub.add_parser("cancel", parents=[common], help="cancel a project's running snapshot")
    c.add_argument("project")
    c.add_argument("--no-wait", action="store_true", help="return once the daemon took the request, without "
                                                          "waiting for the run to end")
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
    if args.command == "follow" and args.run and not args.project:
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


def _view(as_json: bool, status: Any = None) -> View:
    if as_json or not sys.stdout.isatty():
        return JsonView()
    return TerminalView(status)


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
    first = started.progress.event_id
    after = max(first - 1, 0) if not busy else first
    return await _follow(client, args.project, started.run, as_json, last_event_id=after, queued=busy,
                         transport=_transport(args))


async def _cmd_follow(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    return await _follow(client, args.project, args.run, as_json, transport=_transport(args))


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
    try:
        answer = await client.cancel(args.project)
    except NotFound as exc:
        if exc.code != "no_run":
            raise
        print(f"syncsnap: {exc.message} Nothing to cancel.", file=sys.stderr)
        return EXIT_FAILED
    if args.no_wait:
        if as_json:
            _print_json(asdict(answer))
        else:
            print(f"Cancelling run {answer.run} of {args.project}.")
        return EXIT_OK
    last: Progress | None = None
    async with client.follow(args.project, answer.run, transport=_transport(args)) as follower:
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
