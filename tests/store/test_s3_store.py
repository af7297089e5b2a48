"""Snapshots into an S3-compatible store: upload, dedup, resume after a kill, restore, failures.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), one per module, reset
before each test. Requests go through :class:`ThrottlingProxy`, which forwards them untouched and keeps a
log of them (to count uploads); it stands in for S3's throttling (503 SlowDown), a slow link, and a
server that is down (it stops listening: connections are refused). A server that is down is simulated at
the proxy because moto keeps its state in memory: restarting it would also lose the bucket, which a real
service does not (the backend tests stop and restart moto itself).
"""

from __future__ import annotations

import contextlib
import filecmp
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest

from helpers.daemon import DaemonProcess, make_env, make_tree
from helpers.s3 import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    MotoServer,
    ThrottlingProxy,
)
from helpers.store import new_progress, snapshot
from syncsnapd.api import store_footprint
from syncsnapd.engine import SnapshotError
from syncsnapd.service import run_check, run_restore, run_snapshots
from syncsnapd.store import RemoteSpec, Store, prepare

URL = f"s3://{BUCKET}/machines/one"


def bucket_keys(moto: MotoServer, prefix: str = "machines/one/") -> dict[str, int]:
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    out = {o["Key"][len(prefix):]: o["Size"]
           for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
           for o in page.get("Contents", [])}
    client.close()
    return out


def open_store(root: Path, endpoint: str, *, writable: bool = True) -> Store:
    prepare(root, RemoteSpec(URL, endpoint=endpoint, path_style=True))
    return Store.open(root, writable=writable)


def kinds(keys: list[str] | dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        top = k.split("/", 1)[0].rsplit("/", 1)[-1]
        out[top] = out.get(top, 0) + 1
    return out


def uploaded(proxy: ThrottlingProxy, since: int = 0) -> list[str]:
    """Object keys PUT through the proxy (multipart parts count as their object once), but lock objects
    (every run takes one: store/_locks.py)."""
    keys = []
    for method, path in proxy.requests[since:]:
        if method not in ("PUT", "POST"):
            continue
        key = path.split("?", 1)[0].split(f"/{BUCKET}/machines/one/", 1)[-1]
        if key not in keys and not key.startswith("locks/"):
            keys.append(key)
    return keys


def lists(proxy: ThrottlingProxy, since: int = 0) -> int:
    return sum(1 for method, path in proxy.requests[since:] if method == "GET" and "list-type=2" in path)


def listed(proxy: ThrottlingProxy, since: int = 0) -> list[str]:
    """The folders listed, in order (``locks``, ``index``...)."""
    out = []
    for method, path in proxy.requests[since:]:
        if method == "GET" and "list-type=2" in path:
            prefix = urllib.parse.parse_qs(path.split("?", 1)[1]).get("prefix", [""])[0]
            out.append(prefix.removeprefix("machines/one/").strip("/"))
    return out


async def test_upload_then_unchanged_folder_uploads_only_its_snapshot(proxy: ThrottlingProxy, moto: MotoServer,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=40)
    (folder / "big.bin").write_bytes(os.urandom(20 << 20))  # two packs of data
    with open_store(tmp_path / "staging", proxy.url) as store:
        progress = new_progress("docs")
        first = await snapshot(store, folder, "docs", progress)
        keys = bucket_keys(moto)
        assert kinds(keys) == {"config.json": 1, "packs": kinds(keys)["packs"], "index": kinds(keys)["packs"],
                               "snapshots": 1}
        assert kinds(keys)["packs"] >= 2
        assert f"snapshots/{first.id}.json" in keys
        # Step 5 counted the bytes it sent, exactly: the objects of this snapshot (all but the store's
        # config) that were not sent early, during step 4 (tests/store/test_s3_early_upload.py).
        step5 = progress.current()
        assert step5.step == 5
        assert step5.bytes_done == step5.bytes_total <= sum(v for k, v in keys.items() if k != "config.json")
        assert step5.files_done == step5.files_total <= len(keys) - 1
        # Nothing stays staged once uploaded.
        assert list((tmp_path / "staging" / "packs").glob("*/*.pack")) == []
        # /metrics reports the packs in the bucket (from the cached indexes, without a request).
        packs = {k: v for k, v in keys.items() if k.startswith("packs/")}
        before = len(proxy.requests)
        assert store_footprint(tmp_path / "staging") == (len(packs), sum(packs.values()))
        assert len(proxy.requests) == before

        before = len(proxy.requests)
        second = await snapshot(store, folder, "docs")
        assert uploaded(proxy, before) == [f"snapshots/{second.id}.json"]  # dedup: nothing else sent
        # and the bucket was listed only for its shared lock (before and after writing it, as restic does)
        # and to see what other machines wrote or pruned once the lock is held; never the packs.
        assert listed(proxy, before) == ["locks", "locks", "index", "snapshots"]

        before = len(proxy.requests)
        (folder / "d0" / "sub0" / "f0.txt").write_bytes(b"changed")
        third = await snapshot(store, folder, "docs")
        assert third.files_changed == 1
        assert kinds(uploaded(proxy, before)) == {"packs": 1, "index": 1, "snapshots": 1}
        assert uploaded(proxy, before)[-1] == f"snapshots/{third.id}.json"  # the snapshot file last


async def test_restore_from_the_bucket_on_another_machine(proxy: ThrottlingProxy, moto: MotoServer,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=30)
    (folder / "big.bin").write_bytes(os.urandom(3 << 20) * 2)
    with open_store(tmp_path / "machine-a", proxy.url) as store:
        info = await snapshot(store, folder, "docs")
    # Another machine: an empty local directory, the same URL. Reads come from the bucket.
    other = tmp_path / "machine-b"
    prepare(other, RemoteSpec(URL, endpoint=moto.url, path_style=True))
    out = io.StringIO()
    assert run_snapshots(other, out) == 0
    assert info.id in out.getvalue()
    target = tmp_path / "restored"
    assert run_restore(other, info.id, target, out) == 0, out.getvalue()
    cmp = filecmp.dircmp(folder, target)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert (target / "big.bin").read_bytes() == (folder / "big.bin").read_bytes()
    assert os.readlink(target / "link") == os.readlink(folder / "link")
    out = io.StringIO()
    assert run_check(other, out, read_data=True) == 0, out.getvalue()
    assert "no problems found" in out.getvalue()
    # A pack lost from the bucket is found by check, with the snapshot it damages.
    pack = next(k for k in bucket_keys(moto) if k.startswith("packs/"))
    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").delete_object(
        Bucket=BUCKET, Key="machines/one/" + pack)
    out = io.StringIO()
    assert run_check(other, out) == 1
    assert f"missing: pack {pack.rsplit('/', 1)[-1][:-5]}" in out.getvalue()
    assert f"damages snapshot {info.id}" in out.getvalue()


