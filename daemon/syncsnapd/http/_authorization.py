"""Authorization: whether a peer may talk to us at all (Unix peer uid; TCP ``Host``, then the bearer token
or a dashboard session cookie with its ``Origin`` rule; the dashboard's public pages).

Decided per request, before any body is read, by :func:`check_access` (or :func:`authorize`, the same
without sessions); no I/O.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass

from ._messages import Auth, Request, Response, error_response
from ._sessions import SESSION_COOKIE, SessionStore

__all__ = ["Access", "authorize", "check_access", "session_cookies"]

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

    This is :func:`check_access` without dashboard sessions. No CORS header is ever produced: a browser
    page from another origin must not read our answers.
    """
    return check_access(request, token=token, sessions=None).refusal


@dataclass(frozen=True, slots=True)
class Access:
    """What :func:`check_access` decided.

    Attributes:
        auth: how the request was authenticated: ``"unix"`` (peer uid), ``"token"`` (bearer),
            ``"session"`` (the dashboard's cookie), or ``None`` (a public dashboard page, or refused).
        refusal: the response to send instead of serving the request, or ``None``.
    """

    auth: Auth | None
    refusal: Response | None


# The dashboard's pages and files: served with no credential (GET and HEAD only) when sessions are on.
_PUBLIC_PATHS = frozenset({"/", "/login"})
_PUBLIC_PREFIX = "/assets/"
# Requests that cannot change anything, so a cross-site page gains nothing by sending them with our cookie.
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# Cookie values beyond this many of ours in one request are not looked at (cookie tossing: another local
# origin may have set a few more of the same name).
_MAX_SESSION_COOKIES = 8

_UNAUTHORIZED = (
    401,
    "unauthorized",
    "A valid 'Authorization: Bearer <token>' header is required (see the token file).",
    (("WWW-Authenticate", "Bearer"),),
)


def session_cookies(request: Request) -> list[str]:
    """The values of every ``syncsnap_session`` cookie in ``request`` (at most a few), in order."""
    values: list[str] = []
    for field in request.headers.get_all("cookie"):
        for pair in field.split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name == SESSION_COOKIE and value:
                values.append(value.strip('"'))
                if len(values) >= _MAX_SESSION_COOKIES:
                    return values
    return values


def _same_origin(request: Request, host: str) -> bool:
    # The browser's Origin of a page we served is "http://" + the Host it sent us (RFC 6454).
    origin = request.headers.get("origin")
    return origin is not None and origin.lower() == "http://" + host.lower()


def _is_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("upgrade")
    return upgrade is not None and upgrade.strip().lower() == "websocket"


def check_access(request: Request, *, token: str | None, sessions: SessionStore | None) -> Access:
    """Decide whether ``request``'s peer may be served, and how it authenticated.

    The rules of :func:`authorize` (below), and with ``sessions`` (the dashboard is served):

    - a TCP request without a valid bearer token but with a live ``syncsnap_session`` cookie is
      authenticated as ``"session"``; if its method is not GET or HEAD, or it asks for a WebSocket upgrade,
      it must carry ``Origin: http://<its Host>`` (case-insensitive), else 403 ``forbidden_origin``.
      Cookies for 127.0.0.1 are shared by every port of it, so SameSite alone does not keep a page served by
      another local port from sending them; browsers always send ``Origin`` on such requests.
    - a TCP GET or HEAD of ``/``, ``/login`` or ``/assets/...`` with no credential is served with ``auth``
      ``None`` (the login page and the dashboard's files); anything else without one is 401.

    The ``Host`` check comes first, for every path.
    """
    peer = request.peer
    if peer.transport == "unix":
        if peer.uid is not None and (peer.uid == 0 or peer.uid == os.getuid()):
            return Access("unix", None)
        return Access(None, error_response(403, "forbidden", "This socket serves only its owner and root."))
    host = request.headers.get("host")
    if host is None or not _is_local_host(host):
        return Access(None, error_response(
            403, "forbidden_host", "The Host header must be localhost, 127.0.0.1 or [::1]."))
    credentials = request.headers.get("authorization") or ""
    scheme, _, supplied = credentials.partition(" ")
    if (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(supplied.strip().encode("latin-1"), token.encode("latin-1"))
    ):
        return Access("token", None)
    if sessions is not None:
        if any(sessions.is_valid(value) for value in session_cookies(request)):
            if (request.method not in _SAFE_METHODS or _is_upgrade(request)) and not _same_origin(request, host):
                return Access("session", error_response(
                    403, "forbidden_origin",
                    f"A request made with the dashboard's session must come from its own page (Origin: "
                    f"http://{host}); this one came from elsewhere."))
            return Access("session", None)
        if request.method in _SAFE_METHODS and (
            request.path in _PUBLIC_PATHS or request.path.startswith(_PUBLIC_PREFIX)
        ):
            return Access(None, None)
    return Access(None, error_response(*_UNAUTHORIZED))
