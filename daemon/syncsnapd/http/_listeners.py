"""Where syncsnapd listens, and the secret TCP clients present.

- :func:`open_unix_listener`: the Unix socket, mode 0600 in a 0700 directory, replacing a stale socket
  file only when nothing answers on it.
- :func:`open_tcp_listener`: a loopback-only TCP listener (``127.0.0.1``, ``[::1]`` or ``localhost``).
- :func:`load_or_create_token`: the bearer token file, 0600, created atomically at first start.

Who may talk to a listener is decided per request by :func:`syncsnapd.http.authorize`
(``SO_PEERCRED`` uid on the Unix socket; ``Host`` and token on TCP).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import stat
from pathlib import Path

import trio

__all__ = [
    "AddressInUse",
    "ListenerError",
    "listener_address",
    "load_or_create_token",
    "open_tcp_listener",
    "open_unix_listener",
]

LOGGER = logging.getLogger("syncsnapd.listeners")

# Connections the kernel queues before we accept them. Linux caps it at net.core.somaxconn (4096 on
# current kernels); trio's open_tcp_listeners asks for 0xFFFF and lets the kernel cap it. Our clients are
# local and few, so a modest backlog is plenty; it is also what nginx uses by default (511).
BACKLOG = 511

# How long to wait for an existing socket to answer before declaring it stale. A live daemon accepts (the
# kernel completes a Unix connect from its backlog) in microseconds; a stale file refuses at once.
_PROBE_SECONDS = 1.0

_LOOPBACK = {"127.0.0.1": socket.AF_INET, "localhost": socket.AF_INET, "[::1]": socket.AF_INET6}


class ListenerError(OSError):
    """A listener cannot be opened safely; the message says why and names the path or address."""


class AddressInUse(ListenerError):
    """Another syncsnapd already answers on the Unix socket path."""


def _ensure_private_dir(directory: Path) -> None:
    # Create the socket's directory 0700. An existing directory is left as it is, unless others can
    # write to it without the sticky bit: then anyone could replace our socket with their own, and a
    # client would talk to an impostor.
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        st = directory.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise ListenerError(f"{directory} exists and is not a directory") from None
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise ListenerError(
                f"refusing to listen in {directory}: other users can write to it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); use a private directory"
            ) from None
    else:
        os.chmod(directory, 0o700)  # mkdir's mode is reduced by the umask, never widened; make it exact


def _probe(path: Path) -> bool:
    # True when something accepts connections on the socket at path.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_SECONDS)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # its backlog is full: it is alive, just busy
    except OSError as exc:
        raise ListenerError(f"cannot check the existing socket {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    return True


def _bind_unix(path: Path, backlog: int) -> socket.socket:
    _ensure_private_dir(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenerError(f"{path} exists and is not a socket; refusing to replace it")
        if _probe(path):
            raise AddressInUse(errno.EADDRINUSE, f"another syncsnapd is already listening on {path}")
        LOGGER.info("replacing the stale socket %s", path)
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        # Nobody can connect before listen(), so the default mode the file had for a moment never let
        # anyone in; from here on only our user (and root) can connect.
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_unix_listener(path: Path, *, backlog: int = BACKLOG) -> trio.SocketListener:
    """Listen on the Unix socket ``path`` (mode 0600; its directory is created 0700 if missing).

    A leftover socket file from a daemon that died is replaced, but only if it is a socket and nothing
    answers on it.

    Raises:
        AddressInUse: a live daemon answers on ``path``.
        ListenerError: ``path`` exists and is not a socket (it is never removed), or its directory is
            writable by other users (without the sticky bit), or the existing socket cannot be probed.
        OSError: binding failed.
    """
    # In a thread: probing an existing socket may wait (up to _PROBE_SECONDS) for a busy daemon.
    sock = await trio.to_thread.run_sync(_bind_unix, Path(path), backlog)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _parse_tcp_address(address: str) -> tuple[str, socket.AddressFamily, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"TCP address {address!r} must be HOST:PORT with a port from 0 to 65535")
    family = _LOOPBACK.get(host.lower())
    if family is None:
        raise ValueError(
            f"refusing to listen on {address!r}: the TCP listener is loopback-only "
            "(use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT)"
        )
    bind_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return bind_host, family, int(port_text)


async def open_tcp_listener(address: str, *, backlog: int = BACKLOG) -> trio.SocketListener:
    """Listen on a loopback TCP address: ``"127.0.0.1:PORT"``, ``"[::1]:PORT"`` or ``"localhost:PORT"``
    (which means 127.0.0.1: resolving it could yield a non-loopback address). Port 0 picks a free port;
    see :func:`listener_address`.

    Raises:
        ValueError: a malformed address or a host that is not loopback.
        OSError: binding failed (e.g. the port is taken).
    """
    host, family, port = _parse_tcp_address(address)
    await trio.lowlevel.checkpoint()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As trio's open_tcp_listeners: restart without waiting for TIME_WAIT connections to expire.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def listener_address(listener: trio.SocketListener) -> str:
    """The bound address: ``"127.0.0.1:PORT"`` or ``"[::1]:PORT"`` for TCP, the path for a Unix socket."""
    sock = listener.socket
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return os.fsdecode(name)
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


# ----------------------------------------------------------------------------------------------------
# Token
# ----------------------------------------------------------------------------------------------------


def _write_new_token(path: Path, *, replace: bool) -> str:
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, (token + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            # link() fails if path exists: two daemons starting at once cannot overwrite each other's
            # token (the loser reads the winner's).
            os.link(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return token


def _read_token(path: Path) -> tuple[str, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ListenerError(f"token file {path} is not a regular file")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return data.decode("ascii", errors="replace").strip(), st


def load_or_create_token(path: Path) -> str:
    """The bearer token for TCP clients, from ``path``; created at first start.

    A new token is ``secrets.token_urlsafe(32)`` (256 bits) in a 0600 file (its directory is created
    0700), written to a temporary file and linked into place, so a reader never sees a partial token.

    An existing token is trusted only if it is private: when the file is readable or writable by others
    (the secret may have leaked), or empty, it is replaced by a new token with a warning. Clients read the
    file on every start, so they follow.

    Raises:
        ListenerError: the file is not a regular file, or belongs to another user.
        OSError: it cannot be read or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path.parent, 0o700)
    for _ in range(2):
        try:
            token, st = _read_token(path)
        except FileNotFoundError:
            try:
                return _write_new_token(path, replace=False)
            except FileExistsError:
                continue  # another process created it first: read theirs
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ListenerError(f"token file {path} is a symbolic link; refusing to use it") from exc
            raise
        if st.st_uid != os.getuid():
            raise ListenerError(f"token file {path} belongs to uid {st.st_uid}, not to us")
        if stat.S_IMODE(st.st_mode) & 0o077:
            LOGGER.warning(
                "token file %s had mode %04o (others could read it); replaced it with a new token",
                path,
                stat.S_IMODE(st.st_mode),
            )
            return _write_new_token(path, replace=True)
        if not token or not token.isprintable() or " " in token:
            LOGGER.warning("token file %s held no usable token; wrote a new one", path)
            return _write_new_token(path, replace=True)
        return token
    raise ListenerError(f"token file {path} keeps appearing and vanishing")
