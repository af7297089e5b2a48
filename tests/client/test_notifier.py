"""``syncsnap notify`` end to end: a real daemon, a private D-Bus session bus, and a real notification
server (dunst under Xvfb; ``dunstctl history`` shows what it received, with the urgency it applied).

One test uses a small recording notification service on the private bus instead of dunst (a test
double, said so there): to assert the exact ``Notify`` arguments and to play servers with other
capabilities than dunst's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from jeepney import HeaderFields, MatchRule, message_bus, new_method_return
from jeepney.io.trio import open_dbus_router

import syncsnap
from helpers.client import Dunst, PrivateBus, progress_json  # noqa: E402
from helpers.daemon import DaemonProcess, make_env, make_tree, start_daemon
from syncsnap.cli._notify import CRITICAL, LOW, NORMAL, NotificationPolicy, run_notifier

SYNCSNAP = str(Path(sys.executable).parent / "syncsnap")
REPO = Path(__file__).resolve().parents[2]


class NotifierProcess:
    """``syncsnap notify`` as a subprocess; its log (stderr) is where it says what it did."""

    def __init__(self, base: Path, env: dict[str, str], *args: str) -> None:
        self.log = base / "notify.log"
        self.proc = subprocess.Popen([SYNCSNAP, "notify", *args], env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> list[str]:
        """Wait until the log has ``count`` lines matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.text().splitlines() if re.search(pattern, line)]
            if len(lines) >= count:
                return lines
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{count} x {pattern!r} not in the notifier's log:\n{self.text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def snapshot(d: DaemonProcess, project: str) -> syncsnap.Progress:
    with syncsnap.Client(env=d.env) as c:
        started = c.start_snapshot(project)
        *_, last = c.follow(project, run=started.run)
    return last


def test_completion_and_failure_notifications_reach_dunst(short_tmp: Path, dunst: Dunst,
                                                          private_bus: PrivateBus) -> None:
    make_tree(short_tmp / "docs", files=10)
    make_tree(short_tmp / "gone", files=2)
    d = start_daemon(short_tmp, {"docs": short_tmp / "docs", "gone": short_tmp / "gone"})
    n = NotifierProcess(short_tmp, private_bus.env(d.env))
    try:
        n.wait_for(r"following /api/v1/events")
        first = snapshot(d, "docs")
        n.wait_for(r"notified \(id \d+\): Snapshot of docs completed")
        shutil.rmtree(short_tmp / "gone")
        assert snapshot(d, "gone").state == "failed"
        second = snapshot(d, "docs")  # the docs notification is updated in place, not stacked
        n.wait_for(r"notified \(id \d+", count=3)
        assert dunst.displayed() == 2
        history = dunst.close_all_and_history()
    finally:
        n.stop()
        d.stop()
    assert first.snapshot is not None and second.snapshot is not None
    by_summary = {e["summary"]: e for e in history}
    assert sorted(by_summary) == ["Snapshot of docs completed", "Snapshot of gone failed"]
    docs, gone = by_summary["Snapshot of docs completed"], by_summary["Snapshot of gone failed"]
    assert re.fullmatch(r"NORMAL Snapshot of docs completed\n11 files, 0 B added in \d+\.\d s", docs["message"])
    assert docs["appname"] == "syncsnap" and docs["category"] == "transfer.complete"
    assert gone["message"] == f"CRITICAL Snapshot of gone failed\nThe folder {short_tmp}/gone does not exist."
    assert gone["category"] == "transfer.error"
    log = n.text()
    assert len(re.findall(r"notified \(id (\d+), replacing (\d+)\)", log)) == 1
    [(new, old)] = re.findall(r"notified \(id (\d+), replacing (\d+)\)", log)
    assert new == old == str(docs["id"])


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_daemon_restart_is_followed_without_duplicate_notifications(short_tmp: Path, dunst: Dunst,
                                                                   private_bus: PrivateBus, transport: str) -> None:
    make_tree(short_tmp / "docs", files=5)
    make_tree(short_tmp / "pics", files=5)
    projects = {"docs": short_tmp / "docs", "pics": short_tmp / "pics"}
    d = start_daemon(short_tmp, projects)
    n = NotifierProcess(short_tmp, private_bus.env(d.env), "--transport", transport)
    try:
        n.wait_for(r"following /api/v1/events" if transport == "sse" else r"following /api/v1/ws")
        snapshot(d, "docs")
        n.wait_for(r"notified \(id \d+\): Snapshot of docs completed")
        assert len(dunst.close_all_and_history()) == 1
        d.stop()
        d = start_daemon(short_tmp, projects)
        n.wait_for(r"syncsnapd restarted \(pid \d+ -> \d+\)")
        snapshot(d, "pics")  # its notification comes after the new daemon's current state of docs
        n.wait_for(r"notified \(id \d+\): Snapshot of pics completed")
        assert dunst.displayed() == 1  # pics only: docs was not notified again
        history = dunst.close_all_and_history()
    finally:
        n.stop()
        d.stop()
    assert [e["summary"] for e in history] == ["Snapshot of docs completed", "Snapshot of pics completed"]
    assert len(re.findall(r"notified \(id", n.text())) == 2


