"""Mounting, serving until unmounted, and what is wrong with a mount point.

:func:`serve_mount` mounts the snapshots read-only (``ro``, ``default_permissions``) and serves them on
the current Trio loop until SIGINT (Ctrl-C), SIGTERM or SIGHUP, or until someone runs ``fusermount3 -u
DIR``; either way the mount point is a plain directory again when it returns. Never read the mount from
the thread that serves it: the read would wait for the loop it blocks.

:func:`mountpoint_problem` checks the mount point first: it must be an existing, empty directory. A
mount left behind by a killed process answers ENOTCONN ("Transport endpoint is not connected") to
anything; it is recognised and the sentence says how to clear it (``fusermount3 -u -z DIR``).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import pyfuse3
import trio

from ..store import Store
from ._catalog import Catalog
from ._ops import MountOps

__all__ = ["STALE_HINT", "mountpoint_problem", "serve_mount"]

log = logging.getLogger("syncsnapd.mount")

STALE_HINT = "fusermount3 -u -z {dir}"
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def mountpoint_problem(mountpoint: Path) -> str | None:
    """Why ``mountpoint`` cannot be mounted on (a sentence), or None when it is an empty directory."""
    shown = str(mountpoint)
    try:
        st = os.stat(mountpoint)
        names = os.listdir(mountpoint) if os.path.isdir(mountpoint) else None
    except FileNotFoundError:
        return f"{shown} does not exist: create it first (mkdir {shown})."
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return (f"{shown} is a mount left behind by a process that was killed (\"Transport endpoint is not "
                    f"connected\"); clear it with `{STALE_HINT.format(dir=shown)}`, then mount again.")
        return f"cannot use {shown}: {exc.strerror}."
    if names is None:
        return f"{shown} is not a directory ({'a file' if os.path.isfile(mountpoint) else 'not a directory'})."
    if os.path.ismount(mountpoint) and st.st_dev != os.stat(mountpoint.parent).st_dev and names:
        return f"{shown} is a mount point already (another mount of the snapshots?); unmount it first " \
               f"(fusermount3 -u {shown}) or choose another directory."
    if names:
        return f"{shown} is not empty ({len(names)} entries): mount on an empty directory."
    return None


async def serve_mount(stores: Sequence[Store], mountpoint: Path, out: TextIO, *, project: str | None = None,
                      configured: Sequence[str] = (), fsname: str = "syncsnap",
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Mount the snapshots of ``stores`` (opened read-only) on ``mountpoint`` and serve them until a
    signal or an unmount; ``project``: only that project. Prints where it is mounted to ``out``.

    Raises:
        RuntimeError: the kernel refused the mount (pyfuse3's message).
    """
    catalog = Catalog(stores, project=project, configured=configured)
    await catalog.refresh()
    ops = MountOps(catalog, stores)
    options = set(pyfuse3.default_options) | {"ro", f"fsname={fsname}", "subtype=syncsnap", "noatime"}
    pyfuse3.init(ops, str(mountpoint), options)
    unmounted = False
    try:
        shown = str(mountpoint)
        print(f"Mounted the snapshots read-only at {shown} ({shown}/PROJECT/SNAPSHOT_ID, {shown}/PROJECT/latest, "
              f"{shown}/PROJECT/by-date/).\nUnmount with Ctrl-C here, or `fusermount3 -u {shown}`.", file=out,
              flush=True)
        with trio.open_signal_receiver(*_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("%s: unmounting", signal.Signals(signum).name)
                        ops.stop_reading_ahead()
                        pyfuse3.terminate()
                        return

                nursery.start_soon(stop_on_signal)
                ops.background = nursery  # reads ahead run here, and end with the mount
                task_status.started()
                await pyfuse3.main()
                # main() returns after terminate() or once the kernel ended the session (fusermount3 -u).
                ops.stop_reading_ahead()
                nursery.cancel_scope.cancel()
            pyfuse3.close(unmount=True)
            unmounted = True
    finally:
        if not unmounted:
            pyfuse3.close(unmount=True)
        for cache in ops.caches():
            cache.close()
    print(f"Unmounted {mountpoint}.", file=out, flush=True)
