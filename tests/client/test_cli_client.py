"""The ``syncsnap`` command through its real entry point (the console script), against a real daemon:
in a pseudo-terminal (live bar) and in JSON mode (NDJSON), with its exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import syncsnap
from helpers.client import SYNCSNAP, Pty, cli, progress_json  # noqa: E402
from helpers.daemon import DaemonProcess, make_tree
from syncsnap.cli._view import TerminalView

TERMINAL = {"completed", "failed", "cancelled"}


def big_tree(root: Path, files: int = 400, size: int = 64 * 1024) -> None:
    """Incompressible files: the run spends a visible while in step 4, so the bar moves."""
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"d{i % 8}").mkdir(exist_ok=True)
        (root / f"d{i % 8}" / f"f{i}.bin").write_bytes(os.urandom(size))


def test_snapshot_follow_in_a_terminal_shows_a_live_progress_bar(daemon_factory: Any, short_tmp: Path) -> None:
    big_tree(short_tmp / "big")
    d = daemon_factory({"big": short_tmp / "big"})
    t = Pty([SYNCSNAP, "snapshot", "big", "--follow"], d.env)
    assert t.wait() == 0
    out = t.text
    assert "\x1b[2K" in out and "\x1b[1A" in out  # redrawn in place: a live display, not a log
    for step in ("step 1/6 Waiting for sync", "step 2/6 Browsing folder status", "step 3/6 Browsing files",
                 "step 4/6 Compressing", "step 5/6 Uploading to the store", "step 6/6 Completed"):
        assert step in out
    assert "/400 files · " in out and "/25.0 MiB" in out and "100.0%" in out and "ETA" in out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert max(len(line) for line in plain.replace("\r", "\n").splitlines()) <= 80  # fits the terminal
    assert "Compressing " in out and " of 400 files (" in out  # the daemon's message, under the bar
    assert "  400 files · 25.0 MiB · 25.0 MiB added" in plain  # at the end: what the run produced
    # The summary line stays, cut to the 80 columns with an ellipsis like the lines above (issue 16).
    [done] = re.findall(r"✔ big: snapshot \S+ completed: 400 files [^\r\n]*", plain)
    assert len(done) <= 80 and done.endswith("…"), done
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())


def test_terminal_view_shows_rate_and_eta() -> None:
    """The bar's fields for a step-4 event, rendered by rich to a recording console."""
    console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    clock = iter([100.0, 102.0])
    view = TerminalView(console=console, clock=lambda: next(clock))
    base: dict[str, Any] = dict(event_id=7, project="docs", run="r-1-1-a", state="compressing", step=4,
                                steps=6, message="Compressing 10 of 40 files (10.0 MiB of 40.0 MiB)",
                                files_total=40, bytes_total=40 * 2**20, started_at=None, updated_at=None,
                                error=None, snapshot=None)
    with view:
        view.show(syncsnap.Progress(percent=37.5, files_done=10, bytes_done=10 * 2**20, eta_seconds=None, **base))
        view.show(syncsnap.Progress(percent=55.0, files_done=20, bytes_done=30 * 2**20, eta_seconds=125, **base))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    bar, details, message = out.rsplit("docs step 4/6", 1)[1].splitlines()[:3]
    assert "Compressing" in bar and "55.0%" in bar and "ETA 2m05s" in bar
    assert details == "  20/40 files · 30.0 MiB/40.0 MiB · 10.0 MiB/s"
    assert message == "  Compressing 10 of 40 files (10.0 MiB of 40.0 MiB)"


def test_terminal_view_of_everything_drops_an_operation_once_its_end_is_printed() -> None:
    """`syncsnap follow` (every project): a restore has its own display beside its project's, named
    after it, with its own step names and counters; at its end a ✔ line stays and the display goes."""
    console = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    view = TerminalView(console=console, drop_finished_operations=True)

    def restore(step: int, state: str, **kw: Any) -> syncsnap.Progress:
        return syncsnap.Progress.from_json({**progress_json("docs", "r-5", step=step, state=state, kind="restore",
                                                            steps=4, **kw), "files_total": 3, "files_done": 1})

    with view:
        view.show(syncsnap.Progress.from_json(progress_json("docs", "r-4", step=4, percent=40)))
        view.show(restore(2, "restoring", percent=50))
        frame = console.file.getvalue()  # type: ignore[attr-defined]
        assert "docs restore step 2/4 Restoring files" in frame and "1/3 files" in frame
        done = {**progress_json("docs", "r-5", step=4, state="completed", kind="restore", steps=4, percent=100,
                                result={"files": 3, "bytes": 3014}), "message": "Restored snapshot s1 into /t"}
        view.show(syncsnap.Progress.from_json(done))
        assert "✔ docs: Restored snapshot s1 into /t" in console.file.getvalue()  # type: ignore[attr-defined]
        console.file.seek(0)  # type: ignore[attr-defined]
        console.file.truncate(0)  # type: ignore[attr-defined]
        view.show(syncsnap.Progress.from_json(progress_json("docs", "r-4", step=5, percent=90)))
        last_frame = console.file.getvalue()  # type: ignore[attr-defined]
    assert "docs step 5/6 Uploading to the store" in last_frame and "restore" not in last_frame


def test_terminal_view_shows_a_queued_run_and_the_polling_fallback() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    view = TerminalView(lambda: "The daemon's progress stream is unavailable: polling every second.",
                        console=console)
    with view:
        view.queued("docs", "Run r-2 is queued: it starts when the running snapshot ends.")
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "docs step 0/6 Queued" in out and "Run r-2 is queued: it starts when the running snapshot ends." in out
    assert "The daemon's progress stream is unavailable: polling every second." in out


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_json_mode_prints_one_object_per_event(daemon_factory: Any, short_tmp: Path, transport: str) -> None:
    make_tree(short_tmp / "docs", files=30)
    d = daemon_factory({"docs": short_tmp / "docs"})
    for args in (["snapshot", "docs", "--follow", "--json"], ["snapshot", "docs", "--follow"]):  # a pipe: NDJSON too
        r = cli(d, *args, "--transport", transport)
        assert r.returncode == 0, r.stderr
        events = [json.loads(line) for line in r.stdout.splitlines()]
        ids = [e["event_id"] for e in events]
        assert ids == sorted(set(ids))
        assert len({e["run"] for e in events}) == 1
        assert [e["step"] for e in events][0] == 1 and events[-1]["state"] == "completed"
        assert {e["step"] for e in events} == {1, 2, 3, 4, 5, 6}
        assert events[-1]["snapshot"]["files"] == 31
        assert r.stderr.startswith("docs: snapshot ") and " completed: 31 files " in r.stderr

    r = cli(d, "snapshots", "docs", "--json")
    assert [s["files"] for s in json.loads(r.stdout)["snapshots"]] == [31, 31]
    r = cli(d, "snapshot", "docs", "--json")
    started = json.loads(r.stdout)
    assert started["run"].startswith("r-") and started["project"] == "docs"


def test_status_projects_and_snapshots_read_as_text(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=5)
    make_tree(short_tmp / "pics", files=5)
    d = daemon_factory({"docs": short_tmp / "docs", "pics": short_tmp / "pics"})
    r = cli(d, "snapshots", "docs")
    assert r.returncode == 0 and r.stdout == "docs has no snapshots yet; take one with `syncsnap snapshot docs`.\n"
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    r = cli(d, "status")
    lines = r.stdout.splitlines()
    assert r.returncode == 0
    assert lines[0].startswith(f"syncsnapd 0.1.0 is running (pid {d.proc.pid}, up ")
    assert lines[0].endswith(f"on {d.socket} with 2 projects.")
    assert lines[1].startswith("  docs: snapshot ") and " completed: 6 files (" in lines[1] and lines[2] == "  pics: idle"
    r = cli(d, "projects")
    assert r.stdout.splitlines()[0].split() == ["PROJECT", "STATE", "LAST", "SNAPSHOT", "PATH"]
    assert r.stdout.splitlines()[2].split() == ["pics", "idle", "never", str(short_tmp / "pics")]
    r = cli(d, "snapshots", "docs")
    header, row = r.stdout.splitlines()
    assert header.split() == ["SNAPSHOT", "HOST", "TIME", "FILES", "SIZE", "ADDED", "DURATION", "WARNINGS"]
    assert row.split()[3] == "6"


