"""The dashboard's JavaScript unit tests (``tests/dashboard/*.test.mjs``), run by Node's own test runner.

``node --test`` with Node's built-ins only (no npm packages). The policy, ordering, store and format
modules are plain ES modules with no DOM, timers from an injected clock: the tests run them on virtual
time (``fakes.mjs``), as the Python follower's autojump_clock tests do.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def test_node_unit_tests_pass() -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (Debian: apt-get install nodejs); the dashboard's JS tests need it")
    files = sorted(str(p.relative_to(REPO)) for p in HERE.glob("*.test.mjs"))
    assert files, "no *.test.mjs found"
    proc = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"node --test failed (exit {proc.returncode}):\n{output}", pytrace=False)
    summary = {k: int(v) for k, v in (line[2:].split(" ", 1) for line in output.splitlines()
                                      if line.startswith(("# tests ", "# pass ", "# fail ")))}
    assert summary.get("fail") == 0 and summary.get("tests", 0) >= 30, output
