"""``syncsnap notify``: desktop notifications for every project, over the freedesktop D-Bus interface.

Two tasks joined by a channel (data flows one way):

- the *follower* reads every progress event of every project (``client.follow(wait=True)``: it rides
  through daemon restarts and dropped streams) and :class:`NotificationPolicy` decides what deserves a
  notification: a run's end (completed: project, files, bytes added, duration; failed: the error, with
  critical urgency; cancelled), and optionally progress while a run goes on. A run is notified at most
  once, however often its terminal state is seen again (after a reconnect or a daemon restart);
- the *deliverer* owns the session bus connection (jeepney's Trio router) and sends
  ``org.freedesktop.Notifications.Notify``, one notification per project, updated in place through
  ``replaces_id``. It asks ``GetCapabilities`` once per connection and honours it (no ``body``: the body
  goes into the summary; ``body-markup``: the text is escaped). Without a session bus (or without a
  notification server on it) it says so once, logs what it would have shown, and tries the bus again
  every :data:`BUS_RETRY_SECONDS`.
"""

from __future__ import annotations

import html
import logging
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio
from jeepney import DBusAddress, new_method_call  # type: ignore[import-untyped]
from jeepney.auth import AuthenticationError  # type: ignore[import-untyped]
from jeepney.io.common import RouterClosed  # type: ignore[import-untyped]
from jeepney.io.trio import open_dbus_router  # type: ignore[import-untyped]
from jeepney.wrappers import DBusErrorResponse, unwrap_msg  # type: ignore[import-untyped]

from .._client import AsyncClient
from .._errors import SyncsnapError
from ..models import Progress
from ..protocol import Transport
from ._format import human_bytes, human_duration, plural
from ._view import end_sentence

log = logging.getLogger("syncsnap.notify")

APP_NAME = "syncsnap"
NOTIFICATIONS = DBusAddress("/org/freedesktop/Notifications", bus_name="org.freedesktop.Notifications",
                            interface="org.freedesktop.Notifications")
# Urgency levels of the Desktop Notifications Specification.
LOW, NORMAL, CRITICAL = 0, 1, 2
# How often a missing session bus or notification server is looked for again.
BUS_RETRY_SECONDS = 30.0
# Progress notifications (opt-in) update at most this often per project: the daemon publishes a few
# events per second, and a notification server animating each would flicker.
PROGRESS_MIN_INTERVAL_SECONDS = 2.0
# Runs remembered as already notified; far more than could end while a reconnect is pending.
REMEMBERED_RUNS = 1024
# Errors that mean "no usable session bus here": no address (KeyError), an address jeepney cannot use
# (RuntimeError), no socket or refused (OSError), authentication refused, the connection closed.
BUS_ERRORS = (KeyError, RuntimeError, OSError, AuthenticationError, RouterClosed, trio.BrokenResourceError,
              trio.ClosedResourceError, trio.EndOfChannel)


@dataclass(frozen=True)
class Notification:
    """What to show for one project; the deliverer turns it into a ``Notify`` call."""

    project: str
    summary: str
    body: str
    urgency: int = NORMAL
    category: str = "transfer"
    value: int | None = None  # percent, for servers that draw a progress bar (the "value" hint)


class NotificationPolicy:
    """Decides which progress events become notifications. Pure logic, no I/O.

    Args:
        progress: also notify while a run goes on (at most every PROGRESS_MIN_INTERVAL_SECONDS).
        clock: the time source for that rate limit.
    """

    def __init__(self, *, progress: bool = False, clock: Any = None) -> None:
        self.progress = progress
        self._clock = clock or trio.current_time
        self._notified: OrderedDict[str, None] = OrderedDict()
        self._seen_projects: set[str] = set()
        self._last_progress: dict[str, tuple[float, int]] = {}

    def _remember(self, run: str) -> None:
        self._notified[run] = None
        while len(self._notified) > REMEMBERED_RUNS:
            self._notified.popitem(last=False)

    def decide(self, p: Progress) -> Notification | None:
        # The first state of a project is what it was doing when we connected. (Other runs' events do not
        # replace a project's state: the daemon sends them only live or replayed.)
        first = p.kind == "snapshot" and p.lane not in self._seen_projects
        self._seen_projects.add(p.lane)
        if p.run is None or p.state == "idle":
            return None
        if p.terminal:
            if p.run in self._notified:
                return None
            self._remember(p.run)
            if first and not p.gap:
                return None  # it ended before we started: old news
            return terminal_notification(p)
        if not self.progress:
            return None
        now = self._clock()
        last = self._last_progress.get(p.lane)
        if last is not None and last[1] == p.step and now - last[0] < PROGRESS_MIN_INTERVAL_SECONDS:
            return None
        self._last_progress[p.lane] = (now, p.step)
        return Notification(p.label, f"{_what(p)}: step {p.step}/{p.steps}, {p.step_name}",
                            f"{p.percent:.0f}% · {p.message}", urgency=LOW, value=int(p.percent))


def _what(p: Progress) -> str:
    """``Snapshot of docs``, ``Restore of docs``, ``Check of the store``."""
    return f"{p.kind.capitalize()} of {p.project if p.project is not None else 'the store'}"


