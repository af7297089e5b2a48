"""End to end: syncsnapd started as a subprocess, curl as the client, the offline commands on its store."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers.curl import TERMINAL, SseReader
from helpers.daemon import DaemonProcess, make_env, make_tree, start_daemon


def test_snapshot_over_unix_socket_with_curl_then_restore_offline(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    files = make_tree(folder, files=30)
    d: DaemonProcess = daemon_factory({"docs": folder})

    r = d.curl("http://localhost/api/v1/projects")
    projects = json.loads(r.stdout)["projects"]
    assert [(p["id"], p["path"], p["state"]) for p in projects] == [("docs", str(folder), "idle")]

    idle = json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
    assert (idle["state"], idle["step"], idle["steps"]) == ("idle", 0, 6)

    stream = SseReader(d, "/api/v1/projects/docs/progress/stream")
    try:
        stream.wait_for(lambda e: e["state"] == "idle")
        r = d.curl("-X", "POST", "-w", "\n%{http_code}", "http://localhost/api/v1/projects/docs/snapshots")
        body, _, status = r.stdout.rpartition("\n")
        assert status == "202"
        started = json.loads(body)
        run = started["run"]
        assert started["stream"] == "/api/v1/projects/docs/progress/stream"
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL)
    finally:
        stream.close()
    assert stream.raw[0].startswith("retry:")
    assert final["state"] == "completed", final
    run_events = [e for e in stream.events if e["run"] == run]
    steps = [e["step"] for e in run_events]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 6 and {2, 3, 4, 5} <= set(steps)
    percents = [e["percent"] for e in run_events]
    assert percents == sorted(percents) and percents[-1] == 100
    ids = [e["event_id"] for e in stream.events]
    assert ids == sorted(set(ids))
    snap = final["snapshot"]
    assert snap["files"] == len(files)  # regular files; dirs and the symlink are entries too
    assert snap["files_new"] >= len(files) and snap["warnings"] == 0
    assert "completed" in final["message"] and final["error"] is None

    # The polled progress shows the finished run.
    polled = json.loads(d.curl("http://localhost/api/v1/projects/docs/progress").stdout)
    assert polled["run"] == run and polled["state"] == "completed" and polled["event_id"] == final["event_id"]
    listed = json.loads(d.curl("http://localhost/api/v1/projects/docs/snapshots").stdout)["snapshots"]
    assert [s["id"] for s in listed] == [snap["id"]]

    # Offline commands work while the daemon runs.
    out = d.cli("snapshots")
    assert out.returncode == 0 and snap["id"] in out.stdout and "docs" in out.stdout
    target = short_tmp / "restored"
    out = d.cli("restore", snap["id"], str(target))
    assert out.returncode == 0, out.stderr
    for rel, data in files.items():
        assert (target / rel).read_bytes() == data
    assert os.readlink(target / "link") == "d0/sub0/f0.txt"
    assert not filecmp.dircmp(folder, target).diff_files
    assert d.cli("check").returncode == 0

    assert d.stop() == 0
    assert not (short_tmp / "run/syncsnap/syncsnapd.json").exists()


def test_tcp_needs_token_and_loopback_host(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=2)
    d: DaemonProcess = daemon_factory({"p": folder})
    host, port = d.tcp.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    url = f"http://127.0.0.1:{port}/api/v1/health"

    def get(*headers: str) -> tuple[int, str]:
        args = ["curl", "-sS", "-w", "\n%{http_code}", url]
        for h in headers:
            args += ["-H", h]
        out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
        body, _, code = out.rpartition("\n")
        return int(code), body

    code, body = get()
    assert code == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert get("Authorization: Bearer wrong")[0] == 401
    code, body = get(f"Authorization: Bearer {d.token}")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, body = get(f"Authorization: Bearer {d.token}", "Host: evil.example:8473")
    assert code == 403 and json.loads(body)["error"]["code"] == "forbidden_host"
    assert get(f"Authorization: Bearer {d.token}", f"Host: localhost:{port}")[0] == 200
    token_mode = os.stat(d.discovery["token_file"]).st_mode & 0o777  # type: ignore[arg-type]
    assert token_mode == 0o600
    assert os.stat(d.socket).st_mode & 0o777 == 0o600


def test_sigterm_mid_snapshot_cancels_run_and_exits_quickly(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "big"
    folder.mkdir()
    # Enough incompressible content that the run is still going when SIGTERM arrives.
    for i in range(40):
        (folder / f"f{i}.bin").write_bytes(os.urandom(4 << 20))
    d: DaemonProcess = daemon_factory({"big": folder})
    stream = SseReader(d, "/api/v1/events")
    try:
        stream.wait_for(lambda e: e["project"] == "big")
        run = json.loads(d.curl("-X", "POST", "http://localhost/api/v1/projects/big/snapshots").stdout)["run"]
        stream.wait_for(lambda e: e["run"] == run and e["step"] >= 4)
        t0 = time.monotonic()
        code = d.stop(signal.SIGTERM)
        elapsed = time.monotonic() - t0
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL, timeout=10)
    finally:
        stream.close()
    assert code == 0 and elapsed < 5
    assert final["state"] == "cancelled" and final["error"]["code"] == "shutdown"
    assert not (short_tmp / "run/syncsnap/syncsnapd.json").exists()
    # The store is consistent and holds no snapshot of the cancelled run.
    check = subprocess.run([sys.executable, "-m", "syncsnapd", "check", "--config", str(d.config)], env=d.env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    snaps = subprocess.run([sys.executable, "-m", "syncsnapd", "snapshots", "--config", str(d.config)],
                           env=d.env, capture_output=True, text=True, timeout=60)
    assert "big" not in snaps.stdout.split("\n", 1)[-1]


def test_second_daemon_on_same_socket_refuses_with_clear_message(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=1)
    d: DaemonProcess = daemon_factory({"p": folder})
    second = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(d.config)], env=d.env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"another syncsnapd (pid {d.proc.pid}) is running and serving on {d.socket}" in second.stderr
    # The first daemon is unharmed.
    assert json.loads(d.curl("http://localhost/api/v1/health").stdout)["status"] == "ok"


def test_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=1)
    sock_path = short_tmp / "run/syncsnap/syncsnapd.sock"
    sock_path.parent.mkdir(parents=True, mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.close()  # a socket file nobody listens on, as a killed daemon leaves behind
    d = start_daemon(short_tmp, {"p": folder})
    try:
        assert json.loads(d.curl("http://localhost/api/v1/health").stdout)["status"] == "ok"
    finally:
        d.stop()


def test_embedded_default_needs_no_config(short_tmp: Path) -> None:
    """`syncsnapd` with no arguments (the README's Quick start): ~/Sync is created and served."""
    env = make_env(short_tmp)
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        disc = short_tmp / "run/syncsnap/syncsnapd.json"
        deadline = time.monotonic() + 20
        while not disc.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        info = json.loads(disc.read_text())
        assert info["tcp"] == "127.0.0.1:8473" and info["socket"] == str(short_tmp / "run/syncsnap/syncsnapd.sock")
        out = subprocess.run(["curl", "-sS", "--unix-socket", info["socket"], "http://localhost/api/v1/projects"],
                             capture_output=True, text=True, timeout=10).stdout
        (project,) = json.loads(out)["projects"]
        assert project["id"] == "Sync" and project["path"] == str(short_tmp / "home/Sync")
        assert (short_tmp / "home/Sync").is_dir()
        assert (short_tmp / "data/syncsnap/store/config.json").exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
