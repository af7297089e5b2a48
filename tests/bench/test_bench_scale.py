"""``python -m bench scale`` end to end at its smallest size (``BENCH_SCALE=tiny``): a real syncsnapd, restic
and borg, one round. What is checked is what the person running ``make bench-scale`` reads: every row of the
targets and of the measurements, in the printed tables and in the document, each measured (never the
figures themselves: speed and memory targets live in the benchmark, not in tests)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

TARGETS = [
    "initial snapshot <= 0.5x restic",
    "no-change snapshot <= 0.3x restic",
    "peak RSS <= restic's",
    "peak RSS <= 150 MB",
    "idle RSS <= 80 MB + 40 MB per million chunks",
    "insert 1 byte at the start adds < 5 MiB",
    "append 1 MiB adds < 2 MiB",
    "no-change at 100+ snapshots no slower than at 2",
    "check at 100+ snapshots <= 3x at 2",
]
MEASURES = ("wall", "CPU", "peak RSS", "store bytes added")
# Rows of the measurement table, and whether restic and borg have a figure in them too.
ROWS = (
    [(f"2k files: {step}, {m}", True) for step in ("initial", "no-change") for m in MEASURES]
    + [("2k files: idle RSS 5 s after the initial run", False),
       ("2k files: check (structure), 2 snapshots", False)]
    + [(f"64 MiB file: {step}, {m}", True)
       for step in ("initial", "append 1 MiB", "change 1 MiB in the middle", "insert 1 byte at the start")
       for m in MEASURES]
    + [(f"history (2k files): {what} at {n} snapshots", True)
       for n in (2, 12) for what in ("no-change run", "snapshot list", "check (structure)")]
)
FIGURE = r"\d[\d,.]* (s|ms|MB|MiB|KiB)\b"


def _cells(text: str, label: str, sep: str) -> list[str]:
    """The cells after ``label`` on its row (``sep``: "|" in Markdown, runs of 2+ spaces on the console)."""
    for line in text.splitlines():
        stripped = line.strip().strip("|").strip()
        if stripped.startswith(label):
            rest = stripped[len(label):]
            return [c.strip() for c in (rest.split("|") if sep == "|" else re.split(r"\s{2,}", rest))
                    if c.strip()]
    raise AssertionError(f"no row {label!r} in:\n{text}")


@pytest.mark.slow
def test_tiny_scale_prints_and_writes_every_row(tmp_path: Path) -> None:
    tools = all(shutil.which(t) for t in ("restic", "borg"))
    if not tools:
        pytest.skip("restic and borg are the baselines: install them (make setup-system)")
    doc = tmp_path / "doc" / "benchmarks-scale.md"
    env = dict(os.environ, BENCH_SCALE="tiny", BENCH_ROUNDS="1", BENCH_QUIET_BUDGET="0",
               BENCH_SCALE_WORK=str(tmp_path / "work"), BENCH_SCALE_DOC=str(doc),
               PYTHONPATH=os.pathsep.join([str(REPO / "daemon"), str(REPO / "client"), str(REPO)]))
    env.pop("BENCH_HISTORY", None)
    p = subprocess.run([sys.executable, "-m", "bench", "scale"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1500, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    md = doc.read_text()
    # Nothing failed but, at most, the profile (py-spy is optional outside the bench's venv).
    failures = [x for x in out.splitlines() if x.startswith("not measured:") and "profile" not in x]
    assert not failures, out[-3000:]

    for text, sep in ((out, " "), (md, "|")):
        for target in TARGETS:
            cells = _cells(text, target, sep)
            assert cells[-1] in ("PASS", "MISS"), (target, cells)
        for label, baselines in ROWS:
            cells = _cells(text, label, sep)
            measured = cells[:3] if baselines else cells[:1]
            assert all(re.match(FIGURE, c) for c in measured), (label, cells)

    profile = doc.parent / "profile-initial.txt"
    if "not measured: profile" not in out:
        assert "Top 30 functions by self samples" in profile.read_text()
        assert "profile-initial.txt" in md


def test_scale_refuses_a_bare_number_and_unknown_sizes() -> None:
    """``BENCH_SCALE=1.0`` is `make bench`'s scale: the scale section says so instead of guessing."""
    for value, says in (("1.0", "bare number"), ("100x", "unknown size")):
        env = dict(os.environ, BENCH_SCALE=value,
                   PYTHONPATH=os.pathsep.join([str(REPO / "daemon"), str(REPO / "client"), str(REPO)]))
        p = subprocess.run([sys.executable, "-m", "bench", "scale"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
        assert p.returncode == 2
        assert says in p.stderr
