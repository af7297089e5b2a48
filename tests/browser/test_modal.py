"""The snapshot modal in a real Chromium: it follows a run through its steps, closes itself after success,
cancels, pauses and resumes, and opens live on a run that another tool started."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

from playwright.sync_api import Browser, Page, expect

from helpers.browser import DESKTOP, SCREENSHOTS, login_url
from helpers.daemon import DaemonProcess, api, wait_until


def open_dashboard(chromium: Browser, d: DaemonProcess) -> Page:
    # Reduced motion: the bar has no transition, so that a screenshot shows it where its value says.
    page = chromium.new_context(viewport=DESKTOP, reduced_motion="reduce").new_page()
    page.goto(login_url(d))
    expect(page.get_by_role("status", name="Connection")).to_have_text("Live")
    return page


SNAPSHOT_STEPS = ["Waiting for sync", "Browsing folder status", "Browsing files", "Compressing",
                  "Uploading to the store", "Completed"]

# Records the modal's current step each time the DOM changes it (a MutationObserver sees every change,
# however fast the run).
RECORD_STEPS = """() => {
    window.stepsSeen = [];
    new MutationObserver(() => {
        const current = document.querySelector("dialog[open] [aria-current=step]");
        const text = current && current.textContent.replace("(done)", "").replace(/^[^A-Za-z]+/, "").trim();
        if (text && window.stepsSeen[window.stepsSeen.length - 1] !== text) window.stepsSeen.push(text);
    }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def test_snapshot_from_the_page_goes_through_the_steps_and_closes(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon(files=600, size=256 * 1024)
    page = open_dashboard(chromium, d)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate(RECORD_STEPS)
    project = page.get_by_role("article", name="docs")
    project.get_by_role("button", name="Snapshot now").click()
    dialog = page.get_by_role("dialog", name="Snapshot of docs")
    expect(dialog).to_be_visible()
    bar = dialog.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[0-9]+$"))
    # Mid-run: a screenshot of the modal for docs/ and README.
    wait_until(lambda: float(bar.get_attribute("aria-valuenow") or 0) > 20, 30, "the bar past 20 %")
    dialog.screenshot(path=str(SCREENSHOTS / "modal.png"))
    # The modal closed itself once the run completed, having marked the steps in order.
    expect(dialog).to_be_hidden(timeout=60_000)
    seen = page.evaluate("window.stepsSeen")
    assert seen[-1] == "Completed" and "Compressing" in seen, seen
    assert seen == sorted(seen, key=SNAPSHOT_STEPS.index), seen
    runs = api(d, "/projects/docs/runs")["runs"]
    assert runs[0]["state"] == "completed" and runs[0]["trigger"] == "api"
    expect(project.get_by_text("completed", exact=False).first).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))


def test_the_modal_closes_2_s_after_completion_and_stays_open_on_failure(
        chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    page = open_dashboard(chromium, d)
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now").click()
    dialog = page.get_by_role("dialog", name="Snapshot of docs")
    expect(dialog.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    completed_at = time.monotonic()
    expect(dialog).to_be_hidden(timeout=5_000)
    assert 1.5 <= time.monotonic() - completed_at <= 4.0
    # A failure keeps the modal open with the error: the folder is gone.
    folder = d.base / "docs"
    folder.rename(d.base / "docs-moved")
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now").click()
    expect(dialog.get_by_text("folder_missing", exact=False)).to_be_visible(timeout=15_000)
    page.wait_for_timeout(3000)
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def test_cancel_from_the_modal(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon(sparse_gib=2)
    page = open_dashboard(chromium, d)
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now").click()
    dialog = page.get_by_role("dialog", name="Snapshot of docs")
    expect(dialog.get_by_role("progressbar")).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog.get_by_text("cancelled", exact=False).first).to_be_visible(timeout=10_000)
    wait_until(lambda: api(d, "/projects/docs/runs")["runs"][0]["state"] == "cancelled", 10, "the cancelled run")
    assert api(d, "/projects/docs/snapshots")["snapshots"] == []


def test_pause_and_resume_from_the_modal(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon(sparse_gib=2)
    page = open_dashboard(chromium, d)
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now").click()
    dialog = page.get_by_role("dialog", name="Snapshot of docs")
    bar = dialog.get_by_role("progressbar")
    wait_until(lambda: float(bar.get_attribute("aria-valuenow") or 0) > 5, 30, "the run under way")
    dialog.get_by_role("button", name="Pause").click()
    expect(dialog.get_by_text("Paused", exact=False).first).to_be_visible(timeout=5_000)
    held = bar.get_attribute("aria-valuenow")
    page.wait_for_timeout(1500)
    assert bar.get_attribute("aria-valuenow") == held  # no progress while paused
    assert api(d, "/projects/docs")["paused"] is True
    dialog.get_by_role("button", name="Resume").click()
    expect(dialog).to_be_hidden(timeout=60_000)  # completed, then closed itself
    run = api(d, "/projects/docs/runs")["runs"][0]
    assert run["state"] == "completed" and run["paused_seconds"] >= 1.0


def test_a_run_started_by_the_cli_appears_live(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon(sparse_gib=2)
    page = open_dashboard(chromium, d)
    project = page.get_by_role("article", name="docs")
    cli = subprocess.Popen([sys.executable, "-m", "syncsnap", "snapshot", "docs", "--json"], env=d.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The list shows it under way without a reload, and its modal opens on it live.
        expect(project.get_by_text("compressing", exact=False).or_(project.get_by_text("browsing", exact=False)
               ).first).to_be_visible(timeout=20_000)
        project.get_by_role("button", name="Show progress").click()
        dialog = page.get_by_role("dialog", name="Snapshot of docs")
        expect(dialog.get_by_role("progressbar")).to_be_visible()
        expect(dialog).to_be_hidden(timeout=60_000)
    finally:
        assert cli.wait(60) == 0
    assert api(d, "/projects/docs/runs")["runs"][0]["state"] == "completed"
