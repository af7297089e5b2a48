"""The wire encodings of a progress event: plain functions, no event loop."""

from __future__ import annotations

import json

from syncsnapd.core import Progress
from syncsnapd.http import json_body, sse_progress, ws_progress
from syncsnapd.runs import Tracker


def test_encodings_of_one_event() -> None:
    t = Tracker()
    t.add_project("docs")
    ev = t.publish(Progress(project="docs", run="r1", state="compressing", step=4, percent=12.5,
                            message="odd name \u00fc \u2028 done"))
    text = ev.json_text
    assert "\n" not in text and text.isascii()  # one data: line, whatever the message holds
    assert sse_progress(ev.id, text) == f"id: {ev.id}\nevent: progress\ndata: {text}\n\n".encode()
    assert json_body(text) == text.encode() + b"\n"
    assert json.loads(json_body(text))["message"] == "odd name \u00fc \u2028 done"
    message = json.loads(ws_progress(text))
    assert message == {"type": "progress", "progress": json.loads(text)}
