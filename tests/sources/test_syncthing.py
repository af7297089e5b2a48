"""Syncthing projects: step 1 waits for Syncthing, its event stream triggers snapshots, outages are survived.

Against real Syncthing 1.19 instances (Debian's package) on loopback, started once for the module by
``helpers.syncthing``: files are written on instance A and arrive on B, whose folder the daemon follows.
Timed behaviour (backoff) runs under ``autojump_clock`` against a port where nothing listens.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from helpers.daemon import wait_until
from helpers.syncthing import (
    FOLDER_ID,
    Syncthing,
    SyncthingPair,
    folder_totals,
    free_port,
    needs_syncthing,
    start_syncthing_daemon,
    syncthing_pair_fixture,  # noqa: F401 - provides the `syncthing_pair` fixture
    syncthing_table,
    write_files,
)
from syncsnapd.core import Progress, ProjectConfig, RunProgress, SyncthingConfig
from syncsnapd.runs import Scheduler, Tracker
from syncsnapd.sources import (
    SyncthingChange,
    SyncthingError,
    WatchStatus,
    describe_status,
    folder_path,
    read_events,
    serve_syncthing_changes,
    wait_for_sync,
    wait_until_ready,
)
from syncsnapd.store import Store

# The retry schedule a user sees while Syncthing is down: (seconds since the first try, announced delay).
BACKOFF_SCHEDULE = [(0, 1), (1, 2), (3, 4), (7, 8), (15, 16), (31, 30), (61, 30), (91, 30)]


def cfg_of(st: Syncthing, **kw: str) -> SyncthingConfig:
    return SyncthingConfig(url=kw.get("url", st.url), api_key=kw.get("api_key", st.api_key),
                           folder=kw.get("folder", FOLDER_ID))




def settled(pair: SyncthingPair) -> None:
    """Every test starts from B unthrottled and in sync with A."""
    pair.b.limit_receive_rate(0)
    pair.wait_connected()
    pair.wait_in_sync()


# --- backoff, under a virtual clock ----------------------------------------------------------------------

async def test_step_1_says_syncthing_is_down_and_retries_with_backoff(
        autojump_clock: trio.testing.MockClock) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every try is refused at once
    seen: list[tuple[float, str]] = []
    progress = RunProgress("p", "r", lambda p: seen.append((trio.current_time(), p.message)))
    with trio.move_on_after(100):
        await wait_for_sync(SyncthingConfig(url, "key", "f"), progress)
    tries = [(t, m) for t, m in seen if "not answering" in m]
    assert [(round(t, 6), int(re.search(r"retrying in (\d+) s", m)[1])) for t, m in tries] == BACKOFF_SCHEDULE  # type: ignore[index]
    assert tries[0][1] == f"Syncthing at {url} is not answering (cannot connect); retrying in 1 s"
    assert tries[-1][1].endswith("retrying in 30 s (8 tries so far)")
    assert progress.current().state == "waiting" and progress.current().step == 1


class _RecordingStatus(WatchStatus):
    """A WatchStatus that remembers when each warning was set (the daemon shows the latest one)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "warning" and value is not None:
            self.__dict__.setdefault("history", []).append((trio.current_time(), value))
        super().__setattr__(name, value)


async def test_change_source_starts_at_once_and_backs_off_while_syncthing_is_down(
        autojump_clock: trio.testing.MockClock) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    status = _RecordingStatus()
    send, recv = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_syncthing_changes, SyncthingConfig(url, "key", "f"), send, status)
        assert trio.current_time() == 0  # the daemon's start-up does not wait for Syncthing
        assert status.mode == "syncthing"
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    history = status.__dict__["history"]
    assert [(round(t, 6), int(re.search(r"retrying in (\d+) s", w)[1])) for t, w in history] == BACKOFF_SCHEDULE  # type: ignore[index]
    assert history[0][1] == f"Syncthing at {url} is not answering (cannot connect); retrying in 1 s"
    assert recv.statistics().current_buffer_used == 0  # nothing seen, nothing claimed


# --- reading the event stream and the folder status (pure) -----------------------------------------------

def _ev(id: int, type: str, folder: str = "f", **data: Any) -> dict[str, Any]:
    return {"id": id, "globalID": id * 3, "type": type, "data": {"folder": folder, **data}}


