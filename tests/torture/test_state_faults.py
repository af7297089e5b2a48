"""Faults of the state directory (the history's disk): a real daemon on a small tmpfs (we are root).

The state disk fills up while the daemon runs: snapshots still complete (the store is elsewhere), health
says the history is degraded and why, the events wait in memory, and once space is freed the history
writes them and is well again, by itself. Repeated ``scale(1, 5)`` times on the same daemon.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.daemon import DaemonProcess, api, make_tree, spawn_daemon, wait_until, write_config
from helpers.disk import fill, small_tmpfs
from helpers.torture import record, scale

# Small, but room for the history of a few dozen runs (the WAL included) when nothing else is there.
TMPFS_SIZE = "2m"






def history_error(d: DaemonProcess) -> dict[str, str] | None:
    error: dict[str, str] | None = next(s for s in api(d, "/health")["services"] if s["name"] == "history")["error"]
    return error


def ended(d: DaemonProcess, run: str) -> dict[str, Any] | None:
    p: dict[str, Any] = api(d, "/projects/docs/progress")
    return p if p["run"] == run and p["state"] in ("completed", "failed", "cancelled") else None


def test_a_full_state_disk_degrades_the_history_until_space_is_freed(short_tmp: Path) -> None:
    rounds = scale(1, 5)
    make_tree(short_tmp / "docs", files=5)
    recovered = 0
    with small_tmpfs(short_tmp / "state", TMPFS_SIZE) as state:
        d = spawn_daemon(short_tmp, write_config(short_tmp, {"docs": short_tmp / "docs"}))
        try:
            for i in range(rounds):
                filler = fill(state)
                (short_tmp / "docs" / f"round{i}.txt").write_text(str(i))
                run = api(d, "/projects/docs/snapshots", "POST")["run"]

                assert wait_until(lambda run=run: ended(d, run), 30, "the snapshot to end")["state"] == "completed"
                error = wait_until(lambda: history_error(d), 20, "health to say the history cannot be written")
                assert error["code"] == "history_write_failed" and "full" in error["message"]
                assert api(d, "/health")["degraded"] == ["history"]
                assert d.proc.poll() is None

                os.unlink(filler)
                wait_until(lambda: history_error(d) is None, 60, "the history to recover")
                assert api(d, "/health")["degraded"] == []
                assert api(d, f"/runs/{run}")["state"] == "completed"
                recovered += 1
        finally:
            died = d.proc.poll() is not None
            d.stop()
    log = (short_tmp / "daemon.log").read_text()
    assert "database or disk is full" in log and "Traceback" not in log
    record("faults", injected=rounds, daemon_died=int(died), recovered=recovered, fault="state disk full")
    assert recovered == rounds
