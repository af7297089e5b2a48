"""``follow``'s reconnect, fallback and ordering rules, with exact virtual times (autojump_clock).

Two kinds of peer: a Unix socket path with nothing listening (real, instant connection failures), and
:class:`FakeDaemon`, a tiny h11 server in the test's own Trio run (a test double: see its docstring for
why; the no-loss tests against a real daemon are in test_client_daemon.py). Every rule holds for both
transports, so the tests run over SSE and over the WebSocket (``transport``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import syncsnap
from helpers.client import FakeDaemon, LogTimes  # noqa: E402

EXACT = syncsnap.FollowPolicy(jitter=0.0)
RUN = "r-19000000000-0001-abcd"
RUN2 = "r-19000000001-0002-beef"


def client_for(path: Path, policy: syncsnap.FollowPolicy = EXACT) -> syncsnap.AsyncClient:
    return syncsnap.AsyncClient(syncsnap.find_endpoint({}, socket=path), policy=policy)


@pytest.fixture(params=["sse", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Collector:
    """Runs a follower in the background and keeps what it yields, with the time."""

    def __init__(self) -> None:
        self.got: list[tuple[float, syncsnap.Progress]] = []
        self.error: BaseException | None = None
        self.done = trio.Event()

    async def run(self, follower: syncsnap.Follower) -> None:
        try:
            async with follower:
                async for p in follower:
                    self.got.append((trio.current_time(), p))
        except syncsnap.SyncsnapError as exc:
            self.error = exc
        finally:
            self.done.set()

    @property
    def ids(self) -> list[int]:
        return [p.event_id for _, p in self.got]


async def test_backoff_1_2_4_8_16_then_polling_every_second_with_nothing_listening(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, follow_log: LogTimes, transport: str) -> None:
    path = short_tmp / "none.sock"  # nothing listens here: every connect fails at once (ENOENT)
    client = client_for(path)
    col = Collector()
    async with trio.open_nursery() as nursery:
        follower = client.follow("docs", wait=True, transport=transport)
        nursery.start_soon(col.run, follower)
        await trio.sleep(40.5)
        assert follow_log.times("first_failed") == [0]
        # Reconnect attempts 1, 2, 4, 8 s apart fail; the 5th (16 s after the 4th) fails too -> polling.
        assert follow_log.times("attempt_failed") == [1, 3, 7, 15]
        assert follow_log.times("polling") == [31]
        st = follower.statistics()
        assert st.mode == "poll" and st.stream_attempts_failed == 5
        assert st.polls == 10  # at 31, 32, ..., 40
        assert st.polls_failed == 10

        # The daemon comes back: the next poll (t=41) works, and the stream is tried at once.
        fake = FakeDaemon(path)
        await nursery.start(fake.serve)
        await trio.sleep(1)  # t=41.5
        assert fake.hits_of("poll") == [41]
        assert fake.hits_of("stream") == [41]
        assert follow_log.times("connected") == [41]
        assert follower.statistics().mode == "stream"
        fake.publish(run=RUN, step=1)
        await trio.sleep(1)
        assert [p.state for _, p in col.got] == ["idle", "waiting"]
        assert col.ids == [0, 1]
        nursery.cancel_scope.cancel()


async def test_stream_refused_with_503_falls_back_to_polls_and_returns_to_streaming(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, follow_log: LogTimes, transport: str) -> None:
    """The stream answers 503 while JSON works: polls carry the events, then the stream takes over."""
    fake = FakeDaemon(short_tmp / "d.sock")
    fake.stream_status = 503
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        follower = client_for(fake.path).follow("docs", transport=transport)
        nursery.start_soon(col.run, follower)
        await trio.sleep(31.5)
        # The first request at 0 and the 5 reconnect attempts, 1, 2, 4, 8 and 16 s apart, all refused.
        assert fake.hits_of("stream") == [0, 1, 3, 7, 15, 31]
        assert fake.hits_of("poll") == [31]
        assert follow_log.times("polling") == [31]
        assert col.ids == [0]  # the idle state, from the poll
        await trio.sleep_until(40.5)
        fake.publish(run=RUN, step=1)          # id 1 and 2 within one second: a poll sees only the newest
        fake.publish(run=RUN, step=2, percent=2)
        await trio.sleep_until(45.5)
        fake.publish(run=RUN, step=4, percent=50)  # id 3
        await trio.sleep_until(60.5)
        assert fake.hits_of("poll") == list(range(31, 61))
        assert fake.hits_of("stream")[-1] == 31
        assert [(t, i) for (t, p), i in zip(col.got, col.ids, strict=True)] == [(31, 0), (41, 2), (46, 3)]

        await trio.sleep_until(61.5)  # the stream is retried 30 s after polling began: still refused
        assert fake.hits_of("stream")[-1] == 61
        fake.stream_status = 200
        fake.publish(run=RUN, step=5, percent=95)  # id 4, seen by the poll at 62
        await trio.sleep_until(91.5)
        assert fake.hits_of("stream")[-2:] == [61, 91]
        assert follow_log.times("connected") == [91]
        assert fake.hits_of("poll")[-1] == 90  # no poll once the stream is back
        # The stream resumed right after the last event yielded.
        assert fake.resume_ids()[-1] == "4"
        fake.publish(run=RUN, step=6, state="completed", percent=100)  # id 5, streamed
        await trio.sleep(1)
        assert col.ids == [0, 2, 3, 4, 5]
        assert col.got[-1][0] == 91.5
        assert not any(p.gap for _, p in col.got)
        nursery.cancel_scope.cancel()


async def test_cut_stream_resumes_after_1s_with_last_event_id_and_loses_nothing(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, follow_log: LogTimes, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        nursery.start_soon(col.run, client_for(fake.path).follow(transport=transport))
        await trio.sleep(1)
        fake.publish(run=RUN, step=1)
        fake.publish(run=RUN, step=2)
        await trio.sleep(9)  # t=10
        fake.cut_streams()
        await trio.sleep(0.5)
        fake.publish(run=RUN, step=3)  # while disconnected
        fake.publish(run=RUN, step=4)
        await trio.sleep(2)
        assert follow_log.times("lost") == [10]
        assert fake.hits_of("stream") == [0, 11]
        assert fake.resume_ids()[-1] == "2"
        assert col.ids == [0, 1, 2, 3, 4]
        assert [t for t, _ in col.got][-2:] == [11, 11]
        nursery.cancel_scope.cancel()


async def test_stalled_stream_is_dropped_after_stall_timeout(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, follow_log: LogTimes, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        follower = client_for(fake.path).follow("docs", transport=transport)
        nursery.start_soon(col.run, follower)
        await trio.sleep(5)
        fake.stall()  # open, but silent: no events, no keep-alive, no pong
        fake.publish(run=RUN, step=1)
        await trio.sleep_until(50)
        # Last byte at 0 (the head); silent for 45 s -> dropped at 45, back 1 s later with the missed event.
        assert follow_log.times("lost") == [45]
        assert fake.hits_of("stream") == [0, 46]
        assert col.ids == [0, 1] and col.got[-1][0] == 46
        # The WebSocket asked for a pong after 15 and 30 quiet seconds; none came.
        assert follower.statistics().pings == (2 if transport == "ws" else 0)
        nursery.cancel_scope.cancel()


async def test_a_quiet_websocket_is_kept_open_by_its_pings(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, follow_log: LogTimes) -> None:
    """The daemon sends nothing on a WebSocket while nothing happens: the follower's pings (every 15 s
    without a message) get the daemon's pongs, and the connection is not taken for dead."""
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        follower = client_for(fake.path).follow("docs", transport="ws")
        nursery.start_soon(col.run, follower)
        await trio.sleep_until(200.5)
        st = follower.statistics()
        assert (st.streams_opened, st.streams_lost, st.pings) == (1, 0, 13)  # at 15, 30, ..., 195
        fake.publish(run=RUN, step=1)
        await trio.sleep(0.5)
        assert col.ids == [0, 1] and col.got[-1][0] == 200.5
        assert fake.hits_of("stream") == [0] and follow_log.times("lost") == []
        nursery.cancel_scope.cancel()


