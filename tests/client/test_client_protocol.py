"""The client's sans-I/O protocol layer (``syncsnap.protocol``), driven directly: no socket, no event loop.

SSE bytes in, events out; progress objects in, the events a follower yields out; failures and successes
with their times in, what to do next out. The same rules are checked end to end, with exact virtual times,
in test_client_follow_timing.py and against a real daemon in test_client_daemon.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import syncsnap
from helpers.client import progress_json  # noqa: E402
from syncsnap.protocol import (
    CheckRun,
    EventOrder,
    FollowStatistics,
    FollowTargets,
    Gap,
    OpenStream,
    Ping,
    Poll,
    Read,
    Reply,
    Schedule,
    Sleep,
    SseComment,
    SseEvent,
    SseParser,
    TooSlow,
    sse_items,
    ws_items,
)

RUN = "r-19000000000-0001-abcd"
RUN2 = "r-19000000001-0002-beef"
EXACT = syncsnap.FollowPolicy(jitter=0.0)


def progress(event_id: int, project: str | None = "docs", run: str | None = RUN, **kw: Any) -> syncsnap.Progress:
    return syncsnap.Progress.from_json(progress_json(project, run, event_id=event_id, **kw))


# --- SSE ---------------------------------------------------------------------------------------------


def feed_in_pieces(stream: bytes, cuts: list[int]) -> list[SseEvent | SseComment]:
    parser = SseParser()
    got: list[SseEvent | SseComment] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += parser.feed(stream[a:b])
    return got


def test_sse_every_two_piece_split_gives_the_same_events() -> None:
    stream = (b": keep-alive\r\n\r\nevent: progress\r\nid: 41\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
              b":too slow: disconnected\n\nid: 42\rdata:x\r\r\n")
    expected = [SseComment("keep-alive"), SseEvent("progress", '{"a":\n1}', "41"), SseComment("too slow: disconnected"),
                SseEvent("message", "x", "42")]
    for cut in range(len(stream) + 1):
        assert feed_in_pieces(stream, [cut]) == expected, cut


def test_sse_a_crlf_split_between_its_two_bytes_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []  # the CR may be half of a CRLF: nothing is decided yet
    assert parser.feed(b"\ndata: b\r") == []  # a CR followed by LF ended one line, not two
    assert parser.feed(b"\n\r\n") == [SseEvent("message", "a\nb", None)]


def test_sse_fields_without_data_dispatch_nothing_and_the_last_id_carries_on() -> None:
    parser = SseParser()
    # An event type and an id without data: no event; a bare "data" line is an empty data line.
    assert parser.feed(b"event: progress\nid: 5\n\ndata\n\n") == [SseEvent("message", "", "5")]
    # An id with a NUL is ignored; an unknown field too; retry must be digits.
    assert parser.feed(b"id: 6\x007\nfoo: bar\nretry: soon\ndata: y\n\n") == [SseEvent("message", "y", "5")]
    assert parser.retry is None
    assert parser.feed(b"id\ndata: z\n\n") == [SseEvent("message", "z", "")]


def test_sse_items_are_what_a_follower_acts_on() -> None:
    p = progress_json(event_id=3, step=2)
    events: list[SseEvent | SseComment] = [
        SseComment("keep-alive"), SseEvent("progress", json.dumps(p), "3"), SseEvent("gap", "{}", "3"),
        SseComment("too slow: disconnected"), SseEvent("hello", "{}", None),
    ]
    items = sse_items(events)
    assert [type(i) for i in items] == [syncsnap.Progress, Gap, TooSlow]
    assert items[0] == syncsnap.Progress.from_json(p)
    with pytest.raises(syncsnap.ProtocolError, match="progress event that is not JSON"):
        sse_items([SseEvent("progress", "{", "4")])


def test_ws_items_are_the_same_vocabulary() -> None:
    p = progress_json(event_id=3)
    items = ws_items([{"type": "progress", "progress": p}, {"type": "gap"}, {"type": "pong"},
                      {"type": "error", "error": {"code": "too_slow"}}, {"type": "reply", "id": 2, "op": "subscribe"}])
    assert [type(i) for i in items] == [syncsnap.Progress, Gap, TooSlow, Reply]
    assert isinstance(items[3], Reply) and items[3].id == 2
    with pytest.raises(syncsnap.ProtocolError, match="without a progress object"):
        ws_items([{"type": "progress"}])


def test_follow_targets() -> None:
    assert (FollowTargets(None, None, "snapshot").stream, FollowTargets(None, None, "snapshot").poll) == \
        ("/api/v1/events", "/api/v1/projects")
    docs = FollowTargets("my docs", RUN, "snapshot")
    assert (docs.stream, docs.poll) == ("/api/v1/projects/my%20docs/progress/stream", "/api/v1/projects/my%20docs/progress")
    check = FollowTargets(None, RUN, "check")
    assert (check.stream, check.poll) == ("/api/v1/events", f"/api/v1/operations/{RUN}")
    assert FollowTargets(None, None, "snapshot").parse_poll(
        {"projects": [{"id": "docs", "path": "/d", "state": "idle", "progress": progress_json(event_id=4),
                       "last_snapshot": None}]}) == [progress(4)]


# --- ordering ----------------------------------------------------------------------------------------


def order(project: str | None = "docs", run: str | None = None, kind: str = "snapshot",
          last_event_id: int | None = None) -> tuple[EventOrder, FollowStatistics]:
    stats = FollowStatistics(last_event_id=last_event_id)
    return EventOrder(project, run, kind, last_event_id, stats), stats


def drain(o: EventOrder) -> list[tuple[int, bool]]:
    out = []
    while (p := o.next_event()) is not None:
        out.append((p.event_id, p.gap))
    return out


def test_ordering_drops_duplicates_and_anything_out_of_order() -> None:
    o, stats = order(last_event_id=4)
    for eid in (3, 4, 5, 5, 7, 6, 8, 7):
        o.offer(progress(eid, step=2))
    assert drain(o) == [(5, False), (7, False), (8, False)]
    assert stats.duplicates_dropped == 5 and stats.last_event_id == 8 == o.last_id


def test_ordering_after_a_gap_each_lane_restarts_with_its_state_marked() -> None:
    o, stats = order(project=None)
    o.offer(progress(10, step=4))
    o.offer(progress(11, project="mail", run=RUN2, step=2))
    assert drain(o) == [(10, False), (11, False)]
    o.gap()  # the daemon could not replay: its ids may start again (a restart without an event log)
    o.offer(progress(1, step=5))
    o.offer(progress(2, step=5))
    o.offer(progress(11, project="mail", run=RUN2, step=2))  # exactly what was yielded last: not again
    o.offer(progress(12, project="mail", run=RUN2, step=3))
    assert drain(o) == [(1, True), (2, False), (12, False)]
    assert stats.gaps == 1 and stats.duplicates_dropped == 1


def test_ordering_a_run_that_ended_between_two_polls_is_a_gap() -> None:
    o, stats = order()
    o.offer_polled([progress(5, step=3)])
    o.offer_polled([progress(9, run=RUN2, step=1)])  # RUN's end was never seen
    assert drain(o) == [(5, False), (9, True)]
    assert stats.gaps == 1


def test_ordering_polled_ids_going_back_mean_a_new_daemon() -> None:
    o, stats = order(project=None)
    o.offer_polled([progress(20, step=4), progress(19, project="mail", run=RUN2, step=2)])
    o.offer_polled([progress(2, step=1, run=RUN2), progress(3, project="mail", run=RUN2, step=2)])
    assert drain(o) == [(19, False), (20, False), (2, True), (3, True)]
    assert stats.gaps == 1


def test_ordering_an_operation_run_beside_its_project_is_its_own_lane() -> None:
    o, stats = order()
    o.offer(progress(5, step=4))
    o.offer(progress(6, run=RUN2, kind="restore", steps=3, step=2, state="restoring"))
    o.offer(progress(7, step=5))
    assert drain(o) == [(5, False), (6, False), (7, False)]
    assert stats.gaps == 0  # the restore did not end the snapshot run


def test_following_a_run_stops_after_its_terminal_event() -> None:
    o, _ = order(run=RUN)
    o.offer(progress(3, project="mail", run=RUN2, step=2))  # another project's: not this follower's
    o.offer(progress(4, step=5))
    o.offer(progress(5, step=6, state="completed"))
    o.offer(progress(5, step=6, state="completed"))  # seen again (a resumed stream): not yielded twice
    assert o.next_event() == progress(4, step=5) and not o.finished
    last = o.next_event()
    assert last is not None and last.terminal and o.finished
    assert o.next_event() is None


def test_following_a_run_the_next_runs_event_in_the_same_read_does_not_hide_its_end() -> None:
    o, _ = order(run=RUN)
    # One read (or one replay after a resume) with the run's end and a queued run's start.
    o.offer(progress(4, step=5))
    o.offer(progress(5, step=6, state="completed"))
    o.offer(progress(6, run=RUN2, step=1))
    assert drain(o) == [(4, False), (5, False)] and o.finished


@pytest.mark.parametrize("later", [progress(9, run=RUN2, step=1), progress(9, run=None, step=0)],
                         ids=["a later run", "idle"])
def test_following_a_run_whose_end_was_missed_raises_run_lost(later: syncsnap.Progress) -> None:
    o, _ = order(run=RUN)
    o.offer(progress(4, step=3))
    assert drain(o) == [(4, False)]
    with pytest.raises(syncsnap.RunLost, match=f"Run {RUN} of docs ended without this client seeing how.*"
                                               "`syncsnap snapshots docs`"):
        o.offer(later)


def test_following_a_queued_run_waits_through_the_running_one() -> None:
    o, _ = order(run=RUN2)
    o.offer(progress(4, run=RUN, step=5))  # the run it is queued behind: older, not a sign of loss
    o.offer(progress(5, run=RUN, step=6, state="completed"))
    o.offer(progress(6, run=RUN2, step=1))
    assert drain(o) == [(6, False)]


def test_following_an_operation_run_asks_its_endpoint_first_and_after_a_gap() -> None:
    o, stats = order(project=None, run=RUN2, kind="check")
    assert o.check_run and o.checking_initially
    o.operation_state(progress(7, project=None, run=RUN2, kind="check", steps=3, step=2, state="checking"))
    assert not o.check_run and drain(o) == [(7, False)] and o.last_id == 7
    o.gap()
    assert o.check_run and not o.checking_initially
    end = progress(9, project=None, run=RUN2, kind="check", steps=3, step=3, state="completed")
    o.operation_state(end)
    assert drain(o) == [(9, True)] and o.finished
    o2, _ = order(project=None, run=RUN2, kind="check", last_event_id=3)
    assert not o2.check_run  # resuming: the stream replays it
    with pytest.raises(syncsnap.RunLost, match="`syncsnap run r-19000000001-0002-beef` shows how it ended"):
        o2.poll_not_found()


def test_health_tells_a_restarted_daemon() -> None:
    o, stats = order(project=None, run=RUN2, kind="prune", last_event_id=3)

    def health(pid: int, uptime: float) -> syncsnap.Health:
        return syncsnap.Health("ok", "0.1.0", uptime, pid, 1)

    assert o.health(health(10, 100.0)) is None
    assert o.health(health(10, 99.5)) is None  # within a second: the same process
    assert not o.check_run
    assert o.health(health(10, 5.0)) == 10  # the same pid again, but younger
    assert o.health(health(11, 6.0)) == 10
    assert stats.restarts == 2 and o.check_run  # an operation run does not survive its daemon


# --- the schedule ------------------------------------------------------------------------------------


def simulate(schedule: Schedule, until: float, *, stream_works_from: float = math.inf,
             polls_work_from: float = 0.0) -> list[tuple[str, float]]:
    """Runs ``schedule`` from t=0 to ``until`` as a follower would (every action instant, sleeps jump):
    the stream fails before ``stream_works_from``, polls before ``polls_work_from``. What was tried, when."""
    now = 0.0
    done: list[tuple[str, float]] = []
    while now < until:
        action = schedule.next_action(now)
        if isinstance(action, Sleep):
            assert action.until > now
            now = action.until
        elif isinstance(action, OpenStream):
            done.append(("stream", now))
            if now >= stream_works_from:
                schedule.stream_opened(now, pings=False)
                return done
            if schedule.polling:
                schedule.stream_retry_failed(now)
            else:
                failed = schedule.stream_attempt_failed(now, daemon_not_running=True)
                assert failed.outcome != "give_up"
        elif isinstance(action, Poll):
            done.append(("poll", now))
            if now >= polls_work_from:
                schedule.poll_succeeded(now)
            else:
                schedule.poll_failed()
        else:
            raise AssertionError(action)
    return done


def times(done: list[tuple[str, float]], what: str) -> list[float]:
    return [t for kind, t in done if kind == what]


def test_schedule_backoff_1_2_4_8_16_then_polling_every_second_and_stream_retries_every_30() -> None:
    stats = FollowStatistics()
    schedule = Schedule(EXACT, stats, wait=True)
    done = simulate(schedule, 100)
    # The first connection at 0 fails; attempts follow 1, 2, 4, 8, 16 s apart; the 5th in a row (31) fails.
    assert times(done, "stream")[:6] == [0, 1, 3, 7, 15, 31]
    assert schedule.polling and stats.stream_attempts_failed == 5
    # Polling from then on, every second; the stream is tried again every 30 s.
    assert times(done, "poll") == [float(t) for t in range(31, 100)]
    assert times(done, "stream")[6:] == [61, 91]
    assert stats.polls == 69


def test_schedule_back_to_streaming_when_a_retry_works() -> None:
    stats = FollowStatistics()
    schedule = Schedule(EXACT, stats, wait=True)
    done = simulate(schedule, 200, stream_works_from=70)
    assert times(done, "stream")[-2:] == [61, 91] and not schedule.polling
    assert stats.mode == "stream" and stats.streams_opened == 1
    assert schedule.next_action(91) == Read(91 + 45)


def test_schedule_polls_working_again_retry_the_stream_at_once() -> None:
    stats = FollowStatistics()
    schedule = Schedule(EXACT, stats, wait=True)
    done = simulate(schedule, 45.5, polls_work_from=40.5)
    assert stats.polls_failed == 10  # 31 .. 40
    assert times(done, "stream")[-1] == 41  # the poll at 41 worked: the daemon is back


def test_schedule_after_a_lost_stream_the_same_series_then_polling() -> None:
    stats = FollowStatistics()
    schedule = Schedule(EXACT, stats)
    assert schedule.next_action(0) == OpenStream()
    schedule.stream_opened(0, pings=False)
    assert schedule.stream_lost(100) == 101
    attempts = []
    now = 100.0
    while not schedule.polling:
        action = schedule.next_action(now)
        if isinstance(action, Sleep):
            now = action.until
            continue
        attempts.append(now)
        schedule.stream_attempt_failed(now, daemon_not_running=False)
    assert attempts == [101, 103, 107, 115, 131] and stats.streams_lost == 1
    assert schedule.next_action(131) == Poll()


def test_schedule_a_slow_reader_resumes_at_once() -> None:
    schedule = Schedule(EXACT, FollowStatistics())
    schedule.stream_opened(0, pings=False)
    schedule.too_slow = True
    assert schedule.stream_lost(20) == 20 and schedule.next_action(20) == OpenStream()
    schedule.stream_opened(20, pings=False)
    assert not schedule.too_slow


def test_schedule_without_wait_a_missing_daemon_is_the_callers() -> None:
    schedule = Schedule(EXACT, FollowStatistics())
    assert schedule.stream_attempt_failed(0, daemon_not_running=True).outcome == "give_up"
    # Any other transient failure of the first connection (a 503, ...) is retried like a lost stream.
    failed = schedule.stream_attempt_failed(0, daemon_not_running=False)
    assert (failed.outcome, failed.retry_at) == ("first", 1)
    schedule.stream_opened(1, pings=False)
    schedule.stream_lost(5)
    # Once connected, a daemon gone is waited for.
    assert schedule.stream_attempt_failed(6, daemon_not_running=True).outcome == "retry"


def test_schedule_stall_and_pings() -> None:
    stats = FollowStatistics()
    ws = Schedule(EXACT, stats)
    ws.stream_opened(0, pings=True)  # a WebSocket: quiet but healthy unless pings go unanswered
    assert ws.next_action(0) == Read(15)
    assert ws.next_action(15) == Ping() and stats.pings == 1
    assert ws.next_action(15) == Read(30)
    ws.received(20, pings=True)  # the pong
    assert ws.next_action(20) == Read(35)
    assert ws.next_action(35) == Ping() and ws.next_action(50) == Ping() and stats.pings == 3
    assert not ws.stalled(64.9) and ws.stalled(65)  # nothing since 20: dead at 20 + 45
    sse = Schedule(EXACT, FollowStatistics())
    sse.stream_opened(0, pings=False)  # the daemon keeps SSE alive with comments: no pings
    assert sse.next_action(0) == Read(45) and sse.stalled(45)


def test_schedule_an_operation_run_check_backs_off() -> None:
    schedule = Schedule(EXACT, FollowStatistics())
    assert schedule.next_action(0, check_run=True) == CheckRun()
    schedule.check_failed(0)
    assert schedule.next_action(0.5, check_run=True) == OpenStream()  # the stream's attempts go on
    assert schedule.next_action(1, check_run=True) == CheckRun()
    schedule.check_failed(1)
    assert schedule.next_action(2.9, check_run=True) != CheckRun()
    assert schedule.next_action(3, check_run=True) == CheckRun()
    schedule.check_succeeded()
    assert schedule.ever_connected


def test_policy_delays_double_up_to_the_maximum_with_jitter_on_top() -> None:
    assert [EXACT.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    half = syncsnap.FollowPolicy(jitter=0.1, random=lambda: 0.5)
    assert half.delay(1) == pytest.approx(1.05) and half.delay(3) == pytest.approx(4.2)
    assert EXACT.ping_interval == 15
