"""Per-project stores on two S3 services with two accounts and two master keys: "work folders to the
company's bucket, personal ones to my own".

Two moto_servers on loopback (an S3 emulator: tests/helpers/s3.py), each enforcing its own IAM: each
accepts only the key it issued, so a store signed with the other profile's key is refused, and each
server is asked what it holds. The credentials are two profiles of one credentials file (no keys in the
environment); the stores are encrypted, each with its own ``key_file`` (no passphrase anywhere). A real
daemon snapshots both projects; then offline commands, from a new state directory with one project's
configuration each, restore each store with only its key file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from helpers.daemon import api, make_env, make_tree, spawn_daemon, wait_until
from helpers.s3 import MotoServer, moto_server
from helpers.shared_bucket import start_run, wait_run
from syncsnapd.store import MasterKey, Store, read_master_key_file, write_master_key_file

BUCKETS = {"work": "company-backups", "home": "my-own-bucket"}


@pytest.fixture
def two_services(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> Iterator[dict[str, tuple[MotoServer, str, str]]]:
    """Project id -> (its moto_server, access key id, secret key); the credentials file holds one profile
    per project, named after it, and is the only source of credentials."""
    with moto_server() as work, moto_server() as home:
        servers = {"work": work, "home": home}
        out = {pid: (server, *server.issue_credentials(pid)) for pid, server in servers.items()}
        for server in servers.values():
            server.enforce_auth()
        creds = short_tmp / "aws-credentials"
        creds.write_text("".join(f"[{pid}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\n"
                                 for pid, (_, key, secret) in out.items()))
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "SYNCSNAP_PASSWORD_FILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(short_tmp / "no-aws-config"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield out


def _project(pid: str, path: Path, endpoint: str, key_file: Path, profile: str | None = None) -> list[str]:
    return ["[[projects]]", f'id = "{pid}"', f'path = "{path}"', f'store = "s3://{BUCKETS[pid]}/laptop"',
            f'key_file = "{key_file}"', "[projects.s3]", f'endpoint = "{endpoint}"', "path_style = true",
            'region = "us-east-1"', f'profile = "{profile or pid}"']


def _config(base: Path, projects: list[list[str]]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{base}/main"',
             f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false", "retry_attempts = 1"]
    cfg = base / "syncsnapd.toml"
    cfg.write_text("\n".join(lines + [line for p in projects for line in p]) + "\n")
    return cfg


def _cli(base: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncsnapd", *args, "--config", str(cfg)], env=make_env(base),
                          capture_output=True, text=True, timeout=120)


def _objects(server: MotoServer, key: str, secret: str) -> dict[str, list[str]]:
    """Bucket -> its keys, on ``server``, as its IAM user sees them."""
    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id=key,
                          aws_secret_access_key=secret)
    try:
        return {b["Name"]: [o["Key"] for o in client.list_objects_v2(Bucket=b["Name"]).get("Contents", [])]
                for b in client.list_buckets()["Buckets"]}
    finally:
        client.close()


def test_two_projects_on_two_services_with_two_accounts_and_two_keys(
        two_services: dict[str, tuple[MotoServer, str, str]], short_tmp: Path) -> None:
    base = short_tmp / "laptop"
    trees = {pid: make_tree(base / pid, files=10) for pid in BUCKETS}
    (base / "home" / "diary.txt").write_text("personal, not for the company bucket")
    trees["home"]["diary.txt"] = b"personal, not for the company bucket"
    keys = {pid: short_tmp / "keys" / f"{pid}.key" for pid in BUCKETS}
    keys["home"].parent.mkdir()
    write_master_key_file(keys["home"], MasterKey.generate())  # "home": made by the daemon with this key
    cfg = _config(base, [_project(pid, base / pid, two_services[pid][0].url, keys[pid]) for pid in BUCKETS])

    # "work": created beforehand with `init --project`, which writes its new master key to its key_file.
    init = _cli(base, cfg, "init", "--project", "work")
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"Created an encrypted store at s3://{BUCKETS['work']}/laptop" in init.stdout
    assert f"Wrote its master key to {keys['work']}" in init.stdout and keys["work"].exists()

    d = spawn_daemon(base, cfg)
    try:
        runs = {pid: start_run(d, pid) for pid in BUCKETS}
        snaps = {pid: wait_run(d, run)["snapshot"]["id"] for pid, run in runs.items()}  # type: ignore[index]
        stores = {s["store"]: (s["projects"], s["snapshots"]) for s in api(d, "/store")["stores"]}
        for pid, bucket in BUCKETS.items():
            assert stores[f"s3://{bucket}/laptop"] == ([pid], 1)
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()

    # Each server holds its project's bucket and nothing else: one snapshot object, an encrypted store.
    for pid, (server, key, secret) in two_services.items():
        held = _objects(server, key, secret)
        assert list(held) == [BUCKETS[pid]], (pid, held)
        names = held[BUCKETS[pid]]
        assert all(k.startswith("laptop/") for k in names)
        assert len([k for k in names if k.startswith("laptop/snapshots/")]) == 1
        assert any(k.startswith("laptop/packs/") for k in names)
        assert not any(k.startswith("laptop/keys/") for k in names)  # the key files' stores: no passphrase keys

    # Offline, on this machine: every store in turn, each with its own profile and key.
    out = _cli(base, cfg, "snapshots")
    assert out.returncode == 0 and all(s in out.stdout for s in snaps.values()), out.stdout + out.stderr
    out = _cli(base, cfg, "check")
    assert out.returncode == 0, out.stdout + out.stderr

    # Elsewhere (a new state directory, one project configured): each store restores with its key file.
    for pid, (server, _, _) in two_services.items():
        other = short_tmp / f"elsewhere-{pid}"
        one = _config(other, [_project(pid, base / pid, server.url, keys[pid])])
        out = _cli(other, one, "snapshots", "--project", pid)
        assert out.returncode == 0 and snaps[pid] in out.stdout, out.stdout + out.stderr
        assert [s for s in snaps.values() if s in out.stdout] == [snaps[pid]]  # only its project's snapshot
        out = _cli(other, one, "restore", "latest", str(other / "restored"), "--project", pid)
        assert out.returncode == 0, out.stdout + out.stderr
        for rel, data in trees[pid].items():
            assert (other / "restored" / rel).read_bytes() == data

    # The other project's key file does not open a store; the other profile's key is refused by its server.
    wrong = short_tmp / "wrong-key"
    one = _config(wrong, [_project("work", base / "work", two_services["work"][0].url, keys["home"])])
    out = _cli(wrong, one, "restore", "latest", str(wrong / "restored"), "--project", "work")
    assert out.returncode == 2 and not (wrong / "restored").exists(), out.stdout + out.stderr
    assert "the key file does not hold the master key of store" in out.stdout
    stranger = short_tmp / "wrong-profile"
    one = _config(stranger, [_project("work", base / "work", two_services["work"][0].url, keys["work"], "home")])
    out = _cli(stranger, one, "snapshots", "--project", "work")
    assert out.returncode == 2 and snaps["work"] not in out.stdout, out.stdout + out.stderr
    assert f"s3://{BUCKETS['work']}/laptop at {two_services['work'][0].url} refused the credentials" in out.stdout


def test_a_project_key_file_opens_its_local_store_and_a_wrong_one_stops_the_start(short_tmp: Path) -> None:
    """A local store of a project, encrypted by ``init --project P --encrypt`` with P's ``key_file``: the
    daemon opens it with that file; a reload that changes the file says a restart applies it; a start
    with another project's master key stops with exit status 2, naming the project."""
    base = short_tmp
    files = make_tree(base / "work", files=4)
    (base / "keys").mkdir()
    other = base / "keys" / "other.key"
    write_master_key_file(other, MasterKey.generate())

    def config(key_file: Path) -> Path:
        return _config(base, [["[[projects]]", 'id = "work"', f'path = "{base}/work"', f'store = "{base}/work-store"',
                               f'key_file = "{key_file}"']])

    cfg = config(base / "keys" / "work.key")
    init = _cli(base, cfg, "init", "--project", "work", "--encrypt")
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"Created an encrypted store at {base}/work-store" in init.stdout
    d = spawn_daemon(base, cfg)
    try:
        snap = wait_run(d, start_run(d, "work"))["snapshot"]
        assert json.loads((base / "work-store" / "config.json").read_bytes())["encryption"] != "none"
        assert [p.stem for p in (base / "main" / "snapshots").glob("*.json")] == []
        config(other)
        d.proc.send_signal(signal.SIGHUP)
        log = base / "daemon.log"
        wait_until(lambda: "reloaded" in log.read_text(), 30, "the reload")
        assert ("reload: the s3 settings or key_file of the store of project 'work' changed; restart syncsnapd "
                "to apply them") in log.read_text()
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    restore = ("restore", str(snap["id"]), str(base / "restored"))  # type: ignore[index]
    out = _cli(base, config(base / "keys" / "work.key"), *restore)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all((base / "restored" / rel).read_bytes() == data for rel, data in files.items())

    with pytest.raises(RuntimeError, match="exited 2") as info:
        spawn_daemon(base, config(other))
    assert (f"cannot open the store of project 'work' at {base}/work-store: the key file does not hold the "
            "master key") in str(info.value)


