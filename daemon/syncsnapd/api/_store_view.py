"""``GET /api/v1/store`` (docs/api.md, "Store"): what the store holds and how its last check went, for the
dashboard's store health view. Read-only: counts from the store's snapshot list and pack files (an S3
store's from its cached indexes, no request to the bucket), the last check from the run history, and
health's ``store`` entry (reachability of the bucket, what waits in staging)."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import trio

from ..http import Request, Response, Router, json_response
from ..runs import History, Operations
from ..store import Store
from ._endpoints import store_health
from ._metrics import store_footprint

__all__ = ["register_store_view"]

log = logging.getLogger("syncsnapd.api")

API = "/api/v1"


def register_store_view(router: Router, store: Store, history: History, ops: Operations) -> None:
    """Add ``GET /api/v1/store`` to ``router``."""

    def gather() -> tuple[int, int, int, dict[str, Any] | None]:
        snapshots = len(store.list_snapshots(None))
        packs, nbytes = store_footprint(store.root)
        try:
            last = history.last_finished("check")
        except sqlite3.Error as exc:  # a history that cannot be read says so in health; not fatal here
            log.warning("cannot read the last check from the history: %s", exc)
            last = None
        return snapshots, nbytes, packs, last.to_json() if last is not None else None

    async def view(request: Request, params: dict[str, str]) -> Response:
        snapshots, nbytes, packs, last = await trio.to_thread.run_sync(gather)
        running = next((p.run for p in ops.operations() if p.kind == "check" and not p.terminal), None)
        return json_response(200, {"snapshots": snapshots, "bytes_stored": nbytes, "packs": packs,
                                   "last_check": last, "check_running": running,
                                   "health": await store_health(store)})

    router.add("GET", f"{API}/store", view)
