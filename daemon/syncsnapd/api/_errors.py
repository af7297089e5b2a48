"""What an error code means in HTTP: the one table from the codes of docs/api.md to response statuses.

The layers below the API raise :class:`SyncsnapdError` with a ``code`` and never think about HTTP; the
endpoints answer every error through :func:`api_error` (or :func:`as_http_errors` around calls into those
layers), so a code has the same status wherever it comes from, and the JSON body stays
``{"error": {"code": ..., "message": ...}}``. A code missing from the table answers 500 and is logged:
add it here when a layer starts raising it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from ..core import SyncsnapdError
from ..http import HTTPError

__all__ = ["STATUS_BY_CODE", "api_error", "as_http_errors", "http_status"]

log = logging.getLogger("syncsnapd.api")

# The status of an unknown code: the server's fault until the table says otherwise.
DEFAULT_STATUS = 500

# The codes the endpoints and the layers below answer with (docs/api.md, "Errors" and "Operations"); the
# HTTP layer's own codes (unauthorized, method_not_allowed, ...) come with their status from syncsnapd.http.
STATUS_BY_CODE: Mapping[str, int] = MappingProxyType({
    # The request itself is wrong.
    "bad_request": 400,
    "path_invalid": 400,
    "target_invalid": 400,
    "target_forbidden": 400,
    "version_invalid": 400,
    "version_ambiguous": 400,
    # Not for this client (the dashboard: docs/api.md, "Dashboard and login").
    "forbidden": 403,
    "forbidden_origin": 403,
    # Something it names does not exist.
    "not_found": 404,
    "no_run": 404,
    "snapshot_unknown": 404,
    "path_unknown": 404,
    "version_unknown": 404,
    # It conflicts with the current state.
    "busy": 409,
    "finished": 409,
    "folder_missing": 409,
    "project_paused": 409,
    "target_not_empty": 409,
    "not_a_file": 409,
    "target_exists": 409,
    "tcp_disabled": 409,
    "range_unsatisfiable": 416,
    "upgrade_required": 426,
    # The daemon's side.
    "internal_error": 500,
    "store_error": 500,
    "snapshot_damaged": 500,
    "data_damaged": 500,
    "io_error": 500,
    "unavailable": 503,
})


def http_status(code: str) -> int:
    """The HTTP status of error ``code``; :data:`DEFAULT_STATUS` (logged) for a code not in the table."""
    status = STATUS_BY_CODE.get(code)
    if status is None:
        log.warning("error code %r has no HTTP status in syncsnapd.api's table; answering %d",
                    code, DEFAULT_STATUS)
        return DEFAULT_STATUS
    return status


def api_error(code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HTTPError:
    """The HTTP error answer for ``code`` (its status from the table), to raise from a handler."""
    return HTTPError(http_status(code), code, message, headers)


@contextmanager
def as_http_errors() -> Iterator[None]:
    """Translate the errors of the layers below (runs, engine, ...) into HTTP answers at this boundary."""
    try:
        yield
    except SyncsnapdError as exc:
        raise api_error(exc.code, exc.message) from None
