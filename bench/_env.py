"""The machine, the tools' versions, installing the Debian tools the bench compares against."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ._proc import output

# Debian package -> command it provides.
DEBIAN_TOOLS = {"restic": "restic", "borgbackup": "borg", "wrk": "wrk"}


def ensure_debian_tools(log: Callable[[str], None]) -> list[str]:
    """Install restic, borg and wrk from Debian when missing. Returns what is still missing."""
    missing = [pkg for pkg, cmd in DEBIAN_TOOLS.items() if shutil.which(cmd) is None]
    if not missing:
        return []
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log(f"installing {' '.join(missing)} from Debian (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=False, env=env, timeout=300,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *missing],
                       check=False, env=env, timeout=600, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"apt-get failed: {exc}")
    return [pkg for pkg, cmd in DEBIAN_TOOLS.items() if shutil.which(cmd) is None]


def raise_nofile(want: int = 8192) -> int:
    """Raise the soft open-files limit (children inherit it) so 1,000 SSE subscribers fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(work: Path) -> dict[str, str]:
    fs = output(["df", "--output=fstype", str(work)]).splitlines()
    debian = Path("/etc/debian_version")
    return {
        "nproc": str(os.cpu_count()),
        "RAM": f"{_meminfo_total() / 2**30:.1f} GiB",
        "CPU": _cpu_model(),
        "kernel": platform.release(),
        "OS": f"Debian {debian.read_text().strip()}" if debian.exists() else platform.platform(),
        "filesystem of the work dir": fs[-1].strip() if fs else "unknown",
    }


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None:
            return "not installed"
        out = output(argv)
        return out.splitlines()[0] if out else "unknown"

    return {
        "Python": platform.python_version(),
        "syncsnap": _pkg("syncsnap"),
        "trio": _pkg("trio"),
        "h11": _pkg("h11"),
        "blake3 (Python)": _pkg("blake3"),
        "zstandard (Python)": _pkg("zstandard"),
        "hypercorn": _pkg("hypercorn"),
        "restic": first_line(["restic", "version"]),
        "borg": first_line(["borg", "--version"]),
        "wrk": first_line(["wrk", "-v"]),
    }
