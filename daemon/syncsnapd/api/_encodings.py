"""A progress event's wire encodings, computed on first use and cached on the event (:attr:`Event.cache`).

This is where the tracker's events meet the HTTP layer's framings: a fan-out to a thousand subscribers
encodes each event once, and the hot path of a poller is a dictionary lookup.
"""

from __future__ import annotations

from ..http import json_body, sse_progress, ws_progress
from ..runs import Event


def event_sse(event: Event) -> bytes:
    """The event on an SSE stream."""
    cached: bytes | None = event.cache.get("sse")
    if cached is None:
        # Id 0 is a never-run project's idle state, no published event: it goes out without an `id:`
        # line, so ids on the stream never repeat and a browser's Last-Event-ID stays the last real one.
        cached = event.cache["sse"] = sse_progress(event.id or None, event.json_text)
    return cached


def event_json_body(event: Event) -> bytes:
    """The event's progress object as an HTTP response body."""
    cached: bytes | None = event.cache.get("json_body")
    if cached is None:
        cached = event.cache["json_body"] = json_body(event.json_text)
    return cached


def event_ws(event: Event) -> str:
    """The event as a WebSocket progress message."""
    cached: str | None = event.cache.get("ws")
    if cached is None:
        cached = event.cache["ws"] = ws_progress(event.json_text)
    return cached
