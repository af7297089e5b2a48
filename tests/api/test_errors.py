"""The one table from error codes to HTTP statuses: the layers below the API raise codes only, and every
endpoint answers them with the same status and the same JSON body."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from syncsnapd.api import STATUS_BY_CODE, http_status
from syncsnapd.api._errors import api_error, as_http_errors
from syncsnapd.core import ProjectConfig, SyncsnapdError
from syncsnapd.engine import DiffError, RestoreError, SnapshotError
from syncsnapd.http import HTTPError
from syncsnapd.runs import OperationError, RunFailed, Scheduler, Tracker, UnknownProject


def test_the_codes_of_the_operations_answer_with_their_statuses() -> None:
    assert {code: http_status(code) for code in (
        "bad_request", "target_invalid", "target_forbidden", "path_invalid", "not_found", "snapshot_unknown",
        "no_run", "busy", "finished", "target_not_empty", "folder_missing", "upgrade_required", "store_error",
        "unavailable")} == {
        "bad_request": 400, "target_invalid": 400, "target_forbidden": 400, "path_invalid": 400,
        "not_found": 404, "snapshot_unknown": 404, "no_run": 404, "busy": 409, "finished": 409,
        "target_not_empty": 409, "folder_missing": 409, "upgrade_required": 426, "store_error": 500,
        "unavailable": 503}
    assert all(isinstance(status, int) and 400 <= status < 600 for status in STATUS_BY_CODE.values())


def test_an_unknown_code_answers_500_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="syncsnapd.api"):
        assert http_status("brand_new_code") == 500
    assert "'brand_new_code' has no HTTP status" in caplog.text


def _answer(exc: BaseException) -> tuple[int, dict[str, object]]:
    with pytest.raises(HTTPError) as raised, as_http_errors():
        raise exc
    response = raised.value.to_response()
    return response.status, json.loads(response.body)


def test_errors_of_the_layers_below_become_answers_with_the_same_body(tmp_path: Path) -> None:
    scheduler = Scheduler(None, Tracker(), [ProjectConfig("p", tmp_path)])  # type: ignore[arg-type]
    with pytest.raises(UnknownProject) as unknown:
        scheduler.project("nope")
    assert _answer(unknown.value) == (404, {"error": {"code": "not_found", "message": "No project named 'nope'."}})
    assert _answer(OperationError("busy", "A check run is in progress.")) == (
        409, {"error": {"code": "busy", "message": "A check run is in progress."}})
    assert _answer(RestoreError("the target /x is not empty", "target_not_empty")) == (
        409, {"error": {"code": "target_not_empty", "message": "the target /x is not empty"}})
    assert _answer(DiffError("folder_missing", "The folder /x does not exist.")) == (
        409, {"error": {"code": "folder_missing", "message": "The folder /x does not exist."}})
    assert api_error("no_run", "Nothing runs.").status == 404
    with pytest.raises(ValueError), as_http_errors():  # not an error with a code: not translated here
        raise ValueError("a bug")


def test_the_daemons_errors_share_one_base_with_code_and_message() -> None:
    errors: list[SyncsnapdError] = [
        SnapshotError("folder_missing", "gone"), DiffError("folder_missing", "gone"), RestoreError("gone"),
        OperationError("busy", "gone"), RunFailed("problems_found", "gone"), UnknownProject("gone")]
    assert [(type(e).__name__, e.code) for e in errors] == [
        ("SnapshotError", "folder_missing"), ("DiffError", "folder_missing"), ("RestoreError", "io_error"),
        ("OperationError", "busy"), ("RunFailed", "problems_found"), ("UnknownProject", "not_found")]
    assert [str(e) for e in errors[:5]] == ["gone"] * 5 and str(errors[5]) == "No project named 'gone'."
    assert isinstance(errors[5], KeyError)  # as before: a project is looked up by key
