"""Shared fixtures: a daemon started for real (subprocess or in-process) on sockets under a short temp dir."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("helpers")

from helpers.daemon import DaemonProcess, start_daemon  # noqa: E402
from helpers.s3 import MotoServer, moto_server, ready_bucket  # noqa: E402

# Fixtures that several test folders use.
pytest_plugins = ["helpers.client"]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths must fit in 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon_factory(short_tmp: Path) -> Iterator[object]:
    started: list[DaemonProcess] = []

    def factory(projects: dict[str, Path], **kw: object) -> DaemonProcess:
        d = start_daemon(short_tmp, projects, **kw)
        started.append(d)
        return d

    yield factory
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """A real moto_server on loopback, one per test module (a module may define its own)."""
    with moto_server() as server:
        yield server


@pytest.fixture
def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """``moto`` emptied, with the test bucket created and the S3 environment of ``helpers.s3.s3_env``."""
    return ready_bucket(moto, monkeypatch, tmp_path)