async def test_gap_and_daemon_restart_yield_current_state_marked_gap(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock", projects=("docs", "pics"))
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        nursery.start_soon(col.run, client_for(fake.path).follow(transport=transport))
        await trio.sleep(1)
        for step in (1, 2, 3):
            fake.publish(run=RUN, step=step)  # ids 1-3
        await trio.sleep(1)
        fake.cut_streams()
        for step in (4, 5):
            fake.publish(run=RUN, step=step)  # ids 4-5, then forgotten by the replay buffer
        fake.replay_from = 5
        await trio.sleep(5)
        assert col.ids == [0, 0, 1, 2, 3, 5]
        # The daemon's gap event: the current state of docs is marked; pics (idle, unchanged) is not
        # yielded again.
        assert [p.gap for _, p in col.got] == [False] * 5 + [True]
        assert col.got[-1][1].step == 5

        fake.restart()  # ids start again at 1
        await trio.sleep(5)
        fake.publish(project="pics", run=RUN2, step=1)  # id 1 of the new daemon
        await trio.sleep(1)
        news = col.got[6:]
        assert [(p.project, p.event_id, p.state, p.gap) for _, p in news] == [
            ("docs", 0, "idle", True), ("pics", 1, "waiting", False)]
        nursery.cancel_scope.cancel()


async def test_follow_run_stops_at_its_terminal_state_and_skips_other_runs(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    fake.publish(run=RUN, step=4)  # an earlier run is running; ours (RUN2) is queued
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        nursery.start_soon(col.run, client_for(fake.path).follow("docs", run=RUN2, transport=transport))
        await trio.sleep(1)
        fake.publish(run=RUN, step=6, state="completed", percent=100)
        fake.publish(run=RUN2, step=1)
        fake.publish(run=RUN2, step=6, state="failed", error={"code": "folder_missing", "message": "gone"})
        fake.publish(run=RUN2, step=6, state="failed")  # never reached: the follower stopped
        with trio.fail_after(5):
            await col.done.wait()
        assert [(p.run, p.state) for _, p in col.got] == [(RUN2, "waiting"), (RUN2, "failed")]
        assert col.got[-1][1].error == syncsnap.ErrorInfo("folder_missing", "gone")
        assert col.error is None
        nursery.cancel_scope.cancel()


async def test_follow_run_raises_run_lost_when_its_end_was_missed(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        fake.publish(run=RUN, step=4)
        nursery.start_soon(col.run, client_for(fake.path).follow("docs", run=RUN, transport=transport))
        await trio.sleep(1)
        fake.restart()  # the run is gone with the old daemon, its cancelled event never reached us
        with trio.fail_after(10):
            await col.done.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(col.error, syncsnap.RunLost)
    assert f"Run {RUN} of docs ended without this client seeing how" in str(col.error)
    assert "syncsnap snapshots docs" in str(col.error)


async def test_duplicates_and_out_of_order_events_are_dropped(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        follower = client_for(fake.path).follow("docs", transport=transport)
        nursery.start_soon(col.run, follower)
        await trio.sleep(1)
        a = fake.publish(run=RUN, step=1)
        b = fake.publish(run=RUN, step=2)
        fake.resend(b)  # a misbehaving transport: the same events again, then an older one
        fake.resend(a)
        fake.publish(run=RUN, step=3)
        await trio.sleep(1)
        assert col.ids == [0, 1, 2, 3]
        assert follower.statistics().duplicates_dropped == 2
        nursery.cancel_scope.cancel()


async def test_polling_marks_a_run_that_ended_between_two_polls_as_gap(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    fake.stream_status = 503
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        nursery.start_soon(col.run, client_for(fake.path).follow("docs", transport=transport))
        await trio.sleep_until(31.5)
        fake.publish(run=RUN, step=4)
        await trio.sleep(1)
        fake.publish(run=RUN, step=6, state="completed")  # ends and the next run starts: one poll sees only that
        fake.publish(run=RUN2, step=1)
        await trio.sleep(1)
        assert [(p.run, p.state, p.gap) for _, p in col.got] == [
            (None, "idle", False), (RUN, "compressing", False), (RUN2, "waiting", True)]
        nursery.cancel_scope.cancel()


async def test_first_connection_failure_raises_daemon_not_running_with_a_sentence(short_tmp: Path) -> None:
    client = client_for(short_tmp / "none.sock")
    with pytest.raises(syncsnap.DaemonNotRunning) as info:
        async for _ in client.follow():
            pass
    assert str(info.value) == (f"syncsnapd is not running: no socket at {short_tmp}/none.sock (from the socket "
                               "argument); start it with `syncsnapd`.")
    with pytest.raises(syncsnap.DaemonNotRunning):
        await client.health()


async def test_unknown_project_raises_not_found_at_once(short_tmp: Path, autojump_clock: trio.testing.MockClock
                                                        , transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        with pytest.raises(syncsnap.NotFound, match="syncsnap projects"), trio.fail_after(5):
            async for _ in client_for(fake.path).follow("nope", transport=transport):
                pass
        assert trio.current_time() == 0
        nursery.cancel_scope.cancel()


def test_jitter_stretches_each_delay_by_at_most_the_jitter_fraction() -> None:
    policy = syncsnap.FollowPolicy(jitter=0.1, random=lambda: 0.5)
    assert [policy.delay(k) for k in range(1, 8)] == pytest.approx([1.05, 2.1, 4.2, 8.4, 16.8, 31.5, 31.5])
    assert syncsnap.FollowPolicy(jitter=0.0).delay(6) == 30.0


async def test_start_snapshot_over_the_websocket_subscribes_first_and_never_resends(
        short_tmp: Path, autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        async with client_for(fake.path).follow("docs", transport="ws") as f:
            started = await f.start_snapshot()
            fake.publish(run=started.run, step=2)
            fake.publish(run=started.run, step=6, state="completed", percent=100)
            seen = [(p.run, p.step) for p in [p async for p in f]]
        assert seen == [(started.run, 1), (started.run, 2), (started.run, 6)]
        assert [m["op"] for _, m in fake.ws_messages] == ["subscribe", "snapshot"]

        fake.drop_snapshot_requests = True
        async with client_for(fake.path).follow("docs", transport="ws") as f:
            with pytest.raises(syncsnap.ConnectionLost, match="whether it started is unknown"):
                await f.start_snapshot()
        await trio.sleep(10)
        assert [m["op"] for _, m in fake.ws_messages] == ["subscribe", "snapshot", "subscribe", "snapshot"]
        with pytest.raises(ValueError, match="transport='ws'"):
            await client_for(fake.path).follow("docs").start_snapshot()
        nursery.cancel_scope.cancel()


async def test_a_daemon_without_the_websocket_says_so_at_once(short_tmp: Path,
                                                               autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    fake.stream_status = 404  # an older daemon: no /api/v1/ws
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        with pytest.raises(syncsnap.NotFound) as info:
            async for _ in client_for(fake.path).follow(transport="ws"):
                pass
        assert str(info.value) == (f"syncsnapd at {fake.path} has no WebSocket endpoint (/api/v1/ws answered 404): "
                                   "it is older than this client; use the SSE transport (--transport sse).")
        assert trio.current_time() == 0
        nursery.cancel_scope.cancel()


# --- runs of other kinds: restore (on its project's stream), check and prune (store-wide) ---------------

RESTORE = "r-19000000005-0005-7e57"
CHECK = "r-19000000006-0006-c4ec"


async def test_a_restore_is_followed_to_its_end_beside_its_projects_snapshots(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    """A restore's events share its project's stream with the project's snapshot runs without replacing
    them: neither is taken for the end of the other (no gap, no RunLost)."""
    fake = FakeDaemon(short_tmp / "d.sock")
    col, all_col = Collector(), Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        fake.publish(run=RUN, step=4)
        first = fake.publish(run=RESTORE, kind="restore", steps=3, step=1, state="reading")
        follower = client_for(fake.path).follow("docs", RESTORE, kind="restore", last_event_id=first["event_id"] - 1,
                                                transport=transport)
        nursery.start_soon(col.run, follower)
        nursery.start_soon(all_col.run, client_for(fake.path).follow("docs", transport=transport))
        await trio.sleep(1)
        fake.publish(run=RUN, step=5)
        fake.publish(run=RESTORE, kind="restore", steps=3, step=2, state="restoring", percent=50)
        fake.publish(run=RUN, step=6, state="completed", percent=100)
        fake.publish(run=RUN2, step=1)  # the next snapshot starts while the restore goes on
        fake.publish(run=RESTORE, kind="restore", steps=3, step=3, state="completed", percent=100,
                     result={"files": 3})
        with trio.fail_after(5):
            await col.done.wait()
        assert col.error is None
        assert [(p.run, p.step, p.state) for _, p in col.got] == [
            (RESTORE, 1, "reading"), (RESTORE, 2, "restoring"), (RESTORE, 3, "completed")]
        assert col.got[-1][1].raw["result"] == {"files": 3}
        await trio.sleep(1)
        assert [(p.run, p.state, p.gap) for _, p in all_col.got] == [
            (RUN, "compressing", False), (RUN, "uploading", False), (RESTORE, "restoring", False),
            (RUN, "completed", False), (RUN2, "waiting", False), (RESTORE, "completed", False)]
        nursery.cancel_scope.cancel()


async def test_a_store_wide_check_is_followed_while_polling_through_its_own_endpoint(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    """An operation's progress is not its project's state: while the stream is refused, the follower
    polls the operation's own endpoint."""
    fake = FakeDaemon(short_tmp / "d.sock")
    fake.stream_status = 503
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        first = fake.publish(project=None, run=CHECK, kind="check", steps=3, step=1, state="checking")
        follower = client_for(fake.path).follow(run=CHECK, kind="check", last_event_id=first["event_id"] - 1,
                                                transport=transport)
        nursery.start_soon(col.run, follower)
        await trio.sleep_until(31.5)  # 5 refused reconnects, then polling
        assert fake.hits_of("operation") == [31] and fake.hits_of("poll") == []
        fake.publish(project=None, run=CHECK, kind="check", steps=3, step=2, state="checking", percent=40)
        await trio.sleep_until(35.5)
        fake.publish(project=None, run=CHECK, kind="check", steps=3, step=3, state="completed", percent=100)
        with trio.fail_after(5):
            await col.done.wait()
        assert [(t, p.step, p.state, p.label) for t, p in col.got] == [
            (31, 1, "checking", "store"), (32, 2, "checking", "store"), (36, 3, "completed", "store")]
        assert fake.hits_of("operation") == [31, 32, 33, 34, 35, 36]
        nursery.cancel_scope.cancel()


async def test_following_an_operation_run_later_starts_from_its_state_at_its_own_endpoint(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    """A fresh stream does not replay operation runs: a follower given no resume point asks the run's
    state first, then streams from that event on, so a run that ends any time after is seen ending."""
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        fake.publish(run=CHECK, project=None, kind="check", steps=4, step=2, state="checking", percent=30)
        fake.publish(run=RUN, step=3)
        follower = client_for(fake.path).follow(run=CHECK, kind="check", transport=transport)
        nursery.start_soon(col.run, follower)
        await trio.sleep(1)
        fake.publish(run=CHECK, project=None, kind="check", steps=4, step=4, state="completed", percent=100)
        with trio.fail_after(5):
            await col.done.wait()
        assert [(t, p.step, p.state, p.gap) for t, p in col.got] == [
            (0, 2, "checking", False), (1, 4, "completed", False)]
        assert fake.hits_of("operation") == [0] and fake.resume_ids() == ["1"]
        # Ended already: its final state, at once.
        done = [p async for p in client_for(fake.path).follow(run=CHECK, kind="check", transport=transport)]
        assert [p.state for p in done] == ["completed"] and trio.current_time() == 1
        nursery.cancel_scope.cancel()


async def test_an_operation_run_is_lost_with_its_daemon(
        short_tmp: Path, autojump_clock: trio.testing.MockClock, transport: str) -> None:
    fake = FakeDaemon(short_tmp / "d.sock")
    col = Collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        fake.publish(run=RESTORE, kind="restore", steps=3, step=2, state="restoring")
        nursery.start_soon(col.run, client_for(fake.path).follow("docs", RESTORE, kind="restore",
                                                                 transport=transport))
        await trio.sleep(1)
        fake.restart()  # a new daemon knows nothing of the restore
        with trio.fail_after(10):
            await col.done.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(col.error, syncsnap.RunLost)
    assert str(col.error) == (f"Run {RESTORE} of docs ended without this client seeing how (the daemon restarted, "
                              f"or the run finished while the connection was down); `syncsnap run {RESTORE}` "
                              "shows how it ended.")
    # Its state was asked at the start (no resume point given), then at the reconnect 1 s after the cut,
    # which found a new daemon.
    assert fake.hits_of("operation") == [0, 2]
    assert [(p.run, p.state) for _, p in col.got] == [(RESTORE, "restoring")]
