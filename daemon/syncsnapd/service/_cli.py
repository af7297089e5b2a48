"""The ``syncsnapd`` command: run the daemon, or read the store offline.

    syncsnapd [GLOBAL OPTIONS]                        run the daemon (default)
    syncsnapd snapshots [--project P]                 list snapshots
    syncsnapd diff SNAPSHOT_ID [SNAPSHOT_ID] [--json] [--project P]  what changed (second id omitted: the live folder)
    syncsnapd restore SNAPSHOT_ID TARGET_DIR [--path P ...] [--overwrite] [--project P]
    syncsnapd check [--read-data] [--project P]       verify the store (exit 1 on problems)
    syncsnapd prune [--dry-run] [--project P]         apply the projects' keep policies, delete unused data
    syncsnapd unlock [--remove-all]                   remove stale locks of a shared store (S3, network disk)
    syncsnapd init [--encrypt | --no-encrypt] [--project P]  create the store (encrypted by default on S3 only)
    syncsnapd key list|add|remove ID|passwd|export FILE [--new-password-file FILE] [--project P]
                                                      the key files of an encrypted store
    syncsnapd mount DIR [--project P]                 the snapshots as a read-only filesystem (docs/mount.md)

With projects that have a store of their own (``store = ...`` in ``[[projects]]``), ``--project P`` works
on P's store; without it, ``snapshots``, ``check`` and ``prune`` go through every store in turn,
``restore`` and ``diff`` use the store that holds the snapshot, and ``init`` and ``key`` work on the
daemon's store (``init --project P`` and ``key --project P`` refuse a P without a store of its own).

An encrypted store is opened with its ``key_file`` (a project's own, else [daemon]'s) or the passphrase in
``$SYNCSNAP_PASSWORD_FILE`` or systemd's credential ``syncsnap-password``; on a terminal, without either,
the passphrase is asked for. A project's store is reached with its own ``s3`` table when it has one.

GLOBAL OPTIONS go before or after the command: ``--config FILE``, ``--folder PATH`` (repeatable), and
``--tcp``, ``--socket``, ``--store``, ``--state-dir``, which override those ``[daemon]`` keys. An unknown
option or command is named in a sentence of our own (argparse would call the value of an unknown option
an "invalid choice" of command).

Exit codes: 0 success, 1 problems found (a damaged store or snapshot) / daemon failed / output closed
early (``| head``), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import trio

from .. import __version__
from ..core import ConfigError, DaemonConfig, load_config
from ..engine import tune_allocator

if TYPE_CHECKING:
    from ..store import StoreKey

log = logging.getLogger("syncsnapd")


def _setup_logging(verbose: bool) -> None:
    # Under systemd (JOURNAL_STREAM set) journald adds timestamps; elsewhere we add our own.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


# Options that work before the command and after it (`syncsnapd --config F snapshots` and `syncsnapd
# snapshots --config F`): (flags, metavar or None for a switch, help). The [daemon] keys they override.
_GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], str | None, str], ...] = (
    (("--config",), "FILE", "TOML configuration (default: $XDG_CONFIG_HOME/syncsnap/config.toml if present)"),
    (("--folder",), "PATH", "snapshot this folder as a project (repeatable; no config file needed)"),
    (("--tcp",), "ADDRESS", 'loopback TCP address (daemon.tcp), e.g. 127.0.0.1:8473; "" disables TCP'),
    (("--socket",), "PATH", "the Unix socket (daemon.socket)"),
    (("--store",), "DIR", "the store: a directory or s3://bucket/prefix (daemon.store)"),
    (("--state-dir",), "DIR", "where the history is kept (daemon.state_dir)"),
    (("-v", "--verbose"), None, "debug logging"),
)
_OVERRIDES = ("tcp", "socket", "store", "state_dir")
_COMMANDS = ("snapshots", "diff", "restore", "check", "prune", "unlock", "init", "key", "mount")


class UsageError(Exception):
    """A command line argparse would refuse; the message is the sentence to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _add_globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The command's own copy stores under its own name (argparse lets a subparser's defaults overwrite
    # what the main parser read): main() merges both.
    prefix = "" if top else "sub_"
    group = parser.add_argument_group("global options (before or after the command)")
    for flags, metavar, text in _GLOBAL_OPTIONS:
        dest = prefix + flags[-1].lstrip("-").replace("-", "_")
        if metavar is None:
            group.add_argument(*flags, dest=dest, action="store_true", default=False, help=text)
        elif flags[0] == "--folder":
            group.add_argument(*flags, dest=dest, action="append", default=[], metavar=metavar, help=text)
        else:
            group.add_argument(*flags, dest=dest, metavar=metavar, help=text)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="syncsnapd", allow_abbrev=False,
                description="Snapshot daemon for synced folders, with live progress.")
    p.add_argument("--version", action="version", version=f"syncsnapd {__version__}")
    _add_globals(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=text, description=text, allow_abbrev=False)
        _add_globals(parser, top=False)
        return parser

    s = command("snapshots", "list snapshots in the store")
    s.add_argument("--project", help="only this project's snapshots")
    latest = "SNAPSHOT_ID may be `latest`: the newest snapshot of --project (needed when several projects " \
             "have snapshots)"
    d = command("diff", "what changed between two snapshots, or since one")
    d.add_argument("snapshot_id")
    d.add_argument("other", nargs="?", metavar="snapshot_id", help="omitted: compare with the live folder")
    d.add_argument("--json", action="store_true", help="one JSON object (as the API's diff endpoint)")
    d.add_argument("--project", help=latest)
    r = command("restore", "restore a snapshot into an empty or new directory (or, with --overwrite, over one)")
    r.add_argument("snapshot_id")
    r.add_argument("target", type=Path)
    r.add_argument("--path", action="append", default=[], metavar="PATH",
                   help="restore only this file or directory of the snapshot (repeatable)")
    r.add_argument("--overwrite", action="store_true",
                   help="restore into a directory that has files, replacing those the snapshot has")
    r.add_argument("--project", help=latest)
    c = command("check", "verify the store; exit 1 if anything is missing or corrupt")
    c.add_argument("--read-data", action="store_true",
                   help="also re-read and re-hash every stored chunk (default: structure and references only)")
    own = "only the store of this project (default: every store: the daemon's, then the projects' own)"
    c.add_argument("--project", help=own)
    pr = command("prune", "forget snapshots as the projects' keep policies say, then delete unused data "
                          "(not while the daemon runs; --dry-run only reads and works then too)")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be forgotten and deleted")
    pr.add_argument("--project", help=own)
    u = command("unlock", "remove the stale locks of a store shared by several machines (S3, network filesystem)")
    u.add_argument("--remove-all", action="store_true",
                   help="remove every lock, also live ones (only when no syncsnapd uses the store)")
    i = command("init", "create the configured store (encrypted by default on S3, not encrypted by default locally)")
    enc = i.add_mutually_exclusive_group()
    enc.add_argument("--encrypt", dest="encrypt", action="store_true", default=None,
                     help="encrypt it (asks for a passphrase on a terminal, or reads $SYNCSNAP_PASSWORD_FILE; "
                          "writes the master key to key_file when that is configured)")
    enc.add_argument("--no-encrypt", dest="encrypt", action="store_false", help="do not encrypt it")
    i.add_argument("--project", help="create this project's own store (its store, s3 and key_file) instead of "
                                     "the daemon's")
    k = command("key", "manage the key files of an encrypted store (each opens it with its own passphrase)")
    k.add_argument("action", choices=("list", "add", "remove", "passwd", "export"),
                   help="list; add a key; remove ID; passwd: change the passphrase of the key in use; export "
                        "FILE: write the master key to FILE (for key_file)")
    k.add_argument("arg", nargs="?", metavar="ID|FILE", help="the key to remove (a prefix of its id) or the file")
    k.add_argument("--new-password-file", type=Path, metavar="FILE",
                   help="the new passphrase of add and passwd (default: asked twice on the terminal)")
    k.add_argument("--project", help="the key files of this project's own store (opened with its s3 settings "
                                     "and key_file) instead of the daemon's")
    _add_mount(command)
    return p