async def test_revoked_credentials_fail_the_run_with_store_auth(proxy: ThrottlingProxy, moto: MotoServer,
                                                                tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=5)
    with open_store(tmp_path / "staging", proxy.url) as store:
        moto.enforce_auth()  # the key stops being accepted (revoked, rotated)
        with pytest.raises(SnapshotError) as info:
            await snapshot(store, folder, "docs")
        assert info.value.code == "store_auth"
        assert ACCESS_KEY not in info.value.message and SECRET_KEY not in info.value.message
    moto.accept_any_credentials()
    assert "snapshots/" not in "".join(bucket_keys(moto))


async def test_store_down_mid_run_then_next_run_uploads_what_is_missing(proxy: ThrottlingProxy, moto: MotoServer,
                                                                         tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=20)
    (folder / "big.bin").write_bytes(os.urandom(20 << 20))
    with open_store(tmp_path / "staging", proxy.url) as store:
        proxy.down()  # goes away after the store was opened: the run reads and packs, then cannot upload
        t0 = time.monotonic()
        with pytest.raises(SnapshotError) as info:
            await snapshot(store, folder, "docs", wait_for_store=False)  # the daemon's runs wait instead
        assert info.value.code == "store_unreachable"
        assert time.monotonic() - t0 < 30
        assert store.list_snapshots() == []
        assert list(bucket_keys(moto)) == ["config.json"]
        proxy.up()
        before = len(proxy.requests)
        done = await snapshot(store, folder, "docs")
        assert done.files_new == 22
        sent = uploaded(proxy, before)
        assert kinds(sent)["snapshots"] == 1 and kinds(sent)["packs"] >= 2
        assert len(sent) == len(set(sent))
    assert kinds(bucket_keys(moto))["snapshots"] == 1


async def test_throttled_uploads_are_retried(proxy: ThrottlingProxy, moto: MotoServer, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_tree(folder, files=10)
    with open_store(tmp_path / "staging", proxy.url) as store:
        proxy.throttle(3)  # the next three requests: 503 SlowDown
        info = await snapshot(store, folder, "docs")
    assert proxy.throttled == 3
    assert f"snapshots/{info.id}.json" in bucket_keys(moto)


# --- the daemon, killed mid-upload ------------------------------------------------------------------

def start_s3_daemon(base: Path, folder: Path, endpoint: str) -> DaemonProcess:
    env = make_env(base)
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": str(base / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(base / "none")})
    # A new S3 store is encrypted by default (issue 15): its passphrase, with a cheap key derivation.
    (base / "passphrase").write_text("test passphrase")
    env.update({"SYNCSNAP_PASSWORD_FILE": str(base / "passphrase"), "SYNCSNAP_SCRYPT_N": "1024"})
    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""',
        f'store = "{URL}"', f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false",
        "retry_attempts = 1",
        # One upload at a time, so a kill lands between packs.
        "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true", "concurrency = 1",
        "[[projects]]", 'id = "docs"', f'path = "{folder}"', ""]))
    disc = base / "run/syncsnap/syncsnapd.json"
    with contextlib.suppress(FileNotFoundError):
        disc.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "ab"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {(base / 'daemon.log').read_text()}")
        try:
            info = json.loads(disc.read_text())
            if info.get("pid") == proc.pid:
                return DaemonProcess(base, cfg, env, proc, info)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("daemon did not start")


