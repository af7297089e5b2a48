"""Running external commands with wall time and peak RSS, and small helpers around processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timed:
    seconds: float
    max_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(RuntimeError):
    pass


def run_timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600.0,
    check: bool = True,
) -> Timed:
    """Run ``argv`` to completion; wall time from spawn to reap, peak RSS from ``wait4`` of that child.

    ``wait4`` gives the rusage of this one child (and its own reaped descendants), unlike
    ``RUSAGE_CHILDREN``, which accumulates the maximum over every child ever reaped.
    """
    out_path = Path(f"/tmp/bench-run-{os.getpid()}.out")
    err_path = Path(f"/tmp/bench-run-{os.getpid()}.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                             stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    res = Timed(seconds, ru.ru_maxrss * 1024, p.returncode, stdout, stderr)
    if check and p.returncode != 0:
        raise CommandFailed(f"{argv[0]} exited {p.returncode}: {stderr.strip()[-800:]}")
    return res


def output(argv: Sequence[str], timeout: float = 60.0) -> str:
    """stdout+stderr of a short command, or '' when it cannot run."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip()


def terminate(p: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
