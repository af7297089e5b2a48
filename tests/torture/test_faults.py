"""Faults: a real daemon loses its store disk, its history database, its Syncthing and its S3 service.

Each fault is injected into what a real ``syncsnapd`` subprocess depends on, one round each in the short
suite, 3-5 rounds each in the long one (about 1.5 min in all), on the same daemon. For each, the daemon:

- stays up: its process is alive and ``/api/v1/health`` answers throughout;
- says what is wrong where a user looks: the failed run's ``error.code`` (docs/api.md), health's
  ``degraded`` and ``services``, the project's ``watch.warning``, a run's step 1 message;
- recovers by itself once the fault goes away: the automatic retry (or the waiting run, or the history
  writer) completes without anyone restarting anything, and health is clean again;
- loses nothing: ``syncsnapd check`` is clean and the snapshot taken before the first fault restores
  byte for byte (modes and mtimes included).

The state disk (the history's disk) filling up is tests/torture/test_state_faults.py. Figures go to the
``faults`` section: ``injected``, ``recovered``, ``daemon_died`` (must be zero), ``fault`` (which one)
and ``code`` (where a user reads what is wrong).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers.daemon import DaemonProcess, make_env, make_tree, spawn_daemon, wait_until, write_config
from helpers.disk import fill, small_tmpfs
from helpers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, ThrottlingProxy, create_bucket, moto_server
from helpers.store import tree_state
from helpers.syncthing import FOLDER_ID, Syncthing, folder_totals, needs_syncthing, syncthing_table
from helpers.torture import record, scale

TERMINAL = ("completed", "failed", "cancelled")


# --- talking to the daemon ------------------------------------------------------------------------------

def api(d: DaemonProcess, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    args = ["-X", method, "-w", "\n%{http_code}", f"http://localhost/api/v1{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    out = d.curl(*args)
    text, _, code = out.stdout.rpartition("\n")
    return int(code or 0), json.loads(text) if text.strip() else None


def get(d: DaemonProcess, path: str) -> Any:
    status, doc = api(d, path)
    assert status == 200, (path, status, doc)
    return doc




def request_snapshot(d: DaemonProcess, project: str = "docs") -> str:
    status, doc = api(d, f"/projects/{project}/snapshots", "POST")
    assert status == 202, doc
    return str(doc["run"])


def run_record(d: DaemonProcess, run: str) -> dict[str, Any] | None:
    """The run as the history has it, once it ended (None before)."""
    status, doc = api(d, f"/runs/{run}")
    return dict(doc) if status == 200 and doc["state"] in TERMINAL else None


def progress_of(d: DaemonProcess, run: str, project: str = "docs") -> dict[str, Any] | None:
    """The project's progress while it shows ``run`` (None once another run shows, or before)."""
    p: dict[str, Any] = get(d, f"/projects/{project}/progress")
    return p if p["run"] == run else None


def ended(d: DaemonProcess, run: str, project: str = "docs") -> dict[str, Any] | None:
    p = progress_of(d, run, project)
    return p if p is not None and p["state"] in TERMINAL else None


def retry_of(d: DaemonProcess, failed: str, project: str = "docs") -> dict[str, Any] | None:
    """The automatic retry of ``failed`` once it ended."""
    p: dict[str, Any] = get(d, f"/projects/{project}/progress")
    return p if p["retry_of"] == failed and p["trigger"] == "retry" and p["state"] in TERMINAL else None


def assert_up(d: DaemonProcess) -> dict[str, Any]:
    """The daemon is alive and answers; returns its health."""
    assert d.proc.poll() is None, f"the daemon died: {(d.base / 'daemon.log').read_text()[-3000:]}"
    health: dict[str, Any] = get(d, "/health")
    assert health["status"] == "ok"
    return health


def restore_matches(d: DaemonProcess, snapshot: str, want: dict[bytes, tuple[Any, ...]], target: Path,
                    project: str = "docs") -> None:
    status, doc = api(d, f"/projects/{project}/restore", "POST", {"snapshot": snapshot, "target": str(target)})
    assert status == 202, doc
    end = wait_until(lambda: (o := get(d, f"/operations/{doc['run']}"))["state"] in TERMINAL and o, 60,
                     "the restore to end")
    assert end["state"] == "completed", end
    assert tree_state(target) == want


