"""The dashboard's logins without an event loop: login codes and sessions (with an injected wall clock, so
expiry is tested to the second without sleeping), their 0600 mirror file, the bearer-or-session
authorization with its Origin rule, and the router's trailing path parameter."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from syncsnapd.http import (
    SESSION_COOKIE,
    Headers,
    HTTPError,
    Peer,
    Request,
    Response,
    Router,
    SessionStore,
    authorize,
    check_access,
)
from syncsnapd.http._sessions import MAX_LOGIN_CODES

TOKEN = "s3cret"
TCP = Peer("tcp")
WEEK = 7 * 24 * 3600
URL_SAFE_256_BITS = re.compile(r"[A-Za-z0-9_-]{43}\Z")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def logged_in(clock: Clock, mirror: Path | None = None) -> tuple[SessionStore, str]:
    store = SessionStore(mirror, clock=clock)
    session = store.redeem(store.new_login_code())
    assert session is not None
    return store, session


# --- codes and sessions ---------------------------------------------------------------------------------


def test_a_code_works_once_within_60_seconds_and_makes_a_7_day_session() -> None:
    clock = Clock()
    store = SessionStore(clock=clock)
    code = store.new_login_code()
    assert URL_SAFE_256_BITS.match(code)
    clock.now += 59.9
    session = store.redeem(code)
    assert session is not None and URL_SAFE_256_BITS.match(session) and session != code
    assert store.redeem(code) is None  # used up
    assert store.is_valid(session) and store.seconds_left(session) == WEEK
    clock.now += WEEK - 0.1
    assert store.is_valid(session)
    clock.now += 0.1
    assert not store.is_valid(session) and store.seconds_left(session) == 0


def test_a_code_60_seconds_old_is_refused() -> None:
    clock = Clock()
    store = SessionStore(clock=clock)
    code = store.new_login_code()
    clock.now += 60
    assert store.redeem(code) is None
    assert store.redeem("") is None and store.redeem("not-a-code") is None


def test_values_are_fresh_and_only_hashes_are_kept() -> None:
    store = SessionStore(clock=Clock())
    codes = {store.new_login_code() for _ in range(50)}
    assert len(codes) == 50
    sessions = [store.redeem(c) for c in sorted(codes)]
    assert len({s for s in sessions if s}) == 50
    dump = store.mirror_bytes().decode()
    assert not any(s and s in dump for s in sessions)
    assert not store.is_valid(store.new_login_code())  # a code is not a session


def test_logout_ends_one_session_and_revoke_all_ends_every_one() -> None:
    clock = Clock()
    store, first = logged_in(clock)
    second = store.redeem(store.new_login_code())
    pending = store.new_login_code()
    assert second is not None and len(store) == 2
    assert store.end(first) and not store.end(first)
    assert not store.is_valid(first) and store.is_valid(second)
    assert store.revoke_all() == 1
    assert not store.is_valid(second) and store.redeem(pending) is None


def test_outstanding_codes_are_bounded_dropping_the_oldest() -> None:
    clock = Clock()
    store = SessionStore(clock=clock)
    first = store.new_login_code()
    for _ in range(MAX_LOGIN_CODES):
        clock.now += 0.001
        last = store.new_login_code()
    assert store.redeem(first) is None
    assert store.redeem(last) is not None


# --- the mirror file --------------------------------------------------------------------------------------


def test_the_mirror_is_0600_holds_hashes_and_reloads_live_sessions(tmp_path: Path) -> None:
    clock = Clock()
    mirror = tmp_path / "sessions.json"
    store, session = logged_in(clock, mirror)
    store.write_mirror(store.mirror_bytes())
    assert stat.S_IMODE(os.stat(mirror).st_mode) == 0o600
    text = mirror.read_text()
    assert session not in text
    assert list(json.loads(text)["sessions"].values()) == [clock.now + WEEK]
    again = SessionStore(mirror, clock=clock)
    assert again.load() == 1 and again.is_valid(session)
    clock.now += WEEK
    assert SessionStore(mirror, clock=clock).load() == 0  # expired in the meantime


def test_a_clean_stop_deletes_the_mirror_and_writes_it_no_more(tmp_path: Path) -> None:
    clock = Clock()
    mirror = tmp_path / "sessions.json"
    store, session = logged_in(clock, mirror)
    store.write_mirror(store.mirror_bytes())
    store.close()
    assert not mirror.exists()
    store.write_mirror(store.mirror_bytes())  # a login during the stop's grace period
    assert not mirror.exists()
    assert SessionStore(mirror, clock=clock).load() == 0


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 2, "sessions": {}}',
                                     b'{"version": 1, "sessions": []}',
                                     b'{"version": 1, "sessions": {"short": 1e12}}'])
def test_a_mirror_that_is_not_ours_loads_nothing(tmp_path: Path, content: bytes) -> None:
    mirror = tmp_path / "sessions.json"
    mirror.write_bytes(content)
    mirror.chmod(0o600)
    assert SessionStore(mirror, clock=Clock()).load() == 0


def test_a_mirror_others_can_read_or_a_symlink_is_ignored(tmp_path: Path) -> None:
    clock = Clock()
    mirror = tmp_path / "sessions.json"
    store, session = logged_in(clock, mirror)
    store.write_mirror(store.mirror_bytes())
    mirror.chmod(0o644)
    assert SessionStore(mirror, clock=clock).load() == 0
    mirror.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(mirror)
    assert SessionStore(link, clock=clock).load() == 0
    assert SessionStore(mirror, clock=clock).load() == 1


def test_a_mirror_with_an_expiry_beyond_a_week_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    mirror = tmp_path / "sessions.json"
    mirror.write_text(json.dumps({"version": 1, "sessions": {"a" * 64: clock.now + WEEK + 10}}))
    mirror.chmod(0o600)
    assert SessionStore(mirror, clock=clock).load() == 0


# --- check_access -------------------------------------------------------------------------------------------


def request(method: str = "GET", path: str = "/api/v1/projects", headers: list[tuple[str, str]] | None = None,
            peer: Peer = TCP) -> Request:
    fields = [("Host", "127.0.0.1:8473")] if headers is None else headers
    return Request(method, path, path, {}, Headers(fields), b"", peer)


def code_of(response: Response | None) -> str | None:
    return None if response is None else str(json.loads(response.body)["error"]["code"])


def cookie(session: str) -> tuple[str, str]:
    return ("Cookie", f"theme=dark; {SESSION_COOKIE}={session}")


def test_a_session_cookie_authenticates_reads_without_origin() -> None:
    store, session = logged_in(Clock())
    access = check_access(request(headers=[("Host", "127.0.0.1:8473"), cookie(session)]), token=TOKEN,
                          sessions=store)
    assert (access.auth, access.refusal) == ("session", None)


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:9999", "http://localhost:8473", "null",
                                    "https://127.0.0.1:8473", "http://127.0.0.1:8473.evil.com"])
def test_a_state_change_with_the_cookie_needs_the_daemons_own_origin(origin: str | None) -> None:
    store, session = logged_in(Clock())
    headers = [("Host", "127.0.0.1:8473"), cookie(session)] + ([("Origin", origin)] if origin else [])
    for method in ("POST", "DELETE", "PUT", "PATCH"):
        access = check_access(request(method, "/api/v1/projects/p/snapshots", headers), token=TOKEN, sessions=store)
        assert access.refusal is not None and access.refusal.status == 403
        assert code_of(access.refusal) == "forbidden_origin"


def test_the_right_origin_passes_in_any_case() -> None:
    store, session = logged_in(Clock())
    for origin in ("http://127.0.0.1:8473", "HTTP://127.0.0.1:8473"):
        headers = [("Host", "127.0.0.1:8473"), cookie(session), ("Origin", origin)]
        access = check_access(request("POST", "/api/v1/logout", headers), token=TOKEN, sessions=store)
        assert (access.auth, access.refusal) == ("session", None)


def test_a_websocket_upgrade_with_the_cookie_needs_the_origin_too() -> None:
    store, session = logged_in(Clock())
    base = [("Host", "localhost:8473"), cookie(session), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
    refused = check_access(request("GET", "/api/v1/ws", base + [("Origin", "http://127.0.0.1:1")]), token=TOKEN,
                           sessions=store)
    assert code_of(refused.refusal) == "forbidden_origin"
    assert code_of(check_access(request("GET", "/api/v1/ws", base), token=TOKEN, sessions=store).refusal) == \
        "forbidden_origin"
    allowed = check_access(request("GET", "/api/v1/ws", base + [("Origin", "http://localhost:8473")]), token=TOKEN,
                           sessions=store)
    assert (allowed.auth, allowed.refusal) == ("session", None)


def test_the_bearer_token_needs_no_origin_even_with_a_cookie() -> None:
    store, session = logged_in(Clock())
    headers = [("Host", "127.0.0.1:8473"), cookie(session), ("Authorization", f"Bearer {TOKEN}"),
               ("Origin", "http://evil.example")]
    access = check_access(request("POST", headers=headers), token=TOKEN, sessions=store)
    assert (access.auth, access.refusal) == ("token", None)


def test_the_unix_socket_is_unaffected() -> None:
    store, _ = logged_in(Clock())
    owner = Peer("unix", os.getuid(), 1)
    access = check_access(request("POST", headers=[("Origin", "http://evil.example")], peer=owner), token=None,
                          sessions=store)
    assert (access.auth, access.refusal) == ("unix", None)


@pytest.mark.parametrize("method, path", [("GET", "/"), ("HEAD", "/"), ("GET", "/login"),
                                          ("GET", "/assets/app.css"), ("HEAD", "/assets/js/main.js")])
def test_the_dashboards_pages_are_public_for_reads(method: str, path: str) -> None:
    access = check_access(request(method, path), token=TOKEN, sessions=SessionStore(clock=Clock()))
    assert (access.auth, access.refusal) == (None, None)
    # Without the dashboard (no sessions), nothing is public: as before.
    assert code_of(check_access(request(method, path), token=TOKEN, sessions=None).refusal) == "unauthorized"


@pytest.mark.parametrize("method, path", [("POST", "/"), ("GET", "/api/v1/projects"), ("GET", "/assets"),
                                          ("GET", "/loginx"), ("POST", "/login"), ("GET", "/api/v1/health")])
def test_everything_else_needs_a_credential(method: str, path: str) -> None:
    refused = check_access(request(method, path), token=TOKEN, sessions=SessionStore(clock=Clock())).refusal
    assert refused is not None and refused.status == 401 and code_of(refused) == "unauthorized"


def test_the_host_check_comes_first_for_public_pages_and_sessions() -> None:
    store, session = logged_in(Clock())
    for path, headers in (("/", [("Host", "evil.example")]),
                          ("/api/v1/projects", [("Host", "evil.example:8473"), cookie(session)])):
        refused = check_access(request("GET", path, headers), token=TOKEN, sessions=store).refusal
        assert code_of(refused) == "forbidden_host"


def test_an_expired_or_unknown_cookie_is_no_credential() -> None:
    clock = Clock()
    store, session = logged_in(clock)
    clock.now += WEEK
    for value in (session, "forged"):
        headers = [("Host", "127.0.0.1:8473"), cookie(value)]
        assert code_of(check_access(request(headers=headers), token=TOKEN, sessions=store).refusal) == "unauthorized"
        assert check_access(request("GET", "/", headers), token=TOKEN, sessions=store).auth is None


def test_a_tossed_cookie_of_the_same_name_does_not_hide_ours() -> None:
    store, session = logged_in(Clock())
    headers = [("Host", "127.0.0.1:8473"), ("Cookie", f"{SESSION_COOKIE}=tossed; {SESSION_COOKIE}={session}")]
    assert check_access(request(headers=headers), token=TOKEN, sessions=store).auth == "session"


def test_authorize_keeps_its_meaning_without_sessions() -> None:
    owner = Peer("unix", os.getuid(), 1)
    assert authorize(request(peer=owner), token=None) is None
    assert authorize(request(headers=[("Host", "localhost"), ("Authorization", f"Bearer {TOKEN}")]),
                     token=TOKEN) is None
    assert code_of(authorize(request("GET", "/"), token=TOKEN)) == "unauthorized"


# --- the router's trailing parameter ------------------------------------------------------------------------


async def handler(request: Request, params: dict[str, str]) -> Response:
    return Response(200)


def test_a_trailing_parameter_takes_the_rest_of_the_path() -> None:
    router = Router()
    router.add("GET", "/assets/{path...}", handler)
    router.add("GET", "/assets/special", handler)
    assert router.resolve("GET", "/assets/app.css")[1] == {"path": "app.css"}
    assert router.resolve("GET", "/assets/js/views/runs.js")[1] == {"path": "js/views/runs.js"}
    assert router.resolve("GET", "/assets/special")[1] == {}
    for path in ("/assets", "/assets/", "/assets//x", "/assets/js/", "/other/app.css"):
        with pytest.raises(HTTPError) as info:
            router.resolve("GET", path)
        assert info.value.status == 404, path
    with pytest.raises(HTTPError) as info:
        router.resolve("POST", "/assets/app.css")
    assert info.value.status == 405 and ("Allow", "GET, HEAD") in info.value.headers
    with pytest.raises(ValueError):
        router.add("GET", "/assets/{path...}", handler)
