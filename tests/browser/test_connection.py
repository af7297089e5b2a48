"""The connection indicator in a real Chromium: "Live" on the event stream, "Reconnecting in N s" when the
daemon dies, "Live" again once it is back (no reload), "Polling" when the stream is refused, and back."""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Any

from playwright.sync_api import Browser, expect

from helpers.browser import DESKTOP, login_url
from helpers.daemon import spawn_daemon


def test_the_page_reconnects_by_itself_after_the_daemon_is_killed(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    page = chromium.new_context(viewport=DESKTOP).new_page()
    page.goto(login_url(d))
    status = page.get_by_role("status", name="Connection")
    expect(status).to_have_text("Live")
    page.evaluate("window.notReloaded = true")

    d.stop(signal.SIGKILL)
    expect(status).to_have_text(re.compile(r"^Reconnecting in [0-9]+ s$"), timeout=10_000)
    again = spawn_daemon(d.base, d.config)  # same port, same runtime dir: the sessions file is still there
    try:
        expect(status).to_have_text("Live", timeout=40_000)
        assert page.evaluate("window.notReloaded") is True
        # And it works: a snapshot from the page, on the new daemon.
        page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now").click()
        expect(page.get_by_role("dialog", name="Snapshot of docs")).to_be_visible()
    finally:
        again.stop()


def test_polling_while_the_stream_is_refused_then_live_again(chromium: Browser, dashboard_daemon: Any) -> None:
    # One stream at most: a curl holds it, so the page's EventSource gets 503 (JSON requests still work).
    d = dashboard_daemon(extra_daemon="max_streams = 1")
    hog = subprocess.Popen(["curl", "-sN", "--unix-socket", d.socket, "http://localhost/api/v1/events"],
                           stdout=subprocess.PIPE)
    try:
        assert hog.stdout is not None and hog.stdout.readline()  # "retry: ...": it holds the slot
        context = chromium.new_context(viewport=DESKTOP)
        page = context.new_page()
        # The page's own timers run on a clock the test moves: 1+2+4+8+16 s of backoff take no real time.
        page.clock.install()
        page.goto(login_url(d))
        status = page.get_by_role("status", name="Connection")
        for _ in range(120):
            if status.inner_text() == "Polling":
                break
            page.clock.run_for(1000)
            page.wait_for_timeout(50)  # let real network answers arrive between the ticks
        expect(status).to_have_text("Polling")
        # Polling keeps the page current: a run started elsewhere shows up.
        project = page.get_by_role("article", name="docs")
        expect(project).to_be_visible()
        subprocess.run(["curl", "-sS", "-X", "POST", "--unix-socket", d.socket,
                        "http://localhost/api/v1/projects/docs/snapshots"], check=True, capture_output=True)
        for _ in range(60):
            if project.get_by_text("completed", exact=False).count():
                break
            page.clock.run_for(1000)
            page.wait_for_timeout(50)
        expect(project.get_by_text("completed", exact=False).first).to_be_visible()
        # The slot frees up: within the next stream retry (30 s of page time) the page is live again.
        hog.kill()
        hog.wait()
        for _ in range(60):
            if status.inner_text() == "Live":
                break
            page.clock.run_for(1000)
            page.wait_for_timeout(50)
        expect(status).to_have_text("Live")
        context.close()
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
