"""``GET /api/v1/store`` (docs/api.md, "Store"): what the stores hold and how the last check went, for the
dashboard's store health view. Read-only: counts from each store's snapshot list and pack files (an S3
store's from its cached indexes, no request to the bucket), summed over every store the daemon uses and
listed per store (``stores``: where, which projects write there), the last check from the run history."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import trio

from ..http import Request, Response, Router, json_response
from ..runs import History, Operations, location_of
from ._metrics import store_footprint

__all__ = ["register_store_view"]

log = logging.getLogger("syncsnapd.api")

API = "/api/v1"


def register_store_view(router: Router, history: History, ops: Operations) -> None:
    """Add ``GET /api/v1/store`` to ``router``: the stores of ``ops.stores``."""

    def gather(projects: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        stores = []
        for store in ops.stores.all():
            packs, nbytes = store_footprint(store.root)
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
                                   "last_check": last, "check_running": running, "stores": stores})

    router.add("GET", f"{API}/store", view)
