"""``syncsnap mount DIR [--project P]``: the snapshots as a read-only filesystem (docs/mount.md).

The client does not read the store itself (it never imports the daemon's code): it asks the running
daemon, over its Unix socket, which configuration and store it uses (``GET /api/v1/mount``), then runs
``python -m syncsnapd [--config FILE] --store S --state-dir D mount DIR [--project P]`` as a child with this
terminal (a passphrase may be asked there), forwards SIGINT, SIGTERM and SIGHUP to it, and exits with its
status: 0 once unmounted (Ctrl-C, ``fusermount3 -u DIR``), 2 when the mount could not be made (the child
says why: a missing, non-empty or stale mount point, with how to clear a stale one).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trio

from .._client import AsyncClient
from .._errors import SyncsnapError
from ._output import EXIT_USAGE

__all__ = ["cmd_mount", "mount_command"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def mount_command(info: dict[str, object], mountpoint: str, project: str | None) -> list[str]:
    """The ``syncsnapd mount`` command line for the daemon's answer ``info`` (GET /api/v1/mount)."""
    cmd = [sys.executable, "-m", "syncsnapd"]
    if isinstance(info.get("config"), str):
        cmd += ["--config", str(info["config"])]
    cmd += ["--store", str(info["store"])]
    if isinstance(info.get("state_dir"), str):
        cmd += ["--state-dir", str(info["state_dir"])]
    cmd += ["mount", os.path.abspath(mountpoint)]
    if project is not None:
        cmd += ["--project", project]
    return cmd


async def cmd_mount(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    try:
        info = await client.mount_info()
    except SyncsnapError as exc:
        if exc.status == 403 and exc.code == "forbidden":
            print("syncsnap: mount works over the daemon's Unix socket only (on the daemon's machine, as its "
                  "user); drop --url.", file=sys.stderr)
            return EXIT_USAGE
        raise
    await client.aclose()  # nothing more to ask: the child reads the store itself
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        process = await trio.lowlevel.open_process(mount_command(info, args.dir, args.project),
                                                   stdin=None, stdout=None, stderr=None)
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                # Ctrl-C on a terminal reaches the child too (one process group); it unmounts once either way.
                async for signum in signals:
                    if process.returncode is None:
                        process.send_signal(signum)

            nursery.start_soon(forward)
            code = await process.wait()
            nursery.cancel_scope.cancel()
    return code if code >= 0 else 128 - code