def test_event_ids_reveal_missed_events_and_restarts() -> None:
    # Dense ids, this folder's changes counted, other folders' ignored, the last state kept.
    b = read_events([_ev(6, "StateChanged", to="syncing"), _ev(7, "ItemFinished"), _ev(8, "ItemFinished", "g"),
                     _ev(9, "LocalIndexUpdated"), _ev(10, "StateChanged", to="idle")], 5, "f")
    assert (b.since, b.changes, b.busy, b.missed) == (10, 2, False, None)
    # A gap: events fell out of Syncthing's 1000-event buffer before we asked.
    b = read_events([_ev(1207, "StateChanged", to="idle")], 5, "f")
    assert b.since == 1207 and b.missed == "1201 events dropped from Syncthing's buffer before we read them"
    # Ids at or below `since`: not the process we were following.
    b = read_events([_ev(1, "StateChanged", to="scanning"), _ev(2, "StateChanged", to="idle")], 40, "f")
    assert b.since == 2 and b.missed is not None and "restarted" in b.missed
    # An empty answer (the long poll timed out) changes nothing.
    assert read_events([], 40, "f").since == 40 and read_events([], 40, "f").missed is None


def test_step_1_message_shows_syncthings_own_progress() -> None:
    status = {"state": "syncing", "needFiles": 3, "needTotalItems": 3, "needBytes": 3 << 20,
              "needDeletes": 0, "globalBytes": 12 << 20}
    assert describe_status("docs", status) == (
        "Syncthing is syncing folder 'docs': 3 files (3.0 MiB) still needed (75 % complete)", 0.875)
    stuck = {**status, "state": "idle", "pullErrors": 2}
    assert describe_status("docs", stuck)[0] == (
        "Syncthing folder 'docs' is idle but 3 files (3.0 MiB) still needed; 2 items failed to sync")
    from syncsnapd.sources import ScanProgress
    assert describe_status("docs", {"state": "scanning"}, ScanProgress(1 << 30, 4 << 30)) == (
        "Syncthing is scanning folder 'docs': 1.0 GiB of 4.0 GiB hashed (25 %)", 0.125)
    # Idle before our rescan returned is not "in sync" yet; after it, it is (the end of step 1).
    assert describe_status("docs", {"state": "idle"}, scanned=False) == ("Syncthing is rescanning folder 'docs'", 0.0)
    assert describe_status("docs", {"state": "idle", "globalBytes": 5}) == ("Syncthing folder 'docs' is in sync", 1.0)


# --- against real Syncthing ------------------------------------------------------------------------------

@needs_syncthing
async def test_folder_path_comes_from_syncthing_and_errors_say_what_to_fix(syncthing_pair: SyncthingPair) -> None:
    pair = syncthing_pair
    assert await folder_path(cfg_of(pair.b)) == pair.folder_b
    with pytest.raises(SyncthingError) as err:
        await folder_path(cfg_of(pair.b, api_key="wrong"))
    assert err.value.code == "sync_auth" and "refused the API key" in str(err.value)
    assert "api_key/api_key_file" in str(err.value)
    with pytest.raises(SyncthingError) as err:
        await folder_path(cfg_of(pair.b, folder="no-such-folder"))
    assert err.value.code == "sync_folder_unknown" and "'no-such-folder'" in str(err.value)
    with pytest.raises(SyncthingError) as err:
        await folder_path(cfg_of(pair.b, url=f"http://127.0.0.1:{free_port()}"))
    assert err.value.code == "sync_unreachable" and "is not answering" in str(err.value)


def _api(d: Any, path: str, method: str = "GET") -> Any:
    r = d.curl("-X", method, f"http://localhost/api/v1{path}")
    return json.loads(r.stdout)


