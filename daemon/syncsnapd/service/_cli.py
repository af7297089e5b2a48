"""The ``syncsnapd`` command: run the daemon, or read the store offline.

    syncsnapd [--config FILE] [--folder PATH ...]     run the daemon (default)
    syncsnapd snapshots [--config FILE] [--project P] list snapshots
    syncsnapd diff SNAPSHOT_ID [SNAPSHOT_ID] [--json]  what changed (second id omitted: the live folder)
    syncsnapd restore SNAPSHOT_ID TARGET_DIR [--path P ...] [--overwrite]
    syncsnapd check [--read-data]                     verify the store (exit 1 on problems)
    syncsnapd prune [--dry-run]                       apply the projects' keep policies, delete unused data

Exit codes: 0 success, 1 problems found (a damaged store or snapshot) / daemon failed / output closed
early (``| head``), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from .. import __version__
from ..core import ConfigError, DaemonConfig, load_config

log = logging.getLogger("syncsnapd")


def _setup_logging(verbose: bool) -> None:
    # Under systemd (JOURNAL_STREAM set) journald adds timestamps; elsewhere we add our own.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML configuration (default: $XDG_CONFIG_HOME/syncsnap/config.toml if present)")
    common.add_argument("--folder", action="append", default=[], metavar="PATH",
                        help="snapshot this folder as a project (repeatable; no config file needed)")
    p = argparse.ArgumentParser(prog="syncsnapd", parents=[common],
                                description="Snapshot daemon for synced folders, with live progress.")
    p.add_argument("--version", action="version", version=f"syncsnapd {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("snapshots", parents=[common], help="list snapshots in the store")
    s.add_argument("--project", help="only this project's snapshots")
    d = sub.add_parser("diff", parents=[common], help="what changed between two snapshots, or since one")
    d.add_argument("snapshot_id")
    d.add_argument("other", nargs="?", metavar="snapshot_id", help="omitted: compare with the live folder")
    d.add_argument("--json", action="store_true", help="one JSON object (as the API's diff endpoint)")
    r = sub.add_parser("restore", parents=[common], help="restore a snapshot into an empty or new directory")
    r.add_argument("snapshot_id")
    r.add_argument("target", type=Path)
    r.add_argument("--path", action="append", default=[], metavar="PATH",
                   help="restore only this file or directory of the snapshot (repeatable)")
    r.add_argument("--overwrite", action="store_true",
                   help="restore into a directory that has files, replacing those the snapshot has")
    c = sub.add_parser("check", parents=[common], help="verify the store; exit 1 if anything is missing or corrupt")
    c.add_argument("--read-data", action="store_true",
                   help="also re-read and re-hash every stored chunk (default: structure and references only)")
    pr = sub.add_parser("prune", parents=[common],
                        help="forget snapshots as the projects' keep policies say, then delete unused data "
                             "(not while the daemon runs)")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be forgotten and deleted")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``syncsnapd`` console script."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, args.folder)
    except ConfigError as exc:
        print(f"syncsnapd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        return _run_daemon(config, lambda: load_config(args.config, args.folder), args.verbose)
    try:
        code = _offline(args, config)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`syncsnapd snapshots | head -1`): end quietly, as `ls | head` does. The
        # recipe of Python's documentation ("Note on SIGPIPE", signal module): point stdout at /dev/null
        # so that the flush at exit cannot fail again, and exit 1. SIGPIPE itself stays ignored: S3
        # stores talk over sockets, where it would kill the process.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return code


def _offline(args: argparse.Namespace, config: DaemonConfig) -> int:
    from ..store import prepare_store
    from . import _offline

    prepare_store(config)  # an S3 store: its local cache directory knows the bucket
    if config.store_url is None and not (config.store / "config.json").exists():
        print(f"syncsnapd: no store at {config.store} (nothing snapshotted yet, or wrong --config)",
              file=sys.stderr)
        return 2
    if args.command == "snapshots":
        return _offline.run_snapshots(config.store, sys.stdout, project=args.project)
    if args.command == "restore":
        return _offline.run_restore(config.store, args.snapshot_id, args.target, sys.stdout, paths=args.path,
                                    overwrite=args.overwrite)
    if args.command == "diff":
        return _offline.run_diff(config.store, args.snapshot_id, args.other, sys.stdout, as_json=args.json,
                                 projects=config.projects, exclude=(config.store, config.state_dir))
    if args.command == "prune":
        return _offline.run_prune(config.store, sys.stdout, policies={p.id: p.keep for p in config.projects},
                                  dry_run=args.dry_run)
    return _offline.run_check(config.store, sys.stdout, read_data=args.read_data)


def _raise_fd_limit() -> None:
    # Every connection is a descriptor; the usual soft limit (1,024) is below what the daemon serves.
    # Raising the soft limit up to the hard one is what systemd recommends (systemd.exec, LimitNOFILE=).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _run_daemon(config: DaemonConfig, load: Callable[[], DaemonConfig], verbose: bool) -> int:
    from ._daemon import run_until_signalled
    from ._listening import StartupError

    _setup_logging(verbose)
    _raise_fd_limit()
    if sys.stderr.isatty():
        print(_hint(config), file=sys.stderr)
    status = 0
    try:
        trio.run(run_until_signalled, config, load)
    except* StartupError as group:
        for exc in group.exceptions:
            log.error("cannot start: %s", exc)
        status = 1
    except* ConfigError as config_group:  # found at start: the state or runtime directory (see _daemon.py)
        for config_exc in config_group.exceptions:
            print(f"syncsnapd: configuration error: {config_exc}", file=sys.stderr)
        status = 2
    return status


def _hint(config: DaemonConfig) -> str:
    projects = ", ".join(f"{p.id} ({p.path})" for p in config.projects) or "none"
    first = config.projects[0].id if config.projects else "PROJECT"
    return (
        f"syncsnapd {__version__}: projects {projects}\n"
        f"  watch progress:   curl -N --unix-socket {config.socket} http://localhost/api/v1/events\n"
        f"  take a snapshot:  curl -X POST --unix-socket {config.socket} "
        f"http://localhost/api/v1/projects/{first}/snapshots\n"
        f"  stop:             Ctrl-C"
    )


if __name__ == "__main__":
    sys.exit(main())
