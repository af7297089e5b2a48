"""Watching a real daemon's watcher: its inotify watch count, snapshots, and a kernel watch limit of its own.

The kernel limits inotify watches per user, for all of that user's processes. To reach the limit without
taking watches from anyone else on this machine, :func:`start_daemon_with_watch_limit` starts the daemon
in a new user namespace (``unshare --user --map-root-user``, root there is root here) whose own
``/proc/sys/user/max_inotify_watches`` is set low: the kernel counts the daemon's watches against that
namespace's limit, and nobody else's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .daemon import DaemonProcess, spawn_daemon, write_config


def inotify_watches(pid: int) -> int:
    """Inotify watches held by process ``pid`` now: one ``inotify wd:`` line per watch in the fdinfo of
    each of its inotify descriptors (the kernel's own count, whoever created them)."""
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                total += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue  # closed meanwhile
    return total


def start_daemon_with_watch_limit(base: Path, projects: dict[str, Path], max_watches: int,
                                  **kw: Any) -> DaemonProcess:
    """:func:`helpers.daemon.start_daemon`, with the kernel's inotify watch limit at ``max_watches`` for
    this daemon alone (a user namespace of its own; see the module docstring)."""
    config = write_config(base, projects, **kw)
    # unshare execs (no fork): the pid stays that of the daemon, which its discovery file names.
    script = f'echo {max_watches} > /proc/sys/user/max_inotify_watches && exec "$@"'
    return spawn_daemon(base, config, launcher=("unshare", "--user", "--map-root-user", "sh", "-c", script, "sh"))


def api(d: DaemonProcess, path: str) -> Any:
    return json.loads(d.curl(f"http://localhost/api/v1{path}").stdout)


def snapshots(d: DaemonProcess, project: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(d, f"/projects/{project}/snapshots")["snapshots"]
    return result


def differences(d: DaemonProcess, project: str, snapshot: str) -> int:
    """Entries added, removed or modified in the live folder since ``snapshot`` (0: it has it all)."""
    summary = api(d, f"/projects/{project}/diff?from={snapshot}&to=live&limit=1")["summary"]
    return int(summary["added"]) + int(summary["removed"]) + int(summary["modified"])




def wait_for_snapshot_of_everything(d: DaemonProcess, project: str, after: int, timeout: float) -> bool:
    """Wait until the project has more than ``after`` snapshots and its newest has every entry of the
    live folder; False if that does not happen within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snaps = snapshots(d, project)
        if len(snaps) > after and api(d, f"/projects/{project}/progress")["state"] != "running" \
                and differences(d, project, snaps[-1]["id"]) == 0:
            return True
        time.sleep(0.1)
    return False