def terminal_notification(p: Progress) -> Notification:
    """The notification for a run's end."""
    if p.state == "completed" and p.snapshot is not None:
        s = p.snapshot
        body = (f"{plural(s.files, 'file')}, {human_bytes(s.bytes_added)} added in "
                f"{human_duration(s.duration_seconds)}")
        if s.warnings:
            body += f"; {plural(s.warnings, 'file')} changed or unreadable while captured"
        return Notification(p.label, f"Snapshot of {p.label} completed", body, category="transfer.complete",
                            value=100)
    what = _what(p)
    reason = p.error.message if p.error is not None else p.message
    if p.state == "failed":
        return Notification(p.label, f"{what} failed", reason, urgency=CRITICAL, category="transfer.error")
    if p.state == "completed":  # another kind of run (restore, check, ...): what it did, from its result
        body = end_sentence(p)
        return Notification(p.label, f"{what} completed", body[:1].upper() + body[1:], category="transfer.complete",
                            value=100)
    return Notification(p.label, f"{what} {p.state}", reason, category="transfer.error")


class Deliverer:
    """Owns the session bus connection and shows notifications, one per project (``replaces_id``).

    Args:
        bus: jeepney's bus name or address (``"SESSION"``).
    """

    def __init__(self, bus: str = "SESSION") -> None:
        self.bus = bus
        self.ids: dict[str, int] = {}
        self.capabilities: frozenset[str] | None = None
        self.sent = 0
        self.logged = 0
        self._said_unavailable = False
        self._in_flight: Notification | None = None

    def _unavailable(self, why: str) -> None:
        if not self._said_unavailable:
            log.warning("%s: notifications are written to this log instead (will retry every %g s)", why,
                        BUS_RETRY_SECONDS)
            self._said_unavailable = True

    def _log_instead(self, n: Notification) -> None:
        self.logged += 1
        log.info("notification (not shown): %s: %s", n.summary, n.body)

    async def serve(self, notifications: trio.MemoryReceiveChannel[Notification]) -> None:
        """Deliver until the channel closes."""
        async with notifications:
            while True:
                try:
                    async with open_dbus_router(self.bus) as router:
                        if self._said_unavailable:
                            log.info("connected to the session bus again")
                        self._said_unavailable = False
                        self.capabilities = None
                        await self._deliver_all(router, notifications)
                        return
                except Exception as exc:
                    leaf = _bus_error(exc)
                    if leaf is None:
                        raise
                    self._unavailable(_bus_problem(leaf))
                    if self._in_flight is not None:
                        self._log_instead(self._in_flight)
                        self._in_flight = None
                # No bus: log what arrives, look for the bus again later.
                with trio.move_on_after(BUS_RETRY_SECONDS):
                    async for n in notifications:
                        self._log_instead(n)
                    return

    async def _deliver_all(self, router: Any, notifications: trio.MemoryReceiveChannel[Notification]) -> None:
        """Deliver over ``router`` until the channel closes (a bus error propagates)."""
        async for n in notifications:
            self._in_flight = n
            if self.capabilities is None:
                try:
                    reply = await router.send_and_get_reply(new_method_call(NOTIFICATIONS, "GetCapabilities"))
                    self.capabilities = frozenset(str(c) for c in unwrap_msg(reply)[0])
                    log.info("notification server capabilities: %s", ", ".join(sorted(self.capabilities)))
                except DBusErrorResponse as exc:
                    self._unavailable(f"no notification server on the session bus ({exc.name})")
                    self._log_instead(n)
                    self._in_flight = None
                    continue
            try:
                await self._notify(router, n)
            except DBusErrorResponse as exc:
                log.warning("the notification server refused a notification (%s)", exc)
                self._log_instead(n)
            self._in_flight = None

    async def _notify(self, router: Any, n: Notification) -> None:
        caps = self.capabilities or frozenset()
        summary, body = n.summary, n.body
        if "body" not in caps:
            summary, body = f"{summary}: {body}", ""
        elif "body-markup" in caps:
            body = html.escape(body, quote=False)
        hints: dict[str, tuple[str, Any]] = {
            "urgency": ("y", n.urgency), "category": ("s", n.category), "desktop-entry": ("s", "syncsnap"),
        }
        if n.value is not None:
            hints["value"] = ("i", n.value)
        replaces = self.ids.get(n.project, 0)
        msg = new_method_call(NOTIFICATIONS, "Notify", "susssasa{sv}i",
                              (APP_NAME, replaces, "", summary, body, [], hints, -1))
        reply = await router.send_and_get_reply(msg)
        (nid,) = unwrap_msg(reply)
        self.ids[n.project] = int(nid)
        self.sent += 1
        log.info("notified (id %d%s): %s: %s", nid, f", replacing {replaces}" if replaces else "", n.summary, n.body)


def _bus_error(exc: BaseException) -> BaseException | None:
    """The bus error behind ``exc`` (which may be a group from jeepney's router nursery), or None if
    anything else is in there."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_bus_error(e) for e in exc.exceptions]
        return None if any(leaf is None for leaf in leaves) else leaves[0]
    return exc if isinstance(exc, BUS_ERRORS) else None


def _bus_problem(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)"
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    return f"no D-Bus session bus at {address or 'the session address'} ({type(exc).__name__}: {exc})"


async def run_notifier(client: AsyncClient, *, progress: bool = False, bus: str = "SESSION",
                       transport: Transport = "sse") -> int:
    """Follow every project and notify until cancelled. Returns an exit code (2 for a fatal error)."""
    if not logging.getLogger().handlers:
        fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
        logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    policy = NotificationPolicy(progress=progress)
    deliverer = Deliverer(bus)
    send, receive = trio.open_memory_channel[Notification](256)
    log.info("following every project of syncsnapd at %s", client.endpoint.describe())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliverer.serve, receive)
        async with send:
            try:
                async with client.follow(wait=True, transport=transport) as follower:
                    async for p in follower:
                        n = policy.decide(p)
                        if n is not None:
                            await send.send(n)
            except SyncsnapError as exc:
                log.error("%s", exc)
                nursery.cancel_scope.cancel()
                return 2
    return 0
