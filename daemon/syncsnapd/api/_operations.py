"""Endpoints of the snapshot operations (docs/api.md, "Operations"): diff, restore, check, prune, and the
state and cancelling of operation runs. Request parsing only; the work is in ``syncsnapd.runs``, and
the HTTP status of each error code in ``_errors.py``."""

from __future__ import annotations

import json
from typing import Any

from ..core import Progress
from ..http import Request, Response, Router, json_response, query_int
from ..runs import Operations
from ._errors import api_error, as_http_errors

API = "/api/v1"
# The most list items a diff answers with (per list); the summary always counts everything.
MAX_DIFF_LIMIT = 1_000_000
DEFAULT_DIFF_LIMIT = 10_000


def _body(request: Request, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The request's JSON object (empty body: {}), with only ``allowed`` fields of the right types."""
    if not request.body.strip():
        return {}
    try:
        doc = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise api_error("bad_request", "The body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise api_error("bad_request", "The body must be a JSON object.")
    for key, value in doc.items():
        if key not in allowed:
            raise api_error("bad_request", f"Unknown field {key!r} (known: {', '.join(sorted(allowed))}).")
        want = allowed[key]
        if value is not None and (not isinstance(value, want) or (isinstance(value, bool) and want is not bool)):
            raise api_error("bad_request", f"Field {key!r} has the wrong type.")
    return doc


def _started(progress: Progress, stream: str) -> Response:
    return json_response(202, {"run": progress.run, "progress": progress.to_json(), "stream": stream})


def register_operations(router: Router, ops: Operations) -> None:
    """Add the operations' endpoints to ``router``."""

    async def diff(request: Request, params: dict[str, str]) -> Response:
        before = request.query.get("from")
        if not before:
            raise api_error("bad_request", "Query parameter 'from' (a snapshot id or 'latest') is required.")
        after = request.query.get("to") or "live"
        limit = query_int(request, "limit", DEFAULT_DIFF_LIMIT, 1, MAX_DIFF_LIMIT)
        with as_http_errors():
            return json_response(200, await ops.diff(params["id"], before, after, limit=limit))

    async def restore(request: Request, params: dict[str, str]) -> Response:
        doc = _body(request, {"snapshot": str, "target": str, "paths": list, "overwrite": bool})
        if not doc.get("snapshot") or not doc.get("target"):
            raise api_error("bad_request", "Fields 'snapshot' and 'target' are required.")
        paths = doc.get("paths") or []
        if not all(isinstance(p, str) for p in paths):
            raise api_error("bad_request", "Field 'paths' must be a list of strings.")
        with as_http_errors():
            first = await ops.start_restore(params["id"], doc["snapshot"], doc["target"], paths=paths,
                                            overwrite=bool(doc.get("overwrite")))
        return _started(first, f"{API}/projects/{params['id']}/progress/stream")

    async def check(request: Request, params: dict[str, str]) -> Response:
        doc = _body(request, {"read_data": bool})
        with as_http_errors():
            first = ops.start_check(read_data=bool(doc.get("read_data")))
        return _started(first, f"{API}/events")

    async def prune(request: Request, params: dict[str, str]) -> Response:
        doc = _body(request, {"dry_run": bool})
        with as_http_errors():
            first = ops.start_prune(dry_run=bool(doc.get("dry_run")))
        return _started(first, f"{API}/events")

    async def operations(request: Request, params: dict[str, str]) -> Response:
        return json_response(200, {"operations": [p.to_json() for p in ops.operations()]})

    async def operation(request: Request, params: dict[str, str]) -> Response:
        progress = ops.get(params["run"])
        if progress is None:
            raise api_error("not_found", f"No recent operation run {params['run']!r} (older runs: "
                                              f"{API}/runs/{params['run']}).")
        return json_response(200, progress.to_json())

    async def cancel(request: Request, params: dict[str, str]) -> Response:
        if not ops.cancel(params["run"]):
            if ops.get(params["run"]) is not None:
                raise api_error("finished", f"Run {params['run']!r} has already finished.")
            raise api_error("not_found", f"No operation run {params['run']!r} in progress.")
        return json_response(202, {"run": params["run"], "state": "cancelling"})

    router.add("GET", f"{API}/projects/{{id}}/diff", diff)
    router.add("POST", f"{API}/projects/{{id}}/restore", restore)
    router.add("POST", f"{API}/check", check)
    router.add("POST", f"{API}/prune", prune)
    router.add("GET", f"{API}/operations", operations)
    router.add("GET", f"{API}/operations/{{run}}", operation)
    router.add("DELETE", f"{API}/operations/{{run}}", cancel)
