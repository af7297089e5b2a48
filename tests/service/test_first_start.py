"""The daemon's start as a new user meets it (issue 16), real daemons over real sockets: a TCP port that is
taken, the common settings as flags, a config without projects, a second daemon in the same runtime
directory, ``--folder`` ids, and the token file only when TCP is on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from helpers.daemon import DaemonProcess, api, make_env, make_tree, spawn_daemon, wait_until, write_config


def start_with(base: Path, *args: str) -> DaemonProcess:
    """``syncsnapd ARGS`` (no config file: XDG dirs under ``base``) until its discovery file names it."""
    env = make_env(base)
    disc = base / "run/syncsnap/syncsnapd.json"
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(base / "daemon.log", "ab"))
    found = wait_until(lambda: proc.poll() is not None or _names(disc, proc.pid), 20, "the daemon to start")
    assert proc.poll() is None, (base / "daemon.log").read_text()
    return DaemonProcess(base, base / "none.toml", env, proc, found)


def _names(disc: Path, pid: int) -> dict[str, object] | None:
    try:
        info: dict[str, object] = json.loads(disc.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("pid") == pid else None


def curl_tcp(d: DaemonProcess, path: str) -> dict[str, object]:
    r = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {d.token}", f"http://{d.tcp}/api/v1{path}"],
                       capture_output=True, text=True, timeout=20)
    out: dict[str, object] = json.loads(r.stdout)
    return out


# --- item 5: the TCP port is taken ---------------------------------------------------------------------------

def test_a_taken_tcp_port_moves_to_the_next_free_one_and_says_why(short_tmp: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    make_tree(short_tmp / "docs", files=1)
    d = spawn_daemon(short_tmp, write_config(short_tmp, {"docs": short_tmp / "docs"}, tcp=f"127.0.0.1:{port}"))
    try:
        host, bound = d.tcp.rsplit(":", 1)
        assert host == "127.0.0.1" and port < int(bound) <= port + 10
        assert curl_tcp(d, "/health")["status"] == "ok"  # published, and served
        assert api(d, "/health")["status"] == "ok"  # the Unix socket too
        log = (short_tmp / "daemon.log").read_text()
        assert (f"TCP address 127.0.0.1:{port} (daemon.tcp) is in use by another program, perhaps another user's "
                f"syncsnapd; serving TCP on {d.tcp} instead") in log
        assert "cannot start" not in log
    finally:
        d.stop()
        squatter.close()


# --- items 6 and 9: flags for the common settings; --folder ids --------------------------------------------

def test_flags_set_socket_tcp_store_and_state_dir_and_folder_ids_do_not_depend_on_order(short_tmp: Path) -> None:
    for name in ("a/docs", "b/docs", "c/Photos"):
        make_tree(short_tmp / name, files=1)
    folders = [short_tmp / "b/docs", short_tmp / "c/Photos", short_tmp / "a/docs"]
    d = start_with(short_tmp, *[a for f in folders for a in ("--folder", str(f))], "--socket",
                   str(short_tmp / "run/syncsnap/mine.sock"), "--tcp", "", "--store", str(short_tmp / "st"),
                   "--state-dir", str(short_tmp / "sd"))
    try:
        assert (d.socket, d.discovery["tcp"]) == (str(short_tmp / "run/syncsnap/mine.sock"), None)
        ids = {p["path"]: p["id"] for p in api(d, "/projects")["projects"]}
        assert ids == {str(short_tmp / "a/docs"): "docs", str(short_tmp / "b/docs"): "docs-2",
                       str(short_tmp / "c/Photos"): "Photos"}
        assert (short_tmp / "st/config.json").exists() and (short_tmp / "sd/history.sqlite3").exists()
        assert "serving 3 projects" in (log := (short_tmp / "daemon.log").read_text())
        assert "(config: --folder)" in log and "embedded default" not in log
        # Item 12: the token file is made only when TCP is on.
        assert not (short_tmp / "cfg/syncsnap/token").exists()
    finally:
        d.stop()


# --- item 7: a config without projects ------------------------------------------------------------------------

def test_a_config_without_projects_warns_at_start_and_in_health(short_tmp: Path) -> None:
    cfg = write_config(short_tmp, {})
    d = spawn_daemon(short_tmp, cfg)
    try:
        health = api(d, "/health")
        assert health["projects"] == 0
        assert health["warnings"] == [f"no projects configured: add [[projects]] or use --folder (config: {cfg})"]
        assert (f"WARNING syncsnapd: no projects configured: add [[projects]] or use --folder (config: {cfg})"
                in (short_tmp / "daemon.log").read_text())
    finally:
        d.stop()
    make_tree(short_tmp / "docs", files=1)
    d = spawn_daemon(short_tmp, cfg, "--folder", str(short_tmp / "docs"))
    try:
        assert api(d, "/health")["warnings"] == []
    finally:
        d.stop()


# --- item 8: a second daemon in the same runtime directory ---------------------------------------------------

def test_a_second_daemon_with_another_socket_refuses_and_leaves_the_first_found(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=1)
    first = spawn_daemon(short_tmp, write_config(short_tmp, {"docs": short_tmp / "docs"}))
    disc = short_tmp / "run/syncsnap/syncsnapd.json"
    try:
        second = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(first.config), "--socket",
                                 str(short_tmp / "run/syncsnap/other.sock"), "--store", str(short_tmp / "store2"),
                                 "--state-dir", str(short_tmp / "state2")],
                                env=first.env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.splitlines()[-1].split(" ", 2)[2] == (
            f"ERROR syncsnapd: cannot start: another syncsnapd (pid {first.proc.pid}) is running and serving on "
            f"{first.socket} (discovery file {disc}); stop it first, or start this one with another XDG_RUNTIME_DIR")
        assert json.loads(disc.read_text())["pid"] == first.proc.pid
        assert api(first, "/health")["status"] == "ok"
        assert not (short_tmp / "run/syncsnap/other.sock").exists()
    finally:
        first.stop()


def test_a_stale_discovery_file_is_replaced(short_tmp: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    disc = short_tmp / "run/syncsnap/syncsnapd.json"
    (short_tmp / "run").mkdir(mode=0o700)
    disc.parent.mkdir(mode=0o700)
    disc.write_text(json.dumps({"pid": dead.pid, "socket": str(short_tmp / "run/syncsnap/old.sock"), "tcp": None,
                                "version": "0", "token_file": None}))
    make_tree(short_tmp / "docs", files=1)
    d = spawn_daemon(short_tmp, write_config(short_tmp, {"docs": short_tmp / "docs"}))  # waits for its file
    try:
        assert api(d, "/health")["pid"] == d.proc.pid
    finally:
        d.stop()
