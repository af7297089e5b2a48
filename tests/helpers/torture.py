"""The torture suite's two sizes and its record of what it tried (tests/torture/, docs/robustness.md).

Every torture test runs in two sizes: short in the ordinary suite (CI: a few minutes for the whole
folder), long under ``make torture`` (``SYNCSNAP_TORTURE=long``: bounded, about 30 minutes in all on 2
cores). A test picks its numbers with :func:`scale` and records what it tried and what it found with
:func:`record`; ``python -m bench torture-report`` turns the records of a ``make torture`` run into the
table of docs/robustness.md. Records go to the JSON-lines file named by ``SYNCSNAP_TORTURE_RESULTS``, and
nowhere when it is unset (an ordinary test run).

Naming figures (the report aggregates every section the same way, without knowing it):

- counts are added up across the records of a section (``kills=8`` twice gives 16);
- a figure named with a word ``peak``, ``max`` or ``p99`` (``peak_rss_bytes``, ``max_queue``,
  ``p99_ms``) keeps the largest value; ``min`` the smallest;
- a figure named with a word for what went wrong (``lost``, ``duplicated``, ``out_of_order``,
  ``failures``, ``mismatches``, ``problems``, ``died``, ``unrecorded``, ``errors``, ``crashes``,
  ``tracebacks``, ``violations``, ``leaked``) must be zero: the report marks it and fails otherwise;
- strings are listed (distinct values).

The acceptance table of docs/robustness.md reads these names across all sections: ``kills`` (SIGKILLs
survived), ``injected`` (faults injected), ``cuts``, ``restarts``, ``events_compared``, ``lost``,
``duplicated``, ``out_of_order``, any name ending in ``inputs`` (hostile inputs tried) and any ``peak``
figure with ``rss`` in its name (the daemon's peak RSS under abuse; ``_bytes``, ``_kib`` or ``_mib``).
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
    order events) are named for what went wrong, so the report can mark them (see the module docstring).
    """
    path = os.environ.get("SYNCSNAP_TORTURE_RESULTS")
    if not path:
        return
    line = json.dumps({"section": section, "at": time.time(), "long": LONG, **figures}, sort_keys=True)
    with open(path, "a") as f:
        f.write(line + "\n")


class Deadline:
    """A wall-clock budget for a torture loop: ``while budget.left() and i < n`` keeps every loop bounded
    in time as well as in count (the long suite must stop by itself)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end
