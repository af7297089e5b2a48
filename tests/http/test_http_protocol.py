"""The sans-I/O HTTP layer: validation, routing, authorization, bodies and SSE framing, without an event loop."""

from __future__ import annotations

import json
import os

import h11
import pytest

from syncsnapd.http import (
    Headers,
    HTTPError,
    Peer,
    Request,
    Response,
    Router,
    authorize,
    error_response,
    json_response,
    parse_request,
    sse_comment,
    sse_event,
    sse_retry,
)

TCP = Peer("tcp")


def head_of(raw: bytes) -> h11.Request:
    """What h11 makes of a raw request head."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert type(event) is h11.Request, event
    return event


def parse(raw: bytes, **limits: int) -> Request:
    return parse_request(head_of(raw), TCP, **limits)


def refusal(raw: bytes, **limits: int) -> HTTPError:
    with pytest.raises(HTTPError) as info:
        parse(raw, **limits)
    return info.value


def tcp_request(headers: list[tuple[str, str]]) -> Request:
    return Request("GET", "/", "/", {}, Headers(headers), b"", TCP)


async def handler_a(request: Request, params: dict[str, str]) -> Response:
    return Response(200)


async def handler_b(request: Request, params: dict[str, str]) -> Response:
    return Response(204)


# --- parse_request -----------------------------------------------------------------------------------


def test_parse_decodes_path_and_query_and_keeps_target() -> None:
    request = parse(
        b"GET /api/v1/projects/my%20docs/progress?last_event_id=7&x=%C3%BC HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    assert request.method == "GET"
    assert request.target == "/api/v1/projects/my%20docs/progress?last_event_id=7&x=%C3%BC"
    assert request.path == "/api/v1/projects/my docs/progress"
    assert request.query == {"last_event_id": "7", "x": "ü"}
    assert request.headers.get("HOST") == "localhost"
    assert request.body == b""


def test_absolute_form_target_uses_its_path_when_authority_matches_host() -> None:
    request = parse(b"GET http://localhost:8473/api/v1/health?a=1 HTTP/1.1\r\nHost: localhost:8473\r\n\r\n")
    assert (request.path, request.query) == ("/api/v1/health", {"a": "1"})
    error = refusal(b"GET http://evil.example/api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (error.status, error.code) == (400, "bad_request")


def test_a_path_query_value_may_name_bytes_that_are_not_utf8() -> None:
    # File names are bytes: ?path=%FF names the byte 0xFF, as os.fsdecode holds it (and the API writes it in
    # JSON); every other value stays UTF-8 only (see the refusals below), and so does every name.
    request = parse(b"GET /x?path=caf%E9/%C3%BC&limit=3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert request.query == {"path": "caf\udce9/\u00fc", "limit": "3"}
    assert os.fsencode(request.query["path"]) == "caf\xe9/".encode("latin-1") + "\u00fc".encode()
    assert refusal(b"GET /x?path=%E9&before=%E9 HTTP/1.1\r\nHost: a\r\n\r\n").code == "bad_request"
    assert refusal(b"GET /x?p%E9=1 HTTP/1.1\r\nHost: a\r\n\r\n").code == "bad_request"


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n", 413),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n", 413),
        (b"GET /a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a%ff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/../secret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /api/%2e%2e/secret HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /x?a=%ff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT localhost:22 HTTP/1.1\r\nHost: localhost:22\r\n\r\n", 400),
        (b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_parse_refuses_what_h11_lets_through(raw: bytes, status: int) -> None:
    assert refusal(raw).status == status


def test_head_over_limit_is_431_even_when_it_arrives_whole() -> None:
    # h11 alone enforces its limit only while a head is incomplete; this one arrives in one piece.
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n"
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=32 * 1024)
    conn.receive_data(raw)
    event = conn.next_event()
    assert type(event) is h11.Request
    with pytest.raises(HTTPError) as info:
        parse_request(event, TCP)
    assert (info.value.status, info.value.code) == (431, "headers_too_large")
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Ok: " + b"a" * 15000 + b"\r\n\r\n").path == "/"


def test_body_limit_is_configurable() -> None:
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"
    assert refusal(raw, max_body=10).status == 413
    assert parse(raw, max_body=11).path == "/x"


def test_h11_itself_refuses_bad_lengths_hosts_targets_and_names() -> None:
    # Documented reliance on h11: these never reach parse_request.
    for raw in (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET /\xc3\xbc HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
    ):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(raw)
        with pytest.raises(h11.RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.error_status_hint == 400
    # Identical duplicates are one value.
    assert (
        parse(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").path == "/x"
    )


# --- Headers -------------------------------------------------------------------------------------------


def test_headers_lookup_is_case_insensitive_and_keeps_order() -> None:
    headers = Headers([("Accept", "a"), ("X-Multi", "1"), ("x-multi", "2")])
    assert headers.get("accept") == "a"
    assert headers.get("X-MULTI") == "1"
    assert headers.get_all("x-multi") == ["1", "2"]
    assert headers.get("missing") is None
    assert "ACCEPT" in headers and "missing" not in headers
    assert list(headers) == [("accept", "a"), ("x-multi", "1"), ("x-multi", "2")]


# --- Router --------------------------------------------------------------------------------------------


def test_router_resolves_literals_and_parameters() -> None:
    router = Router()
    router.add("GET", "/api/v1/projects", handler_a)
    router.add("GET", "/api/v1/projects/{id}/progress", handler_b)
    assert router.resolve("GET", "/api/v1/projects") == (handler_a, {})
    assert router.resolve("GET", "/api/v1/projects/my docs/progress") == (handler_b, {"id": "my docs"})


def test_router_404_for_unknown_paths_and_empty_parameters() -> None:
    router = Router()
    router.add("GET", "/p/{id}/progress", handler_a)
    for path in ("/nope", "/p//progress", "/p/a/b/progress", "/p/a/progress/"):
        with pytest.raises(HTTPError) as info:
            router.resolve("GET", path)
        assert (info.value.status, info.value.code) == (404, "not_found")


def test_router_405_lists_allowed_methods_sorted_and_every_get_answers_head() -> None:
    router = Router()
    router.add("POST", "/p/{id}/snapshots", handler_a)
    router.add("GET", "/p/{id}/snapshots", handler_b)
    with pytest.raises(HTTPError) as info:
        router.resolve("DELETE", "/p/x/snapshots")
    assert (info.value.status, info.value.code) == (405, "method_not_allowed")
    assert info.value.headers == (("Allow", "GET, HEAD, POST"),)
    # HEAD is the GET handler (the connection leaves the body out); a handler of its own replaces it.
    assert router.resolve("HEAD", "/p/x/snapshots") == (handler_b, {"id": "x"})
    router.add("HEAD", "/p/{id}/snapshots", handler_a)
    assert router.resolve("HEAD", "/p/x/snapshots") == (handler_a, {"id": "x"})
    with pytest.raises(ValueError):
        router.add("HEAD", "/p/{id}/snapshots", handler_a)


def test_a_get_route_added_with_head_false_refuses_head() -> None:
    router = Router()
    router.add("GET", "/login", handler_a, head=False)
    with pytest.raises(HTTPError) as info:
        router.resolve("HEAD", "/login")
    assert info.value.status == 405 and info.value.headers == (("Allow", "GET"),)


def test_literal_route_wins_over_parameter_route() -> None:
    router = Router()
    router.add("GET", "/p/{id}", handler_a)
    router.add("GET", "/p/all", handler_b)
    assert router.resolve("GET", "/p/all") == (handler_b, {})
    assert router.resolve("GET", "/p/x") == (handler_a, {"id": "x"})


def test_router_refuses_bad_patterns_and_duplicates() -> None:
    router = Router()
    router.add("GET", "/a/{id}", handler_a)
    for method, pattern in (("GET", "/a/{id}"), ("GET", "no-slash"), ("GET", "/a/{x"), ("GET", "/b/{x}/{x}")):
        with pytest.raises(ValueError):
            router.add(method, pattern, handler_a)


# --- authorize -----------------------------------------------------------------------------------------


def test_unix_peer_must_be_owner_or_root() -> None:
    def for_uid(uid: int | None) -> Response | None:
        return authorize(Request("GET", "/", "/", {}, Headers(), b"", Peer("unix", uid, 1)), token=None)

    assert for_uid(os.getuid()) is None
    assert for_uid(0) is None
    for uid in (65534, None):
        refused = for_uid(uid)
        assert refused is not None and refused.status == 403
        assert json.loads(refused.body)["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:8473", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8473"]
)
def test_tcp_loopback_hosts_with_the_right_token_pass(host: str) -> None:
    assert (
        authorize(tcp_request([("Host", host), ("Authorization", "Bearer s3cret")]), token="s3cret") is None
    )


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "localhost.evil.com",
        "127.0.0.2",
        "[::2]",
        "localhost:",
        "localhost:http",
        "[::1]x",
        "[::1",
    ],
)
def test_tcp_other_hosts_are_forbidden_even_with_the_token(host: str) -> None:
    refused = authorize(tcp_request([("Host", host), ("Authorization", "Bearer s3cret")]), token="s3cret")
    assert refused is not None and refused.status == 403
    assert json.loads(refused.body)["error"]["code"] == "forbidden_host"


def test_tcp_without_host_is_forbidden() -> None:
    refused = authorize(tcp_request([("Authorization", "Bearer s3cret")]), token="s3cret")
    assert refused is not None and refused.status == 403


@pytest.mark.parametrize(
    "authorization, token",
    [
        (None, "s3cret"),
        ("Bearer wrong", "s3cret"),
        ("Basic s3cret", "s3cret"),
        ("Bearer", "s3cret"),
        ("Bearer s3cret", None),
    ],
)
def test_tcp_missing_or_wrong_token_is_401_with_challenge(
    authorization: str | None, token: str | None
) -> None:
    headers = [("Host", "localhost")] + ([("Authorization", authorization)] if authorization else [])
    refused = authorize(tcp_request(headers), token=token)
    assert refused is not None and refused.status == 401
    assert ("WWW-Authenticate", "Bearer") in refused.headers
    assert json.loads(refused.body)["error"]["code"] == "unauthorized"


def test_bearer_scheme_is_case_insensitive() -> None:
    assert (
        authorize(tcp_request([("Host", "localhost"), ("Authorization", "bearer s3cret")]), token="s3cret")
        is None
    )


def test_refusals_never_carry_cors_headers() -> None:
    for refused in (
        authorize(tcp_request([("Host", "evil.com"), ("Origin", "http://evil.com")]), token="t"),
        authorize(tcp_request([("Host", "localhost"), ("Origin", "http://evil.com")]), token="t"),
    ):
        assert refused is not None
        assert not any(name.lower().startswith("access-control-") for name, _ in refused.headers)


# --- bodies --------------------------------------------------------------------------------------------


def test_json_and_error_bodies() -> None:
    response = json_response(201, {"a": [1, "ü"]}, (("X-A", "1"),))
    assert (response.status, response.content_type, response.headers) == (
        201,
        "application/json",
        (("X-A", "1"),),
    )
    assert response.body == b'{"a":[1,"\\u00fc"]}\n'
    error = error_response(404, "not_found", "No project named 'x'.")
    assert json.loads(error.body) == {"error": {"code": "not_found", "message": "No project named 'x'."}}
    assert HTTPError(409, "busy", "Busy.").to_response() == error_response(409, "busy", "Busy.")


def test_json_survives_surrogate_escaped_file_names() -> None:
    name = os.fsdecode(b"caf\xe9.txt")  # not UTF-8 on disk
    assert json.loads(json_response(200, {"path": name}).body) == {"path": name}


# --- SSE -----------------------------------------------------------------------------------------------


def test_sse_event_fields_and_multiline_data() -> None:
    assert sse_event('{"a":1}', id=42, event="progress") == b'id: 42\nevent: progress\ndata: {"a":1}\n\n'
    assert sse_event("one\ntwo\r\nthree\rfour") == b"data: one\ndata: two\ndata: three\ndata: four\n\n"
    assert sse_event("") == b"data: \n\n"
    # Only CR and LF end an SSE line; other Unicode line separators stay inside the data.
    assert sse_event("a\u2028b\x0bc") == "data: a\u2028b\x0bc\n\n".encode()


def test_sse_event_name_cannot_inject_fields() -> None:
    with pytest.raises(ValueError):
        sse_event("x", event="progress\ndata: forged")


def test_sse_comment_and_retry() -> None:
    assert sse_comment("keep-alive") == b": keep-alive\n\n"
    assert sse_comment("a\nb") == b": a\n: b\n\n"
    assert sse_retry(2000) == b"retry: 2000\n\n"
    with pytest.raises(ValueError):
        sse_retry(-1)
