"""The ``syncsnap`` command: talk to a running syncsnapd.

    syncsnap status                      is the daemon running? what are its projects doing?
    syncsnap projects                    the configured projects
    syncsnap snapshot PROJECT [--follow] start a snapshot (and follow it to its end)
    syncsnap follow [PROJECT] [--run R]  live progress of one project, or of all (or of one run, of any kind)
    syncsnap snapshots [PROJECT] [--host H]  the project's snapshots (every project's), or those H took
    syncsnap runs PROJECT [--limit N]    the project's runs, newest first
    syncsnap run RUN                     one run, with the time spent in each step
    syncsnap stats PROJECT               success rate and durations of the project's snapshots
    syncsnap cancel PROJECT | --run RUN  cancel the running snapshot, or an operation run (and wait for its end)
    syncsnap pause PROJECT               hold its running snapshot, start none until resumed (survives restarts)
    syncsnap resume PROJECT              go on where it stopped; changes seen while paused start one snapshot
    syncsnap diff PROJECT FROM [TO]      what changed between two snapshots, or since one (TO: the live folder)
    syncsnap restore PROJECT SNAPSHOT TARGET [--path P] [--overwrite] [--follow]
    syncsnap restore PROJECT --version V --path P [--to FILE|DIR] [--overwrite]   one version of one file
    syncsnap cat PROJECT SNAPSHOT PATH   a file of a snapshot on stdout
    syncsnap check [--read-data] [--follow]     verify the store
    syncsnap prune [--dry-run] [--follow]       apply retention policies, delete unused data
    syncsnap notify [--progress]         desktop notifications for every project (see cli/_notify.py)
    syncsnap open [--print]              log the browser in to the dashboard (or print the one-time URL)
    syncsnap logout --all                log every browser out of the dashboard
    syncsnap mount DIR [--project P]     the snapshots as a read-only filesystem at DIR (docs/mount.md)
    syncsnap versions PROJECT PATH [--depth N]   every version of a file (or a directory's entries)
    syncsnap find PROJECT PATTERN [--since T]    paths matching a glob or substring, with their versions

Restore, check and prune are runs of the daemon like snapshots: ``--follow`` shows them with the same
live display and exit codes. On a terminal, following shows a live progress bar; elsewhere, or with
``--json``, one JSON object per event (NDJSON). ``--transport ws`` follows over the daemon's WebSocket
instead of its SSE streams.
Exit codes: 0 completed (or success), 1 a followed run failed or was cancelled (or nothing was there to
cancel), 2 usage or connection errors, 130 interrupted (Ctrl-C), 141 the output's reader went away
(``| head``), quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable

import trio

from .. import __version__
from .._client import AsyncClient, open_client
from .._errors import RunLost, SyncsnapError
from ..protocol import TRANSPORTS
from ._commands import (
    cmd_diff,
    cmd_logout,
    cmd_open,
    cmd_projects,
    cmd_run,
    cmd_runs,
    cmd_snapshots,
    cmd_stats,
    cmd_status,
)
from ._files import cmd_cat
from ._mount import cmd_mount
from ._output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_STDOUT_CLOSED, EXIT_USAGE, positive, transport_of
from ._pause import cmd_pause, cmd_resume
from ._runs import cmd_cancel, cmd_check, cmd_follow, cmd_prune, cmd_restore, cmd_snapshot
from ._versions import add_versions_parsers, cmd_find, cmd_versions

Command = Callable[[AsyncClient, argparse.Namespace, bool], Awaitable[int]]
# Every subcommand but ``notify``: (client, parsed arguments, --json) -> exit code.
COMMANDS: dict[str, Command] = {
    "status": cmd_status, "projects": cmd_projects, "snapshot": cmd_snapshot, "follow": cmd_follow,
    "snapshots": cmd_snapshots, "runs": cmd_runs, "run": cmd_run, "stats": cmd_stats, "cancel": cmd_cancel,
    "diff": cmd_diff, "restore": cmd_restore, "check": cmd_check, "prune": cmd_prune,
    "pause": cmd_pause, "resume": cmd_resume,
}
COMMANDS.update({"cat": cmd_cat})  # getting one file back (cli/_files.py)
COMMANDS.update({"open": cmd_open, "logout": cmd_logout})  # the dashboard
COMMANDS.update({"mount": cmd_mount})
COMMANDS.update({"versions": cmd_versions, "find": cmd_find})  # issue 13


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
    f.add_argument("project", nargs="?", help="the project to follow (default: every project)")
    f.add_argument("--run", help="follow only this run (any kind; no PROJECT needed), and stop at its end; a "
                                 "finished run's outcome comes from the daemon's history")
    sn = sub.add_parser("snapshots", parents=[common], help="list a project's snapshots (or every project's)")
    sn.add_argument("project", nargs="?", help="the project (default: every project)")
    sn.add_argument("--host", help="only the snapshots this machine took (a store several machines share)")
    r = sub.add_parser("runs", parents=[common], help="list a project's runs, newest first")
    r.add_argument("project")
    r.add_argument("-n", "--limit", type=positive, default=20, metavar="N", help="at most N runs (default 20)")
    sub.add_parser("run", parents=[common], help="show one run, with the time spent in each step").add_argument("run")
    sub.add_parser("stats", parents=[common], help="success rate and durations of a project's snapshots"
                   ).add_argument("project")
    c = sub.add_parser("cancel", parents=[common], help="cancel a project's running snapshot, or an operation run")
    c.add_argument("project", nargs="?")
    c.add_argument("--run", help="cancel this restore, check or prune run instead")
    c.add_argument("--no-wait", action="store_true", help="return once the daemon took the request, without "
                                                          "waiting for the run to end")
    sub.add_parser("pause", parents=[common], help="pause a project: hold its snapshot, start none"
                   ).add_argument("project")
    sub.add_parser("resume", parents=[common], help="resume a paused project").add_argument("project")
    d = sub.add_parser("diff", parents=[common], help="what changed between two snapshots, or since one")
    d.add_argument("project")
    d.add_argument("snapshot_from", metavar="FROM", help="a snapshot id, or latest")
    d.add_argument("snapshot_to", metavar="TO", nargs="?", help="a snapshot id, or latest (default: the live folder)")
    d.add_argument("-n", "--limit", type=positive, default=None, metavar="N",
                   help="list at most N entries of each kind (the summary counts all)")
    rs = sub.add_parser("restore", parents=[common], help="restore a snapshot, or paths in it, into a directory")
    rs.add_argument("project")
    rs.add_argument("snapshot", nargs="?", help="a snapshot id, or latest")
    rs.add_argument("target", nargs="?", help="the directory to restore into (created if missing; one with "
                                              "files in it only with --overwrite)")
    rs.add_argument("-p", "--path", action="append", dest="paths", default=[], metavar="P",
                    help="restore only this path of the snapshot (repeat for several)")
    rs.add_argument("--overwrite", action="store_true", help="restore over files that are already there")
    rs.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 completed, 1 not)")
    _version_parsers(sub, common, rs)
    ck = sub.add_parser("check", parents=[common], help="verify the store")
    ck.add_argument("--read-data", action="store_true", help="also re-hash every object's content (slower)")
    ck.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 no problem, 1 not)")
    pr = sub.add_parser("prune", parents=[common], help="apply retention policies and delete unused data")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pr.add_argument("-f", "--follow", action="store_true", help="follow it to its end (exit 0 completed, 1 not)")
    n = sub.add_parser("notify", parents=[common], help="send desktop notifications for every project")
    n.add_argument("--progress", action="store_true", help="also show progress while a snapshot runs")
    _dashboard_parsers(sub, common)
    _mount_parser(sub, common)
    add_versions_parsers(sub, common)
    return p


def _mount_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    m = sub.add_parser("mount", parents=[common], help="the snapshots as a read-only filesystem at DIR, until "
                                                      "Ctrl-C or `fusermount3 -u DIR`")
    m.add_argument("dir", metavar="DIR", help="an empty directory")
    m.add_argument("--project", help="only this project's snapshots")


def _version_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser,
                     rs: argparse.ArgumentParser) -> None:
    """Getting one file back (cli/_files.py): restore --version, and cat."""
    rs.add_argument("--version", metavar="V", help="restore one version of one file (--path P): a content id "
                    "(at least 8 hex digits), a snapshot id, or latest; instead of SNAPSHOT TARGET")
    rs.add_argument("--to", metavar="FILE|DIR", help="with --version: where the copy goes (default: next to the "
                    "live file, as 'NAME (syncsnap DATE TIME).EXT')")
    ct = sub.add_parser("cat", parents=[common], help="write a file of a snapshot to stdout")
    ct.add_argument("project")
    ct.add_argument("snapshot", help="a snapshot id, or latest")
    ct.add_argument("path", help="the file's path inside the snapshot")


def _restore_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The two forms of restore: SNAPSHOT TARGET, or --version with one --path."""
    if args.version is not None:
        if args.snapshot is not None or args.target is not None or len(args.paths) != 1 or args.follow:
            parser.error("restore --version V takes one --path P (and optionally --to, --overwrite), "
                         "no SNAPSHOT, TARGET or --follow")
    elif args.snapshot is None or args.target is None:
        parser.error("restore needs SNAPSHOT and TARGET (or --version V --path P for one file)")
    elif args.to is not None:
        parser.error("--to goes with --version (the old form restores into TARGET)")