def test_without_a_session_bus_it_says_so_once_and_keeps_following(short_tmp: Path) -> None:
    """Also: started before the daemon, it waits for it."""
    make_tree(short_tmp / "docs", files=5)
    n = NotifierProcess(short_tmp, make_env(short_tmp))  # make_env removes DBUS_SESSION_BUS_ADDRESS
    n.wait_for(r"cannot follow syncsnapd \(syncsnapd is not running: no socket at .*\); retrying in 1\.\d s")
    d = start_daemon(short_tmp, {"docs": short_tmp / "docs"})
    try:
        n.wait_for(r"following /api/v1/events")
        for _ in range(2):
            snapshot(d, "docs")
        lines = n.wait_for(r"notification \(not shown\): Snapshot of docs completed: 6 files, ", count=2)
    finally:
        n.stop()
        d.stop()
    assert len(lines) == 2
    said = [line for line in n.text().splitlines() if "no D-Bus session bus" in line]
    assert len(said) == 1
    assert said[0].endswith("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set): notifications are "
                            "written to this log instead (will retry every 30 s)")


class RecordingNotifications:
    """TEST DOUBLE: a minimal org.freedesktop.Notifications service on the private bus that records every
    Notify call and answers GetCapabilities with what the test chooses. dunst covers the real server;
    this one exists to check the exact arguments and to play servers with other capabilities."""

    def __init__(self, address: str, capabilities: list[str]) -> None:
        self.address = address
        self.capabilities = capabilities
        self.calls: list[tuple[Any, ...]] = []
        self.changed = trio.Event()
        self._loop = trio.CancelScope()
        self._done = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_dbus_router(self.address) as router:
            rule = MatchRule(type="method_call", interface="org.freedesktop.Notifications")
            async with router.filter(rule, bufsize=100) as calls:
                await router.send_and_get_reply(message_bus.RequestName("org.freedesktop.Notifications"))
                task_status.started()
                with self._loop:
                    await self._answer(router, calls)
        self._done.set()

    async def stop(self) -> None:
        """Leave the filter before the router closes: jeepney 0.9's router, cancelled with a filter
        still open, fails with "dictionary changed size during iteration"."""
        self._loop.cancel()
        await self._done.wait()

    async def _answer(self, router: Any, calls: Any) -> None:
        async for msg in calls:
            if msg.header.fields[HeaderFields.member] == "GetCapabilities":
                await router.send(new_method_return(msg, "as", (self.capabilities,)))
            elif msg.header.fields[HeaderFields.member] == "Notify":
                self.calls.append(msg.body)
                # As the specification says: a replacement keeps the id it replaces.
                nid = msg.body[1] or 40 + len(self.calls)
                await router.send(new_method_return(msg, "u", (nid,)))
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(20):
            while len(self.calls) < count:
                await self.changed.wait()


