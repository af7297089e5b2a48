"""The tracker: event ids, replay without gap or duplicate, coalescing for slow readers, terminal events."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from syncsnapd.core import Progress
from syncsnapd.http import sse_progress
from syncsnapd.runs import SubscriptionClosed, Tracker


def _p(project: str, run: str = "r1", state: str = "compressing", percent: float = 0.0) -> Progress:
    return Progress(project=project, run=run, state=state, step=6 if state == "completed" else 4,
                    percent=percent)


async def test_ids_increase_and_latest_is_kept() -> None:
    t = Tracker()
    t.add_project("a")
    assert t.latest("a").state == "idle" and t.latest("a").event_id == 0
    e1 = t.publish(_p("a", percent=10))
    e2 = t.publish(_p("a", percent=20))
    assert (e1.id, e2.id) == (1, 2)
    assert t.latest("a").event_id == 2 and t.latest("a").percent == 20
    sse = sse_progress(e2.id, e2.json_text)
    assert b"id: 2\nevent: progress\ndata: {" in sse and sse.endswith(b"\n\n")


async def test_fresh_subscriber_gets_current_state_first() -> None:
    t = Tracker()
    for name in ("a", "b"):
        t.add_project(name)
    t.publish(_p("b", percent=5))
    t.publish(_p("a", percent=7))
    with t.subscribe() as sub:
        first = [sub.get_nowait(), sub.get_nowait()]
        assert [e.progress.project for e in first if e] == ["b", "a"]  # ordered by event id
        assert sub.get_nowait() is None and not sub.gap
    with t.subscribe(["a"]) as only_a:
        ev = only_a.get_nowait()
        assert ev is not None and ev.progress.percent == 7 and only_a.get_nowait() is None


async def test_resume_replays_exactly_the_missed_events() -> None:
    t = Tracker(replay_events=100)
    t.add_project("a")
    t.add_project("b")
    ids = [t.publish(_p("a" if i % 2 else "b", percent=i)).id for i in range(1, 21)]
    with t.subscribe(last_event_id=12) as sub:
        got = []
        while (ev := sub.get_nowait()) is not None:
            got.append(ev.id)
    assert got == ids[12:]  # 13..20, no gap, no duplicate
    with t.subscribe(["a"], last_event_id=12) as sub_a:
        got_a = []
        while (ev := sub_a.get_nowait()) is not None:
            got_a.append(ev.id)
    assert got_a == [13, 15, 17, 19]
    # Up to date: nothing to replay.
    with t.subscribe(last_event_id=20) as sub2:
        assert sub2.get_nowait() is None and not sub2.gap


async def test_resume_beyond_the_buffer_sends_current_state_and_marks_gap() -> None:
    t = Tracker(replay_events=5)
    t.add_project("a")
    for i in range(20):
        t.publish(_p("a", percent=i))
    with t.subscribe(last_event_id=3) as sub:
        assert sub.gap
        ev = sub.get_nowait()
        assert ev is not None and ev.id == 20 and sub.get_nowait() is None
    # An id from the future (another daemon's sequence) is treated the same way.
    with t.subscribe(last_event_id=999) as sub2:
        assert sub2.gap and sub2.get_nowait() is not None


async def test_slow_subscriber_gets_coalesced_progress_but_every_terminal_event() -> None:
    t = Tracker(queue_events=8)
    t.add_project("a")
    t.add_project("b")
    with t.subscribe() as sub:
        while sub.get_nowait():
            pass
        for run in range(3):
            for i in range(30):
                t.publish(_p("a", run=f"a{run}", percent=i))
                t.publish(_p("b", run=f"b{run}", percent=i))
            t.publish(_p("a", run=f"a{run}", state="completed", percent=100))
        got = []
        while (ev := sub.get_nowait()) is not None:
            got.append(ev)
        assert not sub.closed
        assert len(got) <= 8
        terminals = [e.progress.run for e in got if e.progress.terminal]
        assert terminals == ["a0", "a1", "a2"]
        ids = [e.id for e in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # The newest state of b survives coalescing.
        assert got[-1].progress.project == "b" or any(e.progress.percent == 29 and e.progress.project == "b"
                                                     for e in got)
        assert t.statistics().coalesced > 0


async def test_hopelessly_behind_subscriber_is_disconnected_and_publish_never_waits() -> None:
    t = Tracker(queue_events=4)
    t.add_project("a")
    sub = t.subscribe()
    sub.get_nowait()
    for run in range(6):  # six terminal events cannot fit in four slots
        t.publish(_p("a", run=f"r{run}", state="completed"))
    assert sub.closed and sub.close_reason == "overflow"
    assert t.statistics().subscribers == 0 and t.statistics().dropped_subscribers == 1
    # Its queued events are still readable, then iteration ends.
    seen = [ev.progress.run async for ev in sub]
    assert seen == ["r0", "r1", "r2", "r3"]


async def test_fast_path_is_used_only_when_nothing_is_queued() -> None:
    t = Tracker()
    t.add_project("a")
    delivered: list[int] = []
    accept = True

    def fast(ev):  # type: ignore[no-untyped-def]
        if accept:
            delivered.append(ev.id)
        return accept

    sub = t.subscribe(fast_path=fast)
    assert sub.get_nowait() is not None  # the initial state is queued, not fast-pathed
    t.publish(_p("a", percent=1))
    assert delivered == [1] and sub.pending() == 0
    accept = False
    t.publish(_p("a", percent=2))
    accept = True
    t.publish(_p("a", percent=3))  # must queue behind event 2 to keep order
    assert delivered == [1] and [sub.get_nowait().id, sub.get_nowait().id] == [2, 3]  # type: ignore[union-attr]
    sub.close()


async def test_async_iteration_wakes_on_publish() -> None:
    t = Tracker()
    t.add_project("a")
    got: list[float] = []
    async with trio.open_nursery() as nursery:
        sub = t.subscribe(last_event_id=0)

        async def reader() -> None:
            async for ev in sub:
                got.append(ev.progress.percent)
                if ev.progress.terminal:
                    break

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        t.publish(_p("a", percent=50))
        await trio.testing.wait_all_tasks_blocked()
        t.publish(_p("a", state="completed", percent=100))
    assert got == [50, 100]
    sub.close()


async def test_lossless_subscription_keeps_every_event_in_order_however_far_behind() -> None:
    """The history's and the metrics' view: no coalescing, no disconnect, even past the network bound."""
    t = Tracker(queue_events=4)
    t.add_project("a")
    t.add_project("b")
    with t.subscribe(last_event_id=0, lossless=True) as internal, t.subscribe(last_event_id=0) as network:
        published = []
        for run in range(50):
            for i in range(20):
                published.append(t.publish(_p("a" if i % 2 else "b", run=f"r{run}", percent=i)).id)
            published.append(t.publish(_p("a", run=f"r{run}", state="completed")).id)
        got = []
        while (ev := internal.get_nowait()) is not None:
            got.append(ev.id)
        assert got == published and not internal.closed
        assert network.closed and network.close_reason == "overflow"  # the network reader was not so lucky
    stats = t.statistics()
    assert stats.dropped_subscribers == 1


async def test_waiting_on_a_closed_subscription_raises_instead_of_spinning() -> None:
    t = Tracker(queue_events=2)
    t.add_project("a")
    sub = t.subscribe(last_event_id=0)
    woke: list[str] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await sub.wait()  # woken by the close itself: returns, the caller sees `closed`
            woke.append("returned")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        for run in range(4):  # more terminal events than the queue holds: closed for overflow
            t.publish(_p("a", run=f"r{run}", state="completed"))
    assert woke == ["returned"] and sub.closed
    while sub.get_nowait() is not None:
        pass
    with pytest.raises(SubscriptionClosed) as info:
        await sub.wait()
    assert info.value.reason == "overflow"
    # Every later wait raises too: a consumer loop `while True: await sub.wait()` cannot spin.
    with pytest.raises(SubscriptionClosed):
        await sub.wait()
    # Events still queued when it closed are read first: wait returns while there is something to read.
    sub2 = t.subscribe(last_event_id=t.last_event_id)
    t.publish(_p("a", run="r9", state="completed"))
    sub2.close()
    await sub2.wait()
    ev = sub2.get_nowait()
    assert ev is not None and ev.progress.run == "r9"
    with pytest.raises(SubscriptionClosed) as info2:
        await sub2.wait()
    assert info2.value.reason == "closed"