def check_clean(d: DaemonProcess) -> None:
    c = d.cli("check", timeout=120)
    assert c.returncode == 0, c.stdout + c.stderr


# --- 1. the store's disk fills up -----------------------------------------------------------------------

# Room for the first snapshot and one BIG_FILE per round of the long suite (5), none once filled.
STORE_TMPFS = "32m"
BIG_FILE = 4 << 20
# The automatic retry comes this long after a failure: time for the test to see the failure and free space.
RETRY_BACKOFF_SECONDS = 3


def test_a_full_store_disk_fails_the_run_and_its_retry_completes_once_space_is_freed(short_tmp: Path) -> None:
    rounds = scale(1, 5)
    folder = short_tmp / "docs"
    make_tree(folder, files=10)
    recovered, codes = 0, set()
    with small_tmpfs(short_tmp / "store", STORE_TMPFS) as store:
        cfg = write_config(short_tmp, {"docs": folder},
                           extra_daemon=f'retry_attempts = 2\nretry_backoff = "{RETRY_BACKOFF_SECONDS}s"')
        d = spawn_daemon(short_tmp, cfg)
        try:
            first_state = tree_state(folder)
            run0 = request_snapshot(d)
            first = wait_until(lambda: run_record(d, run0), 30, "the first snapshot")
            assert first["state"] == "completed", first
            for i in range(rounds):
                (folder / f"big{i}.bin").write_bytes(os.urandom(BIG_FILE))  # incompressible
                filler = fill(store)
                run = request_snapshot(d)

                failed = wait_until(lambda run=run: ended(d, run), 60, "the snapshot on a full disk to end")
                assert failed["state"] == "failed", failed
                codes.add(failed["error"]["code"])
                assert failed["error"]["code"] == "store_full", failed
                assert "No space left on device" in failed["error"]["message"], failed
                assert assert_up(d)["degraded"] == []  # a run failed; no service is unwell

                os.unlink(filler)
                retry = wait_until(lambda run=run: retry_of(d, run), RETRY_BACKOFF_SECONDS + 60,
                                   "the automatic retry once space is freed")
                assert (retry["state"], retry["attempt"]) == ("completed", 2), retry
                assert retry["snapshot"]["files_new"] == 1
                assert assert_up(d)["degraded"] == []
                recovered += 1
            check_clean(d)
            restore_matches(d, first["snapshot"]["id"], first_state, short_tmp / "restored")
        finally:
            died = d.proc.poll() is not None
            d.stop()
    log = (short_tmp / "daemon.log").read_text()
    assert "Traceback" not in log
    record("faults", injected=rounds, recovered=recovered, daemon_died=int(died), fault="store disk full",
           code=",".join(sorted(codes)))
    assert recovered == rounds


# --- 2. another process holds the history database locked ----------------------------------------------

# Holds an exclusive transaction on the database until its stdin closes (as another tool holding the
# database would: sqlite3's shell in a transaction, a backup program).
LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""
SNAPSHOTS_WHILE_LOCKED = 3


