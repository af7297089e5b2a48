"""Listeners and the token file: modes, stale sockets, a live daemon, loopback-only TCP, token handling."""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from syncsnapd.http import (
    AddressInUse,
    ListenerError,
    listener_address,
    load_or_create_token,
    open_tcp_listener,
    open_unix_listener,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def connects(path: Path) -> bool:
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError:
        return False
    await stream.aclose()
    return True


# --- Unix socket ---------------------------------------------------------------------------------------


async def test_unix_socket_is_0600_in_a_new_0700_directory(short_tmp: Path) -> None:
    path = short_tmp / "run" / "syncsnap" / "syncsnapd.sock"
    old_umask = os.umask(0)  # the most permissive umask must not widen anything
    try:
        listener = await open_unix_listener(path)
    finally:
        os.umask(old_umask)
    async with listener:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        assert listener_address(listener) == str(path)
        assert await connects(path)


async def test_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a socket file nobody listens on: what a crashed daemon leaves
    dead.close()
    async with await open_unix_listener(path):
        assert await connects(path)


async def test_live_daemon_is_not_displaced(short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    async with await open_unix_listener(path):
        with pytest.raises(AddressInUse, match=f"another syncsnapd is already listening on {path}"):
            await open_unix_listener(path)
        assert await connects(path)  # the first one still answers


async def test_a_path_that_is_not_a_socket_is_never_removed(short_tmp: Path) -> None:
    path = short_tmp / "important.txt"
    path.write_text("keep me")
    with pytest.raises(ListenerError, match="not a socket"):
        await open_unix_listener(path)
    assert path.read_text() == "keep me"
    link = short_tmp / "link.sock"
    link.symlink_to(path)
    with pytest.raises(ListenerError, match="not a socket"):
        await open_unix_listener(link)
    assert link.is_symlink()


async def test_directory_writable_by_others_is_refused(short_tmp: Path) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ListenerError, match="other users can write"):
        await open_unix_listener(shared / "s.sock")
    os.chmod(shared, 0o1777)  # sticky, like /tmp: others cannot replace our file
    async with await open_unix_listener(shared / "s.sock"):
        assert mode(shared / "s.sock") == 0o600


# --- TCP -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address, host", [("127.0.0.1:0", "127.0.0.1"), ("localhost:0", "127.0.0.1")])
async def test_tcp_loopback_listener_reports_its_port(address: str, host: str) -> None:
    async with await open_tcp_listener(address) as listener:
        bound = listener_address(listener)
        bound_host, port = bound.rsplit(":", 1)
        assert bound_host == host and int(port) > 0
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.aclose()


async def test_tcp_ipv6_loopback() -> None:
    try:
        listener = await open_tcp_listener("[::1]:0")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    async with listener:
        assert listener_address(listener).startswith("[::1]:")


@pytest.mark.parametrize(
    "address", ["0.0.0.0:8473", "[::]:8473", "192.168.1.10:80", "example.com:80", "127.0.0.2:80"]
)
async def test_tcp_refuses_non_loopback_hosts_naming_the_address(address: str) -> None:
    with pytest.raises(ValueError, match="loopback-only") as info:
        await open_tcp_listener(address)
    assert address in str(info.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", ":8473"])
async def test_tcp_refuses_malformed_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT|loopback-only"):
        await open_tcp_listener(address)


async def test_tcp_port_in_use_is_an_oserror() -> None:
    async with await open_tcp_listener("127.0.0.1:0") as first:
        with pytest.raises(OSError):
            await open_tcp_listener(listener_address(first))


# --- token ---------------------------------------------------------------------------------------------


def test_token_is_created_private_and_then_reused(short_tmp: Path) -> None:
    path = short_tmp / "cfg" / "syncsnap" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 43 and token.isprintable() and " " not in token
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert path.read_text().strip() == token
    assert load_or_create_token(path) == token
    assert not [p for p in path.parent.iterdir() if p.name != "token"]  # no temporary left behind
    assert load_or_create_token(short_tmp / "other") != token


def test_token_readable_by_others_is_replaced(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = short_tmp / "token"
    old = load_or_create_token(path)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="syncsnapd.listeners"):
        new = load_or_create_token(path)
    assert new != old
    assert mode(path) == 0o600
    assert path.read_text().strip() == new
    assert "replaced it with a new token" in caplog.text


def test_empty_token_file_gets_a_token(short_tmp: Path) -> None:
    path = short_tmp / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    token = load_or_create_token(path)
    assert token and path.read_text().strip() == token


def test_token_symlink_is_refused(short_tmp: Path) -> None:
    target = short_tmp / "elsewhere"
    target.write_text("x" * 40)
    os.chmod(target, 0o600)
    (short_tmp / "token").symlink_to(target)
    with pytest.raises(ListenerError, match="symbolic link"):
        load_or_create_token(short_tmp / "token")
