"""Authorization: whether a peer may talk to us at all (Unix peer uid; TCP ``Host`` and bearer token).

Decided per request, before any body is read, by :func:`authorize`; no I/O.
"""

from __future__ import annotations

import hmac
import os
import re

from ._messages import Request, Response, error_response

__all__ = ["authorize"]

# Host names a browser uses for a loopback address. Checking Host defeats DNS rebinding: a page from
# evil.example whose name was re-pointed at 127.0.0.1 still sends "Host: evil.example" (the defence the
# Jupyter, Transmission and Syncthing GUIs use).
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_PORT = re.compile(r"[0-9]{1,5}\Z")


def _is_local_host(host: str) -> bool:
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, sep, port = host.partition(":")
        rest = sep + port
    if rest and (rest[0] != ":" or not _PORT.match(rest[1:])):
        return False
    return name in _LOCAL_HOSTS


def authorize(request: Request, *, token: str | None) -> Response | None:
    """Decide whether ``request``'s peer may be served; ``None`` means yes, else the refusal to send.

    - Unix socket: the peer's uid (``SO_PEERCRED``) must be ours or root's, else 403 ``forbidden``. The
      socket's mode (0600) already keeps others out; this holds even if the mode is loosened.
    - TCP: ``Host`` must be ``localhost``, ``127.0.0.1`` or ``[::1]``, with or without a port, else 403
      ``forbidden_host``; then ``Authorization: Bearer <token>`` must match, else 401 ``unauthorized``
      with ``WWW-Authenticate: Bearer``. With ``token=None`` every TCP request is refused (fail closed).

    No CORS header is ever produced: a browser page from another origin must not read our answers.
    """
    peer = request.peer
    if peer.transport == "unix":
        if peer.uid is not None and (peer.uid == 0 or peer.uid == os.getuid()):
            return None
        return error_response(403, "forbidden", "This socket serves only its owner and root.")
    host = request.headers.get("host")
    if host is None or not _is_local_host(host):
        return error_response(403, "forbidden_host", "The Host header must be localhost, 127.0.0.1 or [::1].")
    credentials = request.headers.get("authorization") or ""
    scheme, _, supplied = credentials.partition(" ")
    if (
        token is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(supplied.strip().encode("latin-1"), token.encode("latin-1"))
    ):
        return error_response(
            401,
            "unauthorized",
            "A valid 'Authorization: Bearer <token>' header is required (see the token file).",
            (("WWW-Authenticate", "Bearer"),),
        )
    return None