@contextlib.contextmanager
def locked(db: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def history_error(d: DaemonProcess) -> dict[str, str] | None:
    error: dict[str, str] | None = next(s for s in get(d, "/health")["services"] if s["name"] == "history")["error"]
    return error


def test_a_locked_history_degrades_health_and_the_runs_are_recorded_once_released(short_tmp: Path) -> None:
    rounds = scale(1, 5)
    folder = short_tmp / "docs"
    make_tree(folder, files=10)
    d = spawn_daemon(short_tmp, write_config(short_tmp, {"docs": folder}))
    recovered = 0
    try:
        first_state = tree_state(folder)
        run0 = request_snapshot(d)
        first = wait_until(lambda: run_record(d, run0), 30, "the first snapshot in the history")
        db = short_tmp / "state/history.sqlite3"
        assert db.exists()
        for i in range(rounds):
            runs = []
            with locked(db):
                for j in range(SNAPSHOTS_WHILE_LOCKED):
                    (folder / f"r{i}-{j}.txt").write_text(f"{i} {j}")
                    run = request_snapshot(d)
                    done = wait_until(lambda run=run: ended(d, run), 30, "a snapshot while the history is locked")
                    assert done["state"] == "completed", done  # the history's trouble does not fail runs
                    runs.append(run)
                error = wait_until(lambda: history_error(d), 30, "health to say the history cannot be written")
                assert error["code"] == "history_write_failed" and "locked" in error["message"], error
                assert assert_up(d)["degraded"] == ["history"]
                assert api(d, f"/runs/{runs[-1]}")[0] == 404  # not written yet: it waits in memory
            # Released: the writer retries with backoff (0.5 s doubling to 30 s), so within 30 s and some.
            wait_until(lambda: history_error(d) is None, 45, "the history to recover")
            assert assert_up(d)["degraded"] == []
            listed = {r["run"]: r for r in get(d, "/projects/docs/runs?limit=500")["runs"]}
            for run in runs:
                assert listed[run]["state"] == "completed", listed.get(run)
            recovered += 1
        check_clean(d)
        restore_matches(d, first["snapshot"]["id"], first_state, short_tmp / "restored")
    finally:
        died = d.proc.poll() is not None
        d.stop()
    log = (short_tmp / "daemon.log").read_text()
    assert "database is locked" in log and "Traceback" not in log
    record("faults", injected=rounds, recovered=recovered, daemon_died=int(died), fault="history DB locked",
           code="history_write_failed")
    assert recovered == rounds


# --- 3. Syncthing is killed and restarted ---------------------------------------------------------------

# How long Syncthing stays down each round: long enough for the daemon to notice and back off a few
# times (1 s doubling), short enough that its next try comes soon after the restart.
SYNCTHING_DOWN_SECONDS = 3.0


def syncthing_rounds(d: DaemonProcess, st: Syncthing, folder: Path, rounds: int) -> int:
    """Kill and restart ``st`` ``rounds`` times under ``d``; returns the rounds it recovered from."""
    recovered = 0
    # Syncthing's own marker is never snapshotted (README, "Watching").
    first_state = {k: v for k, v in tree_state(folder).items() if not k.startswith(b".stfolder")}
    run0 = request_snapshot(d, "synced")
    first = wait_until(lambda: run_record(d, run0), 30, "the first snapshot")
    assert first["state"] == "completed", first
    assert get(d, "/projects/synced")["watch"]["mode"] == "syncthing"
    for i in range(rounds):
        st.kill()
        # Followed: the source says Syncthing is down, and keeps trying.
        warning = wait_until(lambda: get(d, "/projects/synced")["watch"]["warning"], 15,
                             "watch.warning to say Syncthing is down")
        assert f"Syncthing at {st.url} is not answering" in warning
        assert_up(d)
        # A run meanwhile waits in step 1 and says why, rather than failing.
        (folder / f"while-down{i}.txt").write_text(str(i))
        run = request_snapshot(d, "synced")
        waiting = wait_until(lambda run=run: (p := progress_of(d, run, "synced")) is not None
                             and "not answering" in p["message"] and p, 15, "step 1 to say Syncthing is down")
        assert (waiting["state"], waiting["step"]) == ("waiting", 1), waiting
        time.sleep(SYNCTHING_DOWN_SECONDS)  # Syncthing stays down a while: the run keeps waiting
        still = progress_of(d, run, "synced")
        assert still is not None and (still["state"], still["step"]) == ("waiting", 1), still
        assert_up(d)

        st.start()
        done = wait_until(lambda run=run: run_record(d, run), 60, "the waiting run to complete")
        assert done["state"] == "completed", done
        assert (done["snapshot"]["files"], done["snapshot"]["bytes"]) == folder_totals(folder)
        watch = wait_until(lambda: (w := get(d, "/projects/synced")["watch"])["warning"] is None and w, 45,
                           "watch.warning to clear")
        assert (watch["mode"], watch["error"]) == ("syncthing", None)
        assert assert_up(d)["degraded"] == []
        recovered += 1
    # A change after the last restart is still followed: it gets a snapshot of its own.
    wait_until(lambda: get(d, "/projects/synced/progress")["state"] in TERMINAL, 30, "quiet")
    before = len(get(d, "/projects/synced/snapshots")["snapshots"])
    (folder / "after.txt").write_text("after")
    st.scan(FOLDER_ID)
    wait_until(lambda: len(get(d, "/projects/synced/snapshots")["snapshots"]) > before, 30,
               "a snapshot of a change after the restart")
    wait_until(lambda: get(d, "/projects/synced/progress")["state"] in TERMINAL, 30, "quiet")
    check_clean(d)
    restore_matches(d, first["snapshot"]["id"], first_state, d.base / "restored", "synced")
    return recovered


@needs_syncthing
def test_syncthing_killed_while_followed_and_while_a_run_waits_then_restarted(short_tmp: Path) -> None:
    """One real Syncthing instance with a local folder (no peer is needed for it to be killed)."""
    rounds = scale(1, 3)
    st = Syncthing("solo", short_tmp / "st")
    st.generate()
    st.start()
    folder = short_tmp / "shared"
    recovered = 0
    try:
        st.add_folder(folder, [])
        make_tree(folder, files=10)
        wait_until(lambda: st.db_status()["state"] == "idle", 30, "Syncthing to scan the folder")
        cfg = write_config(short_tmp, {}, watch=True, extra_daemon='settle = "0.5s"')
        with open(cfg, "a") as f:
            f.write(f'[[projects]]\nid = "synced"\npath = "{folder}"\nsyncthing = {syncthing_table(st)}\n')
        d = spawn_daemon(short_tmp, cfg, "-v")
        try:
            recovered = syncthing_rounds(d, st, folder, rounds)
        finally:
            died = d.proc.poll() is not None
            d.stop()
    finally:
        st.kill()
    log = (short_tmp / "daemon.log").read_text()
    assert "Traceback" not in log
    record("faults", injected=rounds, recovered=recovered, daemon_died=int(died), fault="Syncthing killed",
           code="watch.warning")
    assert recovered == rounds


# --- 4. the S3 service stops in the middle of an upload -------------------------------------------------

S3_URL = f"s3://{BUCKET}/faults"
# A few packs to upload, one at a time through a slow link, so that the service can stop between two.
S3_BIG_FILES = 3
S3_BIG_FILE = 12 << 20
S3_LINK_DELAY_SECONDS = 0.3
# The daemon's S3 retry bounds, shortened as tests/store/test_s3_store.py does: a store that is down then
# fails a run within seconds instead of about a minute (the bounds themselves are the store tests' topic).
S3_LAUNCHER = """
import runpy, sys
from syncsnapd.core import _s3
_s3.BOTOCORE_ATTEMPTS = 2
_s3.RETRY_DELAYS = (0.5,)
_s3.CONNECT_TIMEOUT = 2.0
sys.argv = ["syncsnapd", *sys.argv[1:]]
runpy.run_module("syncsnapd", run_name="__main__", alter_sys=True)
"""


def start_s3_daemon(base: Path, folder: Path, endpoint: str) -> DaemonProcess:
    env = make_env(base)
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_CONFIG_FILE": str(base / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(base / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"})
    # A new S3 store is encrypted by default (issue 15): its passphrase, with a cheap key derivation.
    (base / "passphrase").write_text("test passphrase")
    env.update({"SYNCSNAP_PASSWORD_FILE": str(base / "passphrase"), "SYNCSNAP_SCRYPT_N": "1024"})
    cfg = base / "config.toml"
    cfg.write_text("\n".join([
        "[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""',
        f'store = "{S3_URL}"', f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false",
        "retry_attempts = 2", f'retry_backoff = "{RETRY_BACKOFF_SECONDS}s"',
        "[daemon.s3]", f'endpoint = "{endpoint}"', "path_style = true", "concurrency = 1",
        "[[projects]]", 'id = "docs"', f'path = "{folder}"', ""]))
    disc = base / "run/syncsnap/syncsnapd.json"
    proc = subprocess.Popen([sys.executable, "-c", S3_LAUNCHER, "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "ab"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {(base / 'daemon.log').read_text()}")
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(disc.read_text())
            if info.get("pid") == proc.pid:
                return DaemonProcess(base, cfg, env, proc, info)
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("daemon did not start")


def bucket_keys(endpoint: str) -> set[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    prefix = "faults/"
    keys = {o["Key"][len(prefix):]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])}
    client.close()
    return keys


