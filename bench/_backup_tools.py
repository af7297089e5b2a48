"""restic and borg, run as the user would: one fresh process per backup, wall time and peak RSS of it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._proc import run_timed


@dataclass
class StepResult:
    seconds: float
    max_rss_bytes: int | None
    details: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float | None = None


def _last_json(text: str, key: str, value: str | None = None) -> dict[str, Any]:
    """The last JSON object line of ``text`` that has ``key`` (equal to ``value`` if given)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if key in obj and (value is None or obj[key] == value):
            return obj  # type: ignore[no-any-return]
    return {}


class Restic:
    name = "restic"

    def __init__(self, work: Path, tree: Path) -> None:
        self.work = work
        self.tree = tree
        self.repo = work / "repo"
        self.env = dict(
            os.environ,
            RESTIC_PASSWORD="bench",
            RESTIC_REPOSITORY=str(self.repo),
            RESTIC_CACHE_DIR=str(work / "cache"),
            HOME=str(work / "home"),
        )

    def setup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "home").mkdir(parents=True)
        run_timed(["restic", "init", "--quiet"], env=self.env)

    def snapshot(self, label: str) -> StepResult:
        r = run_timed(["restic", "backup", "--json", "--host", "bench", "--tag", label, str(self.tree)],
                      env=self.env)
        s = _last_json(r.stdout, "message_type", "summary")
        details = {k: s[k] for k in ("files_new", "files_changed", "files_unmodified", "data_added")
                   if k in s}
        return StepResult(r.seconds, r.max_rss_bytes, details, r.cpu_seconds)

    def list_snapshots(self) -> StepResult:
        """``restic snapshots --json``; ``details["snapshots"]``: how many it listed."""
        r = run_timed(["restic", "snapshots", "--json"], env=self.env)
        return StepResult(r.seconds, r.max_rss_bytes, {"snapshots": len(json.loads(r.stdout or "[]"))},
                          r.cpu_seconds)

    def check(self) -> StepResult:
        """``restic check``: the structure (index, snapshots, trees, that every blob is in a pack), no data
        read."""
        r = run_timed(["restic", "check"], env=self.env, timeout=3600)
        return StepResult(r.seconds, r.max_rss_bytes, {}, r.cpu_seconds)

    def teardown(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class Borg:
    name = "borg"

    def __init__(self, work: Path, tree: Path) -> None:
        self.work = work
        self.tree = tree
        self.repo = work / "repo"
        self.n = 0
        self.env = dict(
            os.environ,
            BORG_BASE_DIR=str(work / "base"),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
            HOME=str(work / "home"),
        )

    def setup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "home").mkdir(parents=True)
        run_timed(["borg", "init", "-e", "none", str(self.repo)], env=self.env)

    def snapshot(self, label: str) -> StepResult:
        self.n += 1
        r = run_timed(["borg", "create", "--json", f"{self.repo}::{self.n}-{label}", str(self.tree)],
                      env=self.env)
        details: dict[str, Any] = {}
        try:
            stats = json.loads(r.stdout)["archive"]["stats"]
            details = {"nfiles": stats.get("nfiles"), "deduplicated_size": stats.get("deduplicated_size")}
        except (ValueError, KeyError, TypeError):
            pass
        return StepResult(r.seconds, r.max_rss_bytes, details, r.cpu_seconds)

    def list_snapshots(self) -> StepResult:
        """``borg list --json REPO``; ``details["snapshots"]``: how many archives it listed."""
        r = run_timed(["borg", "list", "--json", str(self.repo)], env=self.env)
        archives = json.loads(r.stdout or "{}").get("archives", [])
        return StepResult(r.seconds, r.max_rss_bytes, {"snapshots": len(archives)}, r.cpu_seconds)

    def check(self) -> StepResult:
        """``borg check --archives-only``: archive metadata and that every referenced chunk is present,
        without the repository check's pass over every segment's data (borg's nearest to a structure
        check)."""
        r = run_timed(["borg", "check", "--archives-only", str(self.repo)], env=self.env, timeout=3600)
        return StepResult(r.seconds, r.max_rss_bytes, {}, r.cpu_seconds)

    def teardown(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
