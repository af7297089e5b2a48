"""Issue 16 against a real daemon, through curl: event ids on a fresh stream, HEAD for every GET, a wrong
``before``, the RUN's ``result``, the totals of a snapshot's terminal event, and interrupted runs' RUN."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.curl import TERMINAL, SseReader
from helpers.daemon import DaemonProcess, api, make_tree, spawn_daemon, start_daemon, wait_until
from syncsnapd.core import parse_time


@dataclass
class Served:
    d: DaemonProcess
    base: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon with three projects that never ran (``docs``, ``pics``, ``mail``) until a test runs one:
    ``docs`` is snapshotted by the tests that need a run, the others stay idle."""
    base = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    folders = {name: base / name for name in ("docs", "pics", "mail")}
    for folder in folders.values():
        make_tree(folder, files=5)
    d = start_daemon(base, folders, tcp="")
    try:
        yield Served(d, base)
    finally:
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def snapshot_run(d: DaemonProcess, project: str) -> dict[str, object]:
    """Start a snapshot of ``project`` and return its terminal event (read from the stream)."""
    stream = SseReader(d, f"/api/v1/projects/{project}/progress/stream")
    try:
        started = api(d, f"/projects/{project}/snapshots", "POST")
        return stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)
    finally:
        stream.close()


def raw_stream(d: DaemonProcess, path: str, events: int) -> list[str]:
    """The lines of a stream until ``events`` progress events came (curl ends it at 5 s at the latest)."""
    reader = SseReader(d, path, "--max-time", "5")
    try:
        wait_until(lambda: len(reader.events) >= events, 10, f"{events} events on {path}")
        return list(reader.raw)
    finally:
        reader.close()


# --- 1. event ids never repeat ------------------------------------------------------------------------------

def test_a_fresh_stream_sends_no_id_for_idle_projects_and_never_repeats_one(served: Served) -> None:
    """Three projects that never ran: their idle states come without an `id:` line (before the fix, each
    came with `id: 0`); once a project ran, its state comes with its real id, and no id repeats."""
    d = served.d
    lines = raw_stream(d, "/api/v1/events", 3)
    assert sum(line.startswith("event: progress") for line in lines) >= 3
    assert [line for line in lines if line.startswith("id:")] == []
    final = snapshot_run(d, "pics")
    assert final["state"] == "completed"
    lines = raw_stream(d, "/api/v1/events", 3)
    ids = [line for line in lines if line.startswith("id:")]
    assert ids == [f"id: {final['event_id']}\n"]  # pics's state; docs and mail still idle, without one


# --- 4. HTTP edges: HEAD, before= ---------------------------------------------------------------------------

def head_and_get(d: DaemonProcess, path: str) -> tuple[str, str, str]:
    """(HEAD's head, GET's head, HEAD's body) of ``path`` over the Unix socket."""
    head = subprocess.run(["curl", "-sS", "--unix-socket", d.socket, "-I", f"http://localhost{path}"],
                          capture_output=True, text=True, timeout=10)
    get = subprocess.run(["curl", "-sS", "--unix-socket", d.socket, "-D", "-", "-o", "/dev/null",
                          f"http://localhost{path}"], capture_output=True, text=True, timeout=10)
    return head.stdout, get.stdout, head.stderr


def header(head: str, name: str) -> str | None:
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/projects", "/api/v1/projects/docs",
                                  "/api/v1/projects/docs/progress", "/api/v1/projects/docs/snapshots",
                                  "/api/v1/projects/docs/runs", "/api/v1/projects/docs/stats", "/api/v1/store",
                                  "/api/v1/operations", "/metrics", "/"])
def test_head_answers_like_get_without_the_body(served: Served, path: str) -> None:
    """Before the fix: 405 for all of these."""
    head, get, _ = head_and_get(served.d, path)
    assert head.startswith("HTTP/1.1 200"), head
    assert get.startswith("HTTP/1.1 200"), get
    assert header(head, "content-type") == header(get, "content-type")
    if path not in ("/api/v1/health", "/metrics"):  # (uptime and counters change between two requests)
        assert header(head, "content-length") == header(get, "content-length")
    assert header(head, "content-length") is not None


def test_head_on_a_stream_gives_its_head_and_ends(served: Served) -> None:
    head = subprocess.run(["curl", "-sS", "--max-time", "5", "--unix-socket", served.d.socket, "-I",
                           "http://localhost/api/v1/events"], capture_output=True, text=True, timeout=10)
    assert head.returncode == 0, head.stderr  # not cut off by --max-time: the daemon ended it
    assert head.stdout.startswith("HTTP/1.1 200")
    assert header(head.stdout, "content-type") == "text/event-stream"


def test_head_of_an_unknown_thing_is_its_get_status_and_login_stays_405(served: Served) -> None:
    head, _, _ = head_and_get(served.d, "/api/v1/projects/nope")
    assert head.startswith("HTTP/1.1 404")
    head, _, _ = head_and_get(served.d, "/login?code=x")
    assert head.startswith("HTTP/1.1 405")
    post_only = subprocess.run(["curl", "-sS", "--unix-socket", served.d.socket, "-I",
                                "http://localhost/api/v1/check"], capture_output=True, text=True, timeout=10)
    assert post_only.stdout.startswith("HTTP/1.1 405")


