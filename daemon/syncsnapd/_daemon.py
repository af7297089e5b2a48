"""``serve_daemon``: the whole daemon as one Trio service.

Start order: store (writable, locked), tracker and scheduler, listeners, HTTP, discovery file; then
``task_status.started``. Stop order (SIGTERM/SIGINT or cancellation): runs are cancelled first so their
``cancelled`` events reach open streams, then the HTTP server ends streams and closes, then the discovery
file is removed. The whole stop is bounded by :data:`STOP_GRACE_SECONDS`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import trio

from . import __version__
from ._api import Api
from ._config import DaemonConfig
from ._http_server import HttpConfig, HttpServer, serve_http
from ._listeners import listener_address, load_or_create_token, open_tcp_listener, open_unix_listener
from ._scheduler import Scheduler
from ._store import Store
from ._tracker import Tracker
from ._watch import FolderSummary, WatchStatus, serve_project_watch, summary_of_entries, wait_until_ready

log = logging.getLogger("syncsnapd")

# systemd's default TimeoutStopSec is 90 s; we promise users 5 s from SIGTERM to exit. Runs get most of
# it to publish their `cancelled` event; the HTTP layer gets the rest to end streams.
STOP_GRACE_SECONDS = 4.0
# How long open streams get to deliver the final events after runs were cancelled.
STREAM_DRAIN_SECONDS = 0.2


@dataclass(frozen=True)
class DaemonInfo:
    """What a started daemon is serving; given to ``task_status.started``."""

    socket: Path
    tcp: str | None
    token: str | None
    discovery_file: Path


class StartupError(Exception):
    """The daemon cannot start (store locked, socket in use, ...); the message says why."""


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def write_discovery_file(path: Path, info: DaemonInfo, token_file: Path | None) -> None:
    """Write the discovery file atomically (0600)."""
    _private_dir(path.parent)
    data = {"pid": os.getpid(), "version": __version__, "socket": str(info.socket), "tcp": info.tcp,
            "token_file": str(token_file) if token_file else None}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.write("\n")
    os.replace(tmp, path)


def remove_discovery_file(path: Path) -> None:
    """Remove the discovery file if it is still ours (another daemon may have replaced it)."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        path.unlink()
    except (OSError, ValueError):
        pass


async def serve_daemon(config: DaemonConfig, *, task_status: trio.TaskStatus[DaemonInfo] = trio.TASK_STATUS_IGNORED
                       ) -> None:
    """Run the daemon until cancelled (then stop gracefully)."""
    for project in config.projects:
        if not project.path.exists():
            # The embedded default (~/Sync) is created on first start; configured folders were checked.
            project.path.mkdir(parents=True, exist_ok=True)
            log.info("created folder %s for project %s", project.path, project.id)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        store = await trio.to_thread.run_sync(lambda: Store.open(config.store, writable=True))
    except Exception as exc:
        raise StartupError(f"cannot open the store at {config.store}: {exc}") from exc
    try:
        tracker = Tracker()
        watch_status: dict[str, WatchStatus] = {}
        exclude = (config.store, config.state_dir)
        scheduler = Scheduler(store, tracker, list(config.projects), exclude=exclude, waiter=wait_until_ready)
        api = Api(scheduler, tracker, heartbeat=config.heartbeat)
        listeners: list[tuple[trio.SocketListener, str]] = []
        try:
            listeners.append((await open_unix_listener(config.socket), "unix"))
            token = None
            tcp_address = None
            if config.tcp is not None:
                token = await trio.to_thread.run_sync(load_or_create_token, config.token_file)
                tcp_listener = await open_tcp_listener(config.tcp)
                listeners.append((tcp_listener, "tcp"))
                tcp_address = listener_address(tcp_listener)
        except (OSError, ValueError) as exc:
            for listener, _ in listeners:
                await listener.aclose()
            raise StartupError(str(exc)) from exc
        info = DaemonInfo(config.socket, tcp_address, token, config.discovery_file)
        try:
            async with trio.open_nursery() as nursery:
                run_scope = trio.CancelScope()

                async def run_scheduler(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    with run_scope:
                        await scheduler.serve(task_status=task_status)

                await nursery.start(run_scheduler)
                for project in config.projects:
                    nursery.start_soon(functools.partial(
                        serve_project_watch, project, functools.partial(scheduler.request_snapshot, project.id),
                        functools.partial(_last_summary, store, project.id), exclude=exclude,
                        status=watch_status.setdefault(project.id, WatchStatus())))
                server: HttpServer = await nursery.start(serve_http, api, listeners, HttpConfig(token=token))
                write_discovery_file(config.discovery_file, info, config.token_file if token else None)
                log.info("syncsnapd %s serving %d project(s) on %s%s (config: %s)", __version__,
                         len(config.projects), config.socket, f" and http://{tcp_address}" if tcp_address else "",
                         config.source)
                task_status.started(info)
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_SECONDS):
                        log.info("stopping: cancelling runs, ending streams")
                        busy = scheduler.busy()
                        run_scope.cancel()
                        if busy:
                            # Let the cancelled runs publish, and streams carry those events out.
                            await trio.sleep(STREAM_DRAIN_SECONDS)
                        server.begin_shutdown()
                        await trio.sleep(STREAM_DRAIN_SECONDS)
                    nursery.cancel_scope.cancel()
        finally:
            remove_discovery_file(config.discovery_file)
    finally:
        store.close()  # quick (releases the lock); must run even though we are being cancelled
        log.info("stopped")


async def _last_summary(store: Store, project: str) -> FolderSummary | None:
    def summarize() -> FolderSummary | None:
        info = store.latest(project)
        return None if info is None else summary_of_entries(store.load_entries(info.id))

    return await trio.to_thread.run_sync(summarize)


async def run_until_signalled(config: DaemonConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_daemon, config)
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
