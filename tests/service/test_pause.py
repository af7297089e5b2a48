"""Pause and resume (docs/api.md "Pause and resume") against a real daemon, with curl and the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.client import cli
from helpers.curl import TERMINAL, SseReader
from helpers.daemon import DaemonProcess, make_tree, spawn_daemon

BASE = "http://localhost/api/v1"
MIB = 1 << 20


def post(d: DaemonProcess, path: str) -> tuple[int, dict[str, Any]]:
    r = d.curl("-X", "POST", "-w", "\n%{http_code}", f"{BASE}{path}")
    body, _, status = r.stdout.rpartition("\n")
    return int(status), json.loads(body)


def get(d: DaemonProcess, path: str) -> dict[str, Any]:
    return json.loads(d.curl(f"{BASE}{path}").stdout)  # type: ignore[no-any-return]


def rchar(d: DaemonProcess) -> int:
    """Bytes the daemon has read by system calls so far (files, sockets, the history)."""
    for line in Path(f"/proc/{d.proc.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def big_folder(root: Path) -> int:
    """Random files, then two sparse 1 GiB files: step 4 reads them chunk by chunk for several seconds
    (hashing 2 GiB of zeros) while the store keeps one chunk of them (no disk filled)."""
    (root / "a").mkdir(parents=True)
    (root / "z").mkdir()
    total = 0
    for i in range(8):
        (root / "a" / f"r{i}.bin").write_bytes(os.urandom(2 * MIB))
        total += 2 * MIB
    for i in range(2):
        with open(root / "z" / f"zeros{i}.bin", "wb") as f:
            f.truncate(1 << 30)
        total += 1 << 30
    return total


def wait_log(d: DaemonProcess, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (d.base / "daemon.log").read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in the log: {(d.base / 'daemon.log').read_text()[-2000:]}")


def wait_log_quiet(d: DaemonProcess, text: str, quiet: float = 1.5, timeout: float = 30) -> None:
    """Wait until ``text`` has stopped appearing in the log: no new occurrence for ``quiet`` s (the
    watcher's last batch of events has been handled, however loaded the machine)."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = (d.base / "daemon.log").read_text().count(text)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} kept appearing in the log for {timeout} s")


def test_pause_holds_a_running_snapshot_and_resume_finishes_it_without_rereading(
        daemon_factory: Any, short_tmp: Path) -> None:
    total = big_folder(short_tmp / "big")
    d: DaemonProcess = daemon_factory({"big": short_tmp / "big"})
    stream = SseReader(d, "/api/v1/events")
    try:
        stream.wait_for(lambda e: e["project"] == "big")
        read_before = rchar(d)
        status, started = post(d, "/projects/big/snapshots")
        assert status == 202
        run = started["run"]
        stream.wait_for(lambda e: e["run"] == run and e["step"] == 4 and e["bytes_done"] >= 16 * MIB)

        t0 = time.monotonic()
        status, project = post(d, "/projects/big/pause")
        assert status == 200 and project["paused"] is True and project["id"] == "big"
        held = stream.wait_for(lambda e: e["run"] == run and e["paused"], timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert held["step"] == 4 and held["state"] == "compressing" and held["eta_seconds"] is None
        assert held["message"].startswith("Paused: resume to continue (was: Compressing")
        # Idempotent: a second pause answers the same and publishes nothing new.
        assert post(d, "/projects/big/pause") == (200, get(d, "/projects/big"))

        # The run holds within a chunk's time; from then on nothing moves and nothing is read.
        time.sleep(0.5)
        before, read_paused = get(d, "/projects/big/progress"), rchar(d)
        time.sleep(1.0)
        after, read_later = get(d, "/projects/big/progress"), rchar(d)
        assert before["paused"] and after["paused"] and after["state"] == "compressing"
        assert (after["bytes_done"], after["files_done"]) == (before["bytes_done"], before["files_done"])
        assert 16 * MIB <= after["bytes_done"] < total
        assert read_later - read_paused < 256 * 1024  # a few HTTP requests, not a 1 MiB chunk
        done_at_pause = after["bytes_done"]

        status, project = post(d, "/projects/big/resume")
        assert status == 200 and project["paused"] is False
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL)
    finally:
        stream.close()
    assert final["state"] == "completed", final
    events = [e for e in stream.events if e["run"] == run]
    assert [e["paused"] for e in events].count(True) >= 1 and not events[-1]["paused"]
    resumed = next(i for i, e in enumerate(events) if i and events[i - 1]["paused"] and not e["paused"])
    assert events[resumed]["step"] == 4 and events[resumed]["bytes_done"] >= done_at_pause  # went on from there
    step4 = [e["bytes_done"] for e in events if e["step"] == 4]
    assert step4 == sorted(step4)
    snap = final["snapshot"]
    assert (snap["files"], snap["files_new"], snap["bytes"], snap["warnings"]) == (10, 10, total, 0)
    # Every byte of the folder was read once: re-reading what was done before the pause would add that much.
    assert rchar(d) - read_before < total + done_at_pause

    record = get(d, f"/runs/{run}")
    assert record["paused_seconds"] >= 1.5
    worked = sum(record["step_seconds"].values())
    assert abs(worked - (record["duration_seconds"] - record["paused_seconds"])) < 0.2, record
    target = short_tmp / "restored"
    assert d.cli("restore", snap["id"], str(target), "--path", "a").returncode == 0
    for f in sorted((short_tmp / "big/a").iterdir()):
        assert (target / "a" / f.name).read_bytes() == f.read_bytes()


def test_cancel_while_paused_ends_the_run_promptly(daemon_factory: Any, short_tmp: Path) -> None:
    big_folder(short_tmp / "big")
    d: DaemonProcess = daemon_factory({"big": short_tmp / "big"})
    stream = SseReader(d, "/api/v1/events")
    try:
        stream.wait_for(lambda e: e["project"] == "big")
        run = post(d, "/projects/big/snapshots")[1]["run"]
        stream.wait_for(lambda e: e["run"] == run and e["step"] == 4 and e["bytes_done"] > 0)
        assert post(d, "/projects/big/pause")[0] == 200
        stream.wait_for(lambda e: e["run"] == run and e["paused"], timeout=5)
        t0 = time.monotonic()
        r = d.curl("-X", "DELETE", "-w", "\n%{http_code}", f"{BASE}/projects/big/runs/current")
        assert r.stdout.endswith("202")
        final = stream.wait_for(lambda e: e["run"] == run and e["state"] in TERMINAL, timeout=5)
        assert time.monotonic() - t0 < 1.0
    finally:
        stream.close()
    assert final["state"] == "cancelled" and final["paused"] is False
    assert get(d, "/projects/big")["paused"] is True  # the project stays paused
    assert get(d, f"/runs/{run}")["paused_seconds"] > 0


@pytest.mark.parametrize("max_concurrent", [1, 2])
def test_a_paused_snapshot_never_stalls_another_projects(daemon_factory: Any, short_tmp: Path,
                                                           max_concurrent: int) -> None:
    """Project "big" is paused in step 4 with both of the daemon's worker threads busy on it (small files,
    then two large ones) and, with ``max_concurrent = 1``, the only running slot too. A snapshot of "docs"
    still runs to completion at once while "big" stays held; resumed, "big" completes as well."""
    total = big_folder(short_tmp / "big")
    (short_tmp / "big/s").mkdir()
    for i in range(20):  # small files: a second worker, which then helps with the large ones
        (short_tmp / "big/s" / f"s{i}.bin").write_bytes(os.urandom(4096))
        total += 4096
    docs = make_tree(short_tmp / "docs", files=30)
    d: DaemonProcess = daemon_factory({"big": short_tmp / "big", "docs": short_tmp / "docs"},
                                      extra_daemon=f"max_concurrent = {max_concurrent}")
    stream = SseReader(d, "/api/v1/events")
    try:
        stream.wait_for(lambda e: e["project"] == "docs")
        big = post(d, "/projects/big/snapshots")[1]["run"]
        stream.wait_for(lambda e: e["run"] == big and e["step"] == 4 and e["bytes_done"] >= 16 * MIB)
        assert post(d, "/projects/big/pause")[0] == 200
        stream.wait_for(lambda e: e["run"] == big and e["paused"], timeout=5)

        t0 = time.monotonic()
        status, started = post(d, "/projects/docs/snapshots")
        assert status == 202
        other = stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL, timeout=15)
        assert other["state"] == "completed", other
        assert other["snapshot"]["files"] == len(docs)
        assert time.monotonic() - t0 < 10
        waited = [e["message"] for e in stream.events if e["run"] == started["run"]]
        assert not [m for m in waited if m.startswith("Waiting for other snapshots")], waited
        held = get(d, "/projects/big/progress")
        assert held["run"] == big and held["paused"] and held["state"] == "compressing"

        assert post(d, "/projects/big/resume")[0] == 200
        final = stream.wait_for(lambda e: e["run"] == big and e["state"] in TERMINAL)
    finally:
        stream.close()
    assert final["state"] == "completed", final
    assert (final["snapshot"]["files"], final["snapshot"]["bytes"]) == (30, total)