def _add_mount(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    m = command("mount", "the snapshots as a read-only filesystem at DIR (an empty directory) until Ctrl-C "
                         "or `fusermount3 -u DIR`")
    m.add_argument("dir", type=Path, metavar="DIR")
    m.add_argument("--project", help="only this project's snapshots (and its store)")


def _known_options(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Option string -> whether it takes a value."""
    return {flag: action.nargs != 0 for action in parser._actions for flag in action.option_strings}


def _check_words(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Name an unknown option or command in a sentence of our own: argparse takes the value of an unknown
    option for the command and says "invalid choice". Returns ``argv`` with the command's own words
    before its options: argparse takes a command's positionals in one run, so ``key remove --project P
    ID`` (or ``diff A --json B``) would otherwise leave the last word over."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known, command, i = _known_options(parser), None, 0
    head: list[str] = []  # up to the command word
    options: list[str] = []  # the command's options, with their values
    words: list[str] = []  # the command's positionals
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            return argv
        taken = [word]
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0] if word.startswith("--") else word
            if name not in known:
                where = f" of `syncsnapd {command}`" if command else ""
                raise UsageError(f"unknown option {name}{where}; `syncsnapd {command + ' ' if command else ''}"
                                 "--help` lists the options")
            if known[name] and "=" not in word:
                taken += argv[i:i + 1]  # its value
                i += 1
            (options if command else head).extend(taken)
        elif command is None:
            if word not in _COMMANDS:
                raise UsageError(f"unknown command {word!r}; the commands are {', '.join(_COMMANDS)} "
                                 "(none: run the daemon)")
            command = word
            head.append(word)
            known = _known_options(subparsers.choices[word])
        else:
            words.append(word)
    return head + words + options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the global options merged from both places (the later wins).

    Raises:
        UsageError: the sentence to print (exit status 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(_check_words(parser, argv))
    args.folder = [*args.folder, *getattr(args, "sub_folder", [])]
    args.verbose = args.verbose or getattr(args, "sub_verbose", False)
    for name in ("config", *_OVERRIDES):
        later = getattr(args, "sub_" + name, None)
        if later is not None:
            setattr(args, name, later)
    if args.config is not None:
        args.config = Path(args.config)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``syncsnapd`` console script."""
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"syncsnapd: {exc}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}

    def load() -> DaemonConfig:
        return load_config(args.config, args.folder, overrides=overrides)

    try:
        config = load()
    except ConfigError as exc:
        print(f"syncsnapd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command is None:
        return _run_daemon(config, load, args.verbose)
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
    from ..store import Store, StoreError, StoreKeyError, passphrase_source, prepare_store, prompt_passphrase
    from . import _offline, _stores

    prepare_store(config)  # an S3 store: its local cache directory knows the bucket
    terminal = sys.stdin.isatty()
    if args.command in ("init", "key") and args.project is not None:  # the daemon's store, or P's own
        own = [p.id for p in config.projects if p.store is not None]
        if args.project not in own:
            print(f"syncsnapd: {args.command} --project: no project {args.project!r} with a store of its own "
                  "(store = ... in its [[projects]] table) in the configuration; without --project, "
                  f"`syncsnapd {args.command}` works on the daemon's store", file=sys.stderr)
            return 2
    if args.command == "init":
        root, url, key_file = _stores.offline_stores(config, args.project)[0]
        try:
            passphrase = passphrase_source()
        except StoreKeyError as exc:
            print(f"syncsnapd: {exc}", file=sys.stderr)
            return 2
        shared = args.project is not None and key_file is not None and key_file == config.key_file
        return _offline.run_init(root, sys.stdout, where=url or str(root), s3=url is not None,
                                 encrypt=args.encrypt, key_file=key_file, passphrase=passphrase,
                                 shared_key_file=shared,
                                 ask=(lambda: prompt_passphrase("New passphrase of the store: ", new=True))
                                 if terminal else None)
    # Every store the command covers (--project P: P's own; `key`: the daemon's or P's), each with the key its
    # configuration gives (a project's key_file, else the daemon's); an S3 one's directory knows the bucket.
    listed = _stores.offline_stores(config, getattr(args, "project", None))
    keys: dict[Path | None, StoreKey | None] = {}
    stores: list[tuple[Path, str | None, StoreKey | None]] = []
    try:
        for root, url, key_file in listed[:1] if args.command == "key" else listed:
            if url is not None or (root / "config.json").exists():
                if key_file not in keys:
                    keys[key_file] = _offline.store_key(key_file)
                stores.append((root, url, keys[key_file]))
    except StoreKeyError as exc:
        print(f"syncsnapd: {exc}", file=sys.stderr)
        return 2
    if not stores:
        print(f"syncsnapd: no store at {config.store} (nothing snapshotted yet, or wrong --config)", file=sys.stderr)
        return 2
    root0, url0, key0 = stores[0]
    if key0 is None and terminal and url0 is not None and not (root0 / "config.json").exists():
        # A first command on this machine: a read-only open fetches the bucket's config.json (and fails
        # there, without a key, if the store is encrypted), so that the question below can be asked.
        with contextlib.suppress(StoreError):
            Store.open(root0, writable=False).close()
    if terminal and any(key is None and _offline.is_encrypted(root) for root, _, key in stores):
        try:
            asked = prompt_passphrase()  # one passphrase for every store that has no key_file
        except StoreKeyError as exc:
            print(f"syncsnapd: {exc}", file=sys.stderr)
            return 2
        stores = [(root, url, asked if key is None else key) for root, url, key in stores]
    if args.command == "key":  # the daemon's store, or --project P's own
        return _key_command(args, stores[0])
    if args.command == "mount":  # every store the command covers, read-only
        from ._mount import run_mount

        return run_mount(args.dir, stores, sys.stdout, project=args.project,
                         configured=[p.id for p in config.projects])
    if args.command in ("restore", "diff"):
        stores = [_stores.holding(stores, args.snapshot_id)]
    exclude = (*_stores.store_dirs(config), config.state_dir)
    if len(stores) == 1:
        root, url, key = stores[0]
        return _offline_one(args, replace(config, store=root, store_url=url), exclude, key)
    code = 0
    for root, url, key in stores:  # snapshots, check, prune, unlock: each store in turn
        print(f"Store {url or root}:", flush=True)
        code = max(code, _offline_one(args, replace(config, store=root, store_url=url), exclude, key))
    return code


def _offline_one(args: argparse.Namespace, config: DaemonConfig, exclude: tuple[Path, ...],
                 key: StoreKey | None) -> int:
    from . import _offline

    if args.command == "snapshots":
        return _offline.run_snapshots(config.store, sys.stdout, project=args.project, key=key)
    if args.command == "restore":
        return _offline.run_restore(config.store, args.snapshot_id, args.target, sys.stdout, paths=args.path,
                                    overwrite=args.overwrite, latest_of=args.project,
                                    configured=[p.id for p in config.projects], key=key)
    if args.command == "diff":
        return _offline.run_diff(config.store, args.snapshot_id, args.other, sys.stdout, as_json=args.json,
                                 projects=config.projects, exclude=exclude,
                                 latest_of=args.project, key=key)
    if args.command == "prune":
        return _offline.run_prune(config.store, sys.stdout, policies={p.id: p.keep for p in config.projects},
                                  dry_run=args.dry_run, remote=config.store_url, key=key)
    if args.command == "unlock":
        from ._unlock import run_unlock

        return run_unlock(config.store, sys.stdout, remove_all=args.remove_all, key=key)
    return _offline.run_check(config.store, sys.stdout, read_data=args.read_data, key=key)


def _key_command(args: argparse.Namespace, store: tuple[Path, str | None, StoreKey | None]) -> int:
    from ..store import Passphrase, StoreKeyError, prompt_passphrase
    from . import _offline

    if args.action in ("remove", "export") and not args.arg:
        print(f"syncsnapd: `syncsnapd key {args.action}` needs {'the id of the key' if args.action == 'remove' else 'a file'}",
              file=sys.stderr)
        return 2
    if args.action not in ("remove", "export") and args.arg:
        print(f"syncsnapd: `syncsnapd key {args.action}` takes no {args.arg!r}", file=sys.stderr)
        return 2
    new_file: Path | None = args.new_password_file

    def new_passphrase() -> Passphrase:
        if new_file is not None:
            try:
                data = new_file.read_bytes().removesuffix(b"\n")
            except OSError as exc:
                raise StoreKeyError(f"--new-password-file: cannot read {new_file}: {exc.strerror}") from None
            if not data:
                raise StoreKeyError(f"--new-password-file: {new_file} is empty")
            return Passphrase(data, f"the passphrase in {new_file}")
        return prompt_passphrase("New passphrase: ", new=True)

    interactive = new_file is not None or sys.stdin.isatty()
    root, url, key = store
    owner = "[daemon]" if args.project is None else f"the [[projects]] table of {args.project!r}"
    return _offline.run_key(root, sys.stdout, args.action, args.arg, key=key, where=url or str(root),
                            key_file_in=owner, new_passphrase=new_passphrase if interactive else None)


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
    tune_allocator()  # one malloc arena, before any thread starts (engine/_malloc.py)
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
    warn = "" if config.projects else "  warning:          no projects configured: add [[projects]] or use --folder\n"
    cli = _client_command()
    return (
        f"syncsnapd {__version__}: projects {projects}\n{warn}"
        f"  status:           {cli} status\n"
        f"  watch progress:   {cli} follow\n"
        f"  take a snapshot:  {cli} snapshot {first}\n"
        f"  dashboard:        {cli} open\n"
        f"  or with curl:     curl -N --unix-socket {config.socket} http://localhost/api/v1/events\n"
        f"  stop:             Ctrl-C"
    )


def _client_command() -> str:
    """``syncsnap`` as the user can type it: the bare name when it is on PATH, else the console script
    installed beside this Python (``make run`` runs the daemon from .venv/bin, which is not on PATH)."""
    beside = Path(sys.executable).parent / "syncsnap"
    found = shutil.which("syncsnap")
    if found or not beside.exists():
        return "syncsnap"
    relative = os.path.relpath(beside)
    return relative if not relative.startswith("..") else str(beside)


if __name__ == "__main__":
    sys.exit(main())
