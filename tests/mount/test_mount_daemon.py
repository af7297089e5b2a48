"""The mount beside a running daemon: it reads the store read-only, so it sees a snapshot only once it is
complete; ``syncsnap mount`` asks the daemon over its Unix socket and runs the mount as its child; an
encrypted store opens with the configured key file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers.client import SYNCSNAP
from helpers.daemon import DaemonProcess, api, make_env, make_tree, spawn_daemon, wait_until
from helpers.daemon import write_config as daemon_config
from helpers.mount import Mount, is_mounted, start_mount, syncsnapd

MIB = 1 << 20


def post(d: DaemonProcess, path: str) -> dict[str, Any]:
    return json.loads(d.curl("-X", "POST", f"http://localhost/api/v1{path}").stdout)  # type: ignore[no-any-return]


def snapshot_via(d: DaemonProcess, project: str) -> str:
    run = post(d, f"/projects/{project}/snapshots")["run"]

    def done() -> dict[str, Any] | None:
        p = api(d, f"/projects/{project}/progress")
        return p if p["run"] == run and p["state"] in ("completed", "failed", "cancelled") else None

    final = wait_until(done, 120, "the snapshot to end")
    assert final["state"] == "completed", final
    return str(final["snapshot"]["id"])


def test_a_snapshot_being_written_is_invisible_until_complete(daemon_factory: Any, short_tmp: Path,
                                                              mount_offline: Any) -> None:
    folder = short_tmp / "big"
    folder.mkdir()
    (folder / "small.txt").write_bytes(b"first")
    d: DaemonProcess = daemon_factory({"big": folder})
    first = snapshot_via(d, "big")
    # A slow second snapshot: random data, then two sparse 1 GiB files read chunk by chunk.
    for i in range(8):
        (folder / f"r{i}.bin").write_bytes(os.urandom(2 * MIB))
    for i in range(2):
        with open(folder / f"zeros{i}.bin", "wb") as f:
            f.truncate(1 << 30)
    run = post(d, "/projects/big/snapshots")["run"]
    wait_until(lambda: (p := api(d, "/projects/big/progress"))["run"] == run and p["step"] == 4
               and p["bytes_done"] >= 16 * MIB, 120, "the second snapshot to be writing data")
    post(d, "/projects/big/pause")
    wait_until(lambda: api(d, "/projects/big/progress")["paused"], 30, "the pause")

    m = mount_offline(d.config, short_tmp / "mnt", env=d.env)  # beside the daemon, which holds the store's lock
    project = m.dir / "big"
    assert sorted(os.listdir(project)) == sorted([first, "latest", "by-date"])
    assert os.readlink(project / "latest") == first
    assert os.listdir(project / "latest") == ["small.txt"]
    assert len(os.listdir(project / "by-date")) == 1

    post(d, "/projects/big/resume")
    final = wait_until(lambda: (p := api(d, "/projects/big/progress"))["run"] == run
                       and p["state"] in ("completed", "failed") and p, 300, "the second snapshot to end")
    assert final["state"] == "completed", final
    second = final["snapshot"]["id"]
    wait_until(lambda: second in os.listdir(project), 15, "the completed snapshot in the mount")
    assert (project / second / "r3.bin").read_bytes() == (folder / "r3.bin").read_bytes()
    assert os.readlink(project / "latest") == second


def test_syncsnap_mount_through_the_running_daemon(daemon_factory: Any, short_tmp: Path) -> None:
    files = make_tree(short_tmp / "docs")
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs"})
    sid = snapshot_via(d, "docs")
    # What the client asks: over the Unix socket only.
    info = api(d, "/mount")
    assert info["config"] == str(d.config) and info["store"] == f"{short_tmp}/store" and info["projects"] == ["docs"]
    tcp = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {d.token}", f"http://{d.tcp}/api/v1/mount"],
                         capture_output=True, text=True)
    assert json.loads(tcp.stdout)["error"]["code"] == "forbidden"

    mnt = short_tmp / "mnt"
    mnt.mkdir()
    m: Mount = start_mount([SYNCSNAP, "mount", str(mnt)], mnt, short_tmp / "client-mount.log", env=d.env)
    try:
        assert os.listdir(mnt) == ["docs"]
        for rel, data in files.items():
            assert (mnt / "docs" / sid / rel).read_bytes() == data
        assert os.readlink(mnt / "docs" / sid / "link") == "d0/sub0/f0.txt"
        assert f"fusermount3 -u {mnt}" in m.output()
        assert m.stop(signal.SIGINT) == 0  # the client forwards it to its child, which unmounts
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert not is_mounted(mnt) and os.listdir(mnt) == []

    # Over TCP the client cannot hand over the store: it says so.
    r = subprocess.run([SYNCSNAP, "--url", f"http://{d.tcp}", "--token-file", str(d.discovery["token_file"]),
                        "mount", str(mnt)], env=d.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Unix socket" in r.stderr
    # A stale or non-empty mount point: the child's sentence and exit status come through.
    (mnt / "x").write_bytes(b"")
    r = subprocess.run([SYNCSNAP, "mount", str(mnt)], env=d.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_an_encrypted_store_opens_with_the_key_file(short_tmp: Path, mount_offline: Any) -> None:
    files = make_tree(short_tmp / "docs")
    key_file = short_tmp / "master.key"
    cfg = daemon_config(short_tmp, {"docs": short_tmp / "docs"}, extra_daemon=f'key_file = "{key_file}"')
    (short_tmp / "pass").write_text("correct horse\n")
    env = {**make_env(short_tmp), "SYNCSNAP_PASSWORD_FILE": str(short_tmp / "pass"), "SYNCSNAP_SCRYPT_N": "1024"}
    r = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg), "init", "--encrypt"], env=env,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    d = spawn_daemon(short_tmp, cfg)
    try:
        sid = snapshot_via(d, "docs")
        m = mount_offline(cfg, short_tmp / "mnt", env=make_env(short_tmp))  # the key from key_file alone
        assert (m.dir / "docs" / sid / "d1/sub1/f1.txt").read_bytes() == files["d1/sub1/f1.txt"]
        # With no key at all: a sentence, exit 2, nothing mounted.
        other = short_tmp / "nokey.toml"
        other.write_text(f'[daemon]\nstore = "{short_tmp}/store"\nstate_dir = "{short_tmp}/state2"\n')
        (short_tmp / "mnt2").mkdir()
        r2 = syncsnapd(other, "mount", str(short_tmp / "mnt2"), env=make_env(short_tmp))
        assert r2.returncode == 2 and "Traceback" not in r2.stderr and "encrypted" in (r2.stdout + r2.stderr)
        assert not is_mounted(short_tmp / "mnt2")
    finally:
        d.stop()
