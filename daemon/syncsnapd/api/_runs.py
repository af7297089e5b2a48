"""Endpoints over the run history, and cancelling the current run (docs/api.md, "Runs")."""

from __future__ import annotations

import json

import trio

from ..http import Request, Response, Router, json_response, query_int
from ..runs import History, Scheduler
from ._endpoints import known_project
from ._errors import api_error

API = "/api/v1"
# Page size bounds for GET .../runs.
DEFAULT_PAGE = 20
MAX_PAGE = 500


def register_runs(router: Router, history: History, scheduler: Scheduler) -> None:
    """Add the run-history and cancel endpoints to ``router``."""

    def known(pid: str) -> str:
        return known_project(scheduler, pid)

    async def runs(request: Request, params: dict[str, str]) -> Response:
        pid = known(params["id"])
        limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        before = request.query.get("before") or None
        if before is not None:
            rec = await trio.to_thread.run_sync(history.run, before)
            if rec is None or rec.project != pid:
                # Not an empty page: a page after a run this project does not have is a wrong `before`.
                raise api_error("not_found", f"No run {before!r} in the history of project {pid!r}; `before` "
                                "takes the `next` of the previous page.")
        rows = await trio.to_thread.run_sync(lambda: history.runs(pid, limit=limit + 1, before=before))
        page = rows[:limit]
        return json_response(200, {"runs": [r.to_json() for r in page],
                                   "next": page[-1].run if len(rows) > limit else None})

    async def run(request: Request, params: dict[str, str]) -> Response:
        rec = await trio.to_thread.run_sync(history.run, params["run"])
        if rec is None:
            raise api_error("not_found", f"No run {params['run']!r}.")
        return json_response(200, rec.to_json())

    async def run_events(request: Request, params: dict[str, str]) -> Response:
        rec = await trio.to_thread.run_sync(history.run, params["run"])
        if rec is None:
            raise api_error("not_found", f"No run {params['run']!r}.")
        lines = await trio.to_thread.run_sync(history.run_events, params["run"])
        if "application/x-ndjson" in (request.headers.get("accept") or ""):
            body = "".join(f"{line}\n" for line in lines).encode()
            return Response(200, body, "application/x-ndjson")
        return Response(200, (f'{{"run":{json.dumps(rec.run)},"events":[{",".join(lines)}]}}\n').encode())

    async def stats(request: Request, params: dict[str, str]) -> Response:
        pid = known(params["id"])
        st = history.stats(pid)  # running totals: no database read
        return json_response(200, {"project": pid, **st.__dict__})

    async def cancel(request: Request, params: dict[str, str]) -> Response:
        pid = known(params["id"])
        run_id = scheduler.cancel_run(pid, "cancelled", "The snapshot was cancelled on request.")
        if run_id is None:
            raise api_error("no_run", f"Project {pid!r} has no run in progress.")
        return json_response(202, {"run": run_id, "state": "cancelling"})

    router.add("GET", f"{API}/projects/{{id}}/runs", runs)
    router.add("GET", f"{API}/projects/{{id}}/stats", stats)
    router.add("DELETE", f"{API}/projects/{{id}}/runs/current", cancel)
    router.add("GET", f"{API}/runs/{{run}}", run)
    router.add("GET", f"{API}/runs/{{run}}/events", run_events)
