"""The wire encodings of a progress event, for each transport: an SSE event, a JSON response body, a
WebSocket message. Plain functions of an event id and the progress object's JSON text (no I/O, nothing
about the tracker): the API layer calls them once per event and shares the bytes with every subscriber.
"""

from __future__ import annotations

from ._sse import sse_event

# The SSE event name of progress events (docs/api.md, "Streams").
PROGRESS_EVENT = "progress"


def sse_progress(event_id: int | None, json_text: str) -> bytes:
    """One progress event on an SSE stream: ``id:``, ``event: progress`` and the JSON as ``data:``.

    ``event_id`` None sends no ``id:`` line (a never-run project's idle state, which is no event): the
    reader's last event id stays what it was (docs/api.md, "Streams").
    """
    return sse_event(json_text, id=event_id, event=PROGRESS_EVENT)


def json_body(json_text: str) -> bytes:
    """A JSON text as an HTTP response body: with the final newline of every JSON body (nice for curl).

    ``json_text`` is ASCII (``json.dumps`` escapes the rest), so this is one copy, not a UTF-8 encode.
    """
    return f"{json_text}\n".encode()


def ws_progress(json_text: str) -> str:
    """The WebSocket text message that pushes one progress object (``{"type": "progress", ...}``)."""
    return f'{{"type":"progress","progress":{json_text}}}'