def wait_progress(d: DaemonProcess, pred: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
        if pred(p):
            return p  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no matching progress; last {p}")


def test_daemon_killed_mid_upload_resumes_without_sending_twice(proxy: ThrottlingProxy, moto: MotoServer,
                                                                 short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=20)
    for i in range(3):
        (folder / f"big{i}.bin").write_bytes(os.urandom(12 << 20))  # a few packs to upload
    d = start_s3_daemon(short_tmp, folder, proxy.url)
    try:
        proxy.delay = 0.4  # a slow link: the upload takes a few seconds
        before = len(proxy.requests)
        assert json.loads(d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots").stdout)
        deadline = time.monotonic() + 60
        while not any(k.startswith("packs/") for k in bucket_keys(moto)):  # the first pack has arrived
            assert time.monotonic() < deadline, "no pack uploaded"
            assert d.proc.poll() is None
            time.sleep(0.02)
        progress = json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
        assert (progress["step"], progress["state"]) == (5, "uploading")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    time.sleep(proxy.delay + 0.5)  # requests the proxy still held reach moto, or fail, now
    after_kill = bucket_keys(moto)
    assert not any(k.startswith("snapshots/") for k in after_kill)  # nothing visible from the killed run
    assert 0 < kinds(after_kill)["packs"]
    first_run = set(uploaded(proxy, before))

    proxy.delay = 0
    d = start_s3_daemon(short_tmp, folder, proxy.url)
    try:
        before = len(proxy.requests)
        d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots")
        final = wait_progress(d, lambda p: p["state"] in ("completed", "failed"))
        assert final["state"] == "completed", final
        sent = uploaded(proxy, before)
        # Only what was missing: nothing the killed run had completed goes again, the rest does.
        assert not set(sent) & {k for k in after_kill if k != "config.json"}
        assert kinds(sent)["packs"] >= 1
        assert kinds(bucket_keys(moto))["snapshots"] == 1
        assert set(bucket_keys(moto)) >= set(after_kill) | set(sent)
        assert first_run  # the killed run had sent something
        # The offline commands read the bucket too.
        snaps = d.cli("snapshots")
        assert final["snapshot"]["id"] in snaps.stdout, snaps
        r = d.cli("restore", final["snapshot"]["id"], str(short_tmp / "restored"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (short_tmp / "restored" / "big2.bin").read_bytes() == (folder / "big2.bin").read_bytes()
        c = d.cli("check")
        assert c.returncode == 0, c.stdout + c.stderr
    finally:
        d.proc.kill()
        d.proc.wait()



# --- configuration ----------------------------------------------------------------------------------

def _load(tmp_path: Path, text: str) -> Any:
    from syncsnapd.core import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return load_config(cfg, env={"HOME": str(tmp_path)})


def test_config_s3_store(tmp_path: Path) -> None:
    c = _load(tmp_path, f'[daemon]\nstore = "s3://bkt/a/b"\nstate_dir = "{tmp_path}/st"\n[daemon.s3]\n'
                        'endpoint = "http://127.0.0.1:9000"\nregion = "eu-west-1"\npath_style = true\n')
    assert c.store_url == "s3://bkt/a/b"
    assert c.store == tmp_path / "st" / "s3" / "bkt-a-b"
    assert (c.s3.endpoint, c.s3.region, c.s3.path_style) == ("http://127.0.0.1:9000", "eu-west-1", True)


@pytest.mark.parametrize(("text", "key"), [
    ('store = "s3://"', "daemon.store"),
    ('store = "s3://bkt/p"\n[daemon.s3]\nendpoint = "ftp://x"', "daemon.s3.endpoint"),
    ('store = "s3://bkt/p"\n[daemon.s3]\npath_style = "yes"', "daemon.s3.path_style"),
    ('store = "s3://bkt/p"\n[daemon.s3]\nbucket = "x"', "daemon.s3.bucket"),
    ('store = "/tmp/local"\n[daemon.s3]\nregion = "x"', "daemon.s3"),
])
def test_config_s3_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    from syncsnapd.core import ConfigError

    with pytest.raises(ConfigError, match=f"^{key}:"):
        _load(tmp_path, "[daemon]\n" + text + "\n")
