"""The stores as the API shows them.

* ``GET /api/v1/store`` (docs/api.md, "Store"): what the stores hold and how the last check went, for the
  dashboard's store health view. Read-only: counts from each store's snapshot list and pack files (an S3
  store's from its cached indexes, no request to the bucket), summed over every store the daemon uses and
  listed per store (``stores``: where, which projects write there), the last check from the run history.
* :class:`SnapshotLists`: the snapshot listings (``GET /api/v1/snapshots``, a project's snapshots, the
  projects' last snapshots, ``latest`` in browsing) of an S3 store that other machines write to as well:
  refreshed from the bucket when the last refresh is older than ``refresh_age``, and saying so when the
  bucket could not be asked.
* :func:`store_health`: health's ``store`` entry (reachability of the bucket, what waits in staging).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from ..http import Request, Response, Router, json_response
from ..runs import History, Operations, location_of
from ..store import SnapshotInfo, Store, StoreError
from ._errors import api_error
from ._metrics import store_footprint

__all__ = ["SnapshotLists", "register_snapshot_list", "register_store_view"]

log = logging.getLogger("syncsnapd.api")

API = "/api/v1"
# How long a listing waits (seconds) for a refresh of an S3 store's lists. A bucket that is slower (or
# down: the backend's retries take up to a minute to give up) does not hold the request: it is answered
# from the cached lists and says so; the refresh finishes in its worker thread and serves later requests.
REFRESH_WAIT_SECONDS = 5.0
# Longest ``?host=`` value: a host name as snapshot files record it.
MAX_HOST = 255


async def store_health(store: Store) -> dict[str, Any]:
    """Health's ``store``: whether the bucket of an S3 store answers (a local store always does), and what
    waits in staging for it (docs/api.md, ``GET /api/v1/health``)."""
    remote = store.remote
    if remote is None:
        return {"kind": "local", "reachable": True, "since": None, "error": None}
    state = remote.reachability
    staged = await trio.to_thread.run_sync(remote.staged_bytes)
    return {"kind": "s3", "reachable": state.reachable, "since": state.since,
            "error": None if state.reachable else {"code": state.code, "message": state.message},
            "staging_bytes": staged, "staging_max_bytes": remote.staging_max}


class _BucketRefresh:
    """The refreshes of one S3 store's lists: at most one at a time (its thread may outlive the request
    that started it), and after a failed one the next is tried ``refresh_age`` later."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Under _lock: a refresh is running; when the last one failed (time.monotonic()), with what.
        self._lock = threading.Lock()
        self._running = False
        self._failed_at = -math.inf
        self._problem = ""

    def start_if_due(self, refresh_age: float) -> bool:
        """Whether a refresh is due; if so, it counts as running from now (call :meth:`run`)."""
        remote = self.store.remote
        assert remote is not None
        with self._lock:
            last = max(remote.refreshed_at or -math.inf, self._failed_at)
            due = not self._running and time.monotonic() - last >= refresh_age
            self._running = self._running or due
        return due

    def run(self, refresh_age: float) -> None:  # a worker thread
        try:
            self.store.refresh(refresh_age)
        except StoreError as exc:
            log.warning("could not refresh the snapshot lists from %s: %s", self.store.root, exc)
            with self._lock:
                self._failed_at, self._problem = time.monotonic(), str(exc)
        finally:
            with self._lock:
                self._running = False

    def stale(self, wait: float) -> str | None:
        """Why the cached lists answer (None: they are as fresh as configured)."""
        remote = self.store.remote
        assert remote is not None
        with self._lock:
            if self._running:
                return (f"The bucket did not answer within {wait:g} s: these are the snapshots cached here; "
                        "the refresh goes on.")
            if self._failed_at > (remote.refreshed_at or -math.inf):
                return f"Could not refresh from the bucket ({self._problem}): these are the snapshots cached here."
            return None


