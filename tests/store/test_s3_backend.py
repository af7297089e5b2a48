"""The store's object backend: an S3-compatible bucket via boto3 (a local store has no backend: its
directory is written directly, and its crash safety is tested in test_store.py and test_prune.py).

The S3 tests run against ``moto_server`` on loopback, an S3 **emulator** (see tests/helpers/s3.py),
started once for this module and reset before every test. Throttling is injected by a small proxy in
front of it (a test double for 503 SlowDown only: moto never throttles).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.s3 import BUCKET, MotoServer, ThrottlingProxy, create_bucket, s3_env
from syncsnapd.core import S3Options, parse_s3_url
from syncsnapd.store import BackendError, ObjectMissing, S3Backend


# Short bounds so failing cases fail in seconds (the defaults wait about a minute before giving up).
def opts(endpoint: str) -> S3Options:
    return S3Options(endpoint=endpoint, path_style=True, botocore_attempts=2, retry_delays=(0.2,),
                     connect_timeout=2.0, read_timeout=10.0)


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Backend]:
    if not moto.running:
        moto.start()
    moto.reset()
    create_bucket(moto.url)
    s3_env(monkeypatch, tmp_path)
    backend = S3Backend(BUCKET, "stores/one/", opts(moto.url))
    yield backend
    backend.close()


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/some/prefix") == ("bucket", "some/prefix/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/p/") == ("bucket", "p/")
    for bad in ("/path", "s3:///prefix", "s3://b/../x", "s3://Bad_Bucket!/x", "http://b/x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_put_get_range_list_exists(s3: S3Backend, tmp_path: Path) -> None:
    backend = s3
    data = os.urandom(100_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    sent: list[int] = []
    backend.put_file("packs/ab/ab01.pack", src, sent.append)
    backend.put_bytes("index/ab01.idx", b"index bytes")
    backend.put_bytes("snapshots/s1.json", b"{}")
    assert sum(sent) == len(data)  # progress counts the bytes sent
    assert backend.get("packs/ab/ab01.pack") == data
    assert backend.get_range("packs/ab/ab01.pack", 1000, 50) == data[1000:1050]
    assert backend.get_range("packs/ab/ab01.pack", len(data) - 10, 50) == data[-10:]
    assert list(backend.list("index/")) == [("index/ab01.idx", 11)]
    assert [k for k, _ in backend.list("")] == ["index/ab01.idx", "packs/ab/ab01.pack", "snapshots/s1.json"]
    wanted = ["packs/ab/ab01.pack", "packs/cd/cd02.pack", "index/ab01.idx", "index/zz.idx", "snapshots/s1.json"]
    assert backend.exists_many(wanted) == {"packs/ab/ab01.pack", "index/ab01.idx", "snapshots/s1.json"}
    with pytest.raises(ObjectMissing):
        backend.get("index/none.idx")
    with pytest.raises(ObjectMissing):
        backend.get_range("packs/cd/cd02.pack", 0, 10)
    backend.delete("snapshots/s1.json")
    backend.delete("snapshots/s1.json")  # deleting what is gone is not an error
    assert list(backend.list("snapshots/")) == []


def test_exists_many_lists_instead_of_probing(s3: S3Backend, moto: MotoServer) -> None:
    """Many keys in many pack folders cost one listing of packs/, not one request per key."""
    keys = [f"packs/{i:02x}/{i:02x}{'0' * 62}.pack" for i in range(0, 200, 2)]
    for k in keys[:10]:
        s3.put_bytes(k, b"x")
    proxy = ThrottlingProxy(moto.port)
    try:
        counted = S3Backend(BUCKET, "stores/one/", opts(proxy.url))
        assert counted.exists_many(keys) == set(keys[:10])
        assert [m for m, _ in proxy.requests] == ["GET"]  # one LIST request
        counted.close()
    finally:
        proxy.close()


def test_other_prefix_is_invisible(s3: S3Backend, moto: MotoServer) -> None:
    s3.put_bytes("config.json", b"one")
    other = S3Backend(BUCKET, "stores/two/", opts(moto.url))
    assert list(other.list("")) == []
    with pytest.raises(ObjectMissing):
        other.get("config.json")
    other.close()


def test_large_object_goes_multipart(s3: S3Backend, tmp_path: Path) -> None:
    import boto3

    data = os.urandom(40 << 20)  # over the 32 MiB threshold: three 16 MiB parts
    src = tmp_path / "big"
    src.write_bytes(data)
    sent: list[int] = []
    s3.put_file("packs/00/big.pack", src, sent.append)
    assert sum(sent) == len(data)
    assert s3.get("packs/00/big.pack") == data
    head = boto3.client("s3", endpoint_url=s3.options.endpoint, region_name="us-east-1").head_object(
        Bucket=BUCKET, Key="stores/one/packs/00/big.pack")
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a multipart object: three parts


def test_wrong_credentials_are_store_auth(s3: S3Backend, moto: MotoServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    moto.enforce_auth()  # moto now refuses every key it has not issued
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY12345678")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-wrong-secret")
    wrong = S3Backend(BUCKET, "", opts(moto.url))
    with pytest.raises(BackendError) as info:
        wrong.put_bytes("config.json", b"{}")
    assert info.value.code == "store_auth"
    assert "AKIAWRONGKEY12345678" not in str(info.value)
    assert "wrong-secret" not in str(info.value)
    wrong.close()


def test_no_credentials_is_store_auth(s3: S3Backend, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    none = S3Backend(BUCKET, "", opts(moto.url))
    with pytest.raises(BackendError) as info:
        list(none.list(""))
    assert info.value.code == "store_auth"
    none.close()


def test_a_profile_signs_with_its_own_keys_not_the_environments(s3: S3Backend, moto: MotoServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``profile``: the keys of that profile of the credentials file, even with other keys in the
    environment (moto enforcing its IAM accepts only the key it issued)."""
    key, secret = moto.issue_credentials("work")
    moto.enforce_auth()
    creds = tmp_path / "credentials"
    creds.write_text(f"[work]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    work = S3Backend(BUCKET, "stores/work/", replace(opts(moto.url), profile="work"))
    work.put_bytes("config.json", b"{}")
    assert work.get("config.json") == b"{}"
    work.close()
    with pytest.raises(BackendError) as info:
        s3.put_bytes("config.json", b"{}")  # the environment's keys: refused
    assert info.value.code == "store_auth"
    with pytest.raises(BackendError) as info:
        S3Backend(BUCKET, "stores/work/", replace(opts(moto.url), profile="home"))
    assert info.value.code == "store_auth"
    assert str(info.value).startswith("no profile 'home' in the AWS credentials or config file")


def test_server_down_is_unreachable_then_recovers(s3: S3Backend, moto: MotoServer) -> None:
    s3.put_bytes("index/a.idx", b"a")
    moto.stop()
    with pytest.raises(BackendError) as info:
        s3.put_bytes("index/b.idx", b"b")
    assert info.value.code == "store_unreachable"
    assert "127.0.0.1" in str(info.value)
    moto.start()  # the emulator comes back empty
    create_bucket(moto.url)
    s3.put_bytes("index/b.idx", b"b")  # the same client works again
    assert s3.get("index/b.idx") == b"b"


def test_throttling_is_retried(s3: S3Backend, moto: MotoServer, tmp_path: Path) -> None:
    proxy = ThrottlingProxy(moto.port)
    try:
        slow = S3Backend(BUCKET, "stores/one/", opts(proxy.url))
        proxy.throttle(3)  # more than botocore's 2 attempts: our own retry takes over once
        src = tmp_path / "pack"
        src.write_bytes(b"p" * 300_000)
        sent: list[int] = []
        slow.put_file("packs/aa/aa.pack", src, sent.append)
        assert proxy.throttled == 3
        assert s3.get("packs/aa/aa.pack") == src.read_bytes()
        assert sum(sent) == src.stat().st_size  # retried attempts do not count twice
        proxy.throttle(10)  # throttled for longer than every retry: the run fails, clearly
        with pytest.raises(BackendError) as info:
            slow.put_bytes("index/x.idx", b"x")
        assert info.value.code == "store_unreachable"
        assert "SlowDown" in str(info.value)
        slow.close()
    finally:
        proxy.close()


def test_full_store_is_store_full_and_not_retried(s3: S3Backend, moto: MotoServer) -> None:
    """A service out of space (507) or over quota: the run fails at once with store_full."""
    proxy = ThrottlingProxy(moto.port)
    try:
        full = S3Backend(BUCKET, "stores/one/", opts(proxy.url))
        proxy.throttle(10, "507 Insufficient Storage", "InsufficientStorage")
        with pytest.raises(BackendError) as info:
            full.put_bytes("index/x.idx", b"x")
        assert info.value.code == "store_full"
        proxy.throttle(10, "400 Bad Request", "EntityTooLarge")
        with pytest.raises(BackendError) as info:
            full.put_bytes("index/x.idx", b"x")
        assert info.value.code == "store_full"
        assert proxy.throttled == 2  # each asked once: retrying cannot make room
        full.close()
    finally:
        proxy.close()
