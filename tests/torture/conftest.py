"""The torture suite's own record: each test's outcome and duration go into the torture record (section
``_test``), so that docs/robustness.md shows what ran, for how long, and against which budget."""

from __future__ import annotations

import time

import pytest

from helpers.torture import record

_durations: dict[str, float] = {}
_outcomes: dict[str, str] = {}
_started = time.monotonic()


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.when != "call" and report.failed:
        return "error"
    return report.outcome


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.when == "call" or report.outcome != "passed":
        if _outcomes.get(report.nodeid) in (None, "passed"):
            _outcomes[report.nodeid] = _outcome(report)
    if report.when == "teardown":
        record("_test", test=report.nodeid, outcome=_outcomes.pop(report.nodeid, "passed"),
               seconds=round(_durations.pop(report.nodeid), 3))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    record("_session", exitstatus=int(exitstatus), seconds=round(time.monotonic() - _started, 3))