class SnapshotLists:
    """Snapshot listings for the API, each S3 store's lists refreshed when older than ``refresh_age``
    seconds.

    Args:
        stores: the open stores (called at each listing: a reload may change them).
        list_snapshots: ``(project or None) -> snapshots, oldest first`` across them (blocking).
        refresh_age: seconds the cached lists of an S3 store serve (config ``refresh_age``).
        wait: seconds a listing waits for the refreshes (:data:`REFRESH_WAIT_SECONDS`).
    """

    def __init__(self, stores: Callable[[], Sequence[Store]],
                 list_snapshots: Callable[[str | None], list[SnapshotInfo]], refresh_age: float, *,
                 wait: float = REFRESH_WAIT_SECONDS) -> None:
        self._stores = stores
        self._list = list_snapshots
        self.refresh_age = refresh_age
        self.wait = wait
        self._buckets: dict[int, _BucketRefresh] = {}  # by id() of the store (kept alive by the entry)

    @classmethod
    def of_store(cls, store: Store, refresh_age: float, *, wait: float = REFRESH_WAIT_SECONDS) -> SnapshotLists:
        """The listings of one store."""
        return cls(lambda: [store], store.list_snapshots, refresh_age, wait=wait)

    def _bucket(self, store: Store) -> _BucketRefresh:
        b = self._buckets.get(id(store))
        if b is None or b.store is not store:
            b = self._buckets[id(store)] = _BucketRefresh(store)
        return b

    async def refresh(self) -> str | None:
        """Refresh the lists of every S3 store older than ``refresh_age``, waiting at most ``wait``.

        Returns:
            None when the lists are as fresh as configured; else a sentence saying they are the cached
            ones and why (a bucket could not be reached, or is slow to answer).
        """
        buckets = [self._bucket(s) for s in self._stores() if s.remote is not None]
        if not buckets:
            return None
        due = [b for b in buckets if b.start_if_due(self.refresh_age)]
        if due:
            with trio.move_on_after(self.wait):
                async with trio.open_nursery() as nursery:
                    for b in due:
                        nursery.start_soon(partial(trio.to_thread.run_sync, b.run, self.refresh_age,
                                                   abandon_on_cancel=True))
        problems = [p for b in buckets if (p := b.stale(self.wait)) is not None]
        return " ".join(dict.fromkeys(problems)) or None

    async def snapshots(self, project: str | None = None, host: str | None = None
                        ) -> tuple[list[SnapshotInfo], str | None]:
        """The snapshots (of ``project``, taken on ``host``; all if None), oldest first, after
        :meth:`refresh`; with its sentence when they may be stale."""
        stale = await self.refresh()
        infos = await trio.to_thread.run_sync(self._list, project)
        if host is not None:
            infos = [i for i in infos if i.host == host]
        return infos, stale


def host_param(request: Request) -> str | None:
    """The ``?host=`` filter of a snapshot listing (None: all hosts).

    Raises:
        HTTPError: 400 bad_request naming the parameter when it cannot be a host name.
    """
    host = request.query.get("host")
    if host is not None and not (0 < len(host) <= MAX_HOST and host.isprintable()):
        raise api_error("bad_request", f"host must be a machine name of 1 to {MAX_HOST} printable characters.")
    return host


def register_snapshot_list(router: Router, lists: SnapshotLists) -> None:
    """Add ``GET /api/v1/snapshots[?host=H&project=P]`` to ``router``."""

    async def snapshots(request: Request, params: dict[str, str]) -> Response:
        infos, stale = await lists.snapshots(request.query.get("project") or None, host_param(request))
        return json_response(200, {"snapshots": [i.to_json() for i in infos], "stale": stale})

    router.add("GET", f"{API}/snapshots", snapshots)


def register_store_view(router: Router, history: History, ops: Operations) -> None:
    """Add ``GET /api/v1/store`` to ``router``: the stores of ``ops.stores``."""

    def gather(projects: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        stores = []
        for store in ops.stores.all():
            packs, nbytes = store_footprint(store.root, store.files)
            stores.append({"store": location_of(store), "projects": ops.stores.projects_of(store, projects),
                           "snapshots": len(store.list_snapshots(None)), "bytes_stored": nbytes, "packs": packs})
        try:
            last = history.last_finished("check")
        except sqlite3.Error as exc:  # a history that cannot be read says so in health; not fatal here
            log.warning("cannot read the last check from the history: %s", exc)
            last = None
        return stores, last.to_json() if last is not None else None

    async def view(request: Request, params: dict[str, str]) -> Response:
        stores, last = await trio.to_thread.run_sync(gather, ops.scheduler.project_ids())
        running = next((p.run for p in ops.operations() if p.kind == "check" and not p.terminal), None)
        return json_response(200, {**{k: sum(s[k] for s in stores) for k in ("snapshots", "bytes_stored", "packs")},
                                   "last_check": last, "check_running": running, "stores": stores,
                                   "health": await store_health(ops.stores.default)})

    router.add("GET", f"{API}/store", view)
