"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.s3 import MotoServer, ThrottlingProxy, fail_fast, ready_bucket


@pytest.fixture
def proxy(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ThrottlingProxy]:
    """The module's ``moto_server``, emptied, with the test bucket, behind a :class:`ThrottlingProxy`
    (which logs requests and can throttle, slow or refuse them); S3 requests give up quickly."""
    ready_bucket(moto, monkeypatch, tmp_path)
    fail_fast(monkeypatch)
    p = ThrottlingProxy(moto.port)
    yield p
    p.close()
