"""Getting one file back: ``syncsnap restore PROJECT --version V --path P [--to FILE|DIR] [--overwrite]``
and ``syncsnap cat PROJECT SNAPSHOT PATH``.

Exit codes: 0 done; 1 the daemon refused (no such project, snapshot, path or version; a directory or a
symlink for ``cat``; a target that exists without ``--overwrite``); 2 usage or connection errors.
"""

from __future__ import annotations

import argparse
import os
import sys

from .._client import AsyncClient
from .._errors import DaemonError, NotFound
from ._output import EXIT_FAILED, EXIT_OK, print_json

__all__ = ["cmd_cat", "cmd_restore_version"]


def _say(text: str) -> None:
    """A line on stdout with names as their bytes (a name that is not UTF-8 is printed as it is on disk)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(os.fsencode(text) + b"\n")
    sys.stdout.buffer.flush()


def _refused(exc: DaemonError | NotFound, hint: str = "") -> int:
    print(f"syncsnap: {exc}{hint}", file=sys.stderr)
    return EXIT_FAILED


async def cmd_restore_version(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    """``syncsnap restore PROJECT --version V --path P [--to FILE|DIR] [--overwrite]``."""
    try:
        doc = await client.restore_version(args.project, args.paths[0], args.version, to=args.to,
                                           overwrite=args.overwrite)
    except (DaemonError, NotFound) as exc:
        hint = " Add --overwrite to replace it." if exc.code == "target_exists" and not args.overwrite else ""
        return _refused(exc, hint)
    if as_json:
        print_json(doc)
    else:
        _say(f"Restored {doc['path']} (version {doc['content_id'][:12]} of snapshot {doc['snapshot']['id']}) "
             f"to {doc['restored_to']}")
    return EXIT_OK


async def cmd_cat(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    """``syncsnap cat PROJECT SNAPSHOT PATH``: the file's bytes on stdout, as they arrive."""
    sys.stdout.flush()
    try:
        await client.download_file(args.project, args.snapshot, args.path, sys.stdout.buffer)
    except (DaemonError, NotFound) as exc:
        return _refused(exc)
    return EXIT_OK