def test_failed_run_exits_1_with_the_reason(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=5)
    d = daemon_factory({"docs": short_tmp / "docs"})
    shutil.rmtree(short_tmp / "docs")
    r = cli(d, "snapshot", "docs", "--follow", "--json")
    assert r.returncode == 1
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["state"] == "failed" and last["error"]["code"] == "folder_missing"
    assert r.stderr.startswith("docs: snapshot failed: ")

    t = Pty([SYNCSNAP, "snapshot", "docs", "--follow"], d.env)
    assert t.wait() == 1
    assert "✘ docs: snapshot failed: " in t.text


def test_ctrl_c_exits_130(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=5)
    d = daemon_factory({"docs": short_tmp / "docs"})
    t = Pty([SYNCSNAP, "follow"], d.env)
    t.read_until(b"docs")
    t.proc.send_signal(signal.SIGINT)
    assert t.wait() == 130
    assert "Traceback" not in t.text


def test_errors_are_sentences_and_exit_2(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=5)
    d = daemon_factory({"docs": short_tmp / "docs"})
    r = cli(d, "snapshot", "nope")
    assert (r.returncode, r.stderr) == (2, "syncsnap: No project named 'nope'. (`syncsnap projects` lists the "
                                           "configured projects.)\n")
    r = cli(d, "follow", "--run", "r-1")
    assert (r.returncode, r.stderr) == (2, "syncsnap: no run named 'r-1'; `syncsnap runs PROJECT` lists a "
                                           "project's runs.\n")
    r = cli(d, "frobnicate")
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr
    d.stop()
    for args in (["status"], ["follow"], ["snapshot", "docs", "--follow"]):
        r = cli(d, *args)
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == (f"syncsnap: syncsnapd is not running: no socket at {d.socket} (from the default "
                            "location); start it with `syncsnapd`.\n")
    r = cli(d, "status", env={**d.env, "SYNCSNAP_URL": "ftp://x"})
    assert r.returncode == 2 and "SYNCSNAP_URL must look like http://127.0.0.1:8473" in r.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_tcp_with_a_token(daemon_factory: Any, short_tmp: Path, how: str) -> None:
    make_tree(short_tmp / "docs", files=5)
    d = daemon_factory({"docs": short_tmp / "docs"})
    token_file = str(d.discovery["token_file"])
    if how == "flag":
        r = cli(d, "status", "--url", f"http://{d.tcp}", "--token-file", token_file, env=os.environ.copy())
    else:
        r = cli(d, "status", env={**os.environ, "SYNCSNAP_URL": f"http://{d.tcp}", "SYNCSNAP_TOKEN_FILE": token_file})
    assert r.returncode == 0, r.stderr
    assert f"on http://{d.tcp} with 1 project." in r.stdout


def slow_project(base: Path) -> str:
    """Config for a project that stays in step 1: it follows a Syncthing that never answers (a closed
    port), so the daemon keeps waiting for the sync, and a cancel always finds it running."""
    make_tree(base / "slow", files=3)
    (base / "st.key").write_text("key\n")
    return (f'[[projects]]\nid = "slow"\npath = "{base}/slow"\nsyncthing = {{ url = "http://127.0.0.1:9", '
            f'api_key_file = "{base}/st.key", folder = "abcd-1234" }}\n')


def wait_for_syncthing_retries(d: DaemonProcess) -> None:
    """Until the slow project's run is really waiting for Syncthing (it retries). A cancel sent before
    that (within about 0.1 s of the start, while step 1 opens its Syncthing client) is a daemon bug at
    the time of writing: answered 202, but the run never ends."""
    deadline = time.monotonic() + 10
    while "not answering" not in d.curl("http://localhost/api/v1/projects/slow/progress").stdout:
        assert time.monotonic() < deadline, "the slow project's run does not wait for Syncthing"
        time.sleep(0.02)


