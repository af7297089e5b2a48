"""Encrypted S3 stores (issue 15), against moto_server on loopback (an S3 emulator speaking the same HTTP
API): a new bucket is encrypted by default and refused without a passphrase; the bucket holds no plaintext
(marker strings in file content and names, grepped in every object); another machine restores with only
the passphrase; a tampered object is found by check and refused by restore; ``init --no-encrypt`` opts out.
Every daemon and command runs as a subprocess, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from helpers.daemon import DaemonProcess, make_env, wait_until
from helpers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer, create_bucket
from helpers.store import backdate, flip_byte, tree_state, write_files

PREFIX = "enc"
URL = f"s3://{BUCKET}/{PREFIX}"
MARKERS = [b"MARKER-content-7f3a9c", b"MARKER-name-b81e44", b"MARKER-dir-c0ffee", b"MARKER-link-5e5e5e",
           b"MARKER-project-id"]


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    moto.reset()
    create_bucket(moto.url)
    return moto.url


def client(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def objects(endpoint: str) -> dict[str, bytes]:
    """Every object of the store in the bucket, by key below the prefix."""
    s3 = client(endpoint)
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):  # type: ignore[attr-defined]
        for o in page.get("Contents", []):
            out[o["Key"][len(PREFIX) + 1:]] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()  # type: ignore[attr-defined]
    s3.close()  # type: ignore[attr-defined]
    return out


def machine(base: Path, endpoint: str, folder: Path | None, passphrase: str | None) -> tuple[Path, dict[str, str]]:
    """A config and environment of one machine: its own state dir, the bucket, maybe a passphrase."""
    base.mkdir(parents=True, exist_ok=True)
    env = make_env(base)
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": str(base / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(base / "none"),
                "AWS_EC2_METADATA_DISABLED": "true", "SYNCSNAP_SCRYPT_N": "1024"})
    if passphrase is not None:
        (base / "pw").write_text(passphrase)
        env["SYNCSNAP_PASSWORD_FILE"] = str(base / "pw")
    cfg = base / "config.toml"
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{URL}"',
             f'state_dir = "{base}/state"', "watch = false", "retry_attempts = 1",
             "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true"]
    if folder is not None:
        lines += ["[[projects]]", f'id = "{MARKERS[4].decode()}"', f'path = "{folder}"']
    cfg.write_text("\n".join(lines) + "\n")
    return cfg, env


def run(cfg: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncsnapd", *args, "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def start(base: Path, cfg: Path, env: dict[str, str]) -> DaemonProcess:
    disc = base / "run/syncsnap/syncsnapd.json"
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "ab"))

    def ready() -> dict[str, object] | None:
        assert proc.poll() is None, (base / "daemon.log").read_text()
        try:
            info: dict[str, object] = json.loads(disc.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == proc.pid else None

    return DaemonProcess(base, cfg, env, proc, wait_until(ready, 30, "the daemon to serve"))


def snapshot_via(d: DaemonProcess) -> str:
    project = MARKERS[4].decode()
    d.curl("-X", "POST", f"http://localhost/api/v1/projects/{project}/snapshots")

    def done() -> dict[str, object] | None:
        p = json.loads(d.curl(f"http://localhost/api/v1/projects/{project}/progress").stdout)
        return p if p.get("state") in ("completed", "failed") else None

    final = wait_until(done, 90, "the snapshot to finish")
    assert final["state"] == "completed", final
    return str(final["snapshot"]["id"])


def marker_tree(root: Path) -> None:
    content = MARKERS[0].decode()
    write_files(root, {
        f"{MARKERS[1].decode()}.txt": (content + " compressible text\n").encode() * 2000,
        f"{MARKERS[2].decode()}/small.txt": content.encode(),
        f"{MARKERS[2].decode()}/random.bin": os.urandom(300_000) + MARKERS[0] + os.urandom(1000),
        "big.bin": os.urandom(3 << 20),
    })
    os.symlink(MARKERS[3].decode(), root / "link")
    backdate(root)


def test_a_new_bucket_without_a_passphrase_is_refused_with_the_ways_out(bucket: str, short_tmp: Path) -> None:
    cfg, env = machine(short_tmp / "one", bucket, short_tmp / "docs", None)
    (short_tmp / "docs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "a new S3 store is encrypted by default, and no passphrase was given: set SYNCSNAP_PASSWORD_FILE" \
        in proc.stderr and "`syncsnapd init --no-encrypt`" in proc.stderr
    assert objects(bucket) == {}
    # The way out for a plaintext store: init --no-encrypt, then the daemon starts without a passphrase.
    r = run(cfg, env, "init", "--no-encrypt")
    assert r.returncode == 0 and r.stdout == f"Created a store at {URL} (not encrypted).\n", r.stdout + r.stderr
    assert json.loads(objects(bucket)["config.json"])["encryption"] == "none"
    start(short_tmp / "one", cfg, env).stop()


def test_no_plaintext_in_the_bucket_and_another_machine_restores_with_only_the_passphrase(
        bucket: str, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    marker_tree(folder)
    cfg, env = machine(short_tmp / "one", bucket, folder, "bucket passphrase")
    d = start(short_tmp / "one", cfg, env)
    try:
        sid = snapshot_via(d)
        [shown] = json.loads(d.curl("http://localhost/api/v1/store").stdout)["stores"]
    finally:
        d.stop()
    stored = objects(bucket)
    assert {k.split("/", 1)[0] for k in stored} == {"config.json", "keys", "packs", "index", "snapshots"}
    # The daemon reads its sealed indexes for the store's size, as the bucket has it.
    packs = [len(v) for k, v in stored.items() if k.startswith("packs/")]
    assert (shown["packs"], shown["bytes_stored"]) == (len(packs), sum(packs)) and packs
    for key, data in stored.items():
        for marker in MARKERS:
            assert marker not in data, f"{marker!r} in {key}"
            assert marker.decode() not in key
        assert sid[:8] not in key  # snapshot files are not named by their (time-holding) id
    assert json.loads(stored["config.json"])["chunk_id"] == "blake3-keyed"

    # Another machine: its own state dir, the passphrase, nothing else.
    cfg2, env2 = machine(short_tmp / "two", bucket, None, "bucket passphrase")
    r = run(cfg2, env2, "snapshots")
    assert r.returncode == 0 and sid in r.stdout, r.stdout + r.stderr
    r = run(cfg2, env2, "restore", sid, str(short_tmp / "restored"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_state(short_tmp / "restored") == tree_state(folder)
    # A third with the wrong passphrase: exit 2, the bucket unchanged.
    cfg3, env3 = machine(short_tmp / "three", bucket, None, "not it")
    r = run(cfg3, env3, "snapshots")
    assert r.returncode == 2 and "wrong passphrase" in r.stdout
    assert objects(bucket) == stored


def test_a_key_added_on_one_machine_opens_the_bucket_on_another(bucket: str, short_tmp: Path) -> None:
    cfg, env = machine(short_tmp / "one", bucket, None, "first")
    assert run(cfg, env, "init").returncode == 0  # encrypted: the default on S3
    (short_tmp / "second").write_text("second")
    r = run(cfg, env, "key", "add", "--new-password-file", str(short_tmp / "second"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sum(1 for k in objects(bucket) if k.startswith("keys/")) == 2
    cfg2, env2 = machine(short_tmp / "two", bucket, None, "second")
    r = run(cfg2, env2, "key", "list")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3, r.stdout + r.stderr


def test_a_tampered_object_in_the_bucket_is_found_by_check_and_refused_by_restore(
        bucket: str, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    write_files(folder, {"only.bin": os.urandom(200_000)})
    backdate(folder)
    cfg, env = machine(short_tmp / "one", bucket, folder, "pw")
    d = start(short_tmp / "one", cfg, env)
    try:
        sid = snapshot_via(d)
    finally:
        d.stop()
    assert run(cfg, env, "check", "--read-data").returncode == 0
    (pack_key,) = [k for k in objects(bucket) if k.startswith("packs/")]
    data = objects(bucket)[pack_key]
    tampered = short_tmp / "pack"
    tampered.write_bytes(data)
    flip_byte(tampered, 1000)  # inside the first blob
    s3 = client(bucket)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{pack_key}", Body=tampered.read_bytes())  # type: ignore[attr-defined]
    s3.close()  # type: ignore[attr-defined]
    r = run(cfg, env, "check", "--read-data")
    assert r.returncode == 1 and "fails authentication (damaged or tampered with)" in r.stdout, r.stdout
    assert f"damaged: snapshot {sid}" in r.stdout
    r = run(cfg, env, "restore", sid, str(short_tmp / "out"))
    assert r.returncode == 1 and "fails authentication" in r.stdout, r.stdout + r.stderr
    assert not (short_tmp / "out" / "only.bin").exists()


def test_lock_objects_in_an_encrypted_bucket_are_sealed(bucket: str, short_tmp: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's lock object (host, user, pid, times) is sealed like every other object: the bucket shows
    its random name and size only, and a holder with the key reads it back."""
    from syncsnapd.core import staging_dir
    from syncsnapd.store import Passphrase, Store, writing_lock

    cfg, env = machine(short_tmp / "a", bucket, None, "lock passphrase")
    assert run(cfg, env, "init").returncode == 0
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(name, env[name])
    with Store.open(staging_dir(short_tmp / "a" / "state", URL), writable=True,
                    key=Passphrase(b"lock passphrase", "the test")) as store:
        assert store.locks is not None
        with writing_lock(store, wait=0):
            locks = {k: v for k, v in objects(bucket).items() if k.startswith("locks/")}
            assert len(locks) == 1
            raw = next(iter(locks.values()))
            for plain in (store.locks.host.encode(), b'"pid"', b'"username"', b"snapshot"):
                assert plain not in raw
            readable, unreadable = store.locks.read_all()
            assert [i.purpose for i in readable] == ["snapshot"] and unreadable == []
