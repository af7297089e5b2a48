"""Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html).

:func:`sse_event`, :func:`sse_comment` and :func:`sse_retry` turn text into the bytes of one SSE field
group, each ending with the blank line that dispatches it, so each call's bytes can be written alone.
"""

from __future__ import annotations

import re

__all__ = ["sse_comment", "sse_event", "sse_retry"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[str]:
    # The SSE parser ends a line at CR, LF or CRLF, and nothing else (unlike str.splitlines, which also
    # splits on \x0b, \x1c, \u2028, ... and would corrupt such data).
    if "\n" in text or "\r" in text:
        return _LINE_BREAK.split(text)
    return [text]


def sse_event(data: str, *, id: int | None = None, event: str | None = None) -> bytes:
    """One SSE event: optional ``id:`` and ``event:`` fields, one ``data:`` line per line of ``data``.

    Ends with the blank line that dispatches the event, so each call's bytes can be written alone.

    Raises:
        ValueError: ``event`` contains a line break (it would inject fields).
    """
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {int(id)}\n")
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot contain a line break")
        parts.append(f"event: {event}\n")
    for line in _lines(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def sse_comment(text: str) -> bytes:
    """An SSE comment (``: text``), e.g. a keep-alive; clients ignore it. Multi-line text is allowed."""
    return ("".join(f": {line}\n" for line in _lines(text)) + "\n").encode("utf-8")


def sse_retry(ms: int) -> bytes:
    """The ``retry:`` field: how many milliseconds a client waits before reconnecting."""
    if ms < 0:
        raise ValueError("retry must be >= 0 ms")
    return f"retry: {int(ms)}\n\n".encode("ascii")
