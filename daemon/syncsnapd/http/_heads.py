"""Response heads, formatted by hand: the status line and header fields of a complete response.

A complete response (``Content-Length``) is a few lines of formatting here rather than an ``h11.Response``
event: measured with ``wrk -c32`` on a health endpoint, building and validating h11's event and stepping
its state machine for every response cost more than the rest of the server's work. The checks h11 would
make on what we send are made here instead (:func:`format_head` raises ``ValueError``). No I/O.
"""

from __future__ import annotations

import re
import time
from http import HTTPStatus
from wsgiref.handlers import format_date_time

from ._messages import Response

__all__ = ["REASONS", "SERVER", "DateCache", "format_head"]

# The Server header field's value.
SERVER = b"syncsnapd"
# Reason phrases by status code.
REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}

# Header fields: a name is a token, a value has no control characters but HTAB (RFC 9110 section 5.5);
# h11 applies the same rules to what it sends.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*\Z")
# Framing and connection management belong to the server.
_RESERVED_FIELDS = frozenset({"content-length", "transfer-encoding", "connection", "date", "server"})
_content_type_fields: dict[str, bytes] = {}


def _header_field(name: str, value: str) -> bytes:
    if not _TOKEN.match(name) or not _FIELD_VALUE.match(value) or name.lower() in _RESERVED_FIELDS:
        raise ValueError(f"invalid response header field {name!r}: {value!r}")
    return f"{name}: {value}\r\n".encode("latin-1")  # UnicodeEncodeError is a ValueError


def _content_type_field(content_type: str) -> bytes:
    field = _content_type_fields.get(content_type)
    if field is None:
        if not _FIELD_VALUE.match(content_type):
            raise ValueError(f"invalid content type {content_type!r}")
        field = f"Content-Type: {content_type}\r\n".encode("latin-1")
        if len(_content_type_fields) < 64:
            _content_type_fields[content_type] = field
    return field


class DateCache:
    """The ``Date`` header's value, formatted at most once a second.

    It changes once a second, and formatting it costs more than the rest of a small response head.
    """

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        """The current date in HTTP's format (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
        now = int(time.time())
        if now != self._second:
            self._value = format_date_time(now).encode("ascii")
            self._second = now
        return self._value


def format_head(response: Response, date: bytes) -> bytes:
    """The status line and header fields of ``response``, whose body has a known length, without the
    final CRLF (the caller adds ``Connection: close`` if it closes).

    Raises:
        ValueError: the status cannot be a final response, a 204 or 304 has a body, or a header field
            (or the content type) is not valid HTTP or is one the server sets itself.
    """
    status = response.status
    if not 200 <= status <= 599:
        raise ValueError(f"status {status} cannot be a final response")
    head = b"HTTP/1.1 %d %s\r\nDate: %s\r\nServer: syncsnapd\r\n" % (status, REASONS.get(status, b""), date)
    if status != 204 and status != 304:
        content_type = response.content_type
        if content_type is not None:
            head += _content_type_field(content_type)
        head += b"Content-Length: %d\r\n" % len(response.body)
    elif response.body:
        raise ValueError(f"a {status} response cannot have a body")
    for name, value in response.headers:
        head += _header_field(name, value)
    return head