def _finished(d: Any, project: str, run: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        p: dict[str, Any] = _api(d, f"/projects/{project}/progress")
        return p if p["run"] == run and p["state"] in ("completed", "failed", "cancelled") else None
    result: dict[str, Any] = wait_until(done, timeout, f"run {run} of {project} to end")
    return result


@needs_syncthing
def test_snapshot_waits_while_syncthing_pulls_then_captures_the_complete_set(
        syncthing_pair: SyncthingPair, short_tmp: Path) -> None:
    pair = syncthing_pair
    settled(pair)
    # B pulls at 32 KiB/s: the 6 MiB below would take minutes, so the run is caught waiting for sure.
    pair.b.limit_receive_rate(32)
    write_files(pair.folder_a, 6, 1 << 20, prefix="wait")
    pair.a.scan()
    wait_until(lambda: pair.b.db_status()["needFiles"] > 0, 15, "B to learn what it needs")
    d = start_syncthing_daemon(short_tmp, [
        {"id": '"synced"', "syncthing": syncthing_table(pair.b)},  # no path: Syncthing tells it
        {"id": '"badkey"', "path": f'"{pair.folder_b}"', "syncthing": syncthing_table(pair.b, api_key="wrong")},
        {"id": '"nofolder"', "path": f'"{pair.folder_b}"',
         "syncthing": syncthing_table(pair.b, folder="no-such-folder")},
    ], watch=False)
    try:
        assert _api(d, "/projects/synced")["path"] == str(pair.folder_b)
        run = _api(d, "/projects/synced/snapshots", "POST")["run"]
        needed = re.compile(r"^Syncthing is syncing folder 'ssnap-test': (\d+) files? \(([\d.]+) (KiB|MiB)\) "
                            r"still needed \((\d+) % complete\)$")
        waiting = wait_until(lambda: (p := _api(d, "/projects/synced/progress"))["run"] == run
                             and needed.match(p["message"]) and p, 15, "Syncthing's progress in step 1")
        assert (waiting["state"], waiting["step"]) == ("waiting", 1)
        assert 1 <= int(needed.match(waiting["message"])[1]) <= 6  # type: ignore[index]
        time.sleep(1.0)
        still = _api(d, "/projects/synced/progress")
        assert (still["run"], still["state"], still["step"]) == (run, "waiting", 1)
        assert pair.b.db_status()["needFiles"] > 0  # it is waiting because B still needs files

        pair.b.limit_receive_rate(0)
        final = _finished(d, "synced", run, 60)
        assert final["state"] == "completed", final
        files, size = folder_totals(pair.folder_a)
        assert files >= 6 and size >= 6 << 20
        assert (final["snapshot"]["files"], final["snapshot"]["bytes"]) == (files, size)
        assert folder_totals(pair.folder_b) == (files, size)

        for project, code, hint in (("badkey", "sync_auth", "check api_key/api_key_file"),
                                    ("nofolder", "sync_folder_unknown", "'no-such-folder'")):
            run = _api(d, f"/projects/{project}/snapshots", "POST")["run"]
            final = _finished(d, project, run, 15)
            assert final["state"] == "failed" and final["error"]["code"] == code, final
            assert hint in final["error"]["message"]
    finally:
        d.stop()
        pair.b.limit_receive_rate(0)


@needs_syncthing
def test_a_project_without_path_starts_while_syncthing_is_down_and_gets_its_path_when_it_answers(
        syncthing_pair: SyncthingPair, short_tmp: Path) -> None:
    """Loading the configuration asks Syncthing nothing, so the daemon starts while Syncthing is down: the
    project's source asks for the path, retries with backoff and says why in ``watch.error``; its
    snapshots fail with ``folder_path_unknown`` meanwhile; once Syncthing answers, the path is known."""
    pair = syncthing_pair
    settled(pair)
    pair.b.stop()
    d = None
    try:
        d = start_syncthing_daemon(short_tmp, [{"id": '"synced"', "syncthing": syncthing_table(pair.b)}],
                                   watch=True)
        project = _api(d, "/projects/synced")
        assert project["path"] is None and project["watch"]["mode"] == "stopped"
        assert project["watch"]["error"]["code"] == "sync_unreachable"
        assert "is not answering" in project["watch"]["error"]["message"]
        assert _api(d, "/health")["degraded"] == ["project:synced/syncthing"]
        run = _api(d, "/projects/synced/snapshots", "POST")["run"]
        final = _finished(d, "synced", run, 15)
        assert final["state"] == "failed" and final["error"]["code"] == "folder_path_unknown", final
        assert "Syncthing has not told it" in final["error"]["message"]
    finally:
        pair.b.start()
    try:
        wait_until(lambda: _api(d, "/projects/synced")["path"] == str(pair.folder_b), 30, "the path")
        watch = _api(d, "/projects/synced")["watch"]
        assert watch["mode"] == "syncthing" and watch["error"] is None
        assert _api(d, "/health")["degraded"] == []
        run = _api(d, "/projects/synced/snapshots", "POST")["run"]
        assert _finished(d, "synced", run, 60)["state"] == "completed"
    finally:
        d.stop()


@needs_syncthing
async def test_shutdown_while_waiting_for_syncthing_ends_the_run_as_cancelled(
        syncthing_pair: SyncthingPair, tmp_path: Path) -> None:
    pair = syncthing_pair
    await trio.to_thread.run_sync(settled, pair)

    def hold_a_pull() -> None:
        pair.b.limit_receive_rate(8)
        write_files(pair.folder_a, 1, 1 << 20, prefix="cancel")
        pair.a.scan()
        wait_until(lambda: pair.b.db_status()["needFiles"] > 0, 15, "B to need the file")

    await trio.to_thread.run_sync(hold_a_pull)
    store = await trio.to_thread.run_sync(lambda: Store.open(tmp_path / "store", writable=True))
    tracker = Tracker()
    sched = Scheduler(store, tracker, [ProjectConfig("p", pair.folder_b, syncthing=cfg_of(pair.b))],
                      waiter=wait_until_ready)
    sub = tracker.subscribe(["p"])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            run, _ = sched.request_snapshot("p")
            with trio.fail_after(15):
                async for ev in sub:
                    if "still needed" in ev.progress.message:
                        break
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        await trio.to_thread.run_sync(pair.b.limit_receive_rate, 0)
    rest: list[Progress] = []
    while (left := sub.get_nowait()) is not None:
        rest.append(left.progress)
    assert [(p.run, p.state) for p in rest if p.terminal] == [(run, "cancelled")]


@needs_syncthing
async def test_change_source_survives_a_syncthing_restart(syncthing_pair: SyncthingPair) -> None:
    pair = syncthing_pair
    await trio.to_thread.run_sync(settled, pair)
    status = WatchStatus()
    send, recv = trio.open_memory_channel[object](64)

    async def next_change(within: float) -> SyncthingChange:
        with trio.fail_after(within):
            change = await recv.receive()
        assert isinstance(change, SyncthingChange)
        return change

    async def until(predicate: Any, within: float) -> None:
        # Polled: WatchStatus is a plain record, as the daemon reads it.
        for _ in range(int(within / 0.05)):
            if predicate():
                return
            await trio.sleep(0.05)
        raise AssertionError(f"not within {within} s")

    def write_on_a(prefix: str) -> None:
        write_files(pair.folder_a, 3, 1000, prefix=prefix)
        pair.a.scan()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_syncthing_changes, cfg_of(pair.b), send, status)
        await trio.to_thread.run_sync(write_on_a, "before")
        change = await next_change(15)
        assert not change.full_check and change.events >= 3  # 3 files (+ dirs) pulled, one batch
        assert status.warning is None

        await trio.to_thread.run_sync(pair.b.kill)
        await until(lambda: status.warning is not None, 10)
        assert status.warning is not None and status.warning.startswith(f"Syncthing at {pair.b.url} is not answering")
        assert status.mode == "syncthing"

        await trio.to_thread.run_sync(pair.b.start)
        await until(lambda: status.warning is None, 15)
        change = await next_change(5)
        assert change.full_check and "restarted" in change.reason  # whatever happened meanwhile gets looked at

        await trio.to_thread.run_sync(pair.wait_connected)
        await trio.to_thread.run_sync(write_on_a, "after")
        change = await next_change(15)
        assert not change.full_check and change.events >= 3
        nursery.cancel_scope.cancel()


