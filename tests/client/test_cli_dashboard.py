"""``syncsnap open`` and ``syncsnap logout --all``, and the library's ``login_code()`` and
``revoke_sessions()``, against a real daemon: the URL a user gets logs a browser (curl) in, once."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import syncsnap
from helpers.client import cli
from helpers.daemon import DaemonProcess, make_tree

Factory = Callable[..., DaemonProcess]


def visit(url: str, *args: str) -> tuple[int, str]:
    """curl a URL as a browser would: the status and the session cookie it set ("" if none)."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-D", "-", *args, url], capture_output=True, text=True,
                         timeout=30)
    lines = out.stdout.splitlines()
    cookie = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("set-cookie:")), "")
    return int(lines[0].split()[1]), cookie.split(";", 1)[0].partition("=")[2]


def projects_status(d: DaemonProcess, session: str) -> int:
    return visit(f"http://{d.tcp}/api/v1/projects", "-H", f"Cookie: syncsnap_session={session}")[0]


def started(factory: Factory, short_tmp: Path) -> DaemonProcess:
    make_tree(short_tmp / "p", files=2)
    return factory({"p": short_tmp / "p"})


def test_open_print_prints_a_url_that_logs_in_once(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    out = cli(d, "open", "--print")
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert out.stdout == url + "\n" and url.startswith(f"http://{d.tcp}/login?code=")
    status, session = visit(url)
    assert status == 303 and len(session) == 43
    assert projects_status(d, session) == 200
    assert visit(url) == (403, "")


def test_open_hands_the_url_to_the_browser(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    seen = short_tmp / "browser-saw"
    browser = short_tmp / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {seen}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    out = cli(d, "open", env={**d.env, "BROWSER": str(browser), "DISPLAY": ""})
    assert out.returncode == 0, out.stderr
    assert "Opened the dashboard" in out.stdout and "code=" not in out.stdout
    status, session = visit(seen.read_text())
    assert status == 303 and projects_status(d, session) == 200


def test_open_over_tcp_says_to_use_the_unix_socket(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    out = cli(d, "open", "--print", "--url", f"http://{d.tcp}")
    assert out.returncode == 2 and out.stdout == "" and "Unix socket" in out.stderr


def test_logout_all_revokes_every_session(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    sessions = [visit(cli(d, "open", "--print").stdout.strip())[1] for _ in range(2)]
    assert [projects_status(d, s) for s in sessions] == [200, 200]
    out = cli(d, "logout", "--all")
    assert out.returncode == 0 and out.stdout == "Logged out 2 browser sessions.\n"
    assert [projects_status(d, s) for s in sessions] == [401, 401]
    assert cli(d, "logout", "--all", "--json").stdout.strip() == '{"revoked":0}'
    assert cli(d, "logout").returncode == 2  # --all is required: a browser logs itself out from the page


async def test_the_async_library_gets_codes_and_revokes(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    async with syncsnap.open_client(env=d.env) as client:
        login = await client.login_code()
        assert isinstance(login, syncsnap.LoginCode) and login.expires_in_seconds == 60
        assert login.url == f"http://{d.tcp}/login?code={login.code}"
        status, session = visit(login.url)
        assert status == 303
        assert await client.revoke_sessions() == 1
    assert projects_status(d, session) == 401


def test_the_blocking_library_gets_codes_and_revokes(daemon_factory: Factory, short_tmp: Path) -> None:
    d = started(daemon_factory, short_tmp)
    with syncsnap.Client(env=d.env) as client:
        session = visit(client.login_code().url)[1]
        assert projects_status(d, session) == 200
        assert client.revoke_sessions() == 1
    assert projects_status(d, session) == 401
    with syncsnap.Client(url=f"http://{d.tcp}", token_file=os.fspath(short_tmp / "token"), env={}) as tcp_client:
        try:
            tcp_client.login_code()
        except syncsnap.Unauthorized as exc:
            assert exc.code == "forbidden" and "Unix socket" in str(exc)
        else:
            raise AssertionError("a login code over TCP")
        assert tcp_client.revoke_sessions() == 0