def test_runs_run_stats_and_cancel(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=5)
    d = daemon_factory({"docs": short_tmp / "docs"}, extra_daemon=slow_project(short_tmp))
    r = cli(d, "runs", "docs")
    assert (r.returncode, r.stdout) == (0, "docs has no runs yet; start one with `syncsnap snapshot docs`.\n")
    assert cli(d, "stats", "docs").stdout == "docs has no finished snapshot runs yet.\n"
    for _ in range(2):
        assert cli(d, "snapshot", "docs", "--follow", "--json").returncode == 0

    # Cancel: the command waits for the run's end and says how it ended; over either transport.
    cancelled = []
    for transport in ("sse", "ws"):
        run = json.loads(cli(d, "snapshot", "slow", "--json").stdout)["run"]
        wait_for_syncthing_retries(d)
        r = cli(d, "cancel", "slow", "--transport", transport)
        assert (r.returncode, r.stdout, r.stderr) == (
            0, "slow: snapshot cancelled: The snapshot was cancelled on request.\n", "")
        cancelled.append(run)
    r = cli(d, "cancel", "slow")
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", "syncsnap: Project 'slow' has no run in progress. Nothing to cancel.\n")

    r = cli(d, "runs", "docs")
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["RUN", "KIND", "TRIGGER", "STATE", "STARTED", "DURATION", "OUTCOME"]
    assert [row.split()[1:4] for row in rows] == [["snapshot", "api", "completed"]] * 2
    snaps = json.loads(cli(d, "snapshots", "docs", "--json").stdout)["snapshots"]
    assert f" {snaps[1]['id']} " in rows[0] and f" {snaps[0]['id']} " in rows[1]  # newest first
    assert "(6 files, 0 B added)" in rows[0]
    runs = json.loads(cli(d, "runs", "docs", "--limit", "1", "--json").stdout)["runs"]
    assert len(runs) == 1 and runs[0]["run"] in rows[0]
    r = cli(d, "runs", "slow")
    assert [row.split()[0] for row in r.stdout.splitlines()[1:]] == cancelled[::-1]
    assert all(row.split()[3] == "cancelled" and row.endswith("cancelled: The snapshot was cancelled on request.")
               for row in r.stdout.splitlines()[1:])

    r = cli(d, "run", runs[0]["run"])
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == f"Run {runs[0]['run']}: snapshot of docs, completed"
    assert lines[1] == "  trigger   api"
    assert lines[5] == "  files     0 new, 0 changed, 6 unchanged"
    steps = [re.fullmatch(r"    [1-5] (.+?) +\d+(\.\d+)? m?s( +█*)?", line) for line in lines[lines.index("  steps:") + 1:]]
    assert [m.group(1) if m else None for m in steps] == ["Waiting for sync", "Browsing folder status", "Browsing files", "Compressing",
                     "Uploading to the store"]
    r = cli(d, "run", cancelled[0])
    assert "  error     cancelled: The snapshot was cancelled on request." in r.stdout.splitlines()
    assert json.loads(cli(d, "run", cancelled[0], "--json").stdout)["state"] == "cancelled"

    r = cli(d, "stats", "docs")
    assert r.stdout.splitlines()[0] == ("docs: 2 finished snapshot runs: 2 completed, 0 failed, 0 cancelled "
                                        "(success rate 100.0%)")
    assert r.stdout.splitlines()[1].startswith("  duration: mean ")
    r = cli(d, "stats", "slow")
    assert r.stdout == "slow: 2 finished snapshot runs: 0 completed, 0 failed, 2 cancelled\n"
    assert json.loads(cli(d, "stats", "docs", "--json").stdout)["success_rate"] == 1.0

    for args in (["runs", "nope"], ["stats", "nope"], ["cancel", "nope"]):
        r = cli(d, *args)
        assert (r.returncode, r.stderr) == (2, "syncsnap: No project named 'nope'. (`syncsnap projects` lists the "
                                               "configured projects.)\n")
    r = cli(d, "run", "r-nope")
    assert (r.returncode, r.stderr) == (2, "syncsnap: no run named 'r-nope'; `syncsnap runs PROJECT` lists a "
                                           "project's runs.\n")
    r = cli(d, "runs", "docs", "--limit", "0")
    assert r.returncode == 2 and "must be a whole number from 1 up" in r.stderr
