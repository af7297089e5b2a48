"""The commands that start, follow or cancel runs: snapshot, follow, restore, check, prune, cancel.

Following shows a live display on a terminal and NDJSON elsewhere (``_view.py``); a followed run's end
decides the exit code (0 completed, 1 failed or cancelled).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from typing import Any

from .._client import AsyncClient
from .._errors import DaemonError, NotFound, ProtocolError, RunLost
from .._follow import Follower
from ..models import CheckResult, Progress, PruneResult, RunInfo, RunStarted
from ..protocol import Transport
from ._commands import no_run_named
from ._files import cmd_restore_version
from ._format import plural
from ._output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, print_json, transport_of
from ._view import JsonView, TerminalView, View, final_line


def _view(as_json: bool, status: Any = None, *, one_run: bool = True) -> View:
    if as_json or not sys.stdout.isatty():
        return JsonView()
    # Following everything (or a project): each project's first state is its current one, maybe from before.
    return TerminalView(status, drop_finished_operations=not one_run, mark_past=not one_run)


async def cmd_snapshot(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    if args.follow and transport_of(args) == "ws":
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
            print_json({"run": started.run, "project": args.project, "queued": busy,
                         "progress": started.progress.to_json()})
        elif busy:
            print(f"Queued run {started.run} of {args.project}: it starts when the running snapshot ends.")
        else:
            print(f"Started run {started.run} of {args.project}; follow it with "
                  f"`syncsnap follow {args.project} --run {started.run}`.")
        return EXIT_OK
    # Resume just before the run's first event, so none of its steps is missed (the daemon replays them).
    return await _follow(client, args.project, started.run, as_json, queued=busy,
                         follower=client.follow_run(started, transport=transport_of(args)))


async def cmd_follow(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    if args.run is None:
        return await _follow(client, args.project, None, as_json, transport=transport_of(args))
    # Any kind of run, by its id alone: the daemon's history knows its project and kind, and a finished
    # run's outcome (its live events may be long gone: a restart, newer runs).
    try:
        found = await find_run(client, args.run)
    except NotFound:
        if not args.project:
            raise
        found = None  # not recorded yet (the history's writes wait): follow it as a snapshot run of PROJECT
    if found is not None and args.project and found.project and found.project != args.project:
        print(f"syncsnap: run {args.run} is a {found.kind} run of {found.project}, not of {args.project}.",
              file=sys.stderr)
        return EXIT_USAGE
    if isinstance(found, RunInfo) and found.terminal:
        return await _past_run(client, found, as_json)
    project = found.project if found is not None else args.project
    kind = found.kind if found is not None else "snapshot"
    follower = client.follow(project, args.run, kind=kind, transport=transport_of(args))
    try:
        return await _follow(client, project, args.run, as_json, follower=follower)
    except RunLost:
        # It ended while we could not see it: the history has how.
        info = await client.run(args.run)
        if not info.terminal:
            raise
        return await _past_run(client, info, as_json)


async def find_run(client: AsyncClient, run: str) -> RunInfo | Progress:
    """A run of any kind by its id: from the daemon's history, or (recorded there a moment later while the
    history's writes wait) from its operations. :class:`NotFound` with a sentence if neither knows it."""
    try:
        return await client.run(run)
    except NotFound:
        pass
    try:
        return await client.operation(run)
    except NotFound as exc:
        raise no_run_named(run) from exc


async def _past_run(client: AsyncClient, info: RunInfo, as_json: bool) -> int:
    """A finished run followed by its id: its terminal event from the history, printed as a followed run's
    end is, with the same exit status."""
    try:
        events = await client.run_events(info.run)
    except NotFound:
        events = []
    last = events[-1] if events and events[-1].terminal else None
    tty = sys.stdout.isatty() and not as_json
    if last is None:  # the event log is gone: the run record says how it ended
        what = info.project or "store"
        line = f"{what}: {info.kind} {info.state}" + (f": {info.error.message}" if info.error else "")
    else:
        line = final_line(last)
        if not tty:
            JsonView().show(last)
    ended = f" (ended {info.ended_at})" if info.ended_at else ""
    if tty:
        print(f"{'✔' if info.state == 'completed' else '✘'} {line}{ended}")
    else:
        print(line, file=sys.stderr)
    for detail in _details(last) if last is not None else []:
        print(detail, file=sys.stdout if tty else sys.stderr)
    return EXIT_OK if info.state == "completed" else EXIT_FAILED


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
        follower = client.follow_run(started, transport=transport_of(args))
        return await _follow(client, started.progress.project, started.run, as_json, follower=follower)
    if as_json or not sys.stdout.isatty():
        print_json({"run": started.run, "kind": started.progress.kind, "project": started.progress.project,
                     "progress": started.progress.to_json()})
    else:
        where = f"{started.progress.project} " if started.progress.project else ""
        print(f"Started {what} run {started.run}; follow it with `syncsnap follow {where}--run {started.run}`.")
    return EXIT_OK


async def cmd_restore(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    if getattr(args, "version", None) is not None:  # one version of one file (cli/_files.py)
        return await cmd_restore_version(client, args, as_json)
    try:
        started = await client.start_restore(args.project, args.snapshot, args.target, paths=args.paths,
                                             overwrite=args.overwrite)
    except DaemonError as exc:
        if exc.code != "target_not_empty":
            raise
        # The daemon's sentence names its API's "overwrite"; here the way out is a flag.
        print(f"syncsnap: the target {_absolute(args.target)} is not empty; restore into a new or empty "
              "directory, or add --overwrite to restore over what is there.", file=sys.stderr)
        return EXIT_USAGE
    return await _start_operation(client, args, as_json, started, f"restore of {args.project}")


def _absolute(path: str) -> str:
    """The target as the daemon was sent it (relative to where the command runs)."""
    return os.path.abspath(path)


async def cmd_check(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    started = await client.start_check(read_data=args.read_data)
    return await _start_operation(client, args, as_json, started, "check")


async def cmd_prune(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    started = await client.start_prune(dry_run=args.dry_run)
    return await _start_operation(client, args, as_json, started, "prune (dry run)" if args.dry_run else "prune")


async def cmd_cancel(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    project, kind = args.project, "snapshot"
    try:
        if args.run is not None:
            found = await find_run(client, args.run)
            project, kind = found.project, found.kind
            whose = f"{args.run} of {project}" if project else f"{args.run} ({kind})"
            if found.terminal:
                print(f"syncsnap: run {whose} has already ended ({found.state}); nothing to cancel.", file=sys.stderr)
                return EXIT_FAILED
            if kind == "snapshot":
                print(f"syncsnap: run {args.run} is a snapshot run: `syncsnap cancel {project}` cancels the "
                      "project's running snapshot.", file=sys.stderr)
                return EXIT_USAGE
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
            print_json(asdict(answer))
        else:
            print(f"Cancelling run {answer.run}" + (f" of {project}." if project else "."))
        return EXIT_OK
    last: Progress | None = None
    async with client.follow(project, answer.run, kind=kind, transport=transport_of(args)) as follower:
        async for p in follower:
            last = p
    assert last is not None and last.terminal
    if as_json:
        print_json(last.to_json())
    else:
        print(final_line(last))
    if last.state == "cancelled":
        return EXIT_OK
    if not as_json:
        print(f"syncsnap: run {answer.run} ended {last.state} before the cancel took effect.", file=sys.stderr)
    return EXIT_FAILED
