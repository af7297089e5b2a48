"""What the daemon finds at start, and what it does about it: real daemon and CLI subprocesses.

- The runtime directory (socket, discovery file) must be ours alone, for the daemon and for the client:
  ``/tmp/syncsnap-UID`` (no ``XDG_RUNTIME_DIR``) can be created first by another user, who would then own
  the socket and the discovery file the client trusts. These tests run the daemon and the CLI as an
  unprivileged user (``setpriv`` with a uid of its own per test, so ``/tmp/syncsnap-UID`` is not shared
  with anything else), keeping only ``CAP_DAC_READ_SEARCH`` so that it can run the interpreter under
  /root: ownership and write permission are checked as for any user.
- A damaged history database is moved aside and a new one started; one that cannot be written degrades
  the history until it can; a state directory that cannot be used is a configuration error (exit 2).
- Projects that snapshot the same files start with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.client import SYNCSNAP
from helpers.daemon import DaemonProcess, api, make_tree, spawn_daemon, wait_until, write_config

NOBODY = 65534






def history_service(d: DaemonProcess) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in api(d, "/health")["services"] if s["name"] == "history")
    return found


def finished(d: DaemonProcess, project: str, run: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        p: dict[str, Any] = api(d, f"/projects/{project}/progress")
        return p if p["run"] == run and p["state"] in ("completed", "failed", "cancelled") else None
    result: dict[str, Any] = wait_until(done, 30, f"run {run} to end")
    return result


# --- an unprivileged user of our own ------------------------------------------------------------------

class User:
    """A uid no one else uses, its home (0700, its own) and its ``/tmp/syncsnap-UID`` (removed at the end)."""

    def __init__(self, uid: int, home: Path) -> None:
        self.uid = uid
        self.home = home
        self.fallback = Path(f"/tmp/syncsnap-{uid}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SYNCSNAP_", "NOTIFY_", "LISTEN_"))}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / "cfg"), **extra)
        return env

    def argv(self, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *argv]

    def run(self, *argv: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE,
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), env=env or self.env(), stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)

    def mine(self, path: Path, mode: int = 0o700) -> Path:
        """``path`` (a directory, made if missing) is this user's, with ``mode``."""
        path.mkdir(exist_ok=True)
        os.chown(path, self.uid, self.uid)
        os.chmod(path, mode)
        return path

    def config(self, **projects: Path) -> Path:
        """A config without ``socket``: the default, in the runtime directory."""
        lines = ["[daemon]", f'store = "{self.home}/store"', f'state_dir = "{self.home}/state"',
                 f'token_file = "{self.home}/token"', 'tcp = ""', "watch = false"]
        for pid, path in projects.items():
            lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"']
        cfg = self.home / "syncsnapd.toml"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg


@pytest.fixture
def user() -> Iterator[User]:
    uid = 40000 + os.getpid() % 20000
    while Path(f"/tmp/syncsnap-{uid}").exists():
        uid += 1
    home = Path(tempfile.mkdtemp(prefix="ss-user-", dir="/tmp"))
    u = User(uid, home)
    u.mine(home)
    try:
        yield u
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if u.fallback.is_symlink():
            u.fallback.unlink()
        shutil.rmtree(u.fallback, ignore_errors=True)


