"""``syncsnapd mount DIR [--project P]``: the snapshots as a read-only filesystem (docs/mount.md), and
the daemon's answer to ``syncsnap mount`` (``GET /api/v1/mount``: how to run this command with the
daemon's configuration; over the Unix socket only).

The stores are opened read-only, as the other offline commands open them (no lock), so the mount works
beside the running daemon and sees a snapshot once it is complete. Exit codes: 0 unmounted cleanly
(Ctrl-C, SIGTERM, ``fusermount3 -u``), 2 the mount could not be made (the mount point is missing, not
empty, not a directory, or a stale mount; no store; pyfuse3 or FUSE missing: the sentence says what to
install).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import trio

from ..core import DaemonConfig
from ..http import Request, Response, Router, error_response, json_response
from ..store import Store, StoreError, StoreKey

__all__ = ["register_mount_info", "run_mount"]

MISSING_PYFUSE3 = ("the mount needs pyfuse3 and FUSE 3: `sudo apt-get install fuse3 libfuse3-dev pkg-config`, "
                   "then `pip install 'syncsnap[mount]'` (or `make setup` in a checkout)")


def run_mount(mountpoint: Path, stores: Sequence[tuple[Path, str | None, StoreKey | None]], out: TextIO, *,
              project: str | None = None, configured: Sequence[str] = ()) -> int:
    """Mount the snapshots of ``stores`` (local directory, URL, the key that opens it) on ``mountpoint``
    until unmounted."""
    try:
        from ..mount import mountpoint_problem, serve_mount
    except ImportError:
        print(f"syncsnapd: {MISSING_PYFUSE3}.", file=sys.stderr)
        return 2
    problem = mountpoint_problem(mountpoint)
    if problem is None and not os.path.exists("/dev/fuse"):
        problem = "/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3"
    if problem is not None:
        print(f"syncsnapd: {problem}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as opened:
        opened_stores: list[Store] = []
        for root, url, key in stores:
            try:
                opened_stores.append(opened.enter_context(Store.open(root, writable=False, key=key)))
            except StoreError as exc:
                print(f"syncsnapd: cannot open the store {url or root}: {exc}.", file=sys.stderr)
                return 2
        try:
            trio.run(partial(serve_mount, opened_stores, mountpoint.absolute(), out, project=project,
                             configured=configured))
        except RuntimeError as exc:  # the kernel (or fusermount3) refused the mount
            print(f"syncsnapd: cannot mount on {mountpoint}: {exc}.", file=sys.stderr)
            return 2
    return 0


def register_mount_info(router: Router, config: DaemonConfig) -> None:
    """Add ``GET /api/v1/mount``: the command line options that give ``syncsnapd mount`` this daemon's
    stores and key (``config``, ``store``, ``state_dir``). Over the Unix socket only (403 elsewhere): it
    names files of the daemon's user."""

    source = config.source.removesuffix(" and --folder")
    config_file = None if source in ("embedded default", "--folder") else str(Path(source).absolute())

    async def info(request: Request, params: dict[str, str]) -> Response:
        if request.peer.transport != "unix":
            return error_response(403, "forbidden", "GET /api/v1/mount answers over the Unix socket only.")
        body: dict[str, Any] = {
            "config": config_file,
            "store": config.store_url or str(config.store),
            "state_dir": str(config.state_dir),
            "projects": [p.id for p in config.projects],
        }
        return json_response(200, body)

    router.add("GET", "/api/v1/mount", info)
