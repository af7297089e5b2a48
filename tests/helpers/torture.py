"""The torture suite's two sizes and its record of what it tried (tests/torture/, docs/robustness.md).

Every torture test runs in two sizes: short in the ordinary suite (CI: a few minutes for the whole
folder), long under ``make torture`` (``SYNCSNAP_TORTURE=long``: bounded, about 30 minutes in all on 2
cores). A test picks its numbers with :func:`scale` and records what it tried and what it found with
:func:`record`; ``python -m bench torture-report`` turns the records of a ``make torture`` run into the
table of docs/robustness.md. Records go to the JSON-lines file named by ``SYNCSNAP_TORTURE_RESULTS``, and
nowhere when it is unset (an ordinary test run).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

LONG = os.environ.get("SYNCSNAP_TORTURE", "short") == "long"


def scale(short: int, long: int) -> int:
    """``long`` under ``make torture``, ``short`` otherwise."""
    return long if LONG else short


def record(section: str, **figures: Any) -> None:
    """Add one test's figures to the torture record, e.g. ``record("crash loop", kills=50, lost=0)``.

    Figures are numbers (counts, seconds, bytes) or short strings; a section may be recorded by several
    tests, and the report adds their counts up. Counters that must be zero (lost, duplicated, out of
    order events) are named for what went wrong, so the report can mark them.
    """
    path = os.environ.get("SYNCSNAP_TORTURE_RESULTS")
    if not path:
        return
    line = json.dumps({"section": section, "at": time.time(), "long": LONG, **figures}, sort_keys=True)
    with open(path, "a") as f:
        f.write(line + "\n")