async def _wait_for_sse_subscribers(d: DaemonProcess, count: int) -> None:
    with trio.fail_after(20):
        while True:
            metrics = await trio.to_thread.run_sync(lambda: d.curl("http://localhost/metrics").stdout)
            if f'syncsnap_subscribers{{transport="sse"}} {float(count)}' in metrics:
                return
            await trio.sleep(0.05)


@pytest.mark.parametrize("caps", [[], ["body", "body-markup"]])
async def test_notify_arguments_follow_the_server_capabilities(short_tmp: Path, private_bus: PrivateBus,
                                                               caps: list[str]) -> None:
    make_tree(short_tmp / "docs", files=5)
    odd = short_tmp / "R&D <x>"
    make_tree(odd, files=2)
    d = await trio.to_thread.run_sync(lambda: start_daemon(short_tmp, {"docs": short_tmp / "docs", "odd": odd}))
    server = RecordingNotifications(private_bus.address, caps)
    try:
        async with trio.open_nursery() as nursery, syncsnap.open_client(env=d.env) as client:
            await nursery.start(server.serve)
            nursery.start_soon(lambda: run_notifier(client, progress=True, bus=private_bus.address))
            # The notifier tells only of runs it sees happen: start them once it follows.
            await _wait_for_sse_subscribers(d, 1)
            async with syncsnap.open_client(env=d.env) as c:
                started = await c.start_snapshot("docs")
                async for _ in c.follow("docs", run=started.run):
                    pass
                shutil.rmtree(odd)
                started = await c.start_snapshot("odd")
                async for _ in c.follow("odd", run=started.run):
                    pass
            await server.wait_for(2)
            while not any(call[3].startswith("Snapshot of odd failed") for call in server.calls):
                await server.wait_for(len(server.calls) + 1)
            await server.stop()
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(d.stop)

    docs = [c for c in server.calls if "of docs" in c[3]]
    odd_calls = [c for c in server.calls if "of odd" in c[3]]
    for app, _, icon, _, _, actions, hints, timeout in server.calls:
        assert (app, icon, actions, timeout) == ("syncsnap", "", [], -1)
        assert hints["desktop-entry"] == ("s", "syncsnap")
    # Progress notifications (asked for here), low urgency with a "value", then the completion: all one
    # notification, updated in place.
    progress, final = docs[:-1], docs[-1]
    assert progress and all(c[6]["urgency"] == ("y", LOW) for c in progress)
    assert [c[6]["value"][1] for c in progress] == sorted(c[6]["value"][1] for c in progress)
    assert final[6]["urgency"] == ("y", NORMAL) and final[6]["category"] == ("s", "transfer.complete")
    assert docs[0][1] == 0 and {c[1] for c in docs[1:]} == {41}
    failed = odd_calls[-1]
    assert failed[6]["urgency"] == ("y", CRITICAL) and failed[1] != 41
    message = f"The folder {odd} does not exist."
    if "body" in caps:
        assert final[3] == "Snapshot of docs completed" and re.fullmatch(r"6 files, \S+ \S+ added in .+", final[4])
        assert failed[3] == "Snapshot of odd failed"
        assert failed[4] == message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    else:  # no body: everything in the summary
        assert re.fullmatch(r"Snapshot of docs completed: 6 files, \S+ \S+ added in .+", final[3])
        assert final[4] == ""
        assert (failed[3], failed[4]) == (f"Snapshot of odd failed: {message}", "")


# --- the policy alone ------------------------------------------------------------------------------


