"""What the daemon listens on and how clients find it: the listeners (passed by systemd socket activation,
or bound here) and the discovery file. Used by :mod:`._daemon` at start and stop.

- A configured TCP port that is taken (two users on one machine both default to 8473) is not fatal: the
  next free loopback port is bound instead (at most :data:`TCP_PORT_TRIES` tries), published in the
  discovery file, and the log says why; with none free the daemon serves on the Unix socket only.
  Sockets passed by systemd are used as they are.
- One discovery file per runtime directory, so one daemon: a second one refuses to start while the daemon
  the file names is alive and answers on its socket (:func:`check_discovery_file`); a stale file is
  replaced.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import trio

from .. import __version__
from ..core import DaemonConfig
from ..http import listener_address, load_or_create_token, open_tcp_listener, open_unix_listener

log = logging.getLogger("syncsnapd")

# Ports tried after a configured TCP port that is taken (the next ones up): enough for the users of one
# machine, bounded so that a start never scans the port range.
TCP_PORT_TRIES = 10
# How long the socket of the daemon a discovery file names gets to answer (a live daemon accepts at once;
# a stale socket file refuses at once).
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class DaemonInfo:
    """What a started daemon is serving; given to ``task_status.started``."""

    socket: Path
    tcp: str | None
    token: str | None
    discovery_file: Path
    activated: bool


class StartupError(Exception):
    """The daemon cannot start (store locked, socket in use, ...); the message says why."""


# --- discovery file ----------------------------------------------------------------------------------

def write_discovery_file(path: Path, info: DaemonInfo, token_file: Path | None) -> None:
    """Write the discovery file atomically (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"pid": os.getpid(), "version": __version__, "socket": str(info.socket), "tcp": info.tcp,
            "token_file": str(token_file) if token_file else None}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.write("\n")
    os.replace(tmp, path)


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_SECONDS)
    try:
        probe.connect(path)
    except TimeoutError:
        return True  # its backlog is full: alive, just busy
    except OSError:
        return False
    finally:
        probe.close()
    return True


def check_discovery_file(path: Path) -> None:
    """Refuse to start beside a live daemon that owns the discovery file (its pid is alive and its socket
    answers): it would be orphaned, its clients sent to us. A stale file (dead pid, dead socket) is
    left to be replaced.

    Raises:
        StartupError: naming the running daemon's pid and socket.
    """
    try:
        data = json.loads(path.read_text())
        pid, sock = int(data["pid"]), str(data["socket"])
    except (OSError, ValueError, TypeError, KeyError):
        return
    if pid == os.getpid() or pid <= 0:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, another user's
    if _answers(sock):
        raise StartupError(f"another syncsnapd (pid {pid}) is running and serving on {sock} (discovery file "
                           f"{path}); stop it first, or start this one with another XDG_RUNTIME_DIR")


def remove_discovery_file(path: Path) -> None:
    """Remove the discovery file if it is still ours (another daemon may have replaced it)."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        path.unlink()
    except (OSError, ValueError):
        pass


# --- listeners ---------------------------------------------------------------------------------------

@dataclass
class Listeners:
    pairs: list[tuple[trio.SocketListener, str]]
    tcp_address: str | None
    token: str | None
    bound_socket_inode: int | None  # the Unix socket file we created (None: passed by systemd, or none)
    activated: bool

    async def aclose(self) -> None:
        for listener, _ in self.pairs:
            await listener.aclose()


def _classify_passed(passed: dict[str, socket.socket]) -> tuple[list[socket.socket], list[socket.socket]]:
    """Split sockets passed by systemd into (unix, tcp): by name ("unix", "tcp") when named, else by family.

    Raises:
        StartupError: a socket named for one transport is of the other family, or is not a stream socket.
    """
    unix: list[socket.socket] = []
    tcp: list[socket.socket] = []
    for name, s in passed.items():
        base = name.split("#", 1)[0]
        is_unix = s.family == socket.AF_UNIX
        is_inet = s.family in (socket.AF_INET, socket.AF_INET6)
        if s.type != socket.SOCK_STREAM or not (is_unix or is_inet):
            raise StartupError(f"socket activation: {name!r} is not a Unix or TCP stream socket")
        if (base == "unix" and not is_unix) or (base == "tcp" and not is_inet):
            raise StartupError(f"socket activation: the socket named {base!r} is of the wrong family")
        (unix if is_unix else tcp).append(s)
    return unix, tcp


async def open_listeners(config: DaemonConfig, passed: dict[str, socket.socket]) -> Listeners:
    """Use the sockets systemd passed (``LISTEN_FDNAMES`` "unix" / "tcp", or by family when unnamed),
    and bind the missing ones ourselves as configured. A socket systemd passed is never bound or unlinked
    here.
    """
    out = Listeners([], None, None, None, bool(passed))
    unix, tcp = _classify_passed(passed)
    if passed:
        log.info("socket activation: %s", ", ".join(f"{name} ({s.getsockname()})" for name, s in passed.items()))
    try:
        for s in unix:
            out.pairs.append((trio.SocketListener(trio.socket.from_stdlib_socket(s)), "unix"))
        if not unix:
            out.pairs.append((await open_unix_listener(config.socket), "unix"))
            out.bound_socket_inode = os.stat(config.socket).st_ino
        for s in tcp:
            out.pairs.append((trio.SocketListener(trio.socket.from_stdlib_socket(s)), "tcp"))
        if not tcp and config.tcp is not None:
            tcp_listener = await _open_tcp_or_next(config.tcp)
            if tcp_listener is not None:
                out.pairs.append((tcp_listener, "tcp"))
        tcp_listeners = [lst for lst, kind in out.pairs if kind == "tcp"]
        if tcp_listeners:
            out.tcp_address = listener_address(tcp_listeners[0])
            out.token = await trio.to_thread.run_sync(load_or_create_token, config.token_file)
    except (OSError, ValueError) as exc:
        await out.aclose()
        raise StartupError(str(exc)) from exc
    return out


async def _open_tcp_or_next(address: str) -> trio.SocketListener | None:
    """Listen on ``address``, or on the next free port when it is taken (logged, naming the address and
    the ``tcp`` key); None when none of :data:`TCP_PORT_TRIES` is free: then the Unix socket only."""
    host, _, port_text = address.rpartition(":")
    port = int(port_text)
    tried: list[str] = []
    for candidate in range(port, min(port + TCP_PORT_TRIES, 65535) + 1):
        try:
            listener = await open_tcp_listener(f"{host}:{candidate}")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
            tried.append(str(candidate))
            continue
        if tried:
            log.warning("TCP address %s (daemon.tcp) is in use by another program, perhaps another user's "
                        "syncsnapd; serving TCP on %s instead (published in the discovery file). Set daemon.tcp "
                        "or --tcp to choose the port", address, listener_address(listener))
        return listener
    log.warning("TCP address %s (daemon.tcp) is in use, and so are ports %s to %s; serving on the Unix socket "
                "only. Set daemon.tcp or --tcp to a free port", address, tried[1] if len(tried) > 1 else tried[0],
                tried[-1])
    return None


def unix_socket_path(listeners: Listeners, config: DaemonConfig) -> Path:
    for listener, kind in listeners.pairs:
        if kind == "unix":
            name = listener.socket.getsockname()
            if isinstance(name, str) and name:
                return Path(name)
    return config.socket


def remove_own_socket(path: Path, inode: int | None) -> None:
    if inode is None:
        return
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass
