"""Server-Sent Events, sans-I/O: bytes in (:meth:`SseParser.feed`), events and comments out."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._errors import ProtocolError

# One SSE line; a progress event is well under 2 KiB, so anything near this is not our daemon.
MAX_SSE_LINE = 1024 * 1024


@dataclass(frozen=True)
class SseEvent:
    """A dispatched Server-Sent Event: its type (``message`` when none was given), data and id."""

    event: str
    data: str
    id: str | None


@dataclass(frozen=True)
class SseComment:
    """A comment line (``: keep-alive``); text without the colon and one leading space."""

    text: str


_LINE_END = re.compile(rb"\r\n|\n|\r")


class SseParser:
    """The WHATWG event-stream parser, fed bytes, returning events and comments.

    ``retry`` holds the last ``retry:`` value (milliseconds) seen. Lines may end with CRLF, LF or CR, and
    may be split anywhere across chunks.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._started = False
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent | SseComment]:
        self._buf += chunk
        out: list[SseEvent | SseComment] = []
        pos = 0
        while True:
            m = _LINE_END.search(self._buf, pos)
            # A CR at the very end may be the first half of a CRLF: wait for the next byte.
            if m is None or (m.group() == b"\r" and m.end() == len(self._buf)):
                break
            line = self._buf[pos:m.start()]
            pos = m.end()
            item = self._line(line)
            if item is not None:
                out.append(item)
        self._buf = self._buf[pos:]
        if len(self._buf) > MAX_SSE_LINE:
            raise ProtocolError("The daemon sent an event-stream line over 1 MiB; is this syncsnapd?")
        return out

    def _line(self, raw: bytes) -> SseEvent | SseComment | None:
        if not self._started:
            self._started = True
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        line = raw.decode("utf-8", errors="replace")
        if line == "":
            if not self._data:
                self._event = ""
                return None
            ev = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._data, self._event = [], ""
            return ev
        if line.startswith(":"):
            return SseComment(line[1:].removeprefix(" "))
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None
