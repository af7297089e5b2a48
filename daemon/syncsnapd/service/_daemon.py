"""``serve_daemon``: the whole daemon as one Trio service.

Start order: store (writable, locked), the projects' own stores (``_stores.py``), tracker and scheduler,
listeners (passed by systemd socket activation, or bound here), HTTP, sources of change, discovery file,
then ``READY=1`` and ``task_status.started``. Stop order (SIGTERM/SIGINT or cancellation):
``STOPPING=1``; runs are cancelled first so their ``cancelled`` events reach open streams, then the HTTP
server ends streams and closes, then the discovery file and our socket file are removed. The whole stop is bounded by
:data:`STOP_GRACE_SECONDS`. SIGHUP reloads the configuration (see :meth:`Daemon.reload`).

Supervision: every long-running service (each project's change source ``project:<id>/watch`` or
``project:<id>/syncthing``, the history writer ``history`` and its trim ``history-trim`` (at start and
hourly: ``daemon.history_keep_days`` / ``history_keep_runs``), metrics ``metrics``, the systemd status
``status``) runs under the daemon's :class:`~syncsnapd.core.Supervisor`: a failure is logged once, shown
(the project's ``watch.error``, ``/api/v1/health``'s ``services`` and ``degraded``, ``STATUS=``) and the
service is restarted with backoff, while everything else carries on.

What stops the daemon at start: a state directory (``daemon.state_dir``) that cannot be created or
written, or a runtime directory (the socket's and the discovery file's) that is not ours alone (another
user's, a symlink, group or others may use it: tmux's check), are configuration errors
(:class:`~syncsnapd.core.ConfigError`, exit status 2); failing to open the store or the listeners is a
:class:`StartupError` (exit status 1). An S3 store whose bucket does not answer is not such a failure: it
opens from its local cache (or as a new store made there), runs stage their snapshots and wait in step 5,
health's ``store`` and ``STATUS=`` say it is unreachable, and the ``store`` service asks the bucket again
with the runs' backoff until it answers. Nothing else does: a history database that is damaged is moved
aside and a new one started, one that cannot be written degrades the ``history`` service (events wait
in memory) until it can; both are said in the log and in health (``services``, ``degraded``). Projects
that snapshot the same files (one folder twice, or one inside another) start with a warning in the log.
The watchdog stays a plain task: if the loop is blocked, restarting a task would not help.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import trio

from .. import __version__
from ..api import (
    Api,
    Dashboard,
    Metrics,
    register_browse,
    register_operations,
    register_runs,
    register_store_view,
    register_versions,
)
from ..core import (
    ConfigError,
    DaemonConfig,
    Progress,
    ProjectConfig,
    RunProgress,
    ServiceStatus,
    Supervisor,
    check_private_dir,
    count_of,
    overlap_warnings,
    utc_now,
)
from ..engine import SnapshotError, retry_delay
from ..http import (
    HttpConfig,
    HttpServer,
    serve_http,
)
from ..runs import PAUSED_FILE_NAME, History, Operations, RetryPolicy, Scheduler, Stores, Tracker, location_of
from ..sources import FolderSummary, WatchStatus, serve_project_source, summary_of_entries, wait_until_ready
from ..store import Store, StoreError, StoreKeyError, iter_entries, prepare_store
from ._listening import (
    DaemonInfo,
    Listeners,
    StartupError,
    check_discovery_file,
    open_listeners,
    remove_discovery_file,
    remove_own_socket,
    unix_socket_path,
    write_discovery_file,
)
from ._mount import register_mount_info
from ._offline import daemon_new_store, store_key
from ._stores import open_stores, reload_stores, store_dirs
from ._systemd import Notifier, listen_fds, serve_watchdog, watchdog_interval

log = logging.getLogger("syncsnapd")

# We promise users 5 s from SIGTERM to exit (systemd's default TimeoutStopSec is 90 s). Runs get most of
# it to publish their `cancelled` event; the HTTP layer gets the rest to end streams.
STOP_GRACE_SECONDS = 4.0
# How long open streams get to deliver the final events after runs were cancelled.
STREAM_DRAIN_SECONDS = 0.2
# STATUS= is a summary for `systemctl status`; once a second is plenty.
STATUS_INTERVAL_SECONDS = 1.0
# While an S3 store's bucket answers, how often the `store` service looks whether a run found it down.
STORE_LOOK_SECONDS = 1.0

ConfigLoader = Callable[[], DaemonConfig]
# A supervised service: ``await fn(*args, task_status=...)``.
ServiceFn = Callable[..., Awaitable[object]]
# The test hook of :func:`serve_daemon`: given a service's name and function, returns the function to run
# in its place (tests wrap services to make them fail, then recover).
ServiceWrapper = Callable[[str, ServiceFn], ServiceFn]


# --- the daemon --------------------------------------------------------------------------------------

class Daemon:
    """The running daemon: configuration, stores, tracker, scheduler and the per-project sources."""

    def __init__(self, config: DaemonConfig, store: Store | Stores, notifier: Notifier, history: History, *,
                 wrap_service: ServiceWrapper | None = None) -> None:
        self.config = config
        # The daemon's store and the projects' own (``store = ...`` in [[projects]]).
        self.stores = store if isinstance(store, Stores) else Stores(store)
        self.store = self.stores.default
        self.notifier = notifier
        self.history = history
        # Event ids continue the persisted sequence; the replay buffer and each project's last state
        # come back from the history, so Last-Event-ID resume works across a restart.
        self.tracker = Tracker(first_event_id=history.reserve_event_ids())
        for p in config.projects:
            self.tracker.add_project(p.id)
        self.tracker.preload(history.recent_events(), history.latest_per_project())
        history.load_expected(p.id for p in config.projects)
        self.exclude = (*store_dirs(config), config.state_dir)
        self.watch_status: dict[str, WatchStatus] = {}
        self.supervisor = Supervisor(on_change=self._service_changed)
        self._wrap_service = wrap_service
        # Syncthing projects configured without a path, as resolved by their source (by project id).
        self._resolved: dict[str, ProjectConfig] = {}
        self.scheduler = Scheduler(self.stores, self.tracker, list(config.projects), exclude=self.exclude,
                                   waiter=self._wait_until_ready, max_concurrent=config.max_concurrent,
                                   retry=RetryPolicy(config.retry_attempts, config.retry_backoff),
                                   expected=lambda project: history.expected.get(project),
                                   record=history.record_run, record_end=history.record_end,
                                   paused_file=config.state_dir / PAUSED_FILE_NAME)
        if config.host is not None:
            for s in self.stores.all():
                s.host = config.host  # the machine name its snapshots record
        self.api = Api(self.scheduler, self.tracker, heartbeat=config.heartbeat, watch_status=self.watch_status,
                       supervisor=self.supervisor, max_streams=config.max_streams, refresh_age=config.refresh_age)
        register_runs(self.api.router, history, self.scheduler)
        self.ops = Operations(self.scheduler, self.tracker, exclude=self.exclude, record=history.record_run,
                              record_end=history.record_end)
        register_operations(self.api.router, self.ops)
        register_browse(self.api.router, self.scheduler, self.api.lists)
        register_store_view(self.api.router, history, self.ops)
        register_mount_info(self.api.router, config)
        register_versions(self.api.router, self.scheduler, self.api.lists)
        self.server: HttpServer | None = None
        self.metrics = Metrics(self.tracker, lambda: [(location_of(s), s.root, s.files) for s in self.stores.all()],
                               lambda: self.server.statistics() if self.server else None, history)
        self.metrics.register(self.api.router)
        self.api.warnings[:] = config_warnings(config)
        self.dashboard = Dashboard(self.api.router, config.runtime_dir / "sessions.json")  # reloads sessions
        self._sources: dict[str, str] = {}  # project id -> the name of its supervised source
        self._nursery: trio.Nursery | None = None

    # --- supervised services ----------------------------------------------------------------------

    async def _start_service(self, name: str, fn: ServiceFn, *args: object,
                             on_change: Callable[[ServiceStatus], None] | None = None) -> None:
        if self._wrap_service is not None:
            fn = self._wrap_service(name, fn)
        await self.supervisor.start(name, fn, *args, on_change=on_change)

    def _service_changed(self, status: ServiceStatus) -> None:
        # STATUS= names degraded services as soon as one fails or recovers.
        if self.notifier.enabled:
            self.notifier.status(self.status_line())

    # --- sources -----------------------------------------------------------------------------------

    @staticmethod
    def source_name(project: ProjectConfig) -> str:
        """The supervised service name of a project's change source."""
        return f"project:{project.id}/{'syncthing' if project.syncthing is not None else 'watch'}"

    async def _start_sources(self, project: ProjectConfig) -> None:
        status = self.watch_status[project.id] = WatchStatus()
        if not (project.watch or project.interval or not project.path_known):
            status.mode = "off"  # nothing automatic, nothing to ask Syncthing: no source to run
            return
        name = self._sources[project.id] = self.source_name(project)

        def changed(new: ServiceStatus) -> None:
            status.error = new.error
            if new.state == "backoff":
                status.mode = "stopped"

        def resolved(resolved: ProjectConfig) -> None:
            # A Syncthing project configured without a path: Syncthing told it; runs use it from now on.
            if self._sources.get(project.id) == name and self.watch_status.get(project.id) is status:
                self._resolved[project.id] = resolved
                self.scheduler.set_projects(self._scheduled(self.config.projects))

        source = functools.partial(serve_project_source, status=status, exclude=self.exclude, on_path=resolved)
        await self._start_service(name, source, project, functools.partial(self.scheduler.request_snapshot, project.id),
                                  functools.partial(_last_summary, self.stores, project.id), on_change=changed)

    def _stop_sources(self, project_id: str) -> None:
        name = self._sources.pop(project_id, None)
        if name is not None:
            self.supervisor.stop(name)
        self.watch_status.pop(project_id, None)
        self._resolved.pop(project_id, None)

    def _scheduled(self, projects: tuple[ProjectConfig, ...]) -> list[ProjectConfig]:
        """The projects as the scheduler runs them: with the paths Syncthing told, where it did."""
        return [self._resolved.get(p.id, p) for p in projects]

    async def _wait_until_ready(self, project: ProjectConfig, progress: RunProgress) -> None:
        """Step 1 of every run; a Syncthing project whose path Syncthing has not told yet fails at once."""
        if not project.path_known:
            status = self.watch_status.get(project.id)
            why = f" ({status.error.message})" if status is not None and status.error is not None else ""
            raise SnapshotError("folder_path_unknown", "The folder's path is not known yet: it is not configured "
                                f"and Syncthing has not told it{why}.")
        await wait_until_ready(project, progress)

    # --- reload ------------------------------------------------------------------------------------

    async def reload(self, load: ConfigLoader) -> bool:
        """Re-read the configuration and apply it without a restart (SIGHUP).

        Projects are added, removed (a running snapshot of a removed project ends ``cancelled``) or
        updated; runs and streams of unchanged projects are undisturbed. An invalid configuration is
        refused with a logged reason and the current one stays in force. Settings that need new
        listeners or another store (socket, tcp, store, state_dir, token_file, a project's ``store``) or
        the HTTP server's limits (max_connections, request_rate, request_burst) are logged as needing a
        restart (a new project whose store is not open waits for it too: see ``_stores.reload_stores``).
        Returns True when the new configuration was applied.
        """
        self.notifier.reloading()
        try:
            try:
                new = await trio.to_thread.run_sync(load)
            except ConfigError as exc:
                log.error("reload refused, keeping the current configuration: %s", exc)
                return False
            for key in ("socket", "tcp", "store", "state_dir", "token_file", "max_connections", "request_rate",
                        "request_burst"):
                if getattr(new, key) != getattr(self.config, key):
                    log.warning("reload: daemon.%s changed; restart syncsnapd to apply it", key)
            new = replace(new, projects=tuple(reload_stores(self.stores, self.config, new)))
            self.api.heartbeat = new.heartbeat
            self.api.max_streams = new.max_streams
            old = {p.id: p for p in self.config.projects}
            wanted = {p.id: p for p in new.projects}
            for pid in old:
                if pid not in wanted or wanted[pid] != old[pid]:
                    self._stop_sources(pid)
            self.config = new
            _warn_overlaps(new)
            self.api.warnings[:] = config_warnings(new)
            self.scheduler.set_projects(self._scheduled(new.projects))
            for pid, project in wanted.items():
                if pid not in self.watch_status:
                    await self._start_sources(project)
            added = sorted(set(wanted) - set(old))
            removed = sorted(set(old) - set(wanted))
            changed = sorted(p for p in set(old) & set(wanted) if old[p] != wanted[p])
            log.info("reloaded %s: added %s, removed %s, changed %s", new.source, added or "none",
                     removed or "none", changed or "none")
            return True
        finally:
            self.notifier.ready(self.status_line())

    # --- status --------------------------------------------------------------------------------------

    def status_line(self) -> str:
        """One line for systemd's STATUS=: "2 projects, idle" or "docs: compressing 57%", followed by
        "; degraded: project:docs/watch, history" while services wait to be restarted."""
        latest = [self.tracker.latest(p) for p in self.scheduler.project_ids()]
        active = [p for p in latest if not p.terminal and p.state != "idle"]
        n = len(latest)
        head = f"{n} project{'s' if n != 1 else ''}"
        if not active:
            line = f"{head}, idle"
        else:
            line = "; ".join(f"{p.project}: {p.state} {p.percent:.0f}%" for p in active) + f" ({head})"
        degraded = [s.name for s in self.supervisor.degraded()]
        if degraded:
            line += f"; degraded: {', '.join(degraded)}"
        return line + self._store_status()

    def _store_status(self) -> str:
        remote = self.store.remote
        if remote is None or remote.reachable:
            return ""
        state = remote.reachability
        return f"; store unreachable since {state.since} ({state.code}), snapshots staged"

    async def serve_store_probe(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """While the bucket of an S3 store does not answer, ask it again (one quick request) with the runs'
        backoff, so health and ``STATUS=`` clear once it is back even when no run is waiting."""
        remote = self.store.remote
        task_status.started()
        if remote is None:
            return
        attempt = 0
        while True:
            if remote.reachable:
                attempt = 0
                await trio.sleep(STORE_LOOK_SECONDS)
                continue
            await trio.sleep(retry_delay(attempt))
            attempt += 1
            if not remote.reachable:
                try:
                    await trio.to_thread.run_sync(functools.partial(remote.confirm, quick=True))
                except StoreError:
                    continue  # still down: recorded by the remote (health, STATUS=)
            if self.notifier.enabled:
                self.notifier.status(self.status_line())

    async def serve_status(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep STATUS= current while runs progress (at most once per STATUS_INTERVAL_SECONDS)."""
        with self.tracker.subscribe(lossless=True) as sub:
            task_status.started()
            while True:
                await sub.wait()
                while sub.get_nowait() is not None:
                    pass
                self.notifier.status(self.status_line())
                await trio.sleep(STATUS_INTERVAL_SECONDS)

    # --- serving -------------------------------------------------------------------------------------

    async def serve(self, listeners: Listeners, info: DaemonInfo, reloads: trio.MemoryReceiveChannel[None] | None,
                    load: ConfigLoader | None, stop: trio.Event | None, *,
                    task_status: trio.TaskStatus[DaemonInfo]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            run_scope = trio.CancelScope()

            async def run_scheduler(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with run_scope:
                    await self.scheduler.serve(task_status=task_status)

            ops_scope = trio.CancelScope()

            async def run_ops(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with ops_scope:
                    await self.ops.serve(task_status=task_status)

            await nursery.start(self.supervisor.serve)
            await self._start_service("history", functools.partial(
                self.history.serve, on_problem=functools.partial(self.supervisor.report, "history")), self.tracker)
            await self._start_service("history-trim", functools.partial(self.history.serve_trim, lambda: (
                self.config.history_keep_days, self.config.history_keep_runs)))
            await self._start_service("metrics", self.metrics.serve)
            if self.store.remote is not None:
                await self._start_service("store", self.serve_store_probe)
            await self._mark_interrupted()
            await nursery.start(run_scheduler)
            await nursery.start(run_ops)
            self.dashboard.tcp_address = listeners.tcp_address
            http_config = HttpConfig(token=listeners.token, max_connections=self.config.max_connections,
                                     request_rate=self.config.request_rate,
                                     request_burst=self.config.request_burst, sessions=self.dashboard.sessions)
            server: HttpServer = await nursery.start(serve_http, self.api, listeners.pairs, http_config)
            self.server = server
            # Started side by side: a Syncthing project may first have to ask Syncthing for its path.
            async with trio.open_nursery() as starting:
                for project in self.config.projects:
                    starting.start_soon(self._start_sources, project)
            interval = watchdog_interval()
            if interval is not None and self.notifier.enabled:
                await nursery.start(serve_watchdog, self.notifier, interval)
                log.info("watchdog: pinging every %.1f s", interval)
            if self.notifier.enabled:
                await self._start_service("status", self.serve_status)
            if reloads is not None and load is not None:
                nursery.start_soon(self._serve_reloads, reloads, load)
            write_discovery_file(self.config.discovery_file, info,
                                 self.config.token_file if listeners.token else None)
            log.info("syncsnapd %s serving %s on %s%s (config: %s)", __version__,
                     count_of(len(self.config.projects), "project"), info.socket,
                     f" and http://{info.tcp}" if info.tcp else "", self.config.source)
            self.notifier.ready(self.status_line())
            task_status.started(info)
            try:
                if stop is None:
                    await trio.sleep_forever()
                else:
                    await stop.wait()
                    self.dashboard.close()  # a clean stop revokes every session (a kill does not)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_SECONDS):
                    self.notifier.stopping()
                    log.info("stopping: cancelling runs, ending streams")
                    busy = self.scheduler.busy() or self.ops.busy()
                    run_scope.cancel()
                    ops_scope.cancel()
                    if busy:
                        # Let the cancelled runs publish, and streams carry those events out.
                        await trio.sleep(STREAM_DRAIN_SECONDS)
                    server.begin_shutdown()
                    await trio.sleep(STREAM_DRAIN_SECONDS)
                nursery.cancel_scope.cancel()

    async def _mark_interrupted(self) -> None:
        """Runs that were in flight when the daemon died end now, as failed with code `interrupted`: those
        running, and queued ones that never started (they are not run now: docs/api.md, RUN)."""
        for rec in await trio.to_thread.run_sync(self.history.interrupted_runs):
            last = self.tracker.latest(rec.project) if rec.project in self.tracker.projects() else None
            queued = rec.state == "queued"
            # A queued run never started: no started_at (its record keeps when it was requested), no duration.
            base = last if last is not None and last.run == rec.run else Progress(
                project=rec.project, run=rec.run, kind=rec.kind, trigger=rec.trigger, attempt=rec.attempt,
                retry_of=rec.retry_of, started_at=None if queued else rec.started_at)
            if queued:
                error = {"code": "interrupted", "message": "The daemon stopped before this run started."}
                message = f"{rec.kind.capitalize()} failed: the daemon stopped before it started"
            else:
                error = {"code": "interrupted", "message": "The daemon stopped while this run was in progress."}
                message = f"{rec.kind.capitalize()} failed: the daemon stopped while it was running"
            self.tracker.publish(replace(base, state="failed", step=base.steps, eta_seconds=None, paused=False,
                                         updated_at=utc_now(), error=error, message=message))
            log.warning("%s: %s run %s was interrupted by a daemon stop; marked failed", rec.project,
                        "queued" if queued else "the", rec.run)

    async def _serve_reloads(self, reloads: trio.MemoryReceiveChannel[None], load: ConfigLoader) -> None:
        async for _ in reloads:
            await self.reload(load)


def _open_store(config: DaemonConfig) -> Store:
    """The daemon's store, opened writable with the configured key (issue 15): ``key_file``, else the
    passphrase from SYNCSNAP_PASSWORD_FILE or systemd's credential. A new S3 store is encrypted (refused
    without a key), a new local one is not (see :func:`daemon_new_store`)."""
    key = store_key(config.key_file)
    return Store.open(prepare_store(config), writable=True, key=key,
                      create=daemon_new_store(key, s3=config.store_url is not None), offline_ok=True)


def _warn_overlaps(config: DaemonConfig) -> None:
    for warning in overlap_warnings(config.projects):
        log.warning("%s", warning)


# What /api/v1/health's `warnings` says (and the log at start and reload): a configuration that runs but
# does not do what its user most likely wants.
NO_PROJECTS = "no projects configured: add [[projects]] or use --folder"


def config_warnings(config: DaemonConfig) -> list[str]:
    """Sentences for health's ``warnings``, each logged as a warning."""
    out = [] if config.projects else [NO_PROJECTS + f" (config: {config.source})"]
    for warning in out:
        log.warning("%s", warning)
    return out


def check_state_dir(path: Path) -> None:
    """Create the state directory if missing and make sure we can write there.

    Raises:
        ConfigError: naming ``daemon.state_dir``: it is a file, cannot be created, or is not writable.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise ConfigError(f"daemon.state_dir: {path} is a file, not a directory; point daemon.state_dir at a "
                          "directory (it holds the history)") from None
    except OSError as exc:
        raise ConfigError(f"daemon.state_dir: cannot create {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"daemon.state_dir: {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"daemon.state_dir: {path} is not writable by this user (uid {os.getuid()}); "
                          "give it back write permission or choose another daemon.state_dir")


async def _last_summary(stores: Stores, project: str) -> FolderSummary | None:
    def summarize() -> FolderSummary | None:
        latest = stores.latest(project)
        # Streamed (one tree group at a time): a daemon starting up never holds a whole tree.
        return None if latest is None else summary_of_entries(iter_entries(latest[0], latest[1].id))

    return await trio.to_thread.run_sync(summarize)


async def serve_daemon(config: DaemonConfig, *, load: ConfigLoader | None = None,
                       reloads: trio.MemoryReceiveChannel[None] | None = None, stop: trio.Event | None = None,
                       wrap_service: ServiceWrapper | None = None,
                       task_status: trio.TaskStatus[DaemonInfo] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until ``stop`` is set (a graceful stop: runs end ``cancelled`` and open streams
    carry that out before they close) or until cancelled (everything closes at once).

    Raises:
        ConfigError: the state directory or the runtime directory cannot be used (see the module docstring).
        StartupError: the store or a listener cannot be opened.

    Args:
        config: the configuration to start with.
        load: re-reads the configuration, for reloads.
        reloads: each item received asks for a reload (the CLI sends one per SIGHUP).
        stop: set it to stop gracefully; ``serve_daemon`` then returns.
        wrap_service: a test hook: called with each supervised service's name and function before it
            starts, returns the function to run instead (to inject failures). None in production.
    """
    notifier = Notifier()
    passed = listen_fds()
    for project in config.projects:
        if project.path_known and not project.path.exists():
            # The embedded default (~/Sync) is created on first start; configured folders were checked.
            project.path.mkdir(parents=True, exist_ok=True)
            log.info("created folder %s for project %s", project.path, project.id)
    check_state_dir(config.state_dir)
    check_private_dir(config.runtime_dir, "runtime directory")
    await trio.to_thread.run_sync(check_discovery_file, config.discovery_file)
    _warn_overlaps(config)
    try:
        # offline_ok: an unreachable bucket is no reason not to start (see the module docstring).
        store = await trio.to_thread.run_sync(functools.partial(_open_store, config))
    except StoreKeyError as exc:  # no key, or a wrong one: a configuration error (exit 2), nothing written
        raise ConfigError(f"cannot open the store at {config.store_url or config.store}: {exc}") from exc
    except Exception as exc:
        raise StartupError(f"cannot open the store at {config.store_url or config.store}: {exc}") from exc
    # The projects' own stores, each with its own s3 settings and key (StartupError or ConfigError naming
    # the project; then `store` is closed too); every S3 store's staging bounded by its staging_max.
    stores = await trio.to_thread.run_sync(open_stores, config, store)
    try:
        # Never fails for what is in the database (see History.open): only for the folder itself.
        history = await trio.to_thread.run_sync(History.open, config.state_dir / "history.sqlite3")
    except OSError as exc:
        stores.close()
        raise ConfigError(f"daemon.state_dir: cannot use {config.state_dir}: {exc.strerror}") from exc
    try:
        daemon = await trio.to_thread.run_sync(functools.partial(Daemon, config, stores, notifier, history,
                                                                 wrap_service=wrap_service))
        listeners = await open_listeners(config, passed)
        socket_path = unix_socket_path(listeners, config)
        info = DaemonInfo(socket_path, listeners.tcp_address, listeners.token, config.discovery_file,
                          listeners.activated)
        try:
            await daemon.serve(listeners, info, reloads, load, stop, task_status=task_status)
        finally:
            remove_discovery_file(config.discovery_file)
            remove_own_socket(socket_path, listeners.bound_socket_inode)
    finally:
        history.close()
        stores.close()  # quick (releases the locks); must run even though we are being cancelled
        notifier.close()
        log.info("stopped")


async def run_until_signalled(config: DaemonConfig, load: ConfigLoader) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; SIGHUP reloads the configuration."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        send_reload, reloads = trio.open_memory_channel[None](1)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await serve_daemon(config, load=load, reloads=reloads, stop=stop)
                nursery.cancel_scope.cancel()  # stopped: no more signals to wait for

            nursery.start_soon(serve)
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    try:
                        send_reload.send_nowait(None)
                    except trio.WouldBlock:
                        pass  # a reload is already pending; it will read the newest file
                elif stop.is_set():
                    log.warning("second %s: stopping at once", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                else:
                    stop.set()

