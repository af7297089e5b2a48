"""The dashboard's other views in a real Chromium: runs history (table, chart, a run's steps, its events
exported), snapshots (browse, download one file, restore a path, compare two) and the store check."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect

from helpers.browser import DESKTOP, SCREENSHOTS, login_url
from helpers.daemon import DaemonProcess, api, wait_until


def two_snapshots(d: DaemonProcess) -> list[dict[str, Any]]:
    for change in ("first", "second"):
        (d.base / "docs" / "notes.txt").write_text(f"notes, {change} version\n")
        run = api(d, "/projects/docs/snapshots", "POST")["run"]
        wait_until(lambda run=run: api(d, f"/runs/{run}")["state"] == "completed", 30, f"run {run}")
    return list(api(d, "/projects/docs/snapshots")["snapshots"])


def logged_in(chromium: Browser, d: DaemonProcess) -> Page:
    page = chromium.new_context(viewport=DESKTOP, accept_downloads=True).new_page()
    page.goto(login_url(d))
    expect(page.get_by_role("status", name="Connection")).to_have_text("Live")
    return page


def test_history_table_chart_steps_and_export(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    two_snapshots(d)
    runs = api(d, "/projects/docs/runs")["runs"]
    page = logged_in(chromium, d)
    page.get_by_role("article", name="docs").get_by_role("button", name="History").click()
    table = page.get_by_role("table", name="Runs of docs, newest first")
    expect(table.get_by_role("row")).to_have_count(1 + len(runs))  # a header row and one per run
    expect(page.get_by_role("img", name="Duration", exact=False).or_(page.locator("svg.chart-svg")).first
           ).to_be_visible()
    table.get_by_role("row").nth(1).get_by_role("button").click()
    details = page.get_by_role("region", name=f"Run {runs[0]['run']}")
    expect(details.get_by_role("table", name="Step timings")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "history.png"), full_page=True)
    with page.expect_download() as download:
        details.get_by_role("button", name="Export events").click()
    lines = Path(download.value.path()).read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events[-1]["state"] == "completed" and {e["run"] for e in events} == {runs[0]["run"]}


def test_browse_download_restore_and_compare(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    # A name that is not UTF-8: the page must ask for the same bytes back.
    with open(os.fsencode(d.base / "docs" / "sub") + b"/bad\xff.bin", "wb") as f:
        f.write(b"odd bytes")
    snaps = two_snapshots(d)
    newest = snaps[-1]["id"]
    page = logged_in(chromium, d)
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshots").click()
    page.get_by_role("button", name=f"Browse snapshot {newest}").click()
    page.get_by_role("button", name="Open folder sub").click()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download report ü.txt").click()
    assert Path(download.value.path()).read_text() == "the report\n"
    assert download.value.suggested_filename == "report ü.txt"
    with page.expect_download() as download:
        page.locator("a[download]", has_text="bad").click()
    assert Path(download.value.path()).read_bytes() == b"odd bytes"

    # Restore that folder into a new directory; the progress shows in the modal.
    page.get_by_role("button", name="Restore this folder").click()
    target = d.base / "restored"
    page.get_by_label("Target folder").fill(str(target))
    page.get_by_role("button", name="Start restore").click()
    dialog = page.get_by_role("dialog", name="Restore of docs")
    expect(dialog).to_be_visible()
    wait_until(lambda: (target / "sub" / "report ü.txt").exists(), 20, "the restored file")
    assert (target / "sub" / "report ü.txt").read_text() == "the report\n"
    expect(dialog.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")

    # Compare the two snapshots: notes.txt changed.
    if dialog.is_visible():
        dialog.get_by_role("button", name="Close").click()
    page.get_by_label("Compare from").select_option(snaps[0]["id"])
    page.get_by_label("to", exact=True).select_option(newest)
    page.get_by_role("button", name="Compare").click()
    differences = page.get_by_role("region", name="Differences")
    expect(differences).to_contain_text("1 modified")
    expect(differences).to_contain_text("notes.txt: content")


def test_check_store_from_the_page(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    two_snapshots(d)
    page = logged_in(chromium, d)
    store = page.get_by_role("region", name="Store")
    expect(store).to_contain_text("Never checked")
    store.get_by_role("button", name="Check store").click()
    dialog = page.get_by_role("dialog", name="Store check")
    expect(dialog).to_be_visible()
    expect(store).to_contain_text("no problems", timeout=20_000)
