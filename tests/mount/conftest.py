"""Fixtures of the mount tests: real FUSE mounts (helpers/mount.py), unmounted after each test.

Skipped, saying why, only where FUSE cannot run at all (no /dev/fuse, no fusermount3, no pyfuse3).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.daemon import make_env
from helpers.mount import Mount, fuse_missing, is_mounted, start_mount

_MISSING = fuse_missing()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _MISSING is None:
        return
    for item in items:
        if "tests/mount/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=f"no FUSE here: {_MISSING}"))


@pytest.fixture
def mounts(short_tmp: Path) -> Iterator[list[Mount]]:
    """Mounts started by a test; each is unmounted (SIGINT, then lazily) before the temp dir goes."""
    started: list[Mount] = []
    yield started
    for m in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.stop(signal.SIGINT, timeout=20)
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()
        if is_mounted(m.dir):
            subprocess.run(["fusermount3", "-u", "-z", str(m.dir)], capture_output=True)


@pytest.fixture
def mount_offline(short_tmp: Path, mounts: list[Mount]) -> object:
    """``mount_offline(config, dir, *args)``: ``syncsnapd --config CONFIG mount DIR ARGS``, mounted."""

    def start(config: Path, mountpoint: Path, *args: str, env: dict[str, str] | None = None) -> Mount:
        mountpoint.mkdir(exist_ok=True)
        m = start_mount([sys.executable, "-m", "syncsnapd", "--config", str(config), "mount", str(mountpoint),
                         *args], mountpoint, short_tmp / f"mount-{len(mounts)}.log",
                        env=env or make_env(short_tmp))
        mounts.append(m)
        return m

    return start