def uploaded(proxy: ThrottlingProxy, since: int) -> list[str]:
    """Object keys PUT or POSTed through the proxy since request ``since`` (multipart parts: once)."""
    keys: list[str] = []
    for method, path in proxy.requests[since:]:
        if method in ("PUT", "POST"):
            key = path.split("?", 1)[0].split(f"/{BUCKET}/faults/", 1)[-1]
            if key not in keys:
                keys.append(key)
    return keys


def test_s3_service_stopped_mid_upload_the_run_waits_and_sends_only_what_is_missing_once_it_is_back(
        short_tmp: Path) -> None:
    """moto (an S3 emulator) keeps its objects in memory, so the service that stops is a proxy in front of
    it (:class:`ThrottlingProxy` stops listening and starts again): the bucket keeps what it had, as a
    real service's does. The run waits in step 5 (issue 15, "Offline at start") and completes."""
    rounds = scale(1, 3)
    folder = short_tmp / "docs"
    make_tree(folder, files=10)
    recovered = 0
    with moto_server() as moto:
        create_bucket(moto.url)
        proxy = ThrottlingProxy(moto.port)
        d = start_s3_daemon(short_tmp, folder, proxy.url)
        try:
            first_state = tree_state(folder)
            run0 = request_snapshot(d)
            first = wait_until(lambda: run_record(d, run0), 60, "the first snapshot")
            assert first["state"] == "completed", first
            for i in range(rounds):
                for j in range(S3_BIG_FILES):
                    (folder / f"big{i}-{j}.bin").write_bytes(os.urandom(S3_BIG_FILE))
                proxy.delay = S3_LINK_DELAY_SECONDS
                packs_before = {k for k in bucket_keys(moto.url) if k.startswith("packs/")}
                run = request_snapshot(d)
                wait_until(lambda packs_before=packs_before: {k for k in bucket_keys(moto.url)
                                                              if k.startswith("packs/")} - packs_before,
                           60, "a first pack of the run in the bucket")
                p = progress_of(d, run)
                assert p is not None and (p["step"], p["state"]) == (5, "uploading"), p
                proxy.down()

                waiting = wait_until(lambda run=run: (w := progress_of(d, run)) is not None
                                     and w["message"].startswith("store unreachable, retrying in ") and w, 60,
                                     "the run to wait for the service")
                assert (waiting["step"], waiting["state"]) == (5, "uploading"), waiting
                assert "store" in assert_up(d)["degraded"]
                time.sleep(S3_LINK_DELAY_SECONDS + 0.5)  # a request the proxy still held reaches moto now
                in_bucket = bucket_keys(moto.url)
                assert not any(k.startswith("snapshots/") and run in k for k in in_bucket)

                proxy.delay = 0
                since = len(proxy.requests)
                proxy.up()
                # The run's next attempt comes within its current wait (5 s, doubling to 5 min).
                done = wait_until(lambda run=run: ended(d, run), 60, "the run to complete once the service is back")
                assert (done["state"], done["attempt"]) == ("completed", 1), done
                sent = uploaded(proxy, since)
                twice = set(sent) & (in_bucket - {"config.json"})
                assert not twice, f"sent again though already in the bucket: {sorted(twice)}"
                assert any(k.startswith("packs/") for k in sent)  # what the run could not send before
                assert assert_up(d)["degraded"] == []
                recovered += 1
            check_clean(d)
            restore_matches(d, first["snapshot"]["id"], first_state, short_tmp / "restored")
        finally:
            died = d.proc.poll() is not None
            d.stop()
            proxy.close()
    log = (short_tmp / "daemon.log").read_text()
    assert "Traceback" not in log
    record("faults", injected=rounds, recovered=recovered, daemon_died=int(died), fault="S3 stopped mid-upload",
           code="store_unreachable")
    assert recovered == rounds
