"""Logging in to the dashboard in a real Chromium: a one-time code, a session cookie, and nothing a page on
another local port can use."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from helpers.browser import DESKTOP, login_url
from helpers.daemon import api, wait_until


def test_login_code_becomes_a_cookie_and_leaves_the_address_bar(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    # Without a session, the page says what to do and the API refuses.
    page.goto(f"http://{d.tcp}/")
    expect(page.get_by_text("syncsnap open")).to_be_visible()
    assert page.request.get(f"http://{d.tcp}/api/v1/projects").status == 401

    page.goto(login_url(d))
    # Redirected to /: the code is gone from the address bar and from the history entry.
    assert page.url == f"http://{d.tcp}/"
    expect(page.get_by_role("article", name="docs")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "syncsnap_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert len(cookie["value"]) >= 43 and cookie["expires"] > 0
    context.close()


# An expired code is refused the same way; that needs 60 s to pass, so it is tested through the real HTTP
# server with a clock the test moves (tests/api/test_dashboard.py), not here.
def test_a_reused_code_is_refused(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    url = login_url(d)
    first = chromium.new_context()
    first.new_page().goto(url)
    assert any(c["name"] == "syncsnap_session" for c in first.cookies())
    second = chromium.new_context()
    page = second.new_page()
    response = page.goto(url)
    assert response is not None and response.status == 403
    expect(page.get_by_text("syncsnap open")).to_be_visible()
    assert not any(c["name"] == "syncsnap_session" for c in second.cookies())
    first.close()
    second.close()


@pytest.fixture
def other_origin() -> Iterator[tuple[str, dict[str, str]]]:
    """A page served on another 127.0.0.1 port: what any local program (or a page it serves) could show the
    logged-in browser. ``pages`` maps paths to HTML."""
    pages: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "not here").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_on_another_local_port_cannot_start_a_snapshot(
        chromium: Browser, dashboard_daemon: Any, other_origin: tuple[str, dict[str, str]]) -> None:
    d = dashboard_daemon()
    origin, pages = other_origin
    target = f"http://{d.tcp}/api/v1/projects/docs/snapshots"
    pages["/form"] = (f'<form id="f" method="POST" action="{target}"><input name="x" value="1"></form>'
                      '<script>document.getElementById("f").submit()</script>')
    pages["/fetch"] = (f'<p id="out">…</p><script>fetch("{target}", {{method: "POST", credentials: "include",'
                       ' mode: "no-cors"}).then(() => out.textContent = "sent", () => out.textContent = "failed")'
                       '</script>')
    context = chromium.new_context()
    page = context.new_page()
    page.goto(login_url(d))
    assert any(c["name"] == "syncsnap_session" for c in context.cookies())  # logged in, same site

    with page.expect_response(target) as answer:
        page.goto(f"{origin}/form")
    assert answer.value.status == 403
    page.goto(f"{origin}/fetch")
    expect(page.locator("#out")).to_have_text("sent")  # the request went out (no-cors: opaque answer)
    # The daemon started nothing: the project has no run at all.
    assert api(d, "/projects/docs/runs")["runs"] == []
    # Its own page, same browser, same cookie, can.
    page.goto(f"http://{d.tcp}/")
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now").click()
    wait_until(lambda: api(d, "/projects/docs/runs")["runs"], 10, "the dashboard's run")
    context.close()
