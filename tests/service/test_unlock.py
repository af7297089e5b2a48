"""``syncsnapd unlock``: the command a user runs when a machine died holding its lock on a shared store.

Against ``moto_server`` on loopback, an S3 **emulator** (tests/helpers/s3.py), one per module, reset before
each test. The command runs as a user runs it (a subprocess with its own config and state dir). A lock
"by age" is a lock object whose last refresh is 31 minutes before now: nothing waits for it to age.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from helpers.daemon import make_env
from helpers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer, create_bucket, s3_env
from syncsnapd.store._locks import STALE_AFTER, LockInfo, encode_lock

PREFIX = "shared"


@pytest.fixture
def s3(moto: MotoServer) -> MotoServer:
    moto.reset()
    create_bucket(moto.url)
    return moto


def config(base: Path, store: str, endpoint: str | None = None) -> Path:
    cfg = base / "config.toml"
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{store}"',
             f'state_dir = "{base}/state"']
    if endpoint is not None:
        lines += ["[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true"]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def unlock(base: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = make_env(base)
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": str(base / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(base / "none")})
    return subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg), "unlock", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def s3_client(moto: MotoServer) -> object:
    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY)


def put_lock(moto: MotoServer, info: LockInfo) -> None:
    c = s3_client(moto)
    c.put_object(Bucket=BUCKET, Key=f"{PREFIX}/locks/{info.name}", Body=encode_lock(info))  # type: ignore[attr-defined]
    c.close()  # type: ignore[attr-defined]


def lock_names(moto: MotoServer) -> list[str]:
    c = s3_client(moto)
    resp = c.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/locks/")  # type: ignore[attr-defined]
    c.close()  # type: ignore[attr-defined]
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in resp.get("Contents", []))


@pytest.fixture
def store(s3: MotoServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store in the bucket (created by a first writable open, as a daemon's would be)."""
    from syncsnapd.store import RemoteSpec, Store, prepare

    s3_env(monkeypatch, short_tmp)
    root = short_tmp / "maker"
    prepare(root, RemoteSpec(f"s3://{BUCKET}/{PREFIX}", endpoint=s3.url, path_style=True))
    Store.open(root, writable=True).close()


def test_unlock_removes_a_lock_stale_by_age_and_keeps_a_live_one(s3: MotoServer, short_tmp: Path, store: None) -> None:
    now = time.time()
    old = LockInfo("aa" * 32, False, "snapshot", "laptop", 4242, "ann", now - 7200, now - STALE_AFTER - 60)
    live = LockInfo("bb" * 32, False, "snapshot", "desktop", 777, "bob", now - 600, now - 60)
    put_lock(s3, old)
    put_lock(s3, live)
    cfg = config(short_tmp, f"s3://{BUCKET}/{PREFIX}", s3.url)
    r = unlock(short_tmp, cfg)
    assert r.returncode == 1, r
    assert r.stdout.splitlines() == [
        f"Removed the stale {old.describe()}.",
        "Kept 1 lock still held:",
        f"  {live.describe()}",
        "They go stale 30 minutes after their holder stops refreshing them; `syncsnapd unlock --remove-all` "
        "removes them now.",
    ]
    assert lock_names(s3) == [live.name]
    again = unlock(short_tmp, cfg)
    assert again.returncode == 1 and "Removed" not in again.stdout


def test_unlock_remove_all_warns_and_removes_live_locks_too(s3: MotoServer, short_tmp: Path, store: None) -> None:
    now = time.time()
    live = LockInfo("bb" * 32, True, "prune", "desktop", 777, "bob", now - 600, now - 60)
    put_lock(s3, live)
    r = unlock(short_tmp, config(short_tmp, f"s3://{BUCKET}/{PREFIX}", s3.url), "--remove-all")
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == [
        "Warning: removing every lock, also those of processes still running. If a syncsnapd on any machine is "
        "writing a snapshot, a prune could now delete data it relies on.",
        f"Removed the {live.describe()}.",
    ]
    assert lock_names(s3) == []


def test_unlock_with_nothing_to_remove_says_so(s3: MotoServer, short_tmp: Path, store: None) -> None:
    r = unlock(short_tmp, config(short_tmp, f"s3://{BUCKET}/{PREFIX}", s3.url))
    assert (r.returncode, r.stdout) == (0, f"No stale locks in s3://{BUCKET}/{PREFIX} at {s3.url}.\n")


def test_unlock_removes_an_unreadable_lock_object(s3: MotoServer, short_tmp: Path, store: None) -> None:
    c = s3_client(s3)
    c.put_object(Bucket=BUCKET, Key=f"{PREFIX}/locks/{'cc' * 32}", Body=b"garbage")  # type: ignore[attr-defined]
    c.close()  # type: ignore[attr-defined]
    r = unlock(short_tmp, config(short_tmp, f"s3://{BUCKET}/{PREFIX}", s3.url))
    assert (r.returncode, r.stdout) == (0, f"Removed the unreadable lock object locks/{'cc' * 32}.\n")
    assert lock_names(s3) == []


def test_unlock_on_a_store_on_a_local_disk_has_nothing_to_do(short_tmp: Path) -> None:
    from syncsnapd.store import Store

    Store.open(short_tmp / "store", writable=True).close()
    r = unlock(short_tmp, config(short_tmp, str(short_tmp / "store")))
    assert r.returncode == 0, r
    assert r.stdout == (f"The store {short_tmp / 'store'} is on a local disk: it has no lock objects (the daemon's "
                        "lock on it is released by the system when the daemon exits). Nothing to do.\n")


def test_unlock_of_a_bucket_that_is_not_a_store_is_named(s3: MotoServer, short_tmp: Path) -> None:
    r = unlock(short_tmp, config(short_tmp, f"s3://{BUCKET}/nothing-here", s3.url))
    assert (r.returncode, r.stdout) == (2, f"Cannot open the store: there is no syncsnap store at "
                                           f"s3://{BUCKET}/nothing-here at {s3.url}.\n")
