"""Several machines on one bucket, for tests: real daemons, each with its own state directory and its own
configured ``host``, all storing into one bucket of ``moto_server`` on loopback (an S3 **emulator**, see
``helpers/s3.py``)."""

from __future__ import annotations

from pathlib import Path

import boto3

from helpers.daemon import DaemonProcess, api, spawn_daemon, wait_until
from helpers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, plaintext_store

PREFIX = "shared/store"
URL = f"s3://{BUCKET}/{PREFIX}"


def start_machine(base: Path, host: str, projects: dict[str, Path], endpoint: str, *, extra: str = "",
                  url: str = URL) -> DaemonProcess:
    """A daemon as on machine ``host``: its own XDG and state directories under ``base``, the S3 store
    ``url`` at ``endpoint`` (path-style), ``daemon.host = host``, no watching. ``extra``: more [daemon]
    lines. The credentials come from the environment (``helpers.s3.s3_env``)."""
    base.mkdir(parents=True, exist_ok=True)
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{url}"',
             f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false", "retry_attempts = 1",
             f'host = "{host}"', extra,
             "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true"]
    for pid, path in projects.items():
        lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"']
    cfg = base / "syncsnapd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    plaintext_store(base, cfg)  # these tests read the bucket's objects by name
    return spawn_daemon(base, cfg)


def start_run(d: DaemonProcess, project: str) -> str:
    """Ask ``d`` for a snapshot of ``project``; the run id."""
    return str(api(d, f"/projects/{project}/snapshots", "POST")["run"])


def wait_run(d: DaemonProcess, run: str, timeout: float = 90) -> dict[str, object]:
    """The record of ``run`` once it has ended; AssertionError unless it completed."""
    rec = wait_until(lambda: (r := api(d, f"/runs/{run}")).get("state") in ("completed", "failed", "cancelled")
                     and r, timeout, f"the end of run {run}")
    assert rec["state"] == "completed", rec
    return rec  # type: ignore[no-any-return]


def bucket_objects(endpoint: str, prefix: str = PREFIX + "/") -> dict[str, int]:
    """Every object under ``prefix`` (key without it -> size), listed with boto3."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    try:
        return {o["Key"][len(prefix):]: o["Size"]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for o in page.get("Contents", [])}
    finally:
        client.close()


def delete_object(endpoint: str, key: str, prefix: str = PREFIX + "/") -> None:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    try:
        client.delete_object(Bucket=BUCKET, Key=prefix + key)
    finally:
        client.close()
