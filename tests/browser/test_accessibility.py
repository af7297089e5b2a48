"""The dashboard for keyboard users and screen readers, on a phone-width window and in dark mode, in a real
Chromium. Chromium's own accessibility tree is the judge of names."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Browser, Page, expect

from helpers.browser import DESKTOP, PHONE, SCREENSHOTS, login_url

# Roles a user acts on or must be told about: each needs a name a screen reader can say.
NAMED_ROLES = {"button", "link", "textbox", "combobox", "checkbox", "radio", "menuitem", "tab", "slider",
               "spinbutton", "searchbox", "listbox", "progressbar", "dialog", "switch", "region"}


def unnamed_controls(page: Page) -> list[str]:
    cdp = page.context.new_cdp_session(page)
    tree = cdp.send("Accessibility.getFullAXTree")
    cdp.detach()
    bad = []
    for node in tree["nodes"]:
        if node.get("ignored"):
            continue
        role = (node.get("role") or {}).get("value")
        name = ((node.get("name") or {}).get("value") or "").strip()
        if role in NAMED_ROLES and not name:
            bad.append(f"{role} (node {node['nodeId']})")
    return bad


def test_keyboard_only_start_and_escape(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon(files=100, size=256 * 1024)
    page = chromium.new_context(viewport=DESKTOP).new_page()
    page.goto(login_url(d))
    expect(page.get_by_role("status", name="Connection")).to_have_text("Live")
    target = page.get_by_role("article", name="docs").get_by_role("button", name="Snapshot now")
    for _ in range(40):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached 'Snapshot now'")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Snapshot of docs")
    expect(dialog).to_be_visible()
    assert unnamed_controls(page) == []
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # Focus goes back where it was, so the keyboard user is not lost.
    assert target.evaluate("el => el === document.activeElement")


def test_no_unnamed_control_in_any_view(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon()
    page = chromium.new_context(viewport=DESKTOP).new_page()
    page.goto(login_url(d))
    project = page.get_by_role("article", name="docs")
    expect(project).to_be_visible()
    assert unnamed_controls(page) == []
    for view in ("History", "Snapshots"):
        project.get_by_role("button", name=view).click()
        page.wait_for_timeout(300)
        assert unnamed_controls(page) == [], view


def test_phone_width_and_dark_mode(chromium: Browser, dashboard_daemon: Any) -> None:
    d = dashboard_daemon(projects=("docs", "photos"))
    context = chromium.new_context(viewport=PHONE, color_scheme="dark")
    page = context.new_page()
    page.goto(login_url(d))
    expect(page.get_by_role("article", name="photos")).to_be_visible()
    # Nothing wider than the window: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    channels = [int(c) for c in background[background.index("(") + 1:background.index(")")].split(",")[:3]]
    assert sum(channels) / 3 < 80, f"dark mode background is {background}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-phone-dark.png"), full_page=True)
    context.close()
