"""systemd integration with systemd's own tools (no systemd as PID 1 needed): unit verification and
exposure, socket activation through systemd-socket-activate, sd_notify on a real datagram socket,
watchdog, reload, and MemoryDenyWriteExecute's rule applied to the real daemon."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers.daemon import REPO, make_env, make_tree, write_config
from syncsnapd.service import Notifier, serve_watchdog, watchdog_interval

UNITS = REPO / "systemd"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd tools not installed")


# --- the unit files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", sorted(str(p.relative_to(UNITS)) for p in UNITS.rglob("*.service"))
                         + sorted(str(p.relative_to(UNITS)) for p in UNITS.rglob("*.socket")))
def test_unit_verifies_without_any_warning(unit: str, tmp_path: Path) -> None:
    path = UNITS / unit
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), SYSTEMD_LOG_COLOR="0")
    user = ["--user"] if not unit.startswith("system/") else []
    # Verify from a copy in a clean directory, so sibling units resolve as they will once installed.
    work = tmp_path / "units"
    shutil.copytree(path.parent, work)
    proc = subprocess.run(["systemd-analyze", "verify", *user, str(work / path.name)], env=env,
                          capture_output=True, text=True, timeout=60)
    # verify returns 0 on mere warnings: any output at all is a failure.
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr + proc.stdout


def test_system_unit_exposure_is_2_or_lower(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                           str(UNITS / "system/syncsnapd.service")], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for syncsnapd.service: (\d+\.\d)", proc.stdout)
    assert m is not None, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0 and proc.returncode == 0, proc.stdout[-2000:]


def test_units_carry_the_hardening_the_issue_names() -> None:
    text = (UNITS / "system/syncsnapd.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=", "ProtectSystem=strict", "ReadWritePaths=",
                 "ProtectHome=read-only", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "SystemCallArchitectures=native", "LockPersonality=yes", "RestrictRealtime=yes", "UMask=0077",
                 "MemoryDenyWriteExecute=yes", "User=syncsnap"):
        assert line in text, line


def test_documentation_lines_name_what_exists_and_install_steps_agree() -> None:
    """A `Documentation=` must open: a `file:` that nothing installs, or a `man:` page that does not exist,
    is a dead link in `systemctl status`. And the units and the README give the same install command,
    one that works from a clone (`pipx install .`: pyproject.toml is at the top of the repository)."""
    units = sorted(UNITS.rglob("*.service")) + sorted(UNITS.rglob("*.socket"))
    for unit in units:
        for uri in re.findall(r"^Documentation=(.*)$", unit.read_text(), re.MULTILINE):
            for one in uri.split():
                if one.startswith("file://"):
                    assert Path(one[len("file://"):]).exists(), f"{unit.name}: {one} is installed by nothing"
                else:
                    assert one.startswith("man:"), f"{unit.name}: {one} cannot be opened offline"
                    page = one[len("man:"):].replace("(", " ").rstrip(")").split()
                    assert subprocess.run(["man", "-w", *page[::-1]], capture_output=True).returncode == 0, one
    readme = (REPO / "README.md").read_text()
    systemd_section = readme[readme.index("## Running as a systemd service"):]
    commands = {m for text in [systemd_section, *(u.read_text() for u in units)]
                for m in re.findall(r"pipx install ([^`\s]+)", text)}
    assert commands == {"."}, commands
    assert (REPO / "pyproject.toml").exists()
    # The user units start the command from where `pipx install .` puts it.
    for name in ("syncsnapd.service", "syncsnap-notify.service"):
        assert "Environment=PATH=%h/.local/bin:" in (UNITS / "user" / name).read_text(), name


# --- the real daemon under systemd's protocols --------------------------------------------------------

class NotifyListener:
    """The test's NOTIFY_SOCKET: a bound AF_UNIX datagram socket, as systemd has."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []

    def read(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.read(max(0.01, deadline - time.monotonic()))
            if msg is not None and key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages[-5:]}")


def _curl(sock: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--unix-socket", sock, *args, f"http://localhost{path}"],
                          capture_output=True, text=True, timeout=30)