def test_a_paused_project_starts_nothing_and_one_snapshot_on_resume(daemon_factory: Any, short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=10)
    d: DaemonProcess = daemon_factory({"docs": folder}, watch=True, extra_daemon="settle = 0.2\nmax_delay = 1")
    stream = SseReader(d, "/api/v1/events")
    try:
        # The start-up check takes the first snapshot.
        stream.wait_for(lambda e: e["project"] == "docs" and e["state"] == "completed")
        status, project = post(d, "/projects/docs/pause")
        assert (status, project["paused"], project["state"]) == (200, True, "completed")

        status, answer = post(d, "/projects/docs/snapshots")
        assert status == 409 and answer["error"] == {
            "code": "project_paused", "message": "Project 'docs' is paused; resume it first."}
        for i in range(3):
            (folder / f"new{i}.txt").write_text(f"new {i}")
            wait_log(d, "docs: paused; the watch request waits for the resume")
        # Past max_delay, and until the watcher's last event batch was handled: it asked for its snapshots
        # (each refused while paused), and none started.
        wait_log_quiet(d, "docs: paused; the watch request waits for the resume")
        assert not [e for e in stream.events if e["state"] == "waiting"][1:]
        assert len(get(d, "/projects/docs/runs")["runs"]) == 1

        status, project = post(d, "/projects/docs/resume")
        assert status == 200 and project["paused"] is False
        final = stream.wait_for(lambda e: e["project"] == "docs" and e["state"] in TERMINAL
                                and e["snapshot"] is not None and e["snapshot"]["files_new"] == 3)
        assert final["state"] == "completed" and final["trigger"] == "watch"
        time.sleep(1.5)  # nothing else was remembered: no second run follows
    finally:
        stream.close()
    runs = get(d, "/projects/docs/runs")["runs"]
    assert len(runs) == 2 and runs[0]["run"] == final["run"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_pause_survives_a_restart(daemon_factory: Any, short_tmp: Path, sig: int) -> None:
    make_tree(short_tmp / "docs", files=5)
    make_tree(short_tmp / "other", files=5)
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs", "other": short_tmp / "other"})
    assert post(d, "/projects/docs/pause")[0] == 200
    saved = json.loads((short_tmp / "state/paused.json").read_text())
    assert saved["version"] == 1 and list(saved["projects"]) == ["docs"]
    assert oct((short_tmp / "state/paused.json").stat().st_mode & 0o777) == oct(0o600)
    d.stop(sig)
    d2 = spawn_daemon(short_tmp, d.config)
    try:
        paused = {p["id"]: p["paused"] for p in get(d2, "/projects")["projects"]}
        assert paused == {"docs": True, "other": False}
        assert post(d2, "/projects/docs/snapshots")[0] == 409
        assert post(d2, "/projects/other/snapshots")[0] == 202
        assert post(d2, "/projects/docs/resume")[1]["paused"] is False
        assert json.loads((short_tmp / "state/paused.json").read_text())["projects"] == {}
        assert post(d2, "/projects/docs/snapshots")[0] == 202
    finally:
        d2.stop()


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 1, "projects": ["docs"]}', b"\xff\xfe"],
                         ids=["not-json", "wrong-shape", "not-utf8"])
