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
    cpu_seconds: float = 0.0  # user + system time of the process (and its reaped children)


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
    """Run ``argv`` to completion; wall time from spawn to reap, CPU from ``wait4`` of that child, peak RSS
    from its ``VmHWM`` read every few ms while it runs.

    Not ``ru_maxrss``: Linux starts a child's maximum from the RSS of the process it was forked from (the
    memory it had before its ``exec``), so every tool this bench started showed at least the bench's own
    RSS (a ``/bin/true`` started from a process of 300 MB reports 313 MB). ``VmHWM`` is the high-water mark
    of the memory the child has since its ``exec``.
    """
    out_path = Path(f"/tmp/bench-run-{os.getpid()}.out")
    err_path = Path(f"/tmp/bench-run-{os.getpid()}.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                             stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = t0 + timeout
        hwm = 0
        while True:
            hwm = max(hwm, status_bytes(p.pid, "VmHWM") or 0)
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
    res = Timed(seconds, hwm or ru.ru_maxrss * 1024, p.returncode, stdout, stderr, ru.ru_utime + ru.ru_stime)
    if check and p.returncode != 0:
        raise CommandFailed(f"{argv[0]} exited {p.returncode}: {stderr.strip()[-800:]}")
    return res


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine (all cores) spent busy since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU-seconds of a running process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


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


# --- a process and its descendants (the scale section: the daemon may hand work to child processes) ----


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The live descendants of ``pid`` (children, grandchildren...), from the parent ids in /proc."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                parent[int(name)] = int(fields[1])
    out: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        out += sorted(frontier)
    return out


def status_bytes(pid: int, key: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` style line of /proc/PID/status, in bytes; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` plus that of its live descendants (shared pages counted in each)."""
    return sum(status_bytes(p, "VmRSS") or 0 for p in [pid, *descendants(pid)])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU-seconds of ``pid``, of its children it has reaped (cutime, cstime) and of its live
    descendants."""
    total = 0.0
    fields = _stat_fields(pid)
    if fields is not None:
        total += sum(int(x) for x in fields[11:15]) / _TICK
    for child in descendants(pid):
        f = _stat_fields(child)
        if f is not None:
            total += (int(f[11]) + int(f[12])) / _TICK
    return total


class TreePeak:
    """Samples the summed VmRSS of a process tree every ``every`` seconds on a thread until ``stop()``.

    The list of descendants is refreshed every ``rescan`` seconds (scanning /proc costs a few ms), so a
    child process that lives less than that may be missed; the daemon's own VmHWM catches its peaks."""

    def __init__(self, pid: int, every: float = 0.05, rescan: float = 0.5) -> None:
        import threading

        self.pid = pid
        self.every = every
        self.rescan = rescan
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pids = [self.pid, *descendants(self.pid)]
        last_scan = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_scan > self.rescan:
                pids = [self.pid, *descendants(self.pid)]
                last_scan = time.monotonic()
            self.peak = max(self.peak, sum(status_bytes(p, "VmRSS") or 0 for p in pids))
            self._stop.wait(self.every)

    def stop(self, *, with_hwm: bool) -> int:
        """The peak; ``with_hwm``: also the process's VmHWM (its peak since it started: right for its
        first step only)."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self.pid))
        return max(self.peak, status_bytes(self.pid, "VmHWM") or 0) if with_hwm else self.peak