def _start(base: Path, config: Path, env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "syncsnapd", "--config", str(config)], env=env,
                            stderr=open(base / "daemon.log", "ab"), **popen)


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_ready_status_watchdog_stopping(short_tmp: Path, abstract: bool) -> None:
    folder = short_tmp / "docs"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i}").write_bytes(os.urandom(2 << 20))
    env = make_env(short_tmp)
    cfg = write_config(short_tmp, {"docs": folder}, tcp="")
    address = f"@syncsnap-test-{os.getpid()}-{abstract}" if abstract else str(short_tmp / "notify.sock")
    listener = NotifyListener(address)
    env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
    proc = _start(short_tmp, cfg, env)
    try:
        ready = listener.wait_for("READY", "1")
        sock = str(short_tmp / "run/syncsnap/syncsnapd.sock")
        # READY=1 comes only once the socket answers.
        assert json.loads(_curl(sock, "/api/v1/health").stdout)["status"] == "ok"
        assert ready.get("STATUS") == "1 project, idle"
        # Watchdog pings every WATCHDOG_USEC / 2 = 0.2 s.
        t0 = time.monotonic()
        pings = []
        while time.monotonic() - t0 < 1.5:
            msg = listener.read(0.5)
            if msg and msg.get("WATCHDOG") == "1":
                pings.append(listener.messages[-1][0])
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert 5 <= len(pings) <= 9 and all(0.1 < g < 0.35 for g in gaps), gaps
        _curl(sock, "/api/v1/projects/docs/snapshots", "-X", "POST")
        status = listener.wait_for("STATUS", None)
        while not re.match(r"docs: (waiting|browsing|compressing|uploading) \d+% \(1 project\)", status["STATUS"]):
            status = listener.wait_for("STATUS", None)
        listener.wait_for("STATUS", "1 project, idle", timeout=60)
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1")
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


async def test_a_blocked_loop_stops_the_watchdog_pings(short_tmp: Path) -> None:
    address = str(short_tmp / "wd.sock")
    listener = NotifyListener(address)
    listener.sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": address})
    interval = watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
    assert interval == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}) is None  # not ours

    def drain() -> int:
        n = 0
        while True:
            try:
                listener.sock.recv(100)
                n += 1
            except BlockingIOError:
                return n

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_watchdog, notifier, interval)
        await trio.sleep(0.55)
        assert 5 <= drain() <= 7
        time.sleep(0.6)  # noqa: ASYNC251 -- deliberately block the Trio loop: no task runs, no ping is sent
        assert drain() == 0
        await trio.sleep(0.35)
        assert drain() >= 3  # pings resume with the loop
        nursery.cancel_scope.cancel()
    notifier.close()


