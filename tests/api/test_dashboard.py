"""The dashboard as a browser meets it, against a real daemon with curl over TCP: the login code, the session
cookie, the Origin rule, logout, sessions across a kill and a clean stop, the files with their ETags and
security headers, and request paths that try to leave the shipped files. Expiry and the connection budget
are checked through the real HTTP server in-process, with an injected wall clock."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from helpers.daemon import DaemonProcess, make_tree, spawn_daemon
from helpers.http import TOKEN, H11Client
from syncsnapd.api import Dashboard
from syncsnapd.http import HttpConfig, Router, SessionStore, open_tcp_listener, router_app, serve_http

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
Factory = Callable[..., DaemonProcess]


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def tcp(d: DaemonProcess, path: str, *args: str, method: str = "GET", address: str | None = None) -> Reply:
    """curl over the daemon's TCP listener, as a browser would (no token unless given in ``args``)."""
    cmd = ["curl", "-sS", "-i", "--path-as-is", "-X", method, *args, f"http://{address or d.tcp}{path}"]
    if method == "HEAD":
        cmd[cmd.index("-X"):cmd.index("-X") + 2] = ["-I"]
    out = subprocess.run(cmd, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return Reply(out.stdout)


def login(d: DaemonProcess) -> str:
    """Redeem a fresh login code; the session cookie's value."""
    code = json.loads(d.curl("-X", "POST", "http://localhost/api/v1/login-codes").stdout)
    reply = tcp(d, code["url"].split(d.tcp, 1)[1])
    assert reply.status == 303, reply.body
    cookie = reply.headers["set-cookie"]
    return cookie.split(";", 1)[0].split("=", 1)[1]


def with_cookie(session: str, *more: str) -> list[str]:
    return ["-H", f"Cookie: syncsnap_session={session}", *more]


def started(factory: Factory, short_tmp: Path) -> DaemonProcess:
    make_tree(short_tmp / "p", files=3)
    return factory({"p": short_tmp / "p"})


def test_a_login_code_sets_the_session_cookie_and_redirects_once(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    answer = d.curl("-X", "POST", "http://localhost/api/v1/login-codes")
    code = json.loads(answer.stdout)
    assert set(code) == {"code", "url", "expires_in_seconds"} and code["expires_in_seconds"] == 60
    assert len(code["code"]) == 43 and code["url"] == f"http://{d.tcp}/login?code={code['code']}"
    first = tcp(d, f"/login?code={code['code']}")
    assert first.status == 303 and first.headers["location"] == "/" and first.headers["cache-control"] == "no-store"
    value, *attributes = first.headers["set-cookie"].split("; ")
    assert value.startswith("syncsnap_session=") and len(value) == len("syncsnap_session=") + 43
    assert attributes == ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"]
    session = value.split("=", 1)[1]
    page = tcp(d, "/", *with_cookie(session))
    assert page.status == 200 and b"/assets/js/main.js" in page.body  # index.html, the app
    assert tcp(d, "/api/v1/projects", *with_cookie(session)).json()["projects"][0]["id"] == "p"
    again = tcp(d, f"/login?code={code['code']}")
    assert again.status == 403 and again.headers["content-type"].startswith("text/html")
    assert b"expired or was already used" in again.body and b"syncsnap open" in again.body
    assert "set-cookie" not in again.headers
    assert tcp(d, "/login?code=forged").status == 403 and tcp(d, "/login").status == 403


def test_without_a_session_the_page_says_run_syncsnap_open_and_the_api_is_401(
        daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    page = tcp(d, "/")
    assert page.status == 200 and b"syncsnap open" in page.body and b"main.js" not in page.body
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    for path in ("/api/v1/projects", "/api/v1/events", "/api/v1/health"):
        assert tcp(d, path).status == 401
    assert tcp(d, "/api/v1/projects", *with_cookie("not-a-session")).status == 401
    assert tcp(d, "/", method="POST").status == 401
    # Bearer and Unix clients are unaffected; the bearer token sees the app page at /.
    assert tcp(d, "/api/v1/projects", "-H", f"Authorization: Bearer {d.token}").status == 200
    assert b"main.js" in tcp(d, "/", "-H", f"Authorization: Bearer {d.token}").body
    assert json.loads(d.curl("http://localhost/api/v1/projects").stdout)["projects"][0]["id"] == "p"


def test_with_the_cookie_a_state_change_needs_the_daemons_own_origin(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    session = login(d)
    port = d.tcp.rsplit(":", 1)[1]
    snapshot = "/api/v1/projects/p/snapshots"
    for origin in ([], ["-H", "Origin: http://127.0.0.1:1"], ["-H", f"Origin: http://localhost:{port}"],
                   ["-H", "Origin: null"]):
        refused = tcp(d, snapshot, *with_cookie(session, *origin), method="POST")
        assert (refused.status, refused.code) == (403, "forbidden_origin"), origin
    assert tcp(d, snapshot, *with_cookie(session, "-H", f"Origin: http://{d.tcp}"), method="POST").status == 202
    assert tcp(d, "/api/v1/projects", *with_cookie(session)).status == 200  # a read needs no Origin
    # The bearer token needs no Origin, whatever else is sent.
    assert tcp(d, snapshot, "-H", f"Authorization: Bearer {d.token}", *with_cookie(session, "-H", "Origin: http://x"),
               method="POST").status == 202
    # A WebSocket upgrade with the cookie needs it too.
    assert ws_status(d, session, None) == 403
    assert ws_status(d, session, "http://127.0.0.1:1") == 403
    assert ws_status(d, session, f"http://{d.tcp}") == 101


def ws_status(d: DaemonProcess, session: str, origin: str | None) -> int:
    host, port = d.tcp.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = (f"GET /api/v1/ws HTTP/1.1\r\nHost: {d.tcp}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Cookie: syncsnap_session={session}\r\n" + (f"Origin: {origin}\r\n" if origin else "") + "\r\n")
        s.sendall(head.encode())
        return int(s.recv(4096).split(b" ", 2)[1])


def test_login_codes_and_revoking_all_are_not_for_tcp_clients(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    session = login(d)
    bearer = ["-H", f"Authorization: Bearer {d.token}"]
    for args in (bearer, with_cookie(session, "-H", f"Origin: http://{d.tcp}")):
        refused = tcp(d, "/api/v1/login-codes", *args, method="POST")
        assert (refused.status, refused.code) == (403, "forbidden")
    cookie_revoke = tcp(d, "/api/v1/sessions", *with_cookie(session, "-H", f"Origin: http://{d.tcp}"), method="DELETE")
    assert (cookie_revoke.status, cookie_revoke.code) == (403, "forbidden")
    assert tcp(d, "/api/v1/sessions", *bearer, method="DELETE").json() == {"revoked": 1}
    assert tcp(d, "/api/v1/projects", *with_cookie(session)).status == 401


def test_logout_ends_that_session_only(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    mine, other = login(d), login(d)
    bye = tcp(d, "/api/v1/logout", *with_cookie(mine, "-H", f"Origin: http://{d.tcp}"), method="POST")
    assert bye.status == 204 and bye.headers["set-cookie"].startswith("syncsnap_session=; ")
    assert "Max-Age=0" in bye.headers["set-cookie"].split("; ")
    assert tcp(d, "/api/v1/projects", *with_cookie(mine)).status == 401
    assert b"syncsnap open" in tcp(d, "/", *with_cookie(mine)).body
    assert tcp(d, "/api/v1/projects", *with_cookie(other)).status == 200


def test_sessions_survive_a_kill_but_not_a_clean_stop(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    session = login(d)
    mirror = short_tmp / "run/syncsnap/sessions.json"
    assert mirror.stat().st_mode & 0o777 == 0o600 and session not in mirror.read_text()
    d.stop(signal.SIGKILL)
    d = spawn_daemon(short_tmp, d.config)
    try:
        assert tcp(d, "/api/v1/projects", *with_cookie(session)).status == 200
        assert d.stop(signal.SIGTERM) == 0
        assert not mirror.exists()
        d = spawn_daemon(short_tmp, d.config)
        assert tcp(d, "/api/v1/projects", *with_cookie(session)).status == 401
        assert b"syncsnap open" in tcp(d, "/", *with_cookie(session)).body
    finally:
        d.stop(signal.SIGKILL)


def test_files_carry_etags_security_headers_and_answer_304(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    types = {"/assets/app.css": "text/css; charset=utf-8", "/assets/js/main.js": "text/javascript; charset=utf-8",
             "/": "text/html; charset=utf-8", "/login?code=x": "text/html; charset=utf-8"}
    for path, content_type in types.items():
        reply = tcp(d, path)
        assert reply.headers["content-type"] == content_type, path
        assert reply.headers["content-security-policy"] == CSP
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["referrer-policy"] == "no-referrer" and reply.headers["x-frame-options"] == "DENY"
        assert not any(name.startswith("access-control-") for name in reply.headers)
    css = tcp(d, "/assets/app.css")
    etag = css.headers["etag"]
    assert css.status == 200 and css.headers["cache-control"] == "no-cache"
    assert etag.startswith('"') and not etag.startswith("W/") and len(etag) == 34
    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = tcp(d, "/assets/app.css", "-H", f"If-None-Match: {match}")
        assert cached.status == 304 and cached.body == b"" and cached.headers["etag"] == etag
        assert cached.headers["content-security-policy"] == CSP
    assert tcp(d, "/assets/app.css", "-H", 'If-None-Match: "other"').status == 200
    assert tcp(d, "/assets/js/main.js").headers["etag"] != etag
    head = tcp(d, "/assets/js/main.js", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == len(tcp(d, "/assets/js/main.js").body)


def test_request_paths_never_leave_the_shipped_files(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    # Dot segments, raw or encoded, and encoded slashes are refused before routing (400, as everywhere);
    # anything else that is not exactly a shipped file is 404.
    expected = {
        "/assets/../pyproject.toml": 400, "/assets/%2e%2e/pyproject.toml": 400, "/assets/%2E%2E/pyproject.toml": 400,
        "/assets/js/../../x": 400, "/assets/..%2fpyproject.toml": 400, "/assets/%2e%2e%2fpyproject.toml": 400,
        "/assets/js/main.js%00": 400, "/assets/./app.css": 400,
        "/assets/..%5cpyproject.toml": 404, "/assets/index.html": 404, "/assets/login.html": 404,
        "/assets/js": 404, "/assets/nope.css": 404, "/assets//etc/passwd": 404, "/assets/js//main.js": 404,
        "/assets/__init__.py": 404, "/assets/../__init__.py": 400, "/assets/%252e%252e/pyproject.toml": 404,
        "/assets/APP.CSS": 404,
    }
    for path, status in expected.items():
        for auth in ([], ["-H", f"Authorization: Bearer {d.token}"]):
            reply = tcp(d, path, *auth)
            assert reply.status == status, (path, reply.status, reply.body)
            assert b"[project]" not in reply.body and b"import" not in reply.body


async def test_an_expired_code_is_refused_and_a_fresh_one_works(short_tmp: Path) -> None:
    """Through the real HTTP server on a TCP port, with the session store's wall clock injected."""
    now = [1_800_000_000.0]
    store = SessionStore(clock=lambda: now[0])
    router = Router()
    Dashboard(router, None, sessions=store)
    listener = await open_tcp_listener("127.0.0.1:0")
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, router_app(router), [(listener, "tcp")],
                                     HttpConfig(token=TOKEN, sessions=store))

        async def status(code: str) -> int:
            out = await trio.run_process(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                          f"http://127.0.0.1:{port}/login?code={code}"], capture_stdout=True)
            return int(out.stdout)

        late, in_time = store.new_login_code(), store.new_login_code()
        now[0] += 59.9
        assert await status(in_time) == 303
        now[0] += 0.1
        assert await status(late) == 403
        assert await status(in_time) == 403  # used
        server.begin_shutdown()


async def test_a_public_page_leaves_the_connection_unauthenticated(short_tmp: Path) -> None:
    """Anyone may load the login page, but that gives the connection no place outside the budget of
    unauthenticated connections (docs/api.md, "Connection limits")."""
    store = SessionStore()
    router = Router()
    Dashboard(router, None, sessions=store)
    listener = await open_tcp_listener("127.0.0.1:0")
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_http, router_app(router), [(listener, "tcp")],
                                     HttpConfig(token=TOKEN, sessions=store))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = H11Client(stream)
        host = [("Host", f"127.0.0.1:{port}")]
        assert (await client.request("GET", "/", host)).status == 200
        assert (await client.request("GET", "/assets/app.css", host)).status == 200
        assert server.statistics().unauthenticated_connections == 1
        revoke = await client.request("DELETE", "/api/v1/sessions", host + [("Authorization", f"Bearer {TOKEN}")])
        assert revoke.status == 200 and revoke.json() == {"revoked": 0}
        assert server.statistics().unauthenticated_connections == 0
        await stream.aclose()
        server.begin_shutdown()
