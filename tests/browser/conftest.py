"""Fixtures of the dashboard's end-to-end tests: a real daemon on a fixed loopback port (so that a restart
comes back where the page expects it) and a real Chromium."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.browser import chromium as chromium  # noqa: F401  (the fixture)
from helpers.daemon import DaemonProcess, spawn_daemon, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def big_tree(root: Path, files: int, size: int) -> None:
    """Incompressible files, so that a snapshot takes long enough to be watched, paused and cancelled."""
    for i in range(files):
        path = root / f"d{i % 10}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


@pytest.fixture
def dashboard_daemon(short_tmp: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts a daemon with project ``docs`` (a small tree plus ``extra`` files) on a fixed port; restartable
    by calling again with the same base."""
    started: list[DaemonProcess] = []
    port = free_port()

    def start(*, files: int = 0, size: int = 0, sparse_gib: int = 0, extra_daemon: str = "",
              projects: tuple[str, ...] = ("docs",)) -> DaemonProcess:
        folders = {}
        for pid in projects:
            folder = short_tmp / pid
            if not folder.exists():
                folder.mkdir()
                (folder / "notes.txt").write_text(f"notes of {pid}\n")
                (folder / "sub").mkdir()
                (folder / "sub" / "report ü.txt").write_text("the report\n")
                if files:
                    big_tree(folder, files, size)
                for i in range(sparse_gib):
                    # Reading and hashing 1 GiB takes seconds here while the store keeps one chunk of zeros:
                    # a run slow enough to watch, pause and cancel, at no cost in disk.
                    with open(folder / f"sparse{i}.img", "wb") as f:
                        f.truncate(1 << 30)
            folders[pid] = folder
        config = write_config(short_tmp, folders, tcp=f"127.0.0.1:{port}", extra_daemon=extra_daemon)
        d = spawn_daemon(short_tmp, config)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
