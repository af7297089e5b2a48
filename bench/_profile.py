"""A py-spy profile of a running process (the daemon during an initial snapshot), and its summary.

py-spy samples the stacks of every thread that is not idle (a thread waiting in epoll, a lock or a
read of a socket is idle) ``RATE`` times a second, without stopping the process for long. With
``--native`` the stacks include C frames (zstd, blake3, the system calls' libc wrappers). The raw output
is one line per distinct stack, ``frame;frame;...;leaf COUNT``: the summary ranks functions by the
samples where they are the leaf (self time) and by those where they appear at all (inclusive time).

py-spy is looked for in ``BENCH_PYSPY``, next to the running Python (the bench's venv: the ``bench`` extra
installs it) and on ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

RATE = 100
_LINE = re.compile(r" \(([^()]*?)(?::\d+)?\)$")


def find_pyspy() -> str | None:
    env = os.environ.get("BENCH_PYSPY")
    if env:
        return env
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Recording:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`; the raw stacks go to ``out``."""

    def __init__(self, pyspy: str, pid: int, out: Path, *, native: bool = True) -> None:
        self.out = out
        self.native = native
        self.log = out.with_suffix(".log")
        out.unlink(missing_ok=True)
        # --native pauses the process for each sample (it cannot sample without blocking): the profiled
        # run is slower than a timed one, and is not one of the bench's figures.
        argv = [pyspy, "record", "--pid", str(pid), "--format", "raw", "-o", str(out), "--rate", str(RATE),
                "--threads", "--subprocesses", *(["--native"] if native else ["--nonblocking"])]
        # Attaching fails now and then ("Failed to find python version"): try a few times.
        for _ in range(5):
            with open(self.log, "wb") as logf:
                self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if b"Sampling process" in self.log.read_bytes():
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                return
            time.sleep(0.2)
        raise RuntimeError(f"py-spy did not attach: {self.log.read_text(errors='replace')[-500:]}")

    def stop(self) -> None:
        """SIGINT (py-spy then writes its output) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {self.log.read_text(errors='replace')[-500:]}")


def _func(frame: str) -> str:
    """``name (file.py:123)`` -> ``name (file.py)``: the function, whatever line was running."""
    return _LINE.sub(lambda m: f" ({m.group(1)})", frame.strip())


def summarize(raw: Path, *, title: str, top: int = 30) -> str:
    """A plain-text summary of a raw py-spy profile: samples per thread, then the ``top`` functions by
    self samples and by inclusive samples."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(n for _, n in stacks)
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in stacks:
        # --subprocesses puts the process first, --threads the thread next: both are labels, not frames.
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] += n
            frames = frames[1:]
        if not frames:
            continue
        own[_func(frames[-1])] += n
        for f in {_func(x) for x in frames}:
            incl[f] += n

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%" if total else "  n/a"

    out = [title, "",
           f"{total:,} samples at {RATE}/s of the threads that were not idle (about {total / RATE:.1f} s of "
           "thread time; two busy threads give two samples per tick).", ""]
    if threads:
        out.append("Samples per thread:")
        out += [f"  {pct(n)}  {n:>7,}  {t}" for t, n in threads.most_common(10)]
        out.append("")
    out.append(f"Top {top} functions by self samples (the frame that was running):")
    out += [f"  {pct(n)}  {n:>7,}  {f}" for f, n in own.most_common(top)]
    out.append("")
    out.append(f"Top {top} functions by inclusive samples (anywhere on the stack):")
    out += [f"  {pct(n)}  {n:>7,}  {f}" for f, n in incl.most_common(top)]
    out.append("")
    return "\n".join(out)
