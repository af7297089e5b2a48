"""Real FUSE mounts for the mount tests (tests/mount): ``syncsnapd mount`` (or ``syncsnap mount``) run as a
subprocess, as a user runs it; the test reads the mount from its own process (never from the serving one)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HELPER = Path(__file__).resolve().parent / "store.py"


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this machine or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed (pip install 'syncsnap[mount]')"
    return None


def write_config(base: Path, projects: dict[str, Path], extra: str = "") -> Path:
    """A config with its store under ``base`` (for ``syncsnapd mount``, and a daemon if one is started)."""
    lines = ["[daemon]", f'store = "{base}/store"', f'state_dir = "{base}/state"', extra]
    for pid, path in projects.items():
        lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"']
    cfg = base / "mount.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def snapshot(store: Path, root: Path, project: str = "p") -> str:
    """Take a snapshot of ``root`` into ``store`` (created if needed) in a subprocess; its id."""
    import json

    r = subprocess.run([sys.executable, str(HELPER), "snapshot", str(store), str(root), project],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["summary"]["id"])


def is_mounted(path: Path) -> bool:
    target = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mounts", "rb") as f:
        return any(line.split(b" ")[1] == target.replace(b" ", b"\\040") for line in f)


@dataclass
class Mount:
    """A mount served by a subprocess; ``dir`` the mount point."""

    dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_mount(argv: list[str], mountpoint: Path, log: Path, env: dict[str, str] | None = None,
                timeout: float = 30) -> Mount:
    """Run ``argv`` (a mount command) and return once ``mountpoint`` is mounted."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    m = Mount(mountpoint, proc, log)
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        if proc.poll() is not None:
            raise AssertionError(f"mount exited {proc.returncode}: {m.output()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"not mounted within {timeout} s: {m.output()}")
        time.sleep(0.02)
    return m


def syncsnapd(config: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


