"""The dashboard's Versions view in a real Chromium (issue 13, item 5): clicking a file in the snapshot
browser lists its versions; "Download" gives one version's bytes and "Restore next to the original" writes
it beside the live file (checked on disk), leaving the live file as it was; errors are shown."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect

from helpers.browser import DESKTOP, login_url
from helpers.daemon import DaemonProcess, api, wait_until

FIRST = b"notes, first version\n"
SECOND = b"notes, second version (longer)\n"


def snapshot(d: DaemonProcess) -> None:
    run = api(d, "/projects/docs/snapshots", "POST")["run"]
    wait_until(lambda: api(d, f"/runs/{run}")["state"] == "completed", 30, f"run {run}")


def logged_in(chromium: Browser, d: DaemonProcess) -> Page:
    page = chromium.new_context(viewport=DESKTOP, accept_downloads=True).new_page()
    page.goto(login_url(d))
    expect(page.get_by_role("status", name="Connection")).to_have_text("Live")
    return page


def test_versions_of_a_file_download_and_restore_next_to_the_original(chromium: Browser,
                                                                       dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    notes = d.base / "docs" / "notes.txt"
    for data in (FIRST, SECOND):
        notes.write_bytes(data)
        snapshot(d)
    os.unlink(d.base / "docs" / "sub" / "report ü.txt")
    snapshot(d)  # a third snapshot: the report's deletion
    snaps = api(d, "/projects/docs/snapshots")["snapshots"]
    versions = api(d, "/projects/docs/versions?path=notes.txt")["versions"]
    assert [v["count"] for v in versions] == [2, 1]  # the second version, then the first
    live = os.stat(notes)

    page = logged_in(chromium, d)
    page.get_by_role("article", name="docs").get_by_role("button", name="Snapshots").click()
    page.get_by_role("button", name=f"Browse snapshot {snaps[-1]['id']}").click()
    page.get_by_role("button", name="Versions of notes.txt").click()
    view = page.get_by_role("region", name="Versions of notes.txt")
    table = view.get_by_role("table", name="Versions of notes.txt, newest first")
    expect(table.get_by_role("row")).to_have_count(3)  # the header and two versions, newest first
    first_id = versions[1]["content_id"][:12]
    expect(table.get_by_role("row").nth(1)).to_contain_text(versions[0]["content_id"][:12])
    expect(table.get_by_role("row").nth(2)).to_contain_text(first_id)

    with page.expect_download() as download:
        view.get_by_role("link", name=f"Download version {first_id}").click()
    assert Path(download.value.path()).read_bytes() == FIRST
    assert download.value.suggested_filename == "notes.txt"

    view.get_by_role("button", name=f"Restore version {first_id} next to the original").click()
    status = view.get_by_role("status")
    expect(status).to_contain_text("Restored to ")
    restored = Path(status.inner_text().removeprefix("Restored to "))
    assert restored.parent == notes.parent and restored.name.startswith("notes (syncsnap ")
    assert restored.read_bytes() == FIRST
    assert (notes.read_bytes(), os.stat(notes).st_ino, os.stat(notes).st_mtime_ns) == (
        SECOND, live.st_ino, live.st_mtime_ns)

    # A deleted file's versions show the deletion; restoring where its folder is gone shows the error.
    page.get_by_role("button", name=f"Browse snapshot {snaps[-2]['id']}").click()
    page.get_by_role("button", name="Open folder sub").click()
    page.get_by_role("button", name="Versions of report ü.txt").click()
    view = page.get_by_role("region", name="Versions of sub/report ü.txt")
    rows = view.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("deleted")
    (d.base / "docs" / "sub").rename(d.base / "sub-moved")
    view.get_by_role("button", name="next to the original").click()
    expect(view.get_by_role("status")).to_contain_text("(target_invalid)")
    assert sorted(os.listdir(d.base / "sub-moved")) == []
