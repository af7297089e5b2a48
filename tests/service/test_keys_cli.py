"""Encrypted stores from the command line and the daemon (issue 15): ``syncsnapd init --encrypt``, ``key
add|list|remove|passwd|export``, a passphrase from ``SYNCSNAP_PASSWORD_FILE`` or from systemd's
``$CREDENTIALS_DIRECTORY``, a master key file (``key_file``), and what a wrong or missing key does (exit 2,
nothing written), and ``key --project P`` on a project's own store. Every test runs ``python -m syncsnapd``
as a subprocess, as a user would."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from helpers.daemon import DaemonProcess, make_env, make_tree, wait_until, write_config
from helpers.s3 import BUCKET, MotoServer
from helpers.shared_bucket import bucket_objects
from helpers.store import tree_state


def env_with(base: Path, **extra: str) -> dict[str, str]:
    env = make_env(base)
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["SYNCSNAP_SCRYPT_N"] = "1024"  # the documented knob for a cheap key derivation (tests)
    env.update(extra)
    return env


def syncsnapd(cfg: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncsnapd", *args, "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def password_file(base: Path, name: str, secret: str) -> Path:
    path = base / name
    path.write_text(secret + "\n")
    return path


def disk_state(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def start(base: Path, cfg: Path, env: dict[str, str]) -> DaemonProcess:
    disc = base / "run/syncsnap/syncsnapd.json"
    disc.unlink(missing_ok=True)
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
    d.curl("-X", "POST", "http://localhost/api/v1/projects/docs/snapshots")

    def done() -> dict[str, object] | None:
        p = json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
        return p if p.get("state") in ("completed", "failed") else None

    final = wait_until(done, 60, "the snapshot to finish")
    assert final["state"] == "completed", final
    return str(final["snapshot"]["id"])


def test_init_encrypt_then_a_wrong_or_missing_passphrase_exits_2_and_changes_nothing(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs")
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"})
    good = env_with(short_tmp, SYNCSNAP_PASSWORD_FILE=str(password_file(short_tmp, "pw", "right one")))
    r = syncsnapd(cfg, good, "init", "--encrypt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Created an encrypted store at {short_tmp}/store (" in r.stdout
    assert "opens it with the passphrase in" in r.stdout
    config = json.loads((short_tmp / "store" / "config.json").read_text())
    assert config["encryption"] in ("aes-256-gcm", "chacha20-poly1305") and "key_check" in config
    again = syncsnapd(cfg, good, "init")
    assert again.returncode == 2 and "There is already a store at" in again.stdout

    d = start(short_tmp, cfg, good)
    try:
        sid = snapshot_via(d)
    finally:
        d.stop()
    before = disk_state(short_tmp / "store")
    wrong = env_with(short_tmp, SYNCSNAP_PASSWORD_FILE=str(password_file(short_tmp, "bad", "wrong one")))
    for args in (["snapshots"], ["check"], ["restore", sid, str(short_tmp / "out")], ["key", "list"]):
        r = syncsnapd(cfg, wrong, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "wrong passphrase: the passphrase in" in r.stdout and "opens none of the 1 keys" in r.stdout
    r = syncsnapd(cfg, env_with(short_tmp), "snapshots")  # no source, no terminal
    assert r.returncode == 2 and "is encrypted and no key was given: set SYNCSNAP_PASSWORD_FILE" in r.stdout
    # The daemon: a configuration error, exit 2, before anything is written.
    proc = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], env=wrong,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: cannot open the store" in proc.stderr and "wrong passphrase" in proc.stderr
    assert disk_state(short_tmp / "store") == before
    assert not (short_tmp / "out").exists()


def test_key_add_list_remove_and_passwd(short_tmp: Path) -> None:
    cfg = write_config(short_tmp, {})
    one = env_with(short_tmp, SYNCSNAP_PASSWORD_FILE=str(password_file(short_tmp, "one", "first")))
    two = env_with(short_tmp, SYNCSNAP_PASSWORD_FILE=str(password_file(short_tmp, "two", "second")))
    three = password_file(short_tmp, "three", "third")
    assert syncsnapd(cfg, one, "init", "--encrypt").returncode == 0
    r = syncsnapd(cfg, one, "key", "add", "--new-password-file", str(short_tmp / "two"))
    assert r.returncode == 0 and r.stdout.startswith("Added key "), r.stdout + r.stderr
    added = r.stdout.split()[2].rstrip(".")
    listing = syncsnapd(cfg, two, "key", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "USER", "HOST", "CREATED", "SCRYPT", "N"]
    in_use = [line for line in listing[1:] if line.startswith("*")]
    assert len(listing) == 3 and len(in_use) == 1 and in_use[0][1:9] == added and "2^10" in in_use[0]
    first = next(line for line in listing[1:] if not line.startswith("*")).split()[0]
    r = syncsnapd(cfg, two, "key", "remove", added)
    assert r.returncode == 2 and "is the one in use" in r.stdout
    r = syncsnapd(cfg, two, "key", "remove", first)
    assert r.returncode == 0 and r.stdout == f"Removed key {first}.\n", r.stdout + r.stderr
    assert syncsnapd(cfg, one, "snapshots").returncode == 2  # the first passphrase opens nothing now
    r = syncsnapd(cfg, two, "key", "passwd", "--new-password-file", str(three))
    assert r.returncode == 0 and f"key {added} is replaced by key" in r.stdout, r.stdout + r.stderr
    assert syncsnapd(cfg, two, "snapshots").returncode == 2
    r = syncsnapd(cfg, env_with(short_tmp, SYNCSNAP_PASSWORD_FILE=str(three)), "snapshots")
    assert r.returncode == 0 and r.stdout == "No snapshots.\n", r.stdout + r.stderr
    assert len(list((short_tmp / "store" / "keys").iterdir())) == 1
    r = syncsnapd(cfg, one, "key", "add")  # no new passphrase: no file, no terminal
    assert r.returncode == 2 and "--new-password-file" in r.stdout


def test_key_file_for_unattended_use_and_a_restore_on_another_machine(short_tmp: Path) -> None:
    """init writes the master key to key_file (0600); the daemon runs with it alone; another machine (a
    second state dir and config) restores byte-identical with only that file; a key file others may read
    is refused with the fix named."""
    make_tree(short_tmp / "docs")
    key_file = short_tmp / "master.key"
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"}, extra_daemon=f'key_file = "{key_file}"')
    env = env_with(short_tmp)
    r = syncsnapd(cfg, env, "init", "--encrypt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Wrote its master key to {key_file} (0600)" in r.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not (short_tmp / "store" / "keys").exists() or not list((short_tmp / "store" / "keys").iterdir())
    d = start(short_tmp, cfg, env)
    try:
        sid = snapshot_via(d)
    finally:
        d.stop()
    other = short_tmp / "other"
    other.mkdir()
    copy = other / "master.key"
    copy.write_bytes(key_file.read_bytes())
    copy.chmod(0o600)
    cfg2 = other / "config.toml"
    cfg2.write_text(f'[daemon]\nstore = "{short_tmp}/store"\nstate_dir = "{other}/state"\n'
                    f'key_file = "{copy}"\n')
    r = syncsnapd(cfg2, env_with(other), "restore", sid, str(other / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_state(other / "out") == tree_state(short_tmp / "docs")
    copy.chmod(0o644)
    r = syncsnapd(cfg2, env_with(other), "snapshots")
    assert r.returncode == 2 and f"`chmod 600 {copy}` first" in r.stderr
    proc = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg2)], env=env_with(other),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "may be read by others (mode 0644)" in proc.stderr


def test_the_passphrase_from_systemd_credentials(short_tmp: Path) -> None:
    """``LoadCredential=syncsnap-password:...`` puts the file in $CREDENTIALS_DIRECTORY (systemd.exec); the
    test sets the variable itself, as systemd would, and runs the daemon and the CLI with it."""
    make_tree(short_tmp / "docs")
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"})
    creds = short_tmp / "credentials"
    creds.mkdir(mode=0o700)
    password_file(creds, "syncsnap-password", "from systemd")
    env = env_with(short_tmp, CREDENTIALS_DIRECTORY=str(creds))
    r = syncsnapd(cfg, env, "init", "--encrypt")
    assert r.returncode == 0 and "the systemd credential syncsnap-password" in r.stdout, r.stdout + r.stderr
    d = start(short_tmp, cfg, env)
    try:
        sid = snapshot_via(d)
    finally:
        d.stop()
    r = syncsnapd(cfg, env, "restore", sid, str(short_tmp / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree_state(short_tmp / "out") == tree_state(short_tmp / "docs")


def test_local_stores_stay_unencrypted_by_default(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs")
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"})
    env = env_with(short_tmp, SYNCSNAP_PASSWORD_FILE=str(password_file(short_tmp, "pw", "unused")))
    r = syncsnapd(cfg, env, "init")
    assert r.returncode == 0 and r.stdout == f"Created a store at {short_tmp}/store (not encrypted).\n"
    assert json.loads((short_tmp / "store" / "config.json").read_text())["encryption"] == "none"
    r = syncsnapd(cfg, env, "key", "list")
    assert r.returncode == 2 and "is not encrypted: it has no keys" in r.stdout


def test_key_with_project_manages_that_projects_own_s3_store(bucket: MotoServer, short_tmp: Path) -> None:
    """Against moto_server on loopback (an S3 emulator). The daemon's store is local, opened by a passphrase;
    project ``work`` has its own S3 store (its own ``[projects.s3]``) opened by its ``key_file``. ``key
    --project work`` adds, changes and removes the keys of that store only, each opening it alone; a
    project without a store of its own is refused with exit 2."""
    pw = {name: password_file(short_tmp, f"pw-{name}", f"{name} secret") for name in ("daemon", "work", "third")}
    key_file = short_tmp / "work.key"
    for pid in ("docs", "work"):
        (short_tmp / pid).mkdir()

    def config(base: Path, key: Path | None) -> Path:
        cfg = write_config(base, {"docs": short_tmp / "docs"})
        with cfg.open("a") as f:
            f.write(f'[[projects]]\nid = "work"\npath = "{short_tmp}/work"\nstore = "s3://{BUCKET}/work"\n'
                    + (f'key_file = "{key}"\n' if key else "")
                    + f'[projects.s3]\nendpoint = "{bucket.url}"\npath_style = true\n')
        return cfg

    def env(name: str | None) -> dict[str, str]:
        e = env_with(short_tmp)
        e.pop("SYNCSNAP_PASSWORD_FILE", None)
        return e if name is None else {**e, "SYNCSNAP_PASSWORD_FILE": str(pw[name])}

    def keys_in_bucket() -> int:
        return len([k for k in bucket_objects(bucket.url, "work/") if k.startswith("keys/")])

    cfg = config(short_tmp, key_file)
    assert syncsnapd(cfg, env("daemon"), "init", "--encrypt").returncode == 0
    r = syncsnapd(cfg, env(None), "init", "--project", "work")
    assert r.returncode == 0 and f"Wrote its master key to {key_file}" in r.stdout, r.stdout + r.stderr
    daemon_keys = syncsnapd(cfg, env("daemon"), "key", "list").stdout
    assert len(daemon_keys.splitlines()) == 2, daemon_keys

    r = syncsnapd(cfg, env(None), "key", "list", "--project", "work")
    assert r.returncode == 0 and r.stdout.splitlines()[1:] == ["(opened with the master key of key_file)"], \
        r.stdout + r.stderr
    r = syncsnapd(cfg, env(None), "key", "add", "--project", "work", "--new-password-file", str(pw["work"]))
    assert r.returncode == 0 and r.stdout.startswith("Added key "), r.stdout + r.stderr
    added = r.stdout.split()[2].rstrip(".")
    assert keys_in_bucket() == 1
    assert syncsnapd(cfg, env("daemon"), "key", "list").stdout == daemon_keys  # the daemon's store: untouched

    # The new key opens the project's store alone: a machine with no key_file, only that passphrase.
    other = short_tmp / "other"
    other.mkdir()
    bare = config(other, None)
    r = syncsnapd(bare, env("work"), "key", "list", "--project", "work")
    assert r.returncode == 0 and [line[:9] for line in r.stdout.splitlines()[1:]] == ["*" + added], r.stdout
    r = syncsnapd(bare, env("work"), "key", "passwd", "--project", "work", "--new-password-file", str(pw["third"]))
    assert r.returncode == 0 and f"key {added} is replaced by key" in r.stdout, r.stdout + r.stderr
    replaced = r.stdout.split()[-1].rstrip(".")
    assert syncsnapd(bare, env("work"), "key", "list", "--project", "work").returncode == 2
    assert syncsnapd(bare, env("third"), "key", "list", "--project", "work").returncode == 0
    r = syncsnapd(cfg, env(None), "key", "add", "--project", "work", "--new-password-file", str(pw["work"]))
    assert r.returncode == 0, r.stdout + r.stderr
    r = syncsnapd(cfg, env(None), "key", "remove", "--project", "work", replaced)
    assert r.returncode == 0 and r.stdout == f"Removed key {replaced}.\n", r.stdout + r.stderr
    assert keys_in_bucket() == 1
    assert syncsnapd(bare, env("third"), "key", "list", "--project", "work").returncode == 2
    assert syncsnapd(bare, env("work"), "key", "list", "--project", "work").returncode == 0

    for pid in ("docs", "nosuch"):  # docs uses the daemon's store: `key` without --project manages it
        r = syncsnapd(cfg, env("daemon"), "key", "list", "--project", pid)
        assert r.returncode == 2 and r.stdout == "", r.stdout
        assert (f"syncsnapd: key --project: no project {pid!r} with a store of its own (store = ... in its "
                "[[projects]] table) in the configuration; without --project, `syncsnapd key` works on the "
                "daemon's store") in r.stderr, r.stderr