def test_socket_activation_serves_on_passed_sockets_and_binds_nothing(short_tmp: Path) -> None:
    folder = short_tmp / "p"
    make_tree(folder, files=3)
    env = make_env(short_tmp)
    # The config names other addresses: the daemon must use what systemd passed, not bind these.
    cfg = write_config(short_tmp, {"p": folder}, tcp="127.0.0.1:0")
    passed_sock = short_tmp / "activated.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["systemd-socket-activate", "-l", str(passed_sock), "-l", f"127.0.0.1:{port}", "--fdname=unix:tcp"]
    for key in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "PATH"):
        args += ["-E", f"{key}={env[key]}"]
    proc = subprocess.Popen([*args, sys.executable, "-m", "syncsnapd", "--config", str(cfg)],
                            stderr=open(short_tmp / "daemon.log", "wb"))
    try:
        deadline = time.monotonic() + 20
        while not passed_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        # systemd-socket-activate starts the daemon on the first connection; curl waits in the backlog.
        health = json.loads(_curl(str(passed_sock), "/api/v1/health").stdout)
        assert health["status"] == "ok" and health["pid"] == proc.pid
        # The discovery file is written once start-up is complete, which may be just after the first answer.
        disc_file = short_tmp / "run/syncsnap/syncsnapd.json"
        while not disc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        disc = json.loads(disc_file.read_text())
        assert disc["socket"] == str(passed_sock) and disc["tcp"] == f"127.0.0.1:{port}"
        assert not (short_tmp / "run/syncsnap/syncsnapd.sock").exists()  # bound nothing itself
        token = Path(disc["token_file"]).read_text().strip()
        out = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {token}",
                              f"http://127.0.0.1:{port}/api/v1/projects"], capture_output=True, text=True,
                             timeout=30)
        assert [p["id"] for p in json.loads(out.stdout)["projects"]] == ["p"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert passed_sock.exists()  # never unlinks a socket systemd passed
        log = (short_tmp / "daemon.log").read_text()
        assert "socket activation: unix" in log and "tcp" in log
    finally:
        proc.kill()
        proc.wait()


def _wait_event(lines: list[dict[str, Any]], pred: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in list(lines):
            if pred(e):
                return e
        time.sleep(0.02)
    raise AssertionError(f"no matching event in {lines[-3:]}")


def test_sighup_reload_adds_and_removes_projects_keeping_streams_and_runs(short_tmp: Path) -> None:
    import threading

    big = short_tmp / "big"
    big.mkdir()
    for i in range(40):
        (big / f"f{i}").write_bytes(os.urandom(3 << 20))
    old = short_tmp / "old"
    make_tree(old, files=2)
    new = short_tmp / "new"
    make_tree(new, files=2)
    env = make_env(short_tmp)
    listener = NotifyListener(str(short_tmp / "notify.sock"))
    env["NOTIFY_SOCKET"] = listener.address
    cfg = write_config(short_tmp, {"big": big, "old": old}, tcp="")
    proc = _start(short_tmp, cfg, env)
    sock = str(short_tmp / "run/syncsnap/syncsnapd.sock")
    events: list[dict[str, Any]] = []
    listener.wait_for("READY", "1")
    stream = subprocess.Popen(["curl", "-sSN", "--unix-socket", sock, "http://localhost/api/v1/events"],
                              stdout=subprocess.PIPE, text=True)

    def read() -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))

    threading.Thread(target=read, daemon=True).start()
    try:
        run = json.loads(_curl(sock, "/api/v1/projects/big/snapshots", "-X", "POST").stdout)["run"]
        _wait_event(events, lambda e: e["run"] == run and e["step"] >= 3)
        write_config(short_tmp, {"big": big, "new": new}, tcp="")
        proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        listener.wait_for("READY", "1")
        ids = [p["id"] for p in json.loads(_curl(sock, "/api/v1/projects").stdout)["projects"]]
        assert ids == ["big", "new"]
        assert _curl(sock, "/api/v1/projects/old/progress", "-w", "%{http_code}").stdout.endswith("404")
        # The running snapshot of the unchanged project finishes, on the stream opened before the reload.
        done = _wait_event(events, lambda e: e["run"] == run and e["state"] in ("completed", "failed", "cancelled"))
        assert done["state"] == "completed"
        # An invalid config is refused; the current one stays in force.
        cfg.write_text(cfg.read_text() + "\n[daemon.oops]\n")
        proc.send_signal(signal.SIGHUP)
        listener.wait_for("READY", "1")
        ids = [p["id"] for p in json.loads(_curl(sock, "/api/v1/projects").stdout)["projects"]]
        assert ids == ["big", "new"]
        assert "reload refused" in (short_tmp / "daemon.log").read_text()
        assert stream.poll() is None  # the stream stayed open throughout
    finally:
        stream.kill()
        proc.kill()
        proc.wait()


def test_daemon_runs_under_memory_deny_write_execute(short_tmp: Path) -> None:
    """MemoryDenyWriteExecute=yes in the units: the kernel's PR_SET_MDWE applies the same rule (no
    writable+executable memory, ever) to the real daemon; a snapshot, the HTTP API and restore work."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_mdwe, pr_get_mdwe = 65, 66
    if libc.prctl(pr_get_mdwe, 0, 0, 0, 0) < 0:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")

    def mdwe() -> None:
        if libc.prctl(pr_set_mdwe, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE")

    folder = short_tmp / "p"
    files = make_tree(folder, files=20, size=200_000)
    env = make_env(short_tmp)
    cfg = write_config(short_tmp, {"p": folder}, watch=True)
    proc = _start(short_tmp, cfg, env, preexec_fn=mdwe)
    try:
        sock = short_tmp / "run/syncsnap/syncsnapd.sock"
        deadline = time.monotonic() + 30
        snaps: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not snaps:
            if sock.exists():
                out = _curl(str(sock), "/api/v1/projects/p/snapshots").stdout
                snaps = json.loads(out)["snapshots"] if out else []
            time.sleep(0.1)
        assert proc.poll() is None, (short_tmp / "daemon.log").read_text()
        assert snaps and snaps[0]["files"] == len(files)
        target = short_tmp / "restored"
        out = subprocess.run([sys.executable, "-m", "syncsnapd", "restore", snaps[0]["id"], str(target),
                              "--config", str(cfg)], env=env, capture_output=True, text=True, timeout=60,
                             preexec_fn=mdwe)
        assert out.returncode == 0, out.stderr
        assert all((target / rel).read_bytes() == data for rel, data in files.items())
    finally:
        proc.kill()
        proc.wait()