def test_a_damaged_paused_file_is_logged_and_ignored(daemon_factory: Any, short_tmp: Path, content: bytes) -> None:
    make_tree(short_tmp / "docs", files=5)
    (short_tmp / "state").mkdir()
    (short_tmp / "state/paused.json").write_bytes(content)
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs"})
    assert get(d, "/projects/docs")["paused"] is False
    assert "paused.json is damaged" in (short_tmp / "daemon.log").read_text()
    assert post(d, "/projects/docs/pause")[1]["paused"] is True  # and a good file is written again
    assert list(json.loads((short_tmp / "state/paused.json").read_text())["projects"]) == ["docs"]


def test_cli_pause_and_resume(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=5)
    d: DaemonProcess = daemon_factory({"docs": short_tmp / "docs"})
    out = cli(d, "pause", "docs")
    assert out.returncode == 0 and out.stdout == "Paused docs: no snapshot starts until `syncsnap resume docs`.\n"
    assert "idle (paused)" in cli(d, "projects").stdout
    out = cli(d, "snapshot", "docs")
    assert out.returncode == 2 and "Project 'docs' is paused; resume it first." in out.stderr
    out = cli(d, "resume", "docs", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["paused"] is False
    assert cli(d, "resume", "docs").stdout == "Resumed docs.\n"
    out = cli(d, "pause", "nope")
    assert out.returncode == 2 and "nope" in out.stderr
