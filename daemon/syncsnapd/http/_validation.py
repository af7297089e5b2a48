"""Request validation: from the head h11 parsed to a :class:`~syncsnapd.http._messages.Request`.

h11 parses the bytes (it is sans-I/O, like this module); this adds what h11 leaves to the server:

- :func:`parse_request` refuses what h11 lets through but a careful server should not (both
  ``Content-Length`` and ``Transfer-Encoding``, a head over the limit, a body over the limit, targets
  that are not clean paths) and decodes the path and the query.
- :func:`protocol_error_response` answers what h11 itself refused.
- :func:`query_int` reads a whole-number query parameter for a handler, with a 400 naming it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote_to_bytes

import h11

from ._messages import Headers, HTTPError, Peer, Request, Response, error_response

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEAD",
    "STATUS_CODES",
    "body_too_large",
    "parse_decimal",
    "parse_request",
    "protocol_error_response",
    "query_int",
]

# Limits. Our requests are tiny (a browser's head is 1-2 KiB; our only bodies are optional and ignored), so
# both limits sit far below general-purpose servers: nginx reads heads into 1 KiB buffers and allows up to
# 4 x 8 KiB (large_client_header_buffers), Apache allows 8 KiB per line and 100 lines, h11 buffers up to
# 16 KiB while a head is incomplete. 16 KiB for the whole head keeps h11's figure and turns it into a hard
# limit. Bodies: nginx's client_max_body_size default is 1 MiB; 64 KiB is plenty for JSON commands.
DEFAULT_MAX_HEAD = 16 * 1024
DEFAULT_MAX_BODY = 64 * 1024


# Error codes for statuses the protocol layer produces itself (docs/api.md, "Errors").
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


_PROTOCOL_ERROR_MESSAGES = {
    400: "Malformed HTTP request.",
    431: "The request head is too large.",
    501: "Unsupported transfer coding: only chunked is supported.",
}


def protocol_error_response(exc: h11.RemoteProtocolError) -> Response:
    """The response for input h11 refused: its ``error_status_hint`` (400, 431, 501).

    The message is generic: h11's own messages quote the offending bytes, which belong in a debug log,
    not in an answer.
    """
    status = exc.error_status_hint
    message = _PROTOCOL_ERROR_MESSAGES.get(status, "Malformed HTTP request.")
    return error_response(status, STATUS_CODES.get(status, "bad_request"), message)


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH = re.compile(r"%2[Ff]")
# Control characters (C0 and DEL) in a decoded path: they never name a project and only confuse logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ABSOLUTE = re.compile(r"(?i)http://([^/?#]+)(.*)\Z")


def _bad_request(message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message)


def body_too_large(max_body: int) -> HTTPError:
    """The 413 for a body over ``max_body`` bytes: by its ``Content-Length`` here, or as it arrives
    (chunked) in the connection."""
    return HTTPError(413, "payload_too_large", f"The request body exceeds {max_body} bytes.")


def _decode_path(raw: str) -> str:
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise _bad_request("Malformed percent-escape in the path.")
        # An encoded slash would let one path segment pose as two (or hide a '/' inside a project id);
        # Apache refuses it by default (AllowEncodedSlashes Off), and so do we.
        if _ENCODED_SLASH.search(raw):
            raise _bad_request("Encoded '/' (%2F) is not allowed in the path.")
        try:
            path = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_request("The path is not valid UTF-8 once percent-decoded.") from None
        if _CONTROL.search(path):
            raise _bad_request("Control characters are not allowed in the path.")
    else:
        path = raw
    # Dot segments mean nothing to an API and would make two spellings of one resource.
    if "/." in path:
        for segment in path.split("/"):
            if segment == "." or segment == "..":
                raise _bad_request("Dot segments ('.', '..') are not allowed in the path.")
    return path


# Query parameters that name a file in a snapshot: file names are bytes, so these values may hold bytes
# that are not UTF-8, decoded as os.fsdecode does (lone surrogates U+DC80..U+DCFF), the form the API
# writes such names in JSON. Every other value must be UTF-8.
PATH_QUERY_NAMES = frozenset({"path"})


def _parse_query(raw: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=100))
    except UnicodeDecodeError:
        pass
    except ValueError:
        raise _bad_request("Malformed query string.") from None
    pairs = parse_qsl(raw, keep_blank_values=True, errors="surrogateescape", max_num_fields=100)
    for name, value in pairs:
        if _has_surrogate(name) or (name not in PATH_QUERY_NAMES and _has_surrogate(value)):
            raise _bad_request("Malformed query string.")
    return dict(pairs)


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def parse_request(
    event: h11.Request,
    peer: Peer,
    *,
    max_head: int = DEFAULT_MAX_HEAD,
    max_body: int = DEFAULT_MAX_BODY,
) -> Request:
    """Validate a request head parsed by h11 and build a :class:`Request` with an empty body.

    h11 has already refused malformed request lines and header fields, a missing (HTTP/1.1) or repeated
    ``Host``, conflicting ``Content-Length`` values and transfer codings other than ``chunked``. This
    adds:

    - both ``Content-Length`` and ``Transfer-Encoding``: 400. RFC 9112 section 6.1 allows a server to
      accept it (Transfer-Encoding wins), but the pair is the classic request-smuggling vector; nginx and
      Node refuse it too.
    - a head (request line + fields) over ``max_head`` bytes: 431. h11 enforces its limit only while a
      head is incomplete; a 20 KiB head that arrives in one read would pass it.
    - ``Content-Length`` over ``max_body``: 413, before reading any of the body.
    - a target that is not origin-form (``/path?query``) or absolute-form (``http://host/path``, whose
      authority must then equal ``Host``), a malformed or encoded-slash percent-escape, a path that is not
      UTF-8, has control characters or dot segments, a malformed query (or one that is not UTF-8, but
      for the values of :data:`PATH_QUERY_NAMES`): 400. (h11 already refuses non-ASCII bytes and spaces
      in the target.)

    Raises:
        HTTPError: the request is refused; the server answers and closes the connection.
    """
    head_size = len(event.method) + len(event.target) + 12  # "M T HTTP/1.1\r\n"
    items: list[tuple[str, str]] = []
    content_length: bytes | None = None
    chunked = False
    for name, value in event.headers:
        head_size += len(name) + len(value) + 4  # ": " and "\r\n"
        if name == b"content-length":
            content_length = value
        elif name == b"transfer-encoding":
            chunked = True
        # h11 has validated names as tokens (ASCII) and values as visible bytes or obs-text.
        items.append((name.decode("ascii"), value.decode("latin-1")))
    if head_size > max_head:
        raise HTTPError(431, "headers_too_large", f"The request head exceeds {max_head} bytes.")
    if chunked and content_length is not None:
        raise _bad_request("Both Content-Length and Transfer-Encoding are present.")
    if content_length is not None and int(content_length) > max_body:
        raise body_too_large(max_body)

    headers = Headers.from_lowercase(items)
    target = event.target.decode("ascii")
    if target[0] != "/":
        match = _ABSOLUTE.match(target)
        if match is None:
            raise _bad_request("The request target must be a path ('/...') or an http:// URL.")
        authority, rest = match.groups()
        host = headers.get("host")
        if host is None or host.lower() != authority.lower():
            raise _bad_request("The authority of an absolute-form target must match the Host header.")
        rest = rest or "/"
        if rest[0] != "/":  # "http://host?x"
            rest = "/" + rest
    else:
        rest = target
    raw_path, _, raw_query = rest.partition("?")
    if "#" in rest:
        raise _bad_request("A request target cannot contain a fragment ('#').")
    path = _decode_path(raw_path)
    query = _parse_query(raw_query) if raw_query else {}
    return Request(event.method.decode("ascii"), target, path, query, headers, b"", peer)


# A whole number as our clients write it: ASCII digits only. Python's int() also takes other scripts'
# digits ("٣" is 3), signs, spaces and underscores ("1_0"), none of which any client of ours sends; 18 digits
# hold every count and id we have (event ids, limits) and keep int() away from huge conversions.
_DECIMAL = re.compile(r"[0-9]{1,18}")


def parse_decimal(text: str) -> int | None:
    """``text`` as a non-negative whole number of ASCII digits (at most 18), else ``None``."""
    return int(text) if _DECIMAL.fullmatch(text) else None


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter (ASCII digits) within ``lo``..``hi``; HTTPError 400 naming it
    otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = parse_decimal(raw)
    if value is None:
        raise _bad_request(f"{name} must be a whole number (ASCII digits {lo} to {hi}).")
    if not lo <= value <= hi:
        raise _bad_request(f"{name} must be from {lo} to {hi}.")
    return value
