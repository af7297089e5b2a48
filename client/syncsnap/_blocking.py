"""The blocking API for plain scripts: :class:`Client`, the same methods as :class:`AsyncClient`.

It is a portal: a private Trio loop in a daemon thread runs an :class:`AsyncClient`, and each method
hands its call to that loop with :func:`trio.from_thread.run`. One implementation of the protocol and of
``follow`` serves both APIs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, TypeVar

import trio

from ._client import DEFAULT_TIMEOUT_SECONDS, AsyncClient
from ._endpoint import Endpoint
from ._follow import Follower
from .models import (
    Cancelling,
    Diff,
    Health,
    LoginCode,
    Progress,
    Project,
    ProjectStats,
    RunInfo,
    RunList,
    RunStarted,
    SnapshotInfo,
)
from .protocol import FollowPolicy, Transport
from .transport import find_endpoint

T = TypeVar("T")


class Client:
    """A blocking client of syncsnapd, for scripts that do not use Trio.

    Use it as a context manager (or call :meth:`close`)::

        with syncsnap.Client() as c:
            run = c.start_snapshot("docs").run
            for p in c.follow("docs", run=run):
                print(p.percent, p.message)

    Arguments and exceptions are those of :func:`open_client` and :class:`AsyncClient`.
    """

    def __init__(self, *, socket: str | os.PathLike[str] | None = None, url: str | None = None,
                 token_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                 policy: FollowPolicy | None = None, request_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.endpoint: Endpoint = find_endpoint(env, socket=socket, url=url, token_file=token_file)
        self._async = AsyncClient(self.endpoint, policy=policy, request_timeout=request_timeout)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None

    # --- the portal --------------------------------------------------------------------------------

    def _start(self) -> trio.lowlevel.TrioToken:
        with self._lock:
            if self._token is not None:
                return self._token
            ready = threading.Event()

            async def loop() -> None:
                self._stop = trio.Event()
                self._token = trio.lowlevel.current_trio_token()
                ready.set()
                try:
                    await self._stop.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._async.aclose()

            self._thread = threading.Thread(target=trio.run, args=(loop,), name="syncsnap-client", daemon=True)
            self._thread.start()
            ready.wait()
            assert self._token is not None
            return self._token

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        token = self._start()
        scopes: list[trio.CancelScope] = []

        async def call() -> T:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                return await fn(*args)
            raise KeyboardInterrupt  # cancelled: the caller already left (see below)

        try:
            return trio.from_thread.run(call, trio_token=token)
        except BaseException:
            # Ctrl-C (or any exception) in the calling thread leaves the call running in the loop: stop it.
            if scopes:
                try:
                    trio.from_thread.run_sync(scopes[0].cancel, trio_token=token)
                except trio.RunFinishedError:
                    pass
            raise

    def close(self) -> None:
        """Close the connections and stop the client's thread."""
        with self._lock:
            token, stop, thread = self._token, self._stop, self._thread
            self._token = self._stop = self._thread = None
        if token is not None and stop is not None and thread is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
            thread.join(timeout=10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the methods of AsyncClient ----------------------------------------------------------------

    def health(self) -> Health:
        return self._call(self._async.health)

    def projects(self) -> list[Project]:
        return self._call(self._async.projects)

    def project(self, project: str) -> Project:
        return self._call(self._async.project, project)

    def start_snapshot(self, project: str) -> RunStarted:
        return self._call(self._async.start_snapshot, project)

    def pause(self, project: str) -> Project:
        return self._call(self._async.pause, project)

    def resume(self, project: str) -> Project:
        return self._call(self._async.resume, project)

    def progress(self, project: str) -> Progress:
        return self._call(self._async.progress, project)

    def snapshots(self, project: str | None = None, *, host: str | None = None) -> list[SnapshotInfo]:
        return self._call(lambda: self._async.snapshots(project, host=host))

    def runs(self, project: str, *, limit: int = 20, before: str | None = None) -> RunList:
        return self._call(lambda: self._async.runs(project, limit=limit, before=before))

    def run(self, run: str) -> RunInfo:
        return self._call(self._async.run, run)

    def run_events(self, run: str) -> list[Progress]:
        return self._call(self._async.run_events, run)

    def stats(self, project: str) -> ProjectStats:
        return self._call(self._async.stats, project)

    def cancel(self, project: str) -> Cancelling:
        return self._call(self._async.cancel, project)

    def diff(self, project: str, before: str, after: str | None = None, *, limit: int | None = None) -> Diff:
        return self._call(lambda: self._async.diff(project, before, after, limit=limit))

    def start_restore(self, project: str, snapshot: str, target: str | os.PathLike[str], *,
                      paths: Sequence[str] = (), overwrite: bool = False) -> RunStarted:
        return self._call(lambda: self._async.start_restore(project, snapshot, target, paths=paths,
                                                            overwrite=overwrite))

    def restore_version(self, project: str, path: str, version: str, *,
                        to: str | os.PathLike[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
        return self._call(lambda: self._async.restore_version(project, path, version, to=to, overwrite=overwrite))

    def download_file(self, project: str, snapshot: str, path: str, out: BinaryIO) -> int:
        """Write file ``path`` of ``snapshot`` to ``out`` as it arrives (never all of it in memory)."""
        return self._call(lambda: self._async.download_file(project, snapshot, path, out))

    def start_check(self, *, read_data: bool = False) -> RunStarted:
        return self._call(lambda: self._async.start_check(read_data=read_data))

    def start_prune(self, *, dry_run: bool = False) -> RunStarted:
        return self._call(lambda: self._async.start_prune(dry_run=dry_run))

    def operation(self, run: str) -> Progress:
        return self._call(self._async.operation, run)

    def operations(self) -> list[Progress]:
        return self._call(self._async.operations)

    def cancel_operation(self, run: str) -> Cancelling:
        return self._call(self._async.cancel_operation, run)

    def login_code(self) -> LoginCode:
        return self._call(self._async.login_code)

    def revoke_sessions(self) -> int:
        return self._call(self._async.revoke_sessions)

    def mount_info(self) -> dict[str, Any]:
        return self._call(self._async.mount_info)
    def versions(self, project: str, path: str, depth: int | None = None) -> dict[str, Any]:
        return self._call(lambda: self._async.versions(project, path, depth))

    def find(self, project: str, pattern: str, *, since: str | None = None,
             limit: int | None = None) -> dict[str, Any]:
        return self._call(lambda: self._async.find(project, pattern, since=since, limit=limit))

    def follow_run(self, started: RunStarted, *, transport: Transport = "sse") -> Iterator[Progress]:
        """Like :meth:`AsyncClient.follow_run`, as a plain iterator."""
        return self._iterate(self._async.follow_run(started, transport=transport))

    def follow(self, project: str | None = None, run: str | None = None, *, last_event_id: int | None = None,
               wait: bool = False, transport: Transport = "sse", kind: str = "snapshot") -> Iterator[Progress]:
        """Like :meth:`AsyncClient.follow`, as a plain iterator (see there)."""
        return self._iterate(self._async.follow(project, run, last_event_id=last_event_id, wait=wait,
                                                transport=transport, kind=kind))

    def _iterate(self, follower: Follower) -> Iterator[Progress]:
        try:
            while True:
                try:
                    yield self._call(follower.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if self._token is not None:
                try:
                    self._call(follower.aclose)
                except trio.RunFinishedError:
                    pass
