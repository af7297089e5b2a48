"""Issue 16, "The first ten minutes", for the ``syncsnap`` command: its help, the sentences it prints when
something is wrong, ``follow --run`` on a finished run, ``follow`` on a terminal (past runs, the first
frame, the ✔ line's width, no redraw while idle) and the daemon's warnings in ``status``. Through the
console script against a real daemon, except where a test says otherwise."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers.client import SYNCSNAP, FakeDaemon, Pty, cli
from helpers.daemon import DaemonProcess, api, make_env, make_tree, spawn_daemon

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# "1 files", "1 directories", ...: a count of one with a plural noun.
ONE_PLURAL = re.compile(r"(?<![\d,.])1 (files|directories|symlinks|snapshots|packs|problems|warnings|entries)\b")


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def snapshot_run(d: DaemonProcess, project: str) -> dict[str, Any]:
    """Take a snapshot through the CLI and return its terminal event."""
    r = cli(d, "snapshot", project, "--follow", "--json")
    assert r.returncode == 0, r.stderr
    last: dict[str, Any] = ndjson(r.stdout)[-1]
    assert last["state"] == "completed"
    return last


# --- 1. help texts ---------------------------------------------------------------------------------------


def test_follow_and_restore_help_say_what_is_needed() -> None:
    follow = cli(None, "follow", "--help")
    assert follow.returncode == 0
    text = " ".join(follow.stdout.split())
    assert "needs PROJECT" not in text
    assert "--run RUN follow only this run" in text and "no PROJECT needed" in text
    restore = cli(None, "restore", "--help")
    text = " ".join(restore.stdout.split())
    # The target's rule and its way out, together: a directory with files in it needs --overwrite.
    assert re.search(r"target the directory to restore into \(created if missing; one with files in it only "
                     r"with --overwrite\)", text), text
    assert "empty or new" not in text


# --- 2. messages that name what the user typed and the fix -----------------------------------------------


def test_unknown_run_is_named_without_api_paths(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    d = daemon_factory({"docs": short_tmp / "docs"})
    for args in (("cancel", "--run", "nope"), ("follow", "--run", "nope"), ("run", "nope")):
        r = cli(d, *args)
        assert r.returncode == 2, (args, r)
        assert r.stdout == ""
        assert r.stderr.startswith("syncsnap: no run named 'nope'"), (args, r.stderr)
        assert "/api/" not in r.stderr, (args, r.stderr)


def test_cancel_of_a_finished_run_says_it_ended(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    d = daemon_factory({"docs": short_tmp / "docs"})
    run = snapshot_run(d, "docs")["run"]
    r = cli(d, "cancel", "--run", run)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"syncsnap: run {run} of docs has already ended (completed); nothing to cancel.\n"


def test_a_bad_token_file_is_named_with_what_is_wrong_with_it(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    d = daemon_factory({"docs": short_tmp / "docs"})
    url = f"http://{d.tcp}"
    (short_tmp / "empty").write_text("")
    (short_tmp / "wrong").write_text("x" * 43 + "\n")
    cases = {"missing": "does not exist", "empty": "is empty", "wrong": "holds a token the daemon does not accept"}
    for name, problem in cases.items():
        r = cli(d, "--url", url, "--token-file", str(short_tmp / name), "status")
        assert (r.returncode, r.stdout) == (2, ""), r
        assert f"the token file {short_tmp / name} (--token-file) {problem}" in r.stderr, r.stderr
        assert "SYNCSNAP_TOKEN_FILE" not in r.stderr  # the user gave --token-file: that is what to fix
        assert "--token-file" in r.stderr.split(problem, 1)[1]
    env = {**d.env, "SYNCSNAP_TOKEN_FILE": str(short_tmp / "wrong")}
    r = cli(d, "--url", url, "status", env=env)
    assert r.returncode == 2
    assert f"the token file {short_tmp / 'wrong'} (SYNCSNAP_TOKEN_FILE) holds a token" in r.stderr
    assert "Point SYNCSNAP_TOKEN_FILE at the daemon's token file" in r.stderr
    r = cli(d, "--url", url, "--token-file", d.discovery["token_file"], "status")  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr


def test_restore_refusal_names_the_overwrite_flag(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    d = daemon_factory({"docs": short_tmp / "docs"})
    snapshot_run(d, "docs")
    (short_tmp / "out").mkdir()
    (short_tmp / "out/mine.txt").write_text("mine")
    r = cli(d, "restore", "docs", "latest", str(short_tmp / "out"))
    assert (r.returncode, r.stdout) == (2, "")
    assert "allow overwriting" not in r.stderr
    assert r.stderr == (f"syncsnap: the target {short_tmp}/out is not empty; restore into a new or empty directory, "
                        "or add --overwrite to restore over what is there.\n")


def test_counts_of_one_are_singular(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    docs.mkdir()
    (docs / "only.txt").write_text("one file")
    d = daemon_factory({"docs": docs})
    last = snapshot_run(d, "docs")
    sid = last["snapshot"]["id"]
    assert last["message"].startswith(f"Snapshot {sid} completed: 1 file (8 B), ")
    outputs = [last["message"]]
    r = cli(d, "restore", "docs", "latest", str(short_tmp / "out"), "--path", "only.txt", "--follow")
    assert r.returncode == 0, r.stderr
    outputs.append(r.stderr)  # not a terminal: the final line goes to stderr
    assert f"docs: restored snapshot {sid} into {short_tmp}/out: 1 file (8 B), 0 directories, 0 symlinks" \
        in r.stderr, r.stderr
    restore_run = ndjson(cli(d, "runs", "docs", "--json").stdout)[0]["runs"][0]["run"]
    for args in (("run", restore_run), ("check", "--follow"), ("prune", "--dry-run", "--follow"),
                 ("snapshots", "docs"), ("projects",), ("runs", "docs")):
        r = cli(d, *args)
        assert r.returncode == 0, (args, r.stderr)
        # Following into a pipe, stdout is NDJSON (the daemon's objects, its messages as sent): not for people.
        outputs.append(r.stderr if "--follow" in args else r.stdout + r.stderr)
    for out in outputs:
        assert not ONE_PLURAL.search(out), out


# --- 3. follow --run on a finished run ---------------------------------------------------------------------


def test_follow_run_of_a_finished_run_answers_from_the_history(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    make_tree(docs, files=3)
    d = daemon_factory({"docs": docs})
    first = snapshot_run(d, "docs")
    (docs / "new.txt").write_text("new")
    second = snapshot_run(d, "docs")  # the project's current state is now another run's
    for args in (("follow", "--run", first["run"]), ("follow", "docs", "--run", first["run"])):
        r = cli(d, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert [e["run"] for e in ndjson(r.stdout)] == [first["run"]]  # its terminal event, from the history
        assert ndjson(r.stdout)[0]["state"] == "completed"
        assert f"docs: snapshot {first['snapshot']['id']} completed" in r.stderr
    # After a restart too (the daemon's replay buffer knows nothing of the run's events in memory).
    d.stop()
    d2 = spawn_daemon(short_tmp, d.config)
    try:
        r = cli(d2, "follow", "--run", second["run"])
        assert r.returncode == 0, r.stderr
        assert f"docs: snapshot {second['snapshot']['id']} completed" in r.stderr
    finally:
        d2.stop()


# --- 4. follow on a terminal -------------------------------------------------------------------------------

LONG = "a-project-with-a-rather-long-name"


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (1/100 s), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_follow_on_a_terminal_marks_the_past_and_rests_while_idle(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    make_tree(short_tmp / LONG, files=3)
    d = daemon_factory({"docs": short_tmp / "docs", LONG: short_tmp / LONG})
    past = snapshot_run(d, "docs")
    t = Pty([SYNCSNAP, "follow"], d.env)
    try:
        t.read_until(b"docs")
        t.read_until(LONG.encode())
        t._read(0.5)  # the first frame is complete
        first = ANSI.sub("", t.text)
        # The past run is marked as such, neither as a fresh 0% run nor with a ✔ as if it had just ended.
        assert "✔" not in first and "0.0%" not in first and "step 6/6" not in first, first
        assert re.search(rf"docs: idle since \d\d:\d\d:\d\d · snapshot {past['snapshot']['id']} complet",
                         first), first
        assert f"{LONG}: idle" in first and "step 0/6" not in first, first
        # Idle: nothing redrawn, and (almost) no CPU. Measured over 3 s of the real process.
        seen = len(t.out)
        ticks = cpu_ticks(t.proc.pid)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            t._read(deadline - time.monotonic())
        idle_ticks = cpu_ticks(t.proc.pid) - ticks
        assert t.out[seen:] == b"", t.out[seen:]
        assert idle_ticks <= 2, f"{idle_ticks} ticks (1/100 s) of CPU in 3 s of idle"  # was 7 (2.3 %)
        # A new run of the long-named project: live, then its ✔ line, cut to the 80 columns.
        assert cli(d, "snapshot", LONG).returncode == 0
        t.read_until("✔".encode())
        t.read_until(b"\n", timeout=5)
        t._read(0.5)
    finally:
        t.proc.send_signal(2)
        t.wait()
    plain = ANSI.sub("", t.text)
    done = [line for line in plain.replace("\r", "\n").split("\n") if line.startswith("✔")]
    assert done and all(line.startswith(f"✔ {LONG}: snapshot ") for line in done), done
    assert all(len(line) <= 80 and line.endswith("…") for line in done), done
    assert not re.search(r"^\S*B added in \d", plain, re.M)  # no wrapped remainder of the ✔ line


# --- 5. the daemon's warnings in status --------------------------------------------------------------------


class WarningDaemon(FakeDaemon):
    """A daemon whose health carries ``warnings``.

    TEST DOUBLE, on purpose: the daemon side of ``warnings`` is engineer F's change on another branch; until
    it is merged the real daemon of this tree never sends them (the real-daemon test below then skips)."""

    warnings: list[str] = ["no projects configured: add [[projects]] or use --folder"]

    async def _respond(self, conn: Any, stream: trio.SocketStream, target: str, headers: dict[str, str]) -> bool:
        from helpers.client import _json

        if target == "/api/v1/health":
            return await _json(conn, stream, 200, {"status": "ok", "version": "0.1.0", "pid": self.pid,
                                                   "uptime_seconds": 3.0, "projects": 0,
                                                   "warnings": self.warnings})
        if target == "/api/v1/projects":
            return await _json(conn, stream, 200, {"projects": []})
        return await super()._respond(conn, stream, target, headers)


async def test_status_shows_the_daemons_warnings(short_tmp: Path) -> None:
    fake = WarningDaemon(short_tmp / "d.sock", projects=())
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        env = {**make_env(short_tmp), "SYNCSNAP_SOCKET": str(short_tmp / "d.sock")}
        r = await trio.to_thread.run_sync(lambda: cli(None, "status", env=env))
        rj = await trio.to_thread.run_sync(lambda: cli(None, "status", "--json", env=env))
        fake.stop()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("syncsnapd 0.1.0 is running")
    assert "warning: no projects configured: add [[projects]] or use --folder" in lines
    assert json.loads(rj.stdout)["health"]["warnings"] == WarningDaemon.warnings


def test_status_of_a_daemon_without_projects(daemon_factory: Any, short_tmp: Path) -> None:
    """The real daemon with a config that has only [daemon]: no crash without the field; the warning shown
    once the daemon sends it."""
    d = daemon_factory({})
    r = cli(d, "status")
    assert r.returncode == 0, r.stderr
    assert "with 0 projects." in r.stdout
    health = api(d, "/health")
    if "warnings" not in health:
        pytest.skip("this tree's daemon sends no health warnings yet (engineer F's change)")
    for warning in health["warnings"]:
        assert f"warning: {warning}" in r.stdout.splitlines()
