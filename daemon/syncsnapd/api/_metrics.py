"""``GET /metrics`` in the Prometheus text format, rendered by prometheus_client.

Run counters and the duration histogram are fed by a lossless tracker subscriber (:meth:`Metrics.serve`);
prometheus_client's counters are thread-safe. The rest (subscribers, event queue statistics, HTTP
requests, history writer) is read when scraped: copied into plain values on the Trio thread, which owns
those counters, and then rendered in a worker thread together with the store's size (a walk of the disk).
No worker thread ever reads a structure the event loop mutates. The registry is private to the daemon:
nothing registers into prometheus_client's global default registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..core import Progress, parse_time
from ..http import HttpStatistics, Request, Response, Router

if TYPE_CHECKING:
    from ..store import StoreFiles
from ..runs import History, HistoryStatistics, Tracker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Snapshot durations span milliseconds (no change) to hours (a first snapshot of a large folder).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


def store_footprint(root: Path, files: StoreFiles | None = None) -> tuple[int, int]:
    """(pack files, their total bytes) of a store; ``files`` (an open store's) reads an encrypted S3 store's
    sealed indexes."""
    if (root / "remote.json").exists():
        from ..store import footprint

        return footprint(root, files)  # an S3 store: its packs are in the bucket
    packs = size = 0
    for dirpath, _dirs, names in os.walk(root / "packs"):
        for name in names:
            if name.endswith(".pack"):
                packs += 1
                try:
                    size += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return packs, size


@dataclass(frozen=True)
class _Scraped:
    """The counters read at scrape time, copied on the Trio thread."""

    subscribers: tuple[tuple[str, int], ...]
    published: int
    coalesced: int
    dropped_subscribers: int
    http: HttpStatistics | None
    history: HistoryStatistics | None


class _Exposition:
    """One scrape's collector: the registry's counters, then the families built from a :class:`_Scraped`."""

    def __init__(self, registry: CollectorRegistry, families: list[Metric]) -> None:
        self.registry = registry
        self.families = families

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.families


class Metrics:
    """The daemon's metrics: ``await nursery.start(metrics.serve)``, then register :meth:`handler`.

    Args:
        tracker: the progress tracker (its statistics, and the run events that feed the counters).
        store_root: the store's directory, for its size; or, for a daemon with several stores, a function
            returning each store's (location, directory): then the size of each is shown too.
        http_stats: the HTTP server's statistics, or None before it runs.
        history: the history, for its writer's statistics.
    """

    def __init__(self, tracker: Tracker, store_root: Path | Callable[[], Sequence[tuple[str, Path, StoreFiles]]],
                 http_stats: Callable[[], HttpStatistics | None], history: History | None = None) -> None:
        self.tracker = tracker
        self.store_root = store_root
        self.http_stats = http_stats
        self.history = history
        self.registry = CollectorRegistry(auto_describe=False)
        self.runs = Counter("syncsnap_runs", "Runs that ended, by project, kind and outcome.",
                            ["project", "kind", "outcome"], registry=self.registry)
        self.duration = Histogram("syncsnap_run_duration_seconds", "Duration of runs that ended.",
                                  ["kind"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.bytes_read = Counter("syncsnap_bytes_read", "Bytes of file content read by snapshots.",
                                  ["project"], registry=self.registry)
        self.bytes_added = Counter("syncsnap_bytes_added", "Bytes added to the store by snapshots.",
                                   ["project"], registry=self.registry)
        self._content_bytes: dict[str, int] = {}  # per running run: bytes to read in step 4
        self._seen: int | None = None  # the newest event counted

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
        """Count every run that ends, until cancelled (a lossless subscription: no run goes uncounted).

        Restarted (by a supervisor), it resumes after the last event it counted.
        """
        since = self.tracker.last_event_id if self._seen is None else self._seen
        with self.tracker.subscribe(last_event_id=since, transport="internal", lossless=True) as sub:
            task_status.started()
            async for ev in sub:
                if ev.id > since:
                    self._seen = ev.id
                    self.observe(ev.progress)

    # --- scraping ------------------------------------------------------------------------------------

    def scrape(self) -> _Scraped:
        """Copy the counters owned by the event loop into plain values. Call on the Trio thread."""
        stats = self.tracker.statistics()
        return _Scraped(
            subscribers=tuple(sorted(self.tracker.subscribers_by_transport().items())),
            published=stats.published, coalesced=stats.coalesced, dropped_subscribers=stats.dropped_subscribers,
            http=self.http_stats(), history=self.history.statistics() if self.history is not None else None)

    def render(self, scraped: _Scraped) -> bytes:
        """The exposition text: the counters, the scraped values and the store's size (reads the disk)."""
        return generate_latest(_Exposition(self.registry, self._families(scraped)))

    def _families(self, s: _Scraped) -> list[Metric]:
        out: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            out.append(g)

        def counter(name: str, doc: str, value: float) -> None:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            out.append(c)

        stores = [("", self.store_root, None)] if isinstance(self.store_root, Path) else self.store_root()
        footprints = [(where, *store_footprint(root, files)) for where, root, files in stores]
        gauge("syncsnap_store_bytes", "Bytes of pack files in the store (all stores).", sum(f[2] for f in footprints))
        gauge("syncsnap_store_packs", "Pack files in the store (all stores).", sum(f[1] for f in footprints))
        if not isinstance(self.store_root, Path):
            by_bytes = GaugeMetricFamily("syncsnap_store_bytes_by_store", "Bytes of pack files, by store.",
                                         labels=["store"])
            by_packs = GaugeMetricFamily("syncsnap_store_packs_by_store", "Pack files, by store.", labels=["store"])
            for where, packs, size in footprints:
                by_bytes.add_metric([where], size)
                by_packs.add_metric([where], packs)
            out += [by_bytes, by_packs]
        subs = GaugeMetricFamily("syncsnap_subscribers", "Connected progress subscribers, by transport.",
                                 labels=["transport"])
        for transport, n in s.subscribers:
            subs.add_metric([transport], n)
        out.append(subs)
        counter("syncsnap_events_published", "Progress events published.", s.published)
        counter("syncsnap_events_coalesced", "Intermediate events dropped for slow subscribers.", s.coalesced)
        counter("syncsnap_subscribers_dropped", "Subscribers disconnected for falling behind.",
                s.dropped_subscribers)
        if s.http is not None:
            c = CounterMetricFamily("syncsnap_http_requests", "HTTP responses sent, by status.", labels=["status"])
            for status, n in sorted(s.http.requests_by_status.items()):
                c.add_metric([str(status)], n)
            out.append(c)
            gauge("syncsnap_http_connections", "Open HTTP connections.", s.http.open_connections)
        if s.history is not None:
            gauge("syncsnap_history_events_pending", "Events waiting in memory to be written to the history.",
                  s.history.events_pending)
            counter("syncsnap_history_events_lost",
                    "Events never written to the history: dropped while too many waited for the database.",
                    s.history.events_lost)
            counter("syncsnap_history_write_failures",
                    "Failed history writes (each retried with backoff).", s.history.write_failures)
        return out

    async def handler(self, request: Request, params: dict[str, str]) -> Response:
        scraped = self.scrape()
        body = await trio.to_thread.run_sync(self.render, scraped)
        return Response(200, body, CONTENT_TYPE)

    def register(self, router: Router) -> None:
        router.add("GET", "/metrics", self.handler)