def test_init_project_without_its_own_key_file_encrypts_with_the_daemons(short_tmp: Path) -> None:
    """A project with a store of its own but no ``key_file`` shares the daemon's (as the daemon does when it
    makes that store itself): ``init --project P --encrypt`` encrypts P's new store with the master key
    already in that file and leaves the file as it was, instead of refusing because it exists."""
    base = short_tmp
    (base / "keys").mkdir()
    (base / "work").mkdir()
    shared = base / "keys" / "daemon.key"
    write_master_key_file(shared, MasterKey.generate())
    before = shared.read_bytes()
    cfg = _config(base, [[f'key_file = "{shared}"'],  # still in [daemon]
                         ["[[projects]]", 'id = "work"', f'path = "{base}/work"', f'store = "{base}/work-store"']])
    init = _cli(base, cfg, "init", "--project", "work", "--encrypt")
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"Created an encrypted store at {base}/work-store" in init.stdout
    assert f"master key is the one in key_file {shared}" in init.stdout
    assert shared.read_bytes() == before
    with Store.open(base / "work-store", writable=False, key=read_master_key_file(shared)) as store:
        assert store.config.encryption != "none" and store.list_snapshots() == []
    again = _cli(base, cfg, "init", "--project", "work", "--encrypt")
    assert again.returncode == 2 and "There is already a store" in again.stdout
