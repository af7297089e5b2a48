"""systemd glue: sd_notify messages, the watchdog, and socket activation (LISTEN_FDS).

The notify protocol is one datagram per message to ``$NOTIFY_SOCKET`` (a path, or an abstract socket
when it starts with ``@``), small enough to write here rather than add a dependency. Everything is a
no-op when not run under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import trio

log = logging.getLogger("syncsnapd.systemd")

# sd_listen_fds(3): passed descriptors start at 3.
SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages when ``$NOTIFY_SOCKET`` is set; otherwise does nothing."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        addr = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if addr and (addr[0] in "/@"):
            self._address = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` lines as one datagram; failures are logged, never raised."""
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """Send ``STATUS=`` only when it changed (one line)."""
        text = text.replace("\n", " ")
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def reloading(self) -> None:
        # systemd 253+ expects MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when the watchdog is off.

    As sd_watchdog_enabled(3): ``WATCHDOG_PID``, when set, must be our pid.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def serve_watchdog(notifier: Notifier, interval: float, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping the watchdog every ``interval`` seconds from the Trio loop itself.

    Because the pings come from a task on the loop, a loop that blocks stops them, and systemd restarts
    the daemon: exactly what the watchdog is for.
    """
    task_status.started()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


def listen_fds(env: MutableMapping[str, str] = os.environ, *, unset: bool = True) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by name (``LISTEN_FDNAMES``; unnamed: ``unknown``).

    Only honoured when ``LISTEN_PID`` is our pid (sd_listen_fds(3)). The variables are removed from the
    environment so children do not inherit them. A name given twice gets ``name#2``.
    """
    pid = env.get("LISTEN_PID", "")
    count = env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return {}
    name_list = names.split(":") if names else []
    out: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)  # family and type are detected from the descriptor
        name = name_list[i] if i < len(name_list) and name_list[i] else "unknown"
        key, n = name, 2
        while key in out:
            key, n = f"{name}#{n}", n + 1
        out[key] = sock
    return out
