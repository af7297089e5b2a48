"""``python -m bench torture-report RESULTS.jsonl [--out docs/robustness.md]``: the torture suite's table.

Reads the records ``tests/helpers/torture.py``'s ``record()`` wrote during a ``make torture`` run (one JSON
object per line: ``section``, ``at``, ``long`` and the test's figures) and writes docs/robustness.md: the
acceptance table of issue 11 (kills survived, faults injected, cuts and restarts, events compared, lost,
duplicated and out of order, hostile inputs tried, the daemon's peak RSS under abuse), one table per
section, and each test file's duration against its budget. It prints the same tables.

Every section is aggregated the same way, without knowing it (the naming rules are in the docstring of
``tests/helpers/torture.py``): counts are added up, ``peak``/``max``/``p99`` figures keep the largest value,
``min`` ones the smallest, strings are listed, and figures named for what went wrong must be zero. The
command exits 1 when one of those is not zero, when a row of the acceptance table is not met (a theme
recorded nothing) or when the test session failed, so ``make torture`` fails.
Sections whose name starts with ``_`` are the suite's own (``_test``: each test's outcome and seconds;
``_session``: pytest's exit status and the run's seconds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Words that name what went wrong: a figure with one of them in its name must be zero.
ZERO_WORDS = frozenset({"lost", "duplicated", "out_of_order", "failures", "mismatches", "problems", "died",
                        "unrecorded", "errors", "crashes", "tracebacks", "violations", "leaked"})
MAX_WORDS = frozenset({"peak", "max", "p99", "p95", "p50"})
MIN_WORDS = frozenset({"min"})
META = frozenset({"section", "at", "long"})

# Wall-clock budgets of the long suite (make torture), per test file, in seconds: 30 minutes in all on 2
# cores. A file over its budget is marked in the report; the whole run over TOTAL_BUDGET fails acceptance.
TOTAL_BUDGET = 30 * 60
BUDGETS = {
    "test_crash_loop.py": 6 * 60,
    "test_delivery.py": 5 * 60,
    "test_faults.py": 3 * 60,
    "test_stateful.py": 60,
    "test_hostile_trees.py": 4 * 60,
    "test_http_abuse.py": 4 * 60,
    "test_watch_abuse.py": 3 * 60,
    "test_state_faults.py": 3 * 60,
}
DEFAULT_BUDGET = 2 * 60


def _words(name: str) -> set[str]:
    parts = name.lower().split("_")
    words = set(parts)
    words |= {f"{a}_{b}_{c}" for a, b, c in zip(parts, parts[1:], parts[2:], strict=False)}
    return words


def must_be_zero(name: str) -> bool:
    return bool(_words(name) & ZERO_WORDS)


def how(name: str) -> str:
    """How a figure is aggregated across records: ``sum``, ``max``, ``min``."""
    words = _words(name)
    if words & MAX_WORDS:
        return "max"
    if words & MIN_WORDS:
        return "min"
    return "sum"


@dataclass
class Section:
    name: str
    records: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, rec: dict[str, Any]) -> None:
        self.records += 1
        for key, value in rec.items():
            if key in META:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                text = str(value)
                if text not in self.texts[key]:
                    self.texts[key].append(text)
                continue
            old = self.figures.get(key)
            if old is None:
                self.figures[key] = value
            elif how(key) == "max":
                self.figures[key] = max(old, value)
            elif how(key) == "min":
                self.figures[key] = min(old, value)
            else:
                self.figures[key] = old + value

    def bad(self) -> list[str]:
        return [k for k, v in self.figures.items() if must_be_zero(k) and v != 0]


@dataclass
class Results:
    sections: dict[str, Section]
    tests: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    long: bool
    first: float | None
    last: float | None

    def total(self, pred: Any) -> float | None:
        """The sum (or max, for peaks) of the figures whose name satisfies ``pred`` over every section."""
        values = [(k, float(v)) for s in self.sections.values() for k, v in s.figures.items() if pred(k)]
        if not values:
            return None
        if all(how(k) == "max" for k, _ in values):
            return max(v for _, v in values)
        return sum(v for _, v in values)

    def bad(self) -> list[tuple[str, str, Any]]:
        return [(s.name, k, s.figures[k]) for s in self.sections.values() for k in s.bad()]


def load(path: Path) -> Results:
    sections: dict[str, Section] = {}
    tests: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    long = False
    times: list[float] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name = str(rec["section"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{n}: not a torture record ({exc})") from None
        long = long or bool(rec.get("long"))
        if isinstance(rec.get("at"), int | float):
            times.append(float(rec["at"]))
        if name == "_test":
            tests.append(rec)
        elif name == "_session":
            sessions.append(rec)
        else:
            sections.setdefault(name, Section(name)).add(rec)
    return Results(sections, tests, sessions, long, min(times, default=None), max(times, default=None))


# --- formatting ----------------------------------------------------------------------------------------


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float) and not value.is_integer():
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
    else:
        text = f"{int(value):,}"
    lower = name.lower()
    if lower.endswith("_bytes"):
        return f"{value / 2**20:,.1f} MiB"
    if lower.endswith("_kib"):
        return f"{value / 1024:,.1f} MiB"
    if lower.endswith("_mib"):
        return f"{value:,.1f} MiB"
    if lower.endswith(("_seconds", "_s")):
        return f"{text} s"
    if lower.endswith("_ms"):
        return f"{text} ms"
    return text


def _rss(results: Results) -> tuple[str, Any]:
    best: tuple[float, str, Any] | None = None
    for s in results.sections.values():
        for k, v in s.figures.items():
            if "rss" in _words(k) and how(k) == "max":
                scale = 1.0 if k.endswith("_bytes") else 1024.0 if k.endswith("_kib") else 2.0**20
                if best is None or v * scale > best[0]:
                    best = (v * scale, k, v)
    return ("peak_rss_bytes", None) if best is None else (best[1], best[2])


def acceptance(results: Results) -> list[tuple[str, str, str, bool | None]]:
    """Rows (what, value, expected, ok); ok None where nothing is expected of the value but that it exists."""
    rows: list[tuple[str, str, str, bool | None]] = []

    def count(label: str, name: str, pred: Any) -> None:
        v = results.total(pred)
        rows.append((label, _fmt(name, v), "> 0", v is not None and v > 0))

    def zero(label: str, name: str) -> None:
        v = results.total(lambda k: k == name)
        rows.append((label, _fmt(name, v), "0", v == 0))

    count("kills survived (SIGKILL)", "kills", lambda k: k == "kills")
    count("faults injected", "injected", lambda k: k == "injected")
    count("connection cuts", "cuts", lambda k: k == "cuts")
    count("daemon restarts while following", "restarts", lambda k: k == "restarts")
    count("events compared with the history", "events_compared", lambda k: k == "events_compared")
    zero("events lost", "lost")
    zero("events duplicated", "duplicated")
    zero("events out of order", "out_of_order")
    count("hostile inputs tried", "inputs", lambda k: k.endswith("inputs"))
    name, rss = _rss(results)
    rows.append(("daemon's peak RSS under abuse", _fmt(name, rss), "bounded (see HTTP abuse)", rss is not None))
    zero_bad = results.bad()
    rows.append(("other must-be-zero figures", str(len(zero_bad)) + " not zero", "0 not zero", not zero_bad))
    seconds = sum(float(s.get("seconds", 0)) for s in results.sessions)
    if results.sessions:
        rows.append(("wall-clock time of the suite", f"{seconds / 60:.1f} min", f"< {TOTAL_BUDGET // 60} min",
                     seconds < TOTAL_BUDGET))
        failed = [t for t in results.tests if t.get("outcome") in ("failed", "error", "xpassed")]
        rows.append(("tests failed", str(len(failed)), "0", not failed))
    return rows


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _mark(ok: bool | None) -> str:
    return "yes" if ok else "**NO**"


def machine() -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem}, Linux {platform.release()}, Python {platform.python_version()}"


def file_durations(results: Results) -> list[tuple[str, float, int, dict[str, int]]]:
    files: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in results.tests:
        files[str(t.get("test", "?")).split("::")[0]].append(t)
    out = []
    for path, tests in sorted(files.items()):
        outcomes: dict[str, int] = defaultdict(int)
        for t in tests:
            outcomes[str(t.get("outcome"))] += 1
        budget = BUDGETS.get(Path(path).name, DEFAULT_BUDGET)
        out.append((path, sum(float(t.get("seconds", 0)) for t in tests), budget, dict(outcomes)))
    return out


def render(results: Results, when: datetime.datetime | None = None) -> str:
    when = when or datetime.datetime.now(datetime.UTC)
    size = "long (`make torture`, SYNCSNAP_TORTURE=long)" if results.long else "short (the ordinary suite's sizes)"
    seconds = sum(float(s.get("seconds", 0)) for s in results.sessions)
    status = [int(s.get("exitstatus", -1)) for s in results.sessions]
    lines = [
        "# Robustness: the torture suite's last run",
        "",
        "Generated by `make torture` (`python -m bench torture-report`) from the records of tests/torture/; "
        "do not edit by hand. What each theme does is in its test file's docstring; how figures are named and "
        "added up is in tests/helpers/torture.py.",
        "",
        f"- Date: {when:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- Size: {size}",
        f"- Duration: {seconds / 60:.1f} min in all (budget {TOTAL_BUDGET // 60} min on 2 cores); pytest exit "
        f"status {', '.join(map(str, status)) or 'not recorded'}",
        "",
        "## Acceptance (issue 11)",
        "",
    ]
    lines += _table(("what", "value", "expected", "met"),
                    [(a, v, e, _mark(ok)) for a, v, e, ok in acceptance(results)])
    for s in sorted(results.sections.values(), key=lambda s: s.name):
        lines += ["", f"## {s.name[:1].upper() + s.name[1:]}", "", f"{s.records} record(s).", ""]
        rows = []
        for k in sorted(s.figures):
            expected = "0" if must_be_zero(k) else how(k) if how(k) != "sum" else ""
            ok = "" if not must_be_zero(k) else _mark(s.figures[k] == 0)
            rows.append((k.replace("_", " "), _fmt(k, s.figures[k]), expected, ok))
        for k in sorted(s.texts):
            rows.append((k.replace("_", " "), "; ".join(s.texts[k]), "", ""))
        lines += _table(("figure", "value", "expected / kept", "met"), rows)
    durations = file_durations(results)
    if durations:
        lines += ["", "## Duration per test file", "",
                  f"Budgets of the long suite: {TOTAL_BUDGET // 60} min in all on 2 cores; a file over its "
                  "budget must shrink its long sizes (`scale(short, long)`) before it is merged.", ""]
        files: list[tuple[str, ...]] = [(f"`{p}`", f"{sec:,.1f} s", f"{budget:,} s", _mark(sec <= budget),
                 ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())))
                for p, sec, budget, outcomes in durations]
        lines += _table(("file", "duration", "budget", "within", "tests"), files)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench torture-report",
                                     description="Write docs/robustness.md from a torture run's records.")
    parser.add_argument("results", type=Path, help="the JSON-lines file of SYNCSNAP_TORTURE_RESULTS")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "robustness.md")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results}: no such file (run the suite with SYNCSNAP_TORTURE_RESULTS set)", file=sys.stderr)
        return 2
    results = load(args.results)
    text = render(results)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    failed = [s for s in results.sessions if int(s.get("exitstatus", 0)) != 0]
    bad = results.bad()
    for section, name, value in bad:
        print(f"{section}: {name} = {value}, must be 0", file=sys.stderr)
    unmet = [what for what, _, _, ok in acceptance(results) if not ok]
    for what in unmet:
        print(f"acceptance not met: {what}", file=sys.stderr)
    return 1 if bad or failed or unmet else 0

