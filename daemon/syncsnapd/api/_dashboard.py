"""The dashboard's side of the API (docs/api.md, "Dashboard and login"): its pages and files, and logins.

- ``GET /``: ``index.html`` to an authenticated client (session cookie, bearer token, Unix socket),
  ``login.html`` ("run ``syncsnap open``") otherwise; ``GET /assets/<path>``: the other files of the
  package's ``dashboard/`` directory. Every file is read once, at start, into a table keyed by its exact
  relative name: a request path is only ever a key of that table, never a file system path.
- ``POST /api/v1/login-codes`` (Unix socket only), ``GET /login?code=`` (redeem it: the session cookie and
  a redirect to ``/``), ``POST /api/v1/logout``, ``DELETE /api/v1/sessions``.

Every dashboard answer carries the security headers (:data:`SECURITY_HEADERS`); files carry a strong
``ETag`` (their SHA-256) and ``Cache-Control: no-cache``, and ``If-None-Match`` gets ``304``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import trio

from ..http import (
    SESSION_COOKIE,
    HTTPError,
    Request,
    Response,
    Router,
    SessionStore,
    json_response,
    session_cookies,
)
from ._errors import api_error

__all__ = ["Dashboard", "load_dashboard_files"]

log = logging.getLogger("syncsnapd.api")

API = "/api/v1"
# The package directory the files come from, and which of its files are served (by suffix) with which
# Content-Type. Anything else there (a README, an editor's backup) is not served.
PACKAGE = "syncsnapd"
DIRECTORY = "dashboard"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# How deep the directory is walked (dashboard/js/views/x.js is 3).
MAX_DEPTH = 4

# On every dashboard answer: no inline script or style, nothing from elsewhere, no framing, no sniffing,
# no Referer (a login URL must not leak).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
NO_STORE = (("Cache-Control", "no-store"),)

_EXPIRED_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>syncsnap: login link expired</title>
<link rel="stylesheet" href="/assets/app.css">
</head>
<body>
<main><h1>syncsnap</h1><p>This login link has expired or was already used.
Run <code>syncsnap open</code> again to get a new one.</p></main>
</body>
</html>
"""


@dataclass(frozen=True)
class StaticFile:
    """One file of the dashboard, as served."""

    body: bytes
    content_type: str
    etag: str


def load_dashboard_files(root: Traversable | None = None) -> dict[str, StaticFile]:
    """Every servable file under the package's ``dashboard/`` directory (or ``root``), by relative name
    (``index.html``, ``js/main.js``). Blocking: run it at start."""
    if root is None:
        root = importlib.resources.files(PACKAGE) / DIRECTORY
    files: dict[str, StaticFile] = {}

    def walk(node: Traversable, prefix: str, depth: int) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            name = prefix + child.name
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if depth < MAX_DEPTH:
                    walk(child, name + "/", depth + 1)
                continue
            content_type = CONTENT_TYPES.get(Path(child.name).suffix)
            if content_type is not None and child.is_file():
                body = child.read_bytes()
                files[name] = StaticFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    if root.is_dir():
        walk(root, "", 1)
    for page in ("index.html", "login.html"):
        if page not in files:
            log.warning("the dashboard's %s is missing from the package; / will answer 404", page)
    return files


def _not_modified(request: Request, etag: str) -> bool:
    # If-None-Match uses the weak comparison (RFC 9110 section 13.1.2): W/ prefixes are ignored.
    for field in request.headers.get_all("if-none-match"):
        for tag in field.split(","):
            tag = tag.strip()
            if tag == "*" or tag.removeprefix("W/") == etag:
                return True
    return False


def _clear_cookie() -> tuple[str, str]:
    return ("Set-Cookie", f"{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")