def p(run: str | None, state: str, *, step: int = 6, event_id: int = 1, gap: bool = False,
      project: str = "docs") -> syncsnap.Progress:
    snap = {"id": "s1", "files": 3, "bytes": 10, "files_new": 3, "files_changed": 0, "files_unchanged": 0,
            "bytes_added": 2048, "duration_seconds": 1.25, "warnings": 0} if state == "completed" else None
    err = {"code": "folder_missing", "message": "The folder is gone."} if state == "failed" else None
    obj = syncsnap.Progress.from_json(progress_json(project, run, step=step, state=state, event_id=event_id,
                                                    snapshot=snap, error=err))
    return syncsnap.Progress(**{**obj.__dict__, "gap": gap})


def test_policy_notifies_each_run_end_once_and_skips_old_news() -> None:
    policy = NotificationPolicy()
    assert policy.decide(p("r-1", "completed")) is None  # the first thing seen: it ended before we started
    assert policy.decide(p("r-2", "compressing", step=4)) is None  # progress is off by default
    n = policy.decide(p("r-2", "completed", event_id=2))
    assert n is not None and (n.summary, n.body, n.urgency) == (
        "Snapshot of docs completed", "3 files, 2.0 KiB added in 1.2 s", NORMAL)
    assert policy.decide(p("r-2", "completed", event_id=2, gap=True)) is None  # seen again after a reconnect
    failed = policy.decide(p("r-3", "failed", event_id=3))
    assert failed is not None and failed.urgency == CRITICAL and failed.body == "The folder is gone."
    # A run that ended while we were disconnected, shown as the current state after a gap: notified.
    assert policy.decide(p("r-9", "completed", event_id=1, gap=True, project="pics")) is not None


def test_policy_notifies_the_ends_of_restores_checks_and_prunes() -> None:
    def op(kind: str, project: str | None, run: str, state: str, message: str, **kw: Any) -> syncsnap.Progress:
        return syncsnap.Progress.from_json({**progress_json(project, run, step=4, state=state, kind=kind, steps=4,
                                                            **kw), "message": message})

    policy = NotificationPolicy(progress=True, clock=lambda: 0.0)
    # Operation runs are never a project's current state: the first one seen is live, not old news.
    n = policy.decide(op("restore", "docs", "r-5", "completed", "Restored snapshot s1 into /tmp/out: 3 files"))
    assert n is not None and (n.project, n.summary, n.body, n.urgency) == (
        "docs", "Restore of docs completed", "Restored snapshot s1 into /tmp/out: 3 files", NORMAL)
    n = policy.decide(op("check", None, "r-6", "failed", "Check failed", error={
        "code": "problems_found", "message": "1 problem(s), 1 damaged snapshot(s) in 2 snapshots"}))
    assert n is not None and (n.project, n.summary, n.body, n.urgency) == (
        "store", "Check of the store failed", "1 problem(s), 1 damaged snapshot(s) in 2 snapshots", CRITICAL)
    n = policy.decide(syncsnap.Progress.from_json(progress_json(None, "r-7", step=2, state="marking", kind="prune",
                                                                steps=5, percent=20)))
    assert n is not None and n.summary == "Prune of the store: step 2/5, Finding data in use" and n.urgency == LOW


def test_policy_rate_limits_progress_notifications() -> None:
    now = [0.0]
    policy = NotificationPolicy(progress=True, clock=lambda: now[0])
    assert policy.decide(p("r-1", "compressing", step=4)) is not None
    now[0] = 1.0
    assert policy.decide(p("r-1", "compressing", step=4)) is None  # same step, within 2 s
    assert policy.decide(p("r-1", "uploading", step=5)) is not None  # a new step shows at once
    now[0] = 3.5
    assert policy.decide(p("r-1", "uploading", step=5)) is not None


def test_systemd_user_unit_verifies(tmp_path: Path) -> None:
    unit = REPO / "systemd" / "user" / "syncsnap-notify.service"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    r = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, "")
    r = subprocess.run(["systemd-analyze", "security", "--user", "--offline=yes", "--threshold=62", str(unit)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-500:]
    text = unit.read_text()
    assert "ExecStart=/usr/bin/env syncsnap notify" in text and "Restart=on-failure" in text
