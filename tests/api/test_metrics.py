"""``GET /metrics`` over a real socket while subscriptions come and go and events are published."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from helpers.http import H11Client
from syncsnapd.api import Api, Metrics
from syncsnapd.core import Progress, ProjectConfig
from syncsnapd.http import HttpConfig, HttpServer, open_unix_listener, serve_http
from syncsnapd.runs import History, Scheduler, Tracker
from syncsnapd.store import Store

CHURNERS = 40
# Subscribers that stay (to a project nothing is published for): they make the subscriber set large, so a
# scrape that iterated it in a worker thread would be doing so for a while.
IDLE_SUBSCRIBERS = 1500
SCRAPES = 60


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch between threads every microsecond (not every 5 ms) so that a race shows up within a test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_scrapes_stay_consistent_while_subscriptions_churn(short_tmp: Path,
                                                                 frequent_thread_switches: None) -> None:
    """Each scrape copies the tracker's and the server's counters on the event loop, then renders in a
    worker thread: no scrape fails (a worker iterating the live subscriber set would, now and then, meet
    "Set changed size during iteration"), and each is a coherent picture."""
    store = await trio.to_thread.run_sync(lambda: Store.open(short_tmp / "store", writable=True))
    history = await trio.to_thread.run_sync(History.open, short_tmp / "state" / "history.sqlite3")
    sock = str(short_tmp / "s.sock")
    try:
        tracker = Tracker(first_event_id=history.reserve_event_ids())
        api = Api(Scheduler(store, tracker, [ProjectConfig("docs", short_tmp)]), tracker, heartbeat=15)
        server: HttpServer | None = None
        metrics = Metrics(tracker, short_tmp / "store", lambda: server.statistics() if server else None, history)
        metrics.register(api.router)
        idle = [tracker.subscribe(["quiet"], transport="websocket") for _ in range(IDLE_SUBSCRIBERS)]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(history.serve, tracker)
                await nursery.start(metrics.serve)
                listener = await open_unix_listener(short_tmp / "s.sock")
                server = await nursery.start(serve_http, api, [(listener, "unix")], HttpConfig(max_connections=500))

                async def churn(seed: int) -> None:
                    rng = random.Random(seed)
                    while True:
                        stream = await trio.open_unix_socket(sock)
                        client = H11Client(stream)
                        await stream.send_all(client.encode("GET", "/api/v1/events"))
                        assert (await client.head()).status_code == 200
                        await trio.sleep(rng.random() * 0.01)
                        await stream.aclose()

                async def publish() -> None:
                    n = 0
                    while True:
                        n += 1
                        tracker.publish(Progress(project="docs", run=f"r{n // 50}", state="compressing", step=4,
                                                 percent=n % 100))
                        await trio.sleep(0.002)

                for i in range(CHURNERS):
                    nursery.start_soon(churn, i)
                nursery.start_soon(publish)
                last_published = last_ok = 0.0
                seen_subscribers = set()
                for _ in range(SCRAPES):
                    stream = await trio.open_unix_socket(sock)
                    reply = await H11Client(stream).request("GET", "/metrics")
                    await stream.aclose()
                    assert reply.status == 200, reply.body
                    samples = _samples(reply.body.decode())
                    published = samples[("syncsnap_events_published_total", ())]
                    assert published >= last_published
                    last_published = published
                    sse = samples.get(("syncsnap_subscribers", (("transport", "sse"),)), 0)
                    assert 0 <= sse <= CHURNERS
                    seen_subscribers.add(sse)
                    assert samples[("syncsnap_subscribers", (("transport", "internal"),))] == 2  # history, metrics
                    assert samples[("syncsnap_subscribers", (("transport", "websocket"),))] == IDLE_SUBSCRIBERS
                    assert samples[("syncsnap_http_connections", ())] >= 1  # this scrape's own
                    assert samples[("syncsnap_history_events_lost_total", ())] == 0
                    assert samples[("syncsnap_history_events_pending", ())] >= 0
                    ok = samples.get(("syncsnap_http_requests_total", (("status", "200"),)), 0)
                    assert ok >= last_ok
                    last_ok = ok
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        assert last_published > 100 and last_ok > 0 and len(seen_subscribers) > 1  # it churned while scraped
        assert history.statistics().events_written == tracker.statistics().published
        assert not any(sub.closed for sub in idle)
    finally:
        history.close()
        store.close()


async def test_every_ended_run_is_counted_across_a_restart_of_the_counter(tmp_path: Path) -> None:
    """As a supervisor restarts it: runs that ended while it was stopped are counted when it resumes, and
    a consumer far behind loses nothing (its subscription is lossless)."""
    tracker = Tracker(queue_events=4)
    tracker.add_project("docs")
    metrics = Metrics(tracker, tmp_path, lambda: None)

    def ended(run: str) -> None:
        tracker.publish(Progress(project="docs", run=run, state="completed", step=6, started_at="2024-01-01T00:00:00Z",
                                 updated_at="2024-01-01T00:00:02Z"))

    def counted() -> float:
        samples = _samples(metrics.render(metrics.scrape()).decode())
        return samples.get(("syncsnap_runs_total", (("kind", "snapshot"), ("outcome", "completed"),
                                                    ("project", "docs"))), 0)

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def first(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await metrics.serve(task_status=task_status)

        await nursery.start(first)
        for i in range(20):  # far more than a network client's queue of 4 would keep
            ended(f"a{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert counted() == 20
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        ended("b1")
        ended("b2")
        await nursery.start(metrics.serve)
        await trio.testing.wait_all_tasks_blocked()
        assert counted() == 22
        nursery.cancel_scope.cancel()
