"""Offline at start (issue 15): the daemon starts while its bucket is down, a run waits in step 5, the
bucket comes up, and the run completes having sent each object once.

A real daemon and a real ``moto_server`` on loopback (an S3 **emulator**, tests/helpers/s3.py), stopped at
the start and started later on the same port. Every request goes through :class:`ThrottlingProxy`, which
forwards it untouched and logs it, so the test counts what was sent (while moto is down the proxy
accepts and closes each connection: the daemon sees the service as unreachable). systemd's
``NOTIFY_SOCKET`` is a datagram socket of the test, as systemd has.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3

from helpers.daemon import DaemonProcess, api, make_env, make_tree, wait_until
from helpers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer, ThrottlingProxy

PREFIX = "laptop/"
URL = f"s3://{BUCKET}/{PREFIX}"


class NotifyListener:
    """The test's NOTIFY_SOCKET: the STATUS= lines the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.address = str(path)
        self.statuses: list[str] = []

    def wait_for_status(self, pred: Any, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            for line in data.splitlines():
                if line.startswith("STATUS="):
                    self.statuses.append(line[7:])
                    if pred(line[7:]):
                        return line[7:]
        raise AssertionError(f"no matching STATUS= within {timeout} s; got {self.statuses[-5:]}")


def start(base: Path, folder: Path, endpoint: str, notify: str) -> DaemonProcess:
    env = make_env(base)
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": str(base / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(base / "none"),
                "NOTIFY_SOCKET": notify})
    # A new S3 store is encrypted (issue 15): made here, offline, with its key file, then created in the bucket.
    (base / "passphrase").write_text("offline at start\n")
    env.update({"SYNCSNAP_PASSWORD_FILE": str(base / "passphrase"), "SYNCSNAP_SCRYPT_N": "1024"})
    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{URL}"',
        f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false", "retry_attempts = 1",
        "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true",
        "[[projects]]", 'id = "docs"', f'path = "{folder}"', ""]))
    disc = base / "run/syncsnap/syncsnapd.json"
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "ab"))

    def serving() -> DaemonProcess | None:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {(base / 'daemon.log').read_text()}")
        try:
            info = json.loads(disc.read_text())
        except (OSError, ValueError):
            return None
        return DaemonProcess(base, cfg, env, proc, info) if info.get("pid") == proc.pid else None

    try:
        # Serving within a few seconds even though the bucket does not answer (one quick probe at start).
        return wait_until(serving, 20, "the daemon to serve with its bucket down", interval=0.02)
    except BaseException:
        proc.kill()
        raise


def puts(proxy: ThrottlingProxy) -> Counter[str]:
    """How many times each object of the store was sent (a run's lock objects, ``locks/``, are not the
    store's data: they come and go)."""
    sent: Counter[str] = Counter()
    for method, path in proxy.requests:
        if method == "PUT" and f"/{BUCKET}/{PREFIX}" in path:
            key = path.split("?", 1)[0].split(f"/{BUCKET}/{PREFIX}", 1)[1]
            if not key.startswith("locks/"):
                sent[key] += 1
    return sent


def bucket_keys(moto: MotoServer) -> set[str]:
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    try:
        return {o["Key"][len(PREFIX):] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=PREFIX) for o in page.get("Contents", [])}
    finally:
        client.close()


def test_daemon_starts_with_the_bucket_down_a_run_waits_in_step_5_then_completes_sending_each_object_once(
        short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=20)
    (folder / "big.bin").write_bytes(os.urandom(3 << 20))
    moto = MotoServer()  # not started: the laptop is offline at boot
    proxy = ThrottlingProxy(moto.port)
    listener = NotifyListener(short_tmp / "notify.sock")
    d = start(short_tmp, folder, proxy.url, listener.address)
    try:
        health = api(d, "/health")
        store = health["store"]
        assert (store["kind"], store["reachable"], store["error"]["code"]) == ("s3", False, "store_unreachable")
        assert store["since"] and store["staging_max_bytes"] == 4 << 30
        assert "store" in health["degraded"] and health["status"] == "ok"
        listener.wait_for_status(lambda s: "store unreachable since" in s)

        run = api(d, "/projects/docs/snapshots", "POST")["run"]
        waiting = wait_until(lambda: (p := api(d, "/projects/docs/progress"))["step"] == 5
                             and p["message"].startswith("store unreachable, retrying in ") and p, 60,
                             "the run to wait in step 5")
        assert waiting["run"] == run and waiting["state"] == "uploading"
        assert waiting["message"] == "store unreachable, retrying in 5 s"
        staged = api(d, "/store")["health"]
        assert not staged["reachable"] and staged["staging_bytes"] >= 3 << 20  # the snapshot waits here
        assert not puts(proxy), "nothing is sent while the bucket is down"

        moto.start()  # back, on the same port
        final = wait_until(lambda: (p := api(d, "/projects/docs/progress"))["state"] in ("completed", "failed")
                           and p, 120, "the run to end once the bucket is back")
        assert (final["run"], final["state"]) == (run, "completed"), final

        sent = puts(proxy)
        assert set(sent.values()) == {1}, f"sent more than once: {sent}"
        assert set(sent) == bucket_keys(moto)
        # Encrypted (a new S3 store): its key file went with config.json, its snapshot file has a keyed name.
        assert len([k for k in sent if k.startswith("snapshots/")]) == 1
        assert {k.split("/")[0] for k in sent} == {"config.json", "keys", "packs", "index", "snapshots"}
        health = api(d, "/health")
        assert health["store"]["reachable"] and health["store"]["error"] is None
        assert health["store"]["staging_bytes"] == 0 and "store" not in health["degraded"]
        listener.wait_for_status(lambda s: s == "1 project, idle")
        assert d.proc.poll() is None
    finally:
        d.stop()
        proxy.close()
        moto.stop()
    assert "Traceback" not in (short_tmp / "daemon.log").read_text()


def test_with_no_run_waiting_the_daemon_notices_by_itself_that_the_bucket_is_back(short_tmp: Path) -> None:
    """Health and STATUS= clear without any run: the daemon's `store` service asks the bucket again (5 s,
    then doubling), and creates there the store it made locally."""
    folder = short_tmp / "docs"
    make_tree(folder, files=3)
    moto = MotoServer()
    proxy = ThrottlingProxy(moto.port)
    listener = NotifyListener(short_tmp / "notify.sock")
    d = start(short_tmp, folder, proxy.url, listener.address)
    try:
        assert api(d, "/health")["store"]["reachable"] is False
        listener.wait_for_status(lambda s: "store unreachable since" in s)
        moto.start()
        health = wait_until(lambda: (h := api(d, "/health"))["store"]["reachable"] and h, 60,
                            "health to say the store is reachable")
        assert health["degraded"] == [] and health["store"]["since"] is None
        listener.wait_for_status(lambda s: s == "1 project, idle")
        assert {k.split("/")[0] for k in bucket_keys(moto)} == {"config.json", "keys"}  # the store, made
        assert set(puts(proxy)) == bucket_keys(moto) and set(puts(proxy).values()) == {1}
        assert api(d, "/projects/docs")["progress"]["state"] == "idle"  # no run was needed for that
    finally:
        d.stop()
        proxy.close()
        moto.stop()
    assert "Traceback" not in (short_tmp / "daemon.log").read_text()
