"""A daemon started for real, as a user would run it, with its XDG dirs under a temp dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent


def make_env(base: Path) -> dict[str, str]:
    # The store's passphrase (set by helpers.s3.s3_env for S3 stores, encrypted by default) is passed on.
    keep = ("SYNCSNAP_PASSWORD_FILE", "SYNCSNAP_SCRYPT_N")
    env = {k: v for k, v in os.environ.items()
           if k in keep or not k.startswith(("XDG_", "SYNCSNAP_", "NOTIFY_", "LISTEN_"))}
    env.update({"HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "run"),
                "XDG_CONFIG_HOME": str(base / "cfg"), "XDG_DATA_HOME": str(base / "data"),
                "XDG_STATE_HOME": str(base / "state")})
    (base / "run").mkdir(mode=0o700, exist_ok=True)
    return env


def write_config(base: Path, projects: dict[str, Path], *, tcp: str = "127.0.0.1:0", heartbeat: float = 15,
                 watch: bool = False, extra_daemon: str = "") -> Path:
    """A daemon config under ``base``; automatic snapshots (watching) are off unless asked for."""
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', f'tcp = "{tcp}"',
             f'store = "{base}/store"', f'state_dir = "{base}/state"', f'token_file = "{base}/token"',
             f"heartbeat = {heartbeat}", f"watch = {'true' if watch else 'false'}", extra_daemon]
    for pid, path in projects.items():
        lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"']
    cfg = base / "syncsnapd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@dataclass
class DaemonProcess:
    """A syncsnapd started as a subprocess, as a user would run it."""

    base: Path
    config: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    discovery: dict[str, object] = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return str(self.discovery["socket"])

    @property
    def tcp(self) -> str:
        return str(self.discovery["tcp"])

    @property
    def token(self) -> str:
        return Path(str(self.discovery["token_file"])).read_text().strip()

    def curl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "--unix-socket", self.socket, *args], capture_output=True,
                              text=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "syncsnapd", *args, "--config", str(self.config)],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def spawn_daemon(base: Path, config: Path, *args: str, launcher: tuple[str, ...] = ()) -> DaemonProcess:
    """Start ``syncsnapd --config CONFIG`` with the XDG dirs under ``base``; return once it is serving
    (its discovery file names its pid). The log goes to ``base/daemon.log`` (appended). ``launcher`` is
    a command that execs its arguments (no fork, so the daemon keeps the pid started here)."""
    env = make_env(base)
    disc = base / "run/syncsnap/syncsnapd.json"
    proc = subprocess.Popen([*launcher, sys.executable, "-m", "syncsnapd", "--config", str(config), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "ab"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {(base / 'daemon.log').read_text()}")
        try:
            info = json.loads(disc.read_text())
            if info.get("pid") == proc.pid:
                return DaemonProcess(base, config, env, proc, info)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("daemon did not start within 20 s")


def start_daemon(base: Path, projects: dict[str, Path], **kw: object) -> DaemonProcess:
    """Write a config for ``projects`` (see :func:`write_config`) and start a daemon on it."""
    return spawn_daemon(base, write_config(base, projects, **kw))  # type: ignore[arg-type]


def make_tree(root: Path, files: int = 20, size: int = 3000) -> dict[str, bytes]:
    """A small project folder with nested dirs, a symlink and an odd name; returns path -> content."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i % 3}/sub{i % 2}/f{i}.txt"
        data = (f"file {i} ".encode() * (size // 8 + i))[: size + i]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = data
    (root / "odd name ü.txt").write_bytes(b"odd")
    out["odd name ü.txt"] = b"odd"
    os.symlink("d0/sub0/f0.txt", root / "link")
    return out


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The first true value of ``predicate()``, asked every ``interval`` s; AssertionError naming ``what``
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def api(d: DaemonProcess, path: str, method: str = "GET", body: object = None) -> Any:
    """``curl`` a daemon's API over its Unix socket (``path`` below /api/v1); the decoded JSON answer."""
    args = ["-X", method, f"http://localhost/api/v1{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return json.loads(d.curl(*args).stdout)
