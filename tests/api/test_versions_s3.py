"""Versions on an encrypted S3 store shared by two machines: the snapshots another machine added are seen
(the listing is refreshed first), and the cache, which holds file names in plain text, is written only in
the daemon's private state directory (0700/0600), never to the bucket.

Real daemons (tests/helpers/daemon.py), curl over their Unix sockets, against ``moto_server`` on loopback
(an S3 **emulator**, tests/helpers/s3.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.daemon import DaemonProcess, api, spawn_daemon
from helpers.s3 import create_bucket, moto_server, s3_env
from helpers.shared_bucket import URL, bucket_objects, start_run, wait_run


def machine(base: Path, host: str, folder: Path, endpoint: str) -> DaemonProcess:
    """A daemon on machine ``host`` with the (encrypted) S3 store ``URL``; listings always refreshed."""
    base.mkdir(parents=True, exist_ok=True)
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{URL}"',
             f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false", f'host = "{host}"',
             'refresh_age = "0s"', "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true",
             "[[projects]]", 'id = "docs"', f'path = "{folder}"']
    cfg = base / "syncsnapd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return spawn_daemon(base, cfg)


def test_versions_on_a_shared_encrypted_bucket(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> None:
    with moto_server() as moto:
        create_bucket(moto.url)
        s3_env(monkeypatch, short_tmp)
        fa, fb = short_tmp / "fa", short_tmp / "fb"
        fa.mkdir()
        fb.mkdir()
        (fa / "notes.txt").write_bytes(b"from alpha")
        a = machine(short_tmp / "a", "alpha", fa, moto.url)
        b = machine(short_tmp / "b", "beta", fb, moto.url)
        try:
            (fb / "notes.txt").write_bytes(b"from beta, longer")
            wait_run(b, start_run(b, "docs"))
            doc = api(b, "/projects/docs/versions?path=notes.txt")
            assert [v["size"] for v in doc["versions"]] == [17]
            wait_run(a, start_run(a, "docs"))  # another machine's snapshot: no event reaches b
            doc = api(b, "/projects/docs/versions?path=notes.txt")
            assert [v["size"] for v in doc["versions"]] == [10, 17] and doc["snapshots"] == 2
            found = api(b, "/projects/docs/find?pattern=*.txt")
            assert [m["path"] for m in found["matches"]] == ["notes.txt"]
        finally:
            for d in (a, b):
                d.stop()
        caches = list((short_tmp / "b" / "state").rglob("versions.json"))
        assert len(caches) == 1
        assert os.stat(caches[0]).st_mode & 0o777 == 0o600
        assert os.stat(caches[0].parent).st_mode & 0o777 == 0o700
        assert b"notes.txt" in caches[0].read_bytes()  # plain text, hence only here
        objects = bucket_objects(moto.url)
        assert any("keys/" in name for name in objects)  # an encrypted store
        assert not [name for name in objects if "cache" in name or "versions" in name]