def test_runs_before_a_run_the_project_does_not_have_is_404(served: Served) -> None:
    """Before the fix: `200 {"runs": [], "next": null}`, as if the history were over."""
    d = served.d
    other = snapshot_run(d, "mail")
    for before in ("bogus", str(other["run"])):
        reply = d.curl("-w", "\n%{http_code}", f"http://localhost/api/v1/projects/docs/runs?before={before}")
        body, _, status = reply.stdout.rpartition("\n")
        assert status == "404", reply.stdout
        assert json.loads(body)["error"]["code"] == "not_found"
    reply = d.curl("-w", "\n%{http_code}", f"http://localhost/api/v1/projects/mail/runs?before={other['run']}")
    assert reply.stdout.endswith("\n200")


# --- 2. RUN.result ------------------------------------------------------------------------------------------

def test_an_operation_runs_record_has_its_result(served: Served) -> None:
    """Before the fix the RUN object had no `result` at all."""
    d = served.d
    snapshot_run(d, "docs")
    stream = SseReader(d, "/api/v1/events")
    try:
        started = api(d, "/check", "POST")
        final = stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)
    finally:
        stream.close()
    assert final["state"] == "completed" and final["result"]["ok"] is True
    rec = wait_until(lambda: (r := api(d, f"/runs/{started['run']}")).get("state") == "completed" and r, 10,
                     "the check's record")
    assert rec["result"] == final["result"]
    snap = api(d, "/projects/docs/runs?limit=1")["runs"][0]
    assert "result" in snap and snap["result"] is None


# --- 5. a snapshot's terminal event carries the run's totals ------------------------------------------------

def test_a_no_change_snapshot_ends_with_the_snapshots_totals(served: Served) -> None:
    """Before the fix a no-change snapshot of 6 files ended `files 1/1, bytes 0/0` (the upload step's)."""
    d = served.d
    first = snapshot_run(d, "docs")
    again = snapshot_run(d, "docs")
    assert again["state"] == "completed"
    snap = again["snapshot"]
    assert isinstance(snap, dict) and snap["files_changed"] == snap["files_new"] == 0
    assert (again["files_done"], again["files_total"]) == (snap["files"], snap["files"]) == (6, 6)
    assert (again["bytes_done"], again["bytes_total"]) == (snap["bytes"], snap["bytes"])
    assert snap["bytes"] > 0 and first["bytes_total"] == snap["bytes"]


# --- 3. interrupted runs ------------------------------------------------------------------------------------

def test_an_interrupted_run_keeps_its_steps_and_ends_at_its_last_recorded_event(short_tmp: Path) -> None:
    """A run held by a pause when the daemon is killed, marked `interrupted` at the next start: before the
    fix its RUN had `step_seconds: {}` and a duration up to that next start (the downtime included)."""
    folder = short_tmp / "docs"
    make_tree(folder, files=5)
    with open(folder / "zeros.bin", "wb") as f:
        f.truncate(1 << 30)  # sparse: step 4 reads it for seconds, the store keeps one chunk
    d = start_daemon(short_tmp, {"docs": folder}, tcp="")
    stream = SseReader(d, "/api/v1/projects/docs/progress/stream")
    try:
        started = api(d, "/projects/docs/snapshots", "POST")
        run = started["run"]
        stream.wait_for(lambda e: e["run"] == run and e["step"] == 4)
        api(d, "/projects/docs/pause", "POST")
        # The pause event is in the history (the events endpoint reads it) before the kill.
        events = wait_until(lambda: [e for e in api(d, f"/runs/{run}/events")["events"] if e["paused"]] and
                            api(d, f"/runs/{run}/events")["events"], 10, "the paused event in the history")
        last = events[-1]
        assert last["paused"] and last["step"] >= 1
        d.stop(signal.SIGKILL)
        d = spawn_daemon(short_tmp, d.config)
        rec = wait_until(lambda: (r := api(d, f"/runs/{run}")).get("state") == "failed" and r, 10,
                         "the run marked failed")
        assert rec["error"]["code"] == "interrupted"
        # Its terminal event, as every terminal event, is not paused (it copies the run's last event).
        assert api(d, "/projects/docs/progress")["paused"] is False
        assert rec["ended_at"] == last["updated_at"]
        start, end = parse_time(rec["started_at"]), parse_time(last["updated_at"])
        assert start is not None and end is not None
        assert rec["duration_seconds"] == pytest.approx(end - start, abs=0.002)
        steps = {int(k): v for k, v in rec["step_seconds"].items()}
        assert sorted(steps) == list(range(1, last["step"] + 1)), rec
        assert sum(steps.values()) == pytest.approx(rec["duration_seconds"] - rec["paused_seconds"], abs=0.01)
    finally:
        stream.close()
        d.proc.kill()
        d.proc.wait()