@needs_syncthing
async def test_change_source_warns_about_a_wrong_key_or_an_unknown_folder(syncthing_pair: SyncthingPair) -> None:
    pair = syncthing_pair
    for cfg, expected in ((cfg_of(pair.b, api_key="wrong"), "refused the API key"),
                          (cfg_of(pair.b, folder="no-such-folder"), "has no folder with id 'no-such-folder'")):
        status = WatchStatus()
        send, _recv = trio.open_memory_channel[object](4)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_syncthing_changes, cfg, send, status)
            with trio.fail_after(5):
                while status.warning is None:  # noqa: ASYNC110 - a plain record, as the daemon reads it
                    await trio.sleep(0.02)
            assert expected in status.warning and status.warning.endswith("retrying in 1 s")
            nursery.cancel_scope.cancel()


# --- the daemon following Syncthing's events -------------------------------------------------------------

@pytest.fixture(scope="module")
def watching_daemon(syncthing_pair: SyncthingPair) -> Iterator[Any]:
    """A syncsnapd with watching on (settle 0.5 s) for B's folder; its first snapshot is already taken."""
    base = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))  # short: Unix socket paths are limited
    settled(syncthing_pair)
    d = start_syncthing_daemon(base, [{"id": '"synced"', "syncthing": syncthing_table(syncthing_pair.b)}],
                               watch=True, extra_daemon='settle = "0.5s"\nmax_delay = "30s"')
    try:
        wait_until(lambda: len(_api(d, "/projects/synced/snapshots")["snapshots"]) == 1
                   and _api(d, "/projects/synced/progress")["state"] == "completed", 30, "the start-up snapshot")
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def _snapshots(d: Any) -> list[dict[str, Any]]:
    snaps: list[dict[str, Any]] = _api(d, "/projects/synced/snapshots")["snapshots"]
    return snaps