def _dashboard_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:
    o = sub.add_parser("open", parents=[common], help="open the dashboard in the browser, logged in")
    o.add_argument("--print", action="store_true", help="only print the one-time login URL (valid 60 s, once)")
    lo = sub.add_parser("logout", parents=[common], help="log every browser out of the dashboard")
    lo.add_argument("--all", action="store_true", required=True, help="every session (required)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``syncsnap`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "cancel" and (args.project is None) == (args.run is None):
        parser.error("cancel needs a PROJECT (its running snapshot) or --run RUN (an operation run)")
    if args.command == "restore":
        _restore_usage(parser, args)
    try:
        code = trio.run(_main, args)
        sys.stdout.flush()  # output that fits the buffer meets a closed pipe only here
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _stdout_closed()
    except BaseExceptionGroup as group:
        if group.split(BrokenPipeError)[1] is not None:
            raise
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of our output went away (``syncsnap status | head -1``): stop quietly, as ``cat`` or
    ``ls`` do when SIGPIPE ends them, with the status a shell shows for that (128 + SIGPIPE)."""
    # Python would try to flush stdout again at exit and print an error; point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_STDOUT_CLOSED


async def _main(args: argparse.Namespace) -> int:
    try:
        async with open_client(socket=getattr(args, "socket", None), url=getattr(args, "url", None),
                               token_file=getattr(args, "token_file", None)) as client:
            if args.command == "notify":
                from ._notify import run_notifier  # jeepney: imported by the notifier only

                return await run_notifier(client, progress=args.progress, transport=transport_of(args))
            code: int = await COMMANDS[args.command](client, args, bool(getattr(args, "json", False)))
            return code
    except RunLost as exc:
        print(f"syncsnap: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SyncsnapError as exc:
        print(f"syncsnap: {exc}", file=sys.stderr)
        return EXIT_USAGE
