"""``GET /metrics`` in the Prometheus text format, rendered by prometheus_client.

Run counters and the duration histogram are fed by a tracker subscriber (:meth:`Metrics.serve`); gauges
(store size, subscribers, HTTP requests, event queue statistics) are read when scraped. The registry is
private to the daemon: nothing registers into prometheus_client's global default registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core import Progress, parse_time
from ..http import HttpStatistics, Request, Response, Router
from ..runs import Tracker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Snapshot durations span milliseconds (no change) to hours (a first snapshot of a large folder).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


def store_footprint(root: Path) -> tuple[int, int]:
    """(pack files, their total bytes) of a local store."""
    if (root / "remote.json").exists():
        from ..store import footprint

        return footprint(root)  # an S3 store: its packs are in the bucket
    packs = size = 0
    for dirpath, _dirs, files in os.walk(root / "packs"):
        for name in files:
            if name.endswith(".pack"):
                packs += 1
                try:
                    size += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return packs, size


class Metrics(Collector):
    """The daemon's metrics: ``await nursery.start(metrics.serve)``, then register :meth:`handler`."""

    def __init__(self, tracker: Tracker, store_root: Path, http_stats: Callable[[], HttpStatistics | None]) -> None:
        self.tracker = tracker
        self.store_root = store_root
        self.http_stats = http_stats
        self.registry = CollectorRegistry(auto_describe=False)
        self.runs = Counter("syncsnap_runs", "Runs that ended, by project, kind and outcome.",
                            ["project", "kind", "outcome"], registry=self.registry)
        self.duration = Histogram("syncsnap_run_duration_seconds", "Duration of runs that ended.",
                                  ["kind"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.bytes_read = Counter("syncsnap_bytes_read", "Bytes of file content read by snapshots.",
                                  ["project"], registry=self.registry)
        self.bytes_added = Counter("syncsnap_bytes_added", "Bytes added to the store by snapshots.",
                                   ["project"], registry=self.registry)
        self.registry.register(self)
        self._content_bytes: dict[str, int] = {}  # per running run: bytes to read in step 4

    # --- feeding the counters ------------------------------------------------------------------------

    def observe(self, p: Progress) -> None:
        if p.run is None:
            return
        if p.kind == "snapshot" and p.step == 4:
            self._content_bytes[p.run] = p.bytes_total
        if not p.terminal:
            return
        project = p.project or "-"
        self.runs.labels(project, p.kind, p.state).inc()
        start, end = parse_time(p.started_at), parse_time(p.updated_at)
        if start is not None and end is not None:
            self.duration.labels(p.kind).observe(max(0.0, end - start))
        read = self._content_bytes.pop(p.run, 0)
        if p.kind == "snapshot" and p.state == "completed" and p.snapshot is not None:
            self.bytes_read.labels(project).inc(read)
            self.bytes_added.labels(project).inc(p.snapshot.bytes_added)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.tracker.subscribe(last_event_id=self.tracker.last_event_id, transport="internal") as sub:
            task_status.started()
            async for ev in sub:
                self.observe(ev.progress)

    # --- scraped gauges ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        packs, size = store_footprint(self.store_root)
        g = GaugeMetricFamily("syncsnap_store_bytes", "Bytes of pack files in the store.")
        g.add_metric([], size)
        yield g
        g = GaugeMetricFamily("syncsnap_store_packs", "Pack files in the store.")
        g.add_metric([], packs)
        yield g
        subs = GaugeMetricFamily("syncsnap_subscribers", "Connected progress subscribers, by transport.",
                                 labels=["transport"])
        for transport, n in sorted(self.tracker.subscribers_by_transport().items()):
            subs.add_metric([transport], n)
        yield subs
        stats = self.tracker.statistics()
        c = CounterMetricFamily("syncsnap_events_published", "Progress events published.")
        c.add_metric([], stats.published)
        yield c
        c = CounterMetricFamily("syncsnap_events_coalesced", "Intermediate events dropped for slow subscribers.")
        c.add_metric([], stats.coalesced)
        yield c
        c = CounterMetricFamily("syncsnap_subscribers_dropped", "Subscribers disconnected for falling behind.")
        c.add_metric([], stats.dropped_subscribers)
        yield c
        http = self.http_stats()
        if http is not None:
            c = CounterMetricFamily("syncsnap_http_requests", "HTTP responses sent, by status.", labels=["status"])
            for status, n in sorted(http.requests_by_status.items()):
                c.add_metric([str(status)], n)
            yield c
            g = GaugeMetricFamily("syncsnap_http_connections", "Open HTTP connections.")
            g.add_metric([], http.open_connections)
            yield g

    def describe(self) -> Iterator[Metric]:
        return iter(())

    async def handler(self, request: Request, params: dict[str, str]) -> Response:
        body = await trio.to_thread.run_sync(generate_latest, self.registry)
        return Response(200, body, CONTENT_TYPE)

    def register(self, router: Router) -> None:
        router.add("GET", "/metrics", self.handler)