@needs_syncthing
def test_a_sync_longer_than_settle_gives_exactly_one_snapshot(syncthing_pair: SyncthingPair,
                                                              watching_daemon: Any) -> None:
    pair, d = syncthing_pair, watching_daemon
    settled(pair)
    before = len(_snapshots(d))
    # At 1 MiB/s the pull of 4 MiB takes about 3 s, six times `settle`: its directories arrive at once and
    # its files seconds later. Events seen while Syncthing syncs are held until it is idle again.
    pair.b.limit_receive_rate(1024)
    write_files(pair.folder_a, 4, 1 << 20, prefix="watch")
    pair.a.scan()
    wait_until(lambda: len(_snapshots(d)) > before, 30, "a snapshot from Syncthing's events")
    wait_until(lambda: _api(d, "/projects/synced/progress")["state"] == "completed", 30, "the run to end")
    time.sleep(2.0)  # long enough for a second, redundant run to show up (settle is 0.5 s)
    snaps = _snapshots(d)
    assert len(snaps) == before + 1, snaps
    assert snaps[-1]["files_new"] == 4
    assert (snaps[-1]["files"], snaps[-1]["bytes"]) == folder_totals(pair.folder_a)
    pair.b.limit_receive_rate(0)


@needs_syncthing
def test_watch_survives_syncthing_killed_and_restarted(syncthing_pair: SyncthingPair,
                                                       watching_daemon: Any) -> None:
    pair, d = syncthing_pair, watching_daemon
    settled(pair)
    wait_until(lambda: _api(d, "/projects/synced/progress")["state"] in ("completed", "idle"), 30, "quiet")
    before = len(_snapshots(d))
    log = d.base / "daemon.log"
    pair.b.kill()
    wait_until(lambda: f"Syncthing at {pair.b.url} is not answering" in log.read_text(), 10, "the warning")
    pair.b.start()
    pair.wait_connected()
    # Syncthing restarted, so events may have been missed: a full check (a snapshot) follows.
    wait_until(lambda: len(_snapshots(d)) == before + 1, 30, "the full check after the restart")
    assert "full check: Syncthing restarted" in log.read_text()
    wait_until(lambda: _api(d, "/projects/synced/progress")["state"] == "completed", 30, "the run to end")
    write_files(pair.folder_a, 3, 5000, prefix="restarted")
    pair.a.scan()
    wait_until(lambda: len(_snapshots(d)) == before + 2, 30, "a snapshot of the change after the restart")
    snaps = _snapshots(d)
    assert snaps[-1]["files_new"] == 3
    assert (snaps[-1]["files"], snaps[-1]["bytes"]) == folder_totals(pair.folder_a)
