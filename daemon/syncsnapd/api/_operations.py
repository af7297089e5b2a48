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
# Linux's PATH_MAX (4,096 bytes with the final NUL) and NAME_MAX: a longer path or name cannot be passed to
# a system call at all, so a restore target or path beyond them is refused up front (400) rather than
# failing deep inside the run.
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
# Snapshot ids are 27 characters ("20261128T170102.123Z-a1b2c3") or "latest"; anything much longer is not
# one, and would only be echoed back in the error message.
MAX_SNAPSHOT_ID = 64


def _body(request: Request, allowed: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The request's JSON object (empty body: {}), with only ``allowed`` fields of the right types."""
    if not request.body.strip():
        return {}
    try:
        doc = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise api_error("bad_request", "The body is not valid JSON.") from None
    except RecursionError:  # the decoder recurses per level: "[[[[..." of 64 KiB goes past the limit
        raise api_error("bad_request", "The body's JSON is nested too deeply.") from None
    if not isinstance(doc, dict):
        raise api_error("bad_request", "The body must be a JSON object.")
    for key, value in doc.items():
        if key not in allowed:
            raise api_error("bad_request", f"Unknown field {key!r} (known: {', '.join(sorted(allowed))}).")
        want = allowed[key]
        if value is not None and (not isinstance(value, want) or (isinstance(value, bool) and want is not bool)):
            raise api_error("bad_request", f"Field {key!r} has the wrong type.")
    return doc


def _local_path(value: str, field: str, code: str) -> str:
    """``value`` if it can name a local path: bytes as ``os.fsencode`` makes them (UTF-8, and lone
    surrogates U+DC80..U+DCFF for undecodable bytes, as the daemon reports such names), no NUL, within
    PATH_MAX and NAME_MAX; else the 400 answer with ``code``."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise api_error(code, f"Field {field!r} holds a lone surrogate that names no byte of a file "
                              "name (only U+DC80..U+DCFF stand for undecodable bytes).") from None
    if b"\0" in raw:
        raise api_error(code, f"Field {field!r} must not contain NUL.")
    if len(raw) > MAX_PATH_BYTES:
        raise api_error(code, f"Field {field!r} is {len(raw)} bytes long; a path has at most "
                              f"{MAX_PATH_BYTES}.")
    if any(len(name) > MAX_NAME_BYTES for name in raw.split(b"/")):
        raise api_error(code, f"Field {field!r} has a name longer than {MAX_NAME_BYTES} bytes.")
    return value


def _snapshot_id(value: str) -> str:
    if len(value) > MAX_SNAPSHOT_ID or not value.isprintable() or not value.isascii():
        raise api_error("bad_request", "Field 'snapshot' must be a snapshot id or 'latest'.")
    return value


async def _started(ops: Operations, progress: Progress, stream: str) -> Response:
    # The run is in the history before its id is handed out: a daemon killed a moment later still has it.
    assert progress.run is not None
    await ops.wait_recorded(progress.run)
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
        doc = _body(request, {"snapshot": str, "target": str, "paths": list, "overwrite": bool,
                              "path": str, "version": str, "to": str})
        if {"path", "version", "to"} & doc.keys():
            from ._restore_version import restore_version  # imports this module's checks

            return await restore_version(ops, params["id"], doc)
        if not doc.get("snapshot") or not doc.get("target"):
            raise api_error("bad_request", "Fields 'snapshot' and 'target' are required.")
        paths = doc.get("paths") or []
        if not all(isinstance(p, str) for p in paths):
            raise api_error("bad_request", "Field 'paths' must be a list of strings.")
        _snapshot_id(doc["snapshot"])
        _local_path(doc["target"], "target", "target_invalid")
        for path in paths:
            _local_path(path, "paths", "path_invalid")
        with as_http_errors():
            first = await ops.start_restore(params["id"], doc["snapshot"], doc["target"], paths=paths,
                                            overwrite=bool(doc.get("overwrite")))
        return await _started(ops, first, f"{API}/projects/{params['id']}/progress/stream")

    async def check(request: Request, params: dict[str, str]) -> Response:
        doc = _body(request, {"read_data": bool})
        with as_http_errors():
            first = ops.start_check(read_data=bool(doc.get("read_data")))
        return await _started(ops, first, f"{API}/events")

    async def prune(request: Request, params: dict[str, str]) -> Response:
        doc = _body(request, {"dry_run": bool})
        with as_http_errors():
            first = ops.start_prune(dry_run=bool(doc.get("dry_run")))
        return await _started(ops, first, f"{API}/events")

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