def start_as(user: User, cfg: Path, env: dict[str, str], runtime: Path) -> subprocess.Popen[bytes]:
    """Start the daemon as ``user``; returns once its discovery file in ``runtime`` names it."""
    log = open(user.home / "daemon.log", "ab")
    proc = subprocess.Popen(user.argv(sys.executable, "-m", "syncsnapd", "--config", str(cfg)), env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    log.close()

    def serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {(user.home / 'daemon.log').read_text()}")
        try:
            return bool(json.loads((runtime / "syncsnapd.json").read_text())["pid"] == proc.pid)
        except (OSError, ValueError, KeyError):
            return False

    wait_until(serving, 20, "the daemon to serve")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


class Impostor:
    """Another user's socket that would answer as syncsnapd: a listening socket nothing accepts on, so
    the test can tell whether anyone connected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.setblocking(False)
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o777)

    def connections(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def close(self) -> None:
        self.sock.close()


# --- defect 5: the runtime directory --------------------------------------------------------------------

def test_daemon_and_client_run_as_a_user_without_xdg_runtime_dir(user: User) -> None:
    """The ordinary case works: /tmp/syncsnap-UID is created 0700 by the daemon and used by the CLI."""
    make_tree(user.home / "docs", files=3)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.uid}", str(user.home)], check=True)
    proc = start_as(user, user.config(docs=user.home / "docs"), user.env(), user.fallback)
    try:
        st = os.lstat(user.fallback)
        assert (stat.S_ISDIR(st.st_mode), st.st_uid, stat.S_IMODE(st.st_mode)) == (True, user.uid, 0o700)
        r = user.run(SYNCSNAP, "status")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("syncsnapd ") and f"on {user.fallback}/syncsnapd.sock with 1 project" in r.stdout
    finally:
        stop(proc)


@pytest.mark.parametrize("planted", ["another user's, 0755", "ours, 0755", "a symlink to ours"])
def test_daemon_refuses_a_runtime_dir_it_does_not_own_alone(user: User, planted: str) -> None:
    """Without XDG_RUNTIME_DIR: a /tmp/syncsnap-UID made by someone else (or open to others) is refused
    with a sentence and exit 2; the daemon puts nothing there."""
    user.mine(user.home / "docs")
    if planted == "a symlink to ours":
        os.symlink(user.mine(user.home / "elsewhere"), user.fallback)
    else:
        user.fallback.mkdir(mode=0o755)
        os.chmod(user.fallback, 0o755)
        os.chown(user.fallback, NOBODY if planted.startswith("another") else user.uid, -1)
    before = sorted(os.listdir(user.fallback))
    r = user.run(sys.executable, "-m", "syncsnapd", "--config", str(user.config(docs=user.home / "docs")),
                 stdout=subprocess.DEVNULL, timeout=20)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"syncsnapd: configuration error: runtime directory {user.fallback} ")
    why = {"another user's, 0755": f"belongs to uid {NOBODY}, not to you (uid {user.uid})",
           "ours, 0755": "has mode 0755: other users may use it",
           "a symlink to ours": "is a symbolic link"}[planted]
    assert why in r.stderr and "remove it" in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(user.fallback)) == before == []


def test_client_refuses_another_users_runtime_dir_discovery_file_and_socket(user: User) -> None:
    """The CLI never talks to a socket another user could control: not through their runtime directory,
    not through a discovery file that is not ours, not to a socket that is not ours. Exit 2, a sentence,
    and the impostor sees no connection."""
    user.fallback.mkdir(mode=0o755)
    os.chown(user.fallback, NOBODY, NOBODY)
    impostor = Impostor(user.fallback / "syncsnapd.sock")
    try:
        disc = user.fallback / "syncsnapd.json"
        disc.write_text(json.dumps({"pid": 1, "version": "0.1.0", "socket": str(impostor.path), "tcp": None,
                                    "token_file": None}))
        r = user.run(SYNCSNAP, "status")
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == (f"syncsnap: Refusing the runtime directory {user.fallback}: it belongs to uid {NOBODY}, "
                            f"not to you (uid {user.uid}); another user could put a false syncsnapd there. "
                            "Remove it (or make it yours with mode 0700) and restart syncsnapd.\n")

        # Our directory now, but the discovery file in it is another user's.
        os.chown(user.fallback, user.uid, user.uid)
        os.chmod(user.fallback, 0o700)
        os.chown(disc, NOBODY, NOBODY)
        r = user.run(SYNCSNAP, "status")
        assert r.returncode == 2 and r.stderr.startswith(f"syncsnap: Refusing the discovery file {disc}: ")

        # Our discovery file, naming another user's socket (as SYNCSNAP_SOCKET can, too).
        os.chown(disc, user.uid, user.uid)
        for env in (user.env(), user.env(SYNCSNAP_SOCKET=str(impostor.path))):
            r = user.run(SYNCSNAP, "projects", env=env)
            assert r.returncode == 2 and "Traceback" not in r.stderr
            assert r.stderr.startswith(f"syncsnap: Refusing to connect to {impostor.path} (from ")
            assert f"the socket belongs to uid {NOBODY}, not to you (uid {user.uid})" in r.stderr
        assert impostor.connections() == 0
    finally:
        impostor.close()


# --- defect 6: the history and the state directory ------------------------------------------------------

def test_a_damaged_history_is_moved_aside_and_a_new_one_started(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    (short_tmp / "state").mkdir(mode=0o700)
    junk = os.urandom(64 * 1024)
    (short_tmp / "state/history.sqlite3").write_bytes(junk)
    d = spawn_daemon(short_tmp, write_config(short_tmp, {"docs": short_tmp / "docs"}))
    try:
        aside = list((short_tmp / "state").glob("history.sqlite3.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == junk
        health = api(d, "/health")
        assert health["degraded"] == ["history"]
        history = history_service(d)
        assert history["state"] == "running" and history["error"]["code"] == "history_recreated"
        assert str(aside[0]) in history["error"]["message"]
        run = api(d, "/projects/docs/snapshots", "POST")["run"]
        assert finished(d, "docs", run)["state"] == "completed"
        wait_until(lambda: api(d, f"/runs/{run}").get("state") == "completed", 20, "the run in the new history")
        log = (short_tmp / "daemon.log").read_text()
        assert f"is damaged (file is not a database); moved it aside to {aside[0].name}" in log
        assert "Traceback" not in log
    finally:
        d.stop()


def test_a_read_only_history_degrades_the_daemon_until_it_can_be_written(user: User) -> None:
    """The history file became read-only for the daemon's user: the daemon starts and serves (the runs
    recorded before can still be read), snapshots run, health says the history is degraded; once the
    file is writable again, the events waiting in memory are written and the history is well."""
    make_tree(user.home / "docs", files=3)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.uid}", str(user.home)], check=True)
    runtime = user.mine(user.home / "run")
    env = user.env(XDG_RUNTIME_DIR=str(runtime))
    cfg = user.config(docs=user.home / "docs")

    def start() -> DaemonProcess:
        proc = start_as(user, cfg, env, runtime / "syncsnap")
        return DaemonProcess(user.home, cfg, env, proc, json.loads((runtime / "syncsnap/syncsnapd.json").read_text()))

    d = start()
    try:
        first = api(d, "/projects/docs/snapshots", "POST")["run"]
        assert finished(d, "docs", first)["state"] == "completed"
        wait_until(lambda: api(d, f"/runs/{first}").get("state") == "completed", 20, "the first run's record")
    finally:
        d.stop()
    db = user.home / "state/history.sqlite3"
    os.chmod(db, 0o444)
    d = start()
    try:
        history = history_service(d)
        assert history["state"] == "running" and history["error"]["code"] in ("history_unavailable",
                                                                              "history_write_failed")
        assert "readonly" in history["error"]["message"]
        assert api(d, "/health")["degraded"] == ["history"]
        assert api(d, f"/runs/{first}")["state"] == "completed"  # read-only is still readable
        run = api(d, "/projects/docs/snapshots", "POST")["run"]
        assert finished(d, "docs", run)["state"] == "completed"
        assert api(d, "/health")["degraded"] == ["history"]
        assert "error" in api(d, f"/runs/{run}")  # not written yet

        os.chmod(db, 0o644)
        wait_until(lambda: history_service(d)["error"] is None, 40, "the history to recover")
        assert api(d, "/health")["degraded"] == []
        wait_until(lambda: api(d, f"/runs/{run}").get("state") == "completed", 20, "the run in the history")
        assert d.proc.poll() is None
        assert "Traceback" not in (user.home / "daemon.log").read_text()
    finally:
        d.stop()


def test_a_state_dir_that_is_a_file_is_a_configuration_error(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=1)
    (short_tmp / "state").write_text("not a directory")
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"})
    r = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=20, env={**os.environ, "XDG_RUNTIME_DIR": str(short_tmp / "run")})
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"syncsnapd: configuration error: daemon.state_dir: {short_tmp}/state is a file, not a "
                        "directory; point daemon.state_dir at a directory (it holds the history)\n")


def test_a_state_dir_we_cannot_write_is_a_configuration_error(user: User) -> None:
    user.mine(user.home / "docs")
    state = user.home / "state"
    state.mkdir(mode=0o755)  # root's
    runtime = user.mine(user.home / "run")
    r = user.run(sys.executable, "-m", "syncsnapd", "--config", str(user.config(docs=user.home / "docs")),
                 env=user.env(XDG_RUNTIME_DIR=str(runtime)), stdout=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"syncsnapd: configuration error: daemon.state_dir: {state} is not writable by this user "
                        f"(uid {user.uid}); give it back write permission or choose another daemon.state_dir\n")


# --- defect 7: overlapping projects ------------------------------------------------------------------------

def test_overlapping_projects_start_with_a_warning_naming_what_each_snapshots(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs", "again": short_tmp / "docs",
                                   "sub": short_tmp / "docs/d0"})
    d = spawn_daemon(short_tmp, cfg)
    try:
        log = (short_tmp / "daemon.log").read_text()
        docs = short_tmp / "docs"
        assert f"projects 'docs' and 'again' both snapshot {docs}: every file there is snapshotted twice" in log
        assert (f"projects 'docs' and 'sub' overlap: 'docs' snapshots {docs} including {docs}/d0, which 'sub' "
                "snapshots too") in log
        assert (f"projects 'again' and 'sub' overlap: 'again' snapshots {docs} including {docs}/d0") in log
    finally:
        d.stop()
