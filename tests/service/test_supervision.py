"""The daemon's services fail alone: a failure is shown (health, the project's ``watch``, STATUS=, the
log) and retried with backoff, the daemon and everything else carry on, and the service recovers.

End to end against real daemon subprocesses with real faults (names that are not UTF-8, a removed folder,
a history database locked by another process). Faults that cannot be caused from outside (metrics, the
status task, an exception group from a nested nursery) are injected in-process through ``serve_daemon``'s
documented test hook ``wrap_service``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers.daemon import DaemonProcess, make_env, wait_until, write_config
from helpers.http import H11Client
from syncsnapd.core import load_config
from syncsnapd.service import serve_daemon


def api(d: DaemonProcess, path: str, method: str = "GET", body: object = None) -> Any:
    args = ["-X", method, f"http://localhost/api/v1{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return json.loads(d.curl(*args).stdout)




def snapshots(d: DaemonProcess, project: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(d, f"/projects/{project}/snapshots")["snapshots"]
    return result


def service(d: DaemonProcess, name: str) -> dict[str, Any] | None:
    return next((s for s in api(d, "/health")["services"] if s["name"] == name), None)


def finished(d: DaemonProcess, project: str, run: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        p: dict[str, Any] = api(d, f"/projects/{project}/progress")
        return p if p["run"] == run and p["state"] in ("completed", "failed", "cancelled") else None
    result: dict[str, Any] = wait_until(done, timeout, f"run {run} of {project} to end")
    return result


# --- end to end: real faults -----------------------------------------------------------------------------

def test_names_that_are_not_utf8_do_not_stop_the_daemon_and_are_snapshotted(daemon_factory: Any,
                                                                             short_tmp: Path) -> None:
    """A file and a directory whose names are not UTF-8 exist before the start and appear after it: the
    daemon stays up, keeps watching that folder with inotify (names are bytes to the watcher), snapshots
    those files, and restores them."""
    folder = short_tmp / "w"
    folder.mkdir()
    fb = os.fsencode(folder)
    (folder / "plain.txt").write_text("plain")
    with open(fb + b"/bad\xff name", "wb") as f:
        f.write(b"before start")
    os.mkdir(fb + b"/dir\xfe")
    with open(fb + b"/dir\xfe/inner.txt", "wb") as f:
        f.write(b"inner, before start")
    d = daemon_factory({"w": folder}, watch=True, extra_daemon='settle = "0.3s"\nmax_delay = "5s"')
    wait_until(lambda: snapshots(d, "w"), 20, "the start-up snapshot")
    with open(fb + b"/late\xfd file", "wb") as f:
        f.write(b"after start")
    os.mkdir(fb + b"/late dir\xfc")
    with open(fb + b"/late dir\xfc/x.txt", "wb") as f:
        f.write(b"in a late directory")

    # Everything is in a snapshot: 5 files (plain.txt, two with odd names, one in each odd directory).
    latest = wait_until(lambda: (s := snapshots(d, "w")) and s[-1]["files"] == 5 and s[-1], 20,
                        "a snapshot with the late files")
    # Changes to odd names keep triggering snapshots.
    with open(fb + b"/bad\xff name", "ab") as f:
        f.write(b", changed")
    wait_until(lambda: snapshots(d, "w")[-1]["id"] != latest["id"], 20, "a snapshot of the change")

    assert d.proc.poll() is None
    assert api(d, "/projects/w")["watch"] == {"mode": "inotify", "warning": None, "error": None}
    health = api(d, "/health")
    assert health["status"] == "ok" and health["degraded"] == []
    assert service(d, "project:w/watch") == {"name": "project:w/watch", "state": "running", "failures": 0,
                                              "error": None, "retry_in_seconds": None}
    target = short_tmp / "restored"
    done = d.cli("restore", snapshots(d, "w")[-1]["id"], str(target))
    assert done.returncode == 0, done.stderr
    tb = os.fsencode(target)
    with open(tb + b"/bad\xff name", "rb") as f:
        assert f.read() == b"before start, changed"
    with open(tb + b"/late dir\xfc/x.txt", "rb") as f:
        assert f.read() == b"in a late directory"
    with open(tb + b"/dir\xfe/inner.txt", "rb") as f:
        assert f.read() == b"inner, before start"


def test_a_removed_folder_and_a_locked_history_degrade_the_daemon_until_they_come_back(
        daemon_factory: Any, short_tmp: Path) -> None:
    gone, other = short_tmp / "gone", short_tmp / "other"
    gone.mkdir()
    other.mkdir()
    (gone / "a.txt").write_text("a")  # an empty folder without snapshots gets no start-up snapshot
    (other / "a.txt").write_text("a")
    d = daemon_factory({"gone": gone, "other": other}, watch=True, extra_daemon='settle = "0.3s"')
    wait_until(lambda: snapshots(d, "other") and snapshots(d, "gone"), 20, "the start-up snapshots")

    # The watched folder disappears: its source fails with folder_missing and is retried with backoff.
    shutil.rmtree(gone)
    watch = wait_until(lambda: (w := api(d, "/projects/gone")["watch"])["error"] and w, 10, "watch.error")
    assert watch["mode"] == "stopped"
    assert watch["error"]["code"] == "folder_missing" and str(gone) in watch["error"]["message"]
    health = api(d, "/health")
    assert health["status"] == "ok" and health["degraded"] == ["project:gone/watch"]
    broken = service(d, "project:gone/watch")
    assert broken is not None and broken["state"] == "backoff" and broken["failures"] >= 1
    assert broken["error"]["code"] == "folder_missing" and 0 <= broken["retry_in_seconds"] <= 300
    # Everything else carries on: the other project's watcher and snapshots.
    before = len(snapshots(d, "other"))
    (other / "b.txt").write_text("b")
    wait_until(lambda: len(snapshots(d, "other")) > before, 20, "a snapshot of the other project")

    # The folder comes back: its source recovers and watches it again.
    gone.mkdir()
    wait_until(lambda: api(d, "/health")["degraded"] == [], 30, "the watch to recover")
    assert api(d, "/projects/gone")["watch"] == {"mode": "inotify", "warning": None, "error": None}
    before = len(snapshots(d, "gone"))
    (gone / "back.txt").write_text("back")
    wait_until(lambda: len(snapshots(d, "gone")) > before, 20, "a snapshot of the recreated folder")

    # The history database is locked by another process: its writer keeps the events in memory and
    # retries, and says so in health (degraded, running, not restarted).
    db = sqlite3.connect(short_tmp / "state/history.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        run = api(d, "/projects/other/snapshots", "POST")["run"]
        # The snapshot itself is not disturbed by its history failing to be written.
        assert finished(d, "other", run)["state"] == "completed"

        def history_failed() -> dict[str, Any] | None:
            health: dict[str, Any] = api(d, "/health")
            history = next(s for s in health["services"] if s["name"] == "history")
            return health if history["error"] is not None else None

        health = wait_until(history_failed, 20, "the history writer to report its failing writes")
        assert health["status"] == "ok" and health["degraded"] == ["history"]
        history = next(s for s in health["services"] if s["name"] == "history")
        assert history["state"] == "running"
        assert history["error"]["code"] == "history_write_failed" and "locked" in history["error"]["message"]
    finally:
        db.close()  # rolls the lock back

    wait_until(lambda: (s := service(d, "history")) and s["error"] is None, 40, "the history to recover")
    assert api(d, "/health")["degraded"] == []
    # Nothing was lost: the run written while the database was locked is in the history now.
    assert api(d, f"/runs/{run}")["state"] == "completed"
    assert d.proc.poll() is None
    log = (short_tmp / "daemon.log").read_text()
    assert "service project:gone/watch failed (folder_missing" in log
    assert "history: cannot write to" in log and "database is locked" in log
    assert "history: writing again after" in log


# --- in process: injected faults -------------------------------------------------------------------------

class Faults:
    """The test's ``wrap_service``: the services named in ``broken`` fail as soon as they have started,
    with an exception group from a nested nursery, until the test removes them from ``broken``."""

    def __init__(self, *names: str) -> None:
        self.broken = set(names)
        self.attempts: dict[str, int] = {}

    def __call__(self, name: str, fn: Any) -> Any:
        async def wrapped(*args: Any, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            self.attempts[name] = self.attempts.get(name, 0) + 1
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda **kw: fn(*args, **kw))
                task_status.started()
                if name in self.broken:
                    async def fail() -> None:
                        raise OSError(f"injected fault in {name}")
                    nursery.start_soon(fail)

        return wrapped


async def get_json(sock: Path, path: str) -> Any:
    stream = await trio.open_unix_socket(str(sock))
    async with stream:
        reply = await H11Client(stream).request("GET", f"/api/v1{path}")
    assert reply.status == 200, reply
    return reply.json()


# How long the in-process test waits for a state it polls for (real time: threads and sockets are real).
WAIT_SECONDS = 20


async def wait_for_json(sock: Path, path: str, predicate: Callable[[Any], bool]) -> Any:
    """Poll ``path`` until its JSON satisfies ``predicate`` (the API pushes no event for services)."""
    with trio.fail_after(WAIT_SECONDS):
        while True:
            value = await get_json(sock, path)
            if predicate(value):
                return value
            await trio.sleep(0.05)


def add_syncthing_project(config_file: Path, folder: Path, port: int) -> None:
    with open(config_file, "a") as f:
        f.write(f'[[projects]]\nid = "synced"\npath = "{folder}"\n'
                f'syncthing = {{ url = "http://127.0.0.1:{port}", api_key = "k", folder = "f" }}\n')


async def test_each_supervised_service_fails_alone_and_recovers(short_tmp: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    base = short_tmp
    plain, synced = base / "plain", base / "synced"
    plain.mkdir()
    synced.mkdir()
    (plain / "f.txt").write_text("x")
    # A Syncthing project whose Syncthing does not answer: its source runs and retries by itself.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config_file = write_config(base, {"plain": plain}, watch=True,
                               extra_daemon='settle = "0.2s"')
    add_syncthing_project(config_file, synced, port)
    env = make_env(base)
    config = load_config(config_file, env=env)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(base / "notify.sock"))
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(base / "notify.sock"))
    names = ["history", "history-trim", "metrics", "project:plain/watch", "project:synced/syncthing", "status"]
    faults = Faults(*names)

    def status_lines() -> list[str]:
        lines: list[str] = []
        while True:
            try:
                data = notify.recv(4096).decode()
            except BlockingIOError:
                return lines
            lines += [line[7:] for line in data.split("\n") if line.startswith("STATUS=")]

    try:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(lambda task_status: serve_daemon(config, wrap_service=faults,
                                                                        task_status=task_status))
            health = await wait_for_json(info.socket, "/health", lambda h: h["degraded"] == names)
            assert health["status"] == "ok"
            for status in health["services"]:
                assert status["state"] == "backoff" and status["error"] == {
                    "code": "internal_error", "message": f"injected fault in {status['name']}"}, status
            watch = (await get_json(info.socket, "/projects/plain"))["watch"]
            assert watch["mode"] == "stopped" and watch["error"]["message"] == "injected fault in project:plain/watch"
            assert any("degraded: history, history-trim, metrics, project:plain/watch" in line for line in status_lines())

            # A snapshot runs and completes meanwhile.
            stream = await trio.open_unix_socket(str(info.socket))
            async with stream:
                reply = await H11Client(stream).request("POST", "/api/v1/projects/plain/snapshots")
            run = reply.json()["run"]
            await wait_for_json(info.socket, "/projects/plain/progress",
                                lambda p: p["run"] == run and p["state"] == "completed")

            # The faults go away: every service is restarted (after 1 s, 2 s, ...) and stays up.
            faults.broken.clear()
            health = await wait_for_json(info.socket, "/health", lambda h: not h["degraded"])
            assert [(s["name"], s["state"], s["error"]) for s in health["services"]] == [
                (name, "running", None) for name in names]
            assert all(faults.attempts[name] >= 2 for name in names)
            assert (await get_json(info.socket, "/projects/plain"))["watch"] == {
                "mode": "inotify", "warning": None, "error": None}
            synced_watch = (await get_json(info.socket, "/projects/synced"))["watch"]
            assert synced_watch["mode"] == "syncthing" and synced_watch["error"] is None
            assert "is not answering" in synced_watch["warning"]
            # STATUS= was refreshed as services recovered ("2 projects, idle", or the Syncthing project's
            # start-up snapshot waiting for Syncthing).
            assert status_lines()[-1] in ("2 projects, idle", "synced: waiting 0% (2 projects)")
            nursery.cancel_scope.cancel()
    finally:
        notify.close()