class Dashboard:
    """The dashboard's endpoints, bound to one :class:`~syncsnapd.http.SessionStore`.

    Args:
        router: where to register the routes.
        sessions_file: the 0600 mirror of the sessions (loaded now, if a killed daemon left one).
        files: the dashboard's files (default: :func:`load_dashboard_files`).
    Attributes:
        tcp_address: the bound TCP address (``127.0.0.1:8473``), set by the service once listening;
            ``None`` while TCP is off (login codes then answer ``409 tcp_disabled``).
    """

    def __init__(self, router: Router, sessions_file: Path | None, *,
                 files: dict[str, StaticFile] | None = None, sessions: SessionStore | None = None) -> None:
        self.sessions = sessions if sessions is not None else SessionStore(sessions_file)
        loaded = self.sessions.load()
        if loaded:
            log.info("%d dashboard session(s) restored from %s", loaded, sessions_file)
        self.files = load_dashboard_files() if files is None else files
        self.tcp_address: str | None = None
        self._save_lock = trio.Lock()
        for method in ("GET", "HEAD"):
            router.add(method, "/", self.root)
            router.add(method, "/assets/{path...}", self.asset)
        router.add("GET", "/login", self.login, head=False)  # not HEAD: a link preview must not use the code up
        router.add("POST", f"{API}/login-codes", self.login_code)
        router.add("POST", f"{API}/logout", self.logout)
        router.add("DELETE", f"{API}/sessions", self.revoke)

    # --- pages and files -----------------------------------------------------------------------------

    def _file(self, request: Request, name: str, cache: tuple[tuple[str, str], ...]) -> Response:
        found = self.files.get(name)
        if found is None:
            raise HTTPError(404, "not_found", f"No such file: {request.path}", SECURITY_HEADERS)
        headers = (("ETag", found.etag), *cache, *SECURITY_HEADERS)
        if _not_modified(request, found.etag):
            return Response(304, b"", None, headers)
        return Response(200, found.body, found.content_type, headers)

    async def root(self, request: Request, params: dict[str, str]) -> Response:
        # The answer depends on the cookie: never stored by a cache.
        page = "index.html" if request.auth is not None else "login.html"
        return self._file(request, page, NO_STORE)

    async def asset(self, request: Request, params: dict[str, str]) -> Response:
        name = params["path"]
        if name.endswith(".html"):  # the pages are served at / only
            raise HTTPError(404, "not_found", f"No such file: {request.path}", SECURITY_HEADERS)
        return self._file(request, name, (("Cache-Control", "no-cache"),))

    # --- logins --------------------------------------------------------------------------------------

    async def login_code(self, request: Request, params: dict[str, str]) -> Response:
        if request.peer.transport != "unix":
            raise api_error("forbidden", "Login codes are given only over the Unix socket: run `syncsnap open` "
                            "as the daemon's user.")
        if self.tcp_address is None:
            raise api_error("tcp_disabled", "The dashboard needs the TCP listener, which is off: set "
                            "daemon.tcp in the configuration and restart syncsnapd.")
        code = self.sessions.new_login_code()
        return json_response(201, {"code": code, "url": f"http://{self.tcp_address}/login?code={code}",
                                   "expires_in_seconds": round(self.sessions.code_seconds)}, NO_STORE)

    async def login(self, request: Request, params: dict[str, str]) -> Response:
        session = self.sessions.redeem(request.query.get("code", ""))
        if session is None:
            return Response(403, _EXPIRED_PAGE, "text/html; charset=utf-8", (*NO_STORE, *SECURITY_HEADERS))
        await self._save()
        cookie = (f"{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; "
                  f"Max-Age={self.sessions.seconds_left(session)}")
        # 303 to /: the code leaves the address bar and the history.
        return Response(303, b"", None, (("Location", "/"), ("Set-Cookie", cookie), *NO_STORE, *SECURITY_HEADERS))

    async def logout(self, request: Request, params: dict[str, str]) -> Response:
        ended = [value for value in session_cookies(request) if self.sessions.end(value)]
        if ended:
            await self._save()
        return Response(204, b"", None, (_clear_cookie(), *NO_STORE))

    async def revoke(self, request: Request, params: dict[str, str]) -> Response:
        if request.auth not in ("unix", "token"):
            raise api_error("forbidden", "Revoking every session needs the Unix socket or the bearer token "
                            "(`syncsnap logout --all`).")
        revoked = self.sessions.revoke_all()
        await self._save()
        return json_response(200, {"revoked": revoked})

    async def _save(self) -> None:
        # The bytes are taken here, on the loop (the store changes only here); the write, in a thread,
        # one at a time, so the file always ends with the newest state.
        async with self._save_lock:
            data = self.sessions.mirror_bytes()
            await trio.to_thread.run_sync(self.sessions.write_mirror, data)

    def close(self) -> None:
        """A clean stop: delete the sessions file, so a restart revokes every session."""
        self.sessions.close()

