"""The client's pure parts: finding the daemon, parsing its JSON, parsing SSE. No daemon, no loop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import syncsnap
from helpers.client import progress_json  # noqa: E402
from syncsnap.protocol import SseComment, SseEvent, SseParser


def test_endpoint_lookup_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "syncsnap").mkdir(parents=True, mode=0o700)  # the daemon makes it so; the client checks
    env = {"XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path)}

    ep = syncsnap.find_endpoint(env)
    assert (ep.transport, ep.path, ep.source) == ("unix", f"{run}/syncsnap/syncsnapd.sock", "the default location")
    assert syncsnap.find_endpoint({"HOME": str(tmp_path)}).path == f"/tmp/syncsnap-{os.getuid()}/syncsnapd.sock"

    token = tmp_path / "tok"
    token.write_text("s3cret\n")
    (run / "syncsnap" / "syncsnapd.json").write_text(json.dumps(
        {"pid": 1, "version": "0.1.0", "socket": "/d/sock", "tcp": "127.0.0.1:9", "token_file": str(token)}))
    ep = syncsnap.find_endpoint(env)
    assert (ep.path, ep.source) == ("/d/sock", f"the discovery file {run}/syncsnap/syncsnapd.json")

    ep = syncsnap.find_endpoint({**env, "SYNCSNAP_URL": "http://127.0.0.1:8473"})
    assert (ep.transport, ep.host, ep.port, ep.token) == ("tcp", "127.0.0.1", 8473, "s3cret")
    assert ep.host_header == "127.0.0.1:8473" and ep.describe() == "http://127.0.0.1:8473"
    assert "from the discovery file" in ep.token_source

    other = tmp_path / "other"
    other.write_text("x")
    ep = syncsnap.find_endpoint({**env, "SYNCSNAP_URL": "http://[::1]:1", "SYNCSNAP_TOKEN_FILE": str(other)})
    assert (ep.token, ep.host_header) == ("x", "[::1]:1")
    ep = syncsnap.find_endpoint({**env, "SYNCSNAP_SOCKET": "/s", "SYNCSNAP_URL": "http://127.0.0.1:1"})
    assert (ep.transport, ep.path, ep.source) == ("unix", "/s", "SYNCSNAP_SOCKET")
    assert syncsnap.find_endpoint({**env, "SYNCSNAP_SOCKET": "/s"}, url="http://localhost:2").port == 2
    assert syncsnap.find_endpoint({**env, "SYNCSNAP_SOCKET": "/s"}, socket="/arg").path == "/arg"

    (run / "syncsnap" / "syncsnapd.json").unlink()
    ep = syncsnap.find_endpoint({**env, "SYNCSNAP_URL": "http://127.0.0.1:1"})
    assert ep.token is None and ep.token_source == f"{tmp_path}/cfg/syncsnap/token (the default token file)"
    with pytest.raises(syncsnap.SyncsnapError, match="SYNCSNAP_URL must look like http://127.0.0.1:8473"):
        syncsnap.find_endpoint({"SYNCSNAP_URL": "https://127.0.0.1:1"})


def test_progress_keeps_unknown_fields_and_refuses_wrong_types() -> None:
    obj = {**progress_json(event_id=5, step=4, percent=37.5), "kind": "snapshot", "trigger": "api", "attempt": 1}
    p = syncsnap.Progress.from_json(obj)
    assert (p.event_id, p.state, p.step_name, p.kind, p.terminal) == (5, "compressing", "Compressing", "snapshot", False)
    assert p.to_json() == obj  # what scripts get as NDJSON: the daemon's object, untouched
    assert syncsnap.Progress.from_json({**obj, "kind": "check", "steps": 4}).step_name == "Compressing"  # by state
    with pytest.raises(syncsnap.ProtocolError, match="without 'event_id'; is syncsnapd the same version"):
        syncsnap.Progress.from_json({k: v for k, v in obj.items() if k != "event_id"})
    with pytest.raises(syncsnap.ProtocolError, match="a bool for 'step'"):
        syncsnap.Progress.from_json({**obj, "step": True})
    with pytest.raises(syncsnap.ProtocolError, match="not a JSON object"):
        syncsnap.Progress.from_json([1])


def test_sse_parser_handles_any_split_and_line_ending() -> None:
    stream = (b"\xef\xbb\xbfretry: 2000\r\n\r\n: keep-alive\n\nid: 7\revent: progress\rdata: {\"a\":\rdata: 1}\r\r"
              b"event: gap\ndata: {\"last_event_id\": 3}\n\ndata: no type\n\nid: 8\n\n")
    expected = [SseComment("keep-alive"), SseEvent("progress", '{"a":\n1}', "7"),
                SseEvent("gap", '{"last_event_id": 3}', "7"), SseEvent("message", "no type", "7")]
    for size in (1, 2, 3, 7, len(stream)):
        parser = SseParser()
        got = []
        for i in range(0, len(stream), size):
            got += parser.feed(stream[i:i + size])
        assert got == expected, size
        assert parser.retry == 2000


def test_sse_parser_refuses_an_endless_line() -> None:
    with pytest.raises(syncsnap.ProtocolError, match="over 1 MiB"):
        SseParser().feed(b"data: " + b"x" * (1024 * 1024 + 1))


def test_store_wide_runs_have_no_project_and_each_operation_run_its_own_lane() -> None:
    check = {**progress_json(None, "r-19000000002-0003-c0de", step=2, state="checking", event_id=9),
             "kind": "check", "steps": 3}
    p = syncsnap.Progress.from_json(check)
    assert (p.project, p.label, p.kind, p.terminal) == (None, "store", "check", False)
    assert p.to_json() == check
    snap = syncsnap.Progress.from_json(progress_json("docs", "r-19000000000-0001-abcd", step=4))
    restore = syncsnap.Progress.from_json({**progress_json("docs", "r-19000000001-0002-beef"), "kind": "restore"})
    # A project's snapshots replace one another; a restore of the same project does not replace them.
    assert len({p.lane, snap.lane, restore.lane}) == 3
    assert snap.lane == syncsnap.Progress.from_json(progress_json("docs", "r-2", step=1)).lane


def test_run_records_parse_with_step_timings_by_number() -> None:
    obj = {"run": "r-1", "project": "docs", "kind": "snapshot", "trigger": "watch", "attempt": 2, "retry_of": "r-0",
           "state": "failed", "started_at": "2026-11-28T17:57:15.985Z", "ended_at": "2026-11-28T17:57:16.000Z",
           "duration_seconds": 0.015, "step_seconds": {"10": 0.5, "2": 0.001, "1": 0.003},
           "error": {"code": "folder_missing", "message": "gone"}, "snapshot": None, "future": 1}
    r = syncsnap.RunInfo.from_json(obj)
    assert (r.trigger, r.attempt, r.retry_of, r.terminal) == ("watch", 2, "r-0", True)
    assert list(r.step_seconds.items()) == [(1, 0.003), (2, 0.001), (10, 0.5)]
    assert r.error == syncsnap.ErrorInfo("folder_missing", "gone") and r.to_json() == obj
    with pytest.raises(syncsnap.ProtocolError, match="step_seconds"):
        syncsnap.RunInfo.from_json({**obj, "step_seconds": {"one": 1}})
    page = syncsnap.RunList.from_json({"runs": [obj], "next": "r-1"})
    assert page.next == "r-1" and page.runs == [r]
