"""``POST /api/v1/projects/{id}/restore`` with ``path`` and ``version`` (docs/api.md, "Restore one
version"): request checks only; the work is ``Operations.restore_version`` (``syncsnapd.runs``). Answers 200
with ``restored_to`` once the copy has its name (no run: one file)."""

from __future__ import annotations

from typing import Any

from ..http import Response, json_response
from ..runs import Operations
from ._browse import snapshot_path
from ._errors import api_error, as_http_errors
from ._operations import MAX_SNAPSHOT_ID, _local_path

__all__ = ["restore_version"]


async def restore_version(ops: Operations, project: str, doc: dict[str, Any]) -> Response:
    """The answer to a restore request ``doc`` (a JSON object of the right field types) naming a version."""
    mixed = sorted({"snapshot", "target", "paths"} & doc.keys())
    if mixed:
        raise api_error("bad_request", f"Fields 'path' and 'version' (one version of one file) do not go with "
                                       f"{', '.join(repr(k) for k in mixed)} (a snapshot into a directory).")
    path, version = doc.get("path"), doc.get("version")
    if not path or not version:
        raise api_error("bad_request", "Fields 'path' and 'version' are both required to restore one version.")
    path = snapshot_path(path)
    if path == "":
        raise api_error("path_invalid", "Field 'path' must name a file, not the snapshot's root.")
    if len(version) > MAX_SNAPSHOT_ID or not version.isascii() or not version.isprintable():
        raise api_error("version_invalid", "Field 'version' must be a content id (at least 8 hex digits), "
                                           "a snapshot id or 'latest'.")
    to = doc.get("to")
    if to is not None:
        _local_path(to, "to", "target_invalid")
    with as_http_errors():
        result = await ops.restore_version(project, path, version, to=to, overwrite=bool(doc.get("overwrite")))
    return json_response(200, result)
