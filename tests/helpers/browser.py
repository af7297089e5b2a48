"""A real headless Chromium (Debian's ``chromium``) driven by Playwright's sync API, for the dashboard.

Never a downloaded browser: Playwright launches the system's Chromium by path (FIELD-NOTES.md). The
resolver rule keeps Chromium from reaching any host but 127.0.0.1. Missing Chromium is a failure with the
command that installs it, not a skip: CI installs it (``make setup-system``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.daemon import DaemonProcess

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
DESKTOP = {"width": 1280, "height": 800}
# Screenshots the browser tests take. `make screenshots` sets SYNCSNAP_SCREENSHOTS=docs/img to refresh the
# ones README.md and docs show; a plain test run writes them to a temporary folder, so that it never
# changes tracked files.
SCREENSHOTS = Path(os.environ.get("SYNCSNAP_SCREENSHOTS") or Path(tempfile.gettempdir()) / "syncsnap-screenshots")
PHONE = {"width": 390, "height": 844}


def login_url(d: DaemonProcess) -> str:
    """A one-time login URL, as a user gets it: ``syncsnap open --print`` (over the Unix socket)."""
    out = subprocess.run([sys.executable, "-m", "syncsnap", "open", "--print"], env=d.env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().splitlines()[-1]
    assert url.startswith(f"http://{d.tcp}/login?code="), url
    return url


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """One Chromium per test module (closed before other modules run trio tests); each test opens its own context (cookies, storage)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup-system` (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
