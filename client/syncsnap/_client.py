"""The Trio API: :func:`open_client` and :class:`AsyncClient`."""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, BinaryIO
from urllib.parse import quote

import trio

from ._endpoint import Endpoint
from ._errors import ConnectionLost, ProtocolError
from ._files import FileStream, copy_file, open_file
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
    parse_list,
)
from .protocol import API, FollowPolicy, Transport, error_for_response
from .transport import HttpConnection, find_endpoint

# How long one request may take before the client gives up. The daemon answers JSON requests in
# milliseconds even while snapshotting (its disk work runs in threads); 30 s means it is stuck.
DEFAULT_TIMEOUT_SECONDS = 30.0
# The daemon answers a restore of one version once the file is written: many GiB from a remote bucket may
# take long, so that one request waits up to an hour.
RESTORE_VERSION_TIMEOUT_SECONDS = 3600.0
# Idle keep-alive connections kept for reuse; the client rarely has more than one request in flight.
MAX_IDLE_CONNECTIONS = 2


class AsyncClient:
    """A client of one syncsnapd. Create it with :func:`open_client`.

    Every method raises :class:`~syncsnap.DaemonNotRunning` when nothing answers,
    :class:`~syncsnap.Unauthorized`, :class:`~syncsnap.NotFound` (unknown project),
    :class:`~syncsnap.DaemonError` for other error answers, :class:`~syncsnap.ConnectionLost` and
    :class:`~syncsnap.ProtocolError`; all are :class:`~syncsnap.SyncsnapError`.
    """

    def __init__(self, endpoint: Endpoint, *, policy: FollowPolicy | None = None,
                 request_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.endpoint = endpoint
        self.policy = policy or FollowPolicy()
        self.request_timeout = request_timeout
        self._idle: list[HttpConnection] = []
        self._followers: weakref.WeakSet[Follower] = weakref.WeakSet()

    # --- requests ----------------------------------------------------------------------------------

    async def _request(self, method: str, target: str, *, expect: int = 200, body: Any = None,
                       limit_seconds: float | None = None) -> Any:
        # A GET may reuse an idle keep-alive connection; if the daemon closed it meanwhile, one retry on a
        # fresh connection is safe. Anything else (POST, DELETE) always gets a fresh connection, so it is
        # never sent twice.
        headers: list[tuple[str, str]] = []
        data = b""
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers.append(("Content-Type", "application/json"))
        for attempt in range(2):
            reused = method == "GET" and bool(self._idle)
            conn = self._idle.pop() if reused else None
            try:
                with trio.fail_after(limit_seconds or self.request_timeout):
                    if conn is None:
                        conn = await HttpConnection.open(self.endpoint)
                    resp = await conn.request(method, target, headers, data)
            except trio.TooSlowError:
                if conn is not None:
                    await conn.aclose()
                raise ConnectionLost(f"syncsnapd at {self.endpoint.describe()} did not answer {method} {target} "
                                     f"within {limit_seconds or self.request_timeout:g} s; is it stuck? See its log.") from None
            except ConnectionLost:
                assert conn is not None
                await conn.aclose()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                if conn is not None:
                    await conn.aclose()
                raise
            if conn.reusable and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
            else:
                await conn.aclose()
            if resp.status != expect:
                raise error_for_response(self.endpoint, method, target, resp.status, resp.body)
            return resp.json()
        raise AssertionError("unreachable")

    async def health(self) -> Health:
        """``GET /api/v1/health``: version, pid, uptime and number of projects."""
        return Health.from_json(await self._request("GET", f"{API}/health"))

    async def projects(self) -> list[Project]:
        """Every configured project with its latest progress and newest snapshot."""
        return parse_list(await self._request("GET", f"{API}/projects"), "projects", Project, "a project list")

    async def project(self, project: str) -> Project:
        """One project. Raises :class:`~syncsnap.NotFound` for an unknown id."""
        return Project.from_json(await self._request("GET", f"{API}/projects/{_q(project)}"))

    async def start_snapshot(self, project: str) -> RunStarted:
        """Start a snapshot (or queue one follow-up run if one is running); returns the run id to follow."""
        return RunStarted.from_json(await self._request("POST", f"{API}/projects/{_q(project)}/snapshots",
                                                        expect=202))

    async def pause(self, project: str) -> Project:
        """Pause the project (idempotent): no automatic snapshot starts, a running one holds between files
        or chunks, and :meth:`start_snapshot` is refused (``code == "project_paused"``) until :meth:`resume`.
        The pause survives a daemon restart."""
        return Project.from_json(await self._request("POST", f"{API}/projects/{_q(project)}/pause"))

    async def resume(self, project: str) -> Project:
        """Resume a paused project (idempotent): a held snapshot goes on where it stopped, and changes seen
        while paused start one snapshot."""
        return Project.from_json(await self._request("POST", f"{API}/projects/{_q(project)}/resume"))

    async def progress(self, project: str) -> Progress:
        """The project's latest progress object (a finished run stays visible)."""
        return Progress.from_json(await self._request("GET", f"{API}/projects/{_q(project)}/progress"))

    async def snapshots(self, project: str | None = None, *, host: str | None = None) -> list[SnapshotInfo]:
        """The snapshots of ``project`` (of every project if None), oldest first; with ``host``, only those
        that machine took (a store shared by several machines). Every project's list needs a daemon of
        issue 15 or later (``GET /api/v1/snapshots``)."""
        target = f"{API}/snapshots" if project is None else f"{API}/projects/{_q(project)}/snapshots"
        if host is not None:
            target += f"?host={_q(host)}"
        return parse_list(await self._request("GET", target), "snapshots", SnapshotInfo, "a snapshot list")

    # --- history (docs/api.md "Runs") --------------------------------------------------------------

    async def runs(self, project: str, *, limit: int = 20, before: str | None = None) -> RunList:
        """The project's runs, newest first, ``limit`` (1-500) at a time; pass ``next`` as ``before`` for
        the following page."""
        target = f"{API}/projects/{_q(project)}/runs?limit={int(limit)}"
        if before is not None:
            target += f"&before={_q(before)}"
        return RunList.from_json(await self._request("GET", target))

    async def run(self, run: str) -> RunInfo:
        """One run of any kind, finished or not, with the time spent in each step."""
        return RunInfo.from_json(await self._request("GET", f"{API}/runs/{_q(run)}"))

    async def run_events(self, run: str) -> list[Progress]:
        """A run's full progress log, oldest first."""
        doc = await self._request("GET", f"{API}/runs/{_q(run)}/events")
        return parse_list(doc, "events", Progress, "a run's event log")

    async def stats(self, project: str) -> ProjectStats:
        """Count, success rate, mean and p95 duration of the project's finished snapshot runs."""
        return ProjectStats.from_json(await self._request("GET", f"{API}/projects/{_q(project)}/stats"))

    async def cancel(self, project: str) -> Cancelling:
        """Cancel the project's running snapshot (and drop a queued follow-up). The run ends ``cancelled``
        promptly; follow it to see that. Raises :class:`~syncsnap.NotFound` with ``code == "no_run"``
        when nothing runs."""
        return Cancelling.from_json(await self._request("DELETE", f"{API}/projects/{_q(project)}/runs/current",
                                                        expect=202))

    # --- operations (docs/api.md "Operations") -----------------------------------------------------

    async def diff(self, project: str, before: str, after: str | None = None, *, limit: int | None = None) -> Diff:
        """What changed from snapshot ``before`` to snapshot ``after`` (default: the live folder).

        Snapshot ids, or ``latest``. ``limit`` caps each list (the summary always counts everything;
        ``Diff.truncated`` says when a list was cut).
        """
        target = f"{API}/projects/{_q(project)}/diff?from={_q(before)}"
        if after is not None:
            target += f"&to={_q(after)}"
        if limit is not None:
            target += f"&limit={int(limit)}"
        return Diff.from_json(await self._request("GET", target))

    async def start_restore(self, project: str, snapshot: str, target: str | os.PathLike[str], *,
                            paths: Sequence[str] = (), overwrite: bool = False) -> RunStarted:
        """Restore a snapshot (``latest``, or an id) of ``project``, or only ``paths`` inside it, into the
        directory ``target`` (absolute; relative paths are resolved here). Existing files are refused
        unless ``overwrite``. Returns the run to follow (``kind`` ``restore``)."""
        body: dict[str, Any] = {"snapshot": snapshot, "target": _absolute(target)}
        if paths:
            body["paths"] = list(paths)
        if overwrite:
            body["overwrite"] = True
        return RunStarted.from_json(await self._request("POST", f"{API}/projects/{_q(project)}/restore",
                                                        expect=202, body=body))

    async def restore_version(self, project: str, path: str, version: str, *,
                              to: str | os.PathLike[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
        """Restore one version of file ``path`` of ``project`` (``version``: a content id or a prefix of at
        least 8 hex digits, a snapshot id, or ``latest``): next to the live file as ``NAME (syncsnap DATE
        TIME).EXT``, or to ``to`` (an existing directory: under its own name; else that file). An existing
        file is replaced only with ``overwrite``. Returns the daemon's answer, with ``restored_to``."""
        body: dict[str, Any] = {"path": path, "version": version}
        if to is not None:
            body["to"] = _absolute(to)
        if overwrite:
            body["overwrite"] = True
        answer: dict[str, Any] = await self._request("POST", f"{API}/projects/{_q(project)}/restore", body=body,
                                                     limit_seconds=max(self.request_timeout, RESTORE_VERSION_TIMEOUT_SECONDS))
        return answer

    def open_file(self, project: str, snapshot: str, path: str) -> AbstractAsyncContextManager[FileStream]:
        """The content of file ``path`` in ``snapshot`` (an id or ``latest``) of ``project``, as a stream:
        ``async with c.open_file(...) as f: async for piece in f: ...`` (``f.size`` bytes in all). Raises
        :class:`~syncsnap.NotFound` (no such snapshot or path, or a directory), :class:`~syncsnap.DaemonError`
        (``not_a_file``: a symlink) and :class:`~syncsnap.ConnectionLost` if it ends early."""
        return open_file(self, project, snapshot, path)

    async def download_file(self, project: str, snapshot: str, path: str, out: BinaryIO) -> int:
        """Write file ``path`` of ``snapshot`` to the binary file ``out``, piece by piece (see
        :meth:`open_file`); returns its size."""
        return await copy_file(self, project, snapshot, path, out)

    async def start_check(self, *, read_data: bool = False) -> RunStarted:
        """Check the whole store: its structure and references, and with ``read_data`` every object's
        content against its hash. Returns the run to follow (``kind`` ``check``, no project)."""
        return RunStarted.from_json(await self._request("POST", f"{API}/check", expect=202,
                                                        body={"read_data": True} if read_data else {}))

    async def start_prune(self, *, dry_run: bool = False) -> RunStarted:
        """Apply the projects' retention policies and delete the data no snapshot uses (``dry_run``: only
        say what would go). Returns the run to follow (``kind`` ``prune``, no project)."""
        return RunStarted.from_json(await self._request("POST", f"{API}/prune", expect=202,
                                                        body={"dry_run": True} if dry_run else {}))

    async def operation(self, run: str) -> Progress:
        """The latest progress of an operation run (running, or recently finished)."""
        return Progress.from_json(await self._request("GET", f"{API}/operations/{_q(run)}"))

    async def operations(self) -> list[Progress]:
        """Running operation runs, then recently finished ones, newest first."""
        return parse_list(await self._request("GET", f"{API}/operations"), "operations", Progress,
                          "an operation list")

    async def cancel_operation(self, run: str) -> Cancelling:
        """Cancel a running restore, check or prune; it ends ``cancelled`` promptly."""
        return Cancelling.from_json(await self._request("DELETE", f"{API}/operations/{_q(run)}", expect=202))

    # --- the dashboard (docs/api.md "Dashboard and login") ------------------------------------------

    async def login_code(self) -> LoginCode:
        """A one-time login code for the dashboard and the URL that uses it (valid 60 s, once). Only over
        the Unix socket; :class:`~syncsnap.DaemonError` (``tcp_disabled``) when the daemon has no TCP
        listener to serve the page on."""
        return LoginCode.from_json(await self._request("POST", f"{API}/login-codes", expect=201))

    async def revoke_sessions(self) -> int:
        """Log every browser out of the dashboard; returns how many sessions ended."""
        doc = await self._request("DELETE", f"{API}/sessions")
        revoked = doc.get("revoked") if isinstance(doc, dict) else None
        if not isinstance(revoked, int) or isinstance(revoked, bool):
            raise ProtocolError("The daemon answered DELETE /api/v1/sessions without a 'revoked' count; is "
                                "syncsnapd the same version as this client?")
        return revoked

    # --- the mount (docs/mount.md) -----------------------------------------------------------------

    async def mount_info(self) -> dict[str, Any]:
        """What ``syncsnapd mount`` needs to read this daemon's stores: ``{"config": file or None, "store",
        "state_dir", "projects"}``. Only over the Unix socket (a :class:`~syncsnap.DaemonError` over TCP)."""
        doc = await self._request("GET", f"{API}/mount")
        if not isinstance(doc, dict) or not isinstance(doc.get("store"), str):
            raise ProtocolError("The daemon answered GET /api/v1/mount without a 'store'; is syncsnapd the same "
                                "version as this client?")
        return doc
    # --- versions and find (docs/api.md "Versions and find") --------------------------------------

    async def versions(self, project: str, path: str, depth: int | None = None) -> dict[str, Any]:
        """Every version of ``path`` (relative to the project's folder) across the project's snapshots,
        newest first: the daemon's JSON answer (docs/api.md). A directory lists its entries' versions,
        ``depth`` levels down (default 1)."""
        target = f"{API}/projects/{_q(project)}/versions?path={_qpath(path)}"
        if depth is not None:
            target += f"&depth={int(depth)}"
        answer: dict[str, Any] = await self._request("GET", target)
        return answer

    async def find(self, project: str, pattern: str, *, since: str | None = None,
                   limit: int | None = None) -> dict[str, Any]:
        """The paths of the project's snapshots matching ``pattern`` (a glob with ``* ? [...]``, on the
        whole path or its name; else a substring), each with its versions (only snapshots at or after
        ``since``, ISO 8601, if given); at most ``limit`` paths (daemon default 1000): the JSON answer."""
        target = f"{API}/projects/{_q(project)}/find?pattern={_qpath(pattern)}"
        if since is not None:
            target += f"&since={quote(since, safe='')}"
        if limit is not None:
            target += f"&limit={int(limit)}"
        answer: dict[str, Any] = await self._request("GET", target)
        return answer

    # --- following ---------------------------------------------------------------------------------

    def follow_run(self, started: RunStarted, *, transport: Transport = "sse") -> Follower:
        """Follow a run this client started (any kind), from its first event to its end.

        The follower resumes just before the run's first event, so even a run that ended before the
        stream opened is seen from its start; a snapshot queued behind a running one shows up when it
        starts.
        """
        p = started.progress
        if p.run == started.run:
            return self.follow(p.project, started.run, kind=p.kind, last_event_id=max(p.event_id - 1, 0),
                               transport=transport)
        # Queued behind the running snapshot (whose progress this is): its events come after this one.
        return self.follow(p.project, started.run, last_event_id=p.event_id, transport=transport)

    def follow(self, project: str | None = None, run: str | None = None, *, last_event_id: int | None = None,
               wait: bool = False, transport: Transport = "sse", kind: str = "snapshot") -> Follower:
        """Every progress event of ``project`` (all projects if None), in order and each once.

        Args:
            project: the project to follow; None for every project.
            run: follow only this run (``project`` is then required); iteration stops after its terminal
                event (completed, failed or cancelled). Without ``run`` it goes on until cancelled.
            last_event_id: resume after this event (the ``last_event_id`` of an earlier follower).
            wait: keep trying when the daemon is not running at the start, instead of raising
                :class:`~syncsnap.DaemonNotRunning`.
            transport: ``"sse"`` (the daemon's event streams) or ``"ws"`` (its WebSocket); the same
                events and guarantees either way, with JSON polling as the fallback of both.
            kind: the kind of ``run`` when it is not a snapshot (``restore``, ``check``, ``prune``: the
                ``progress.kind`` of the answer that started it). A store-wide run (check, prune) needs
                no ``project``.

        Returns:
            A :class:`Follower`: ``async for progress in follower``. It reconnects by itself (see
            :class:`FollowPolicy`); ``progress.gap`` marks the current state yielded after missed events.

        Raises (while iterating):
            Unauthorized, NotFound: at once, these do not heal by retrying.
            RunLost: the followed run ended while this client could not see it.
            DaemonNotRunning: only for the first connection, and only without ``wait``.
        """
        follower = Follower(self, project, run, kind=kind, last_event_id=last_event_id, wait=wait,
                            transport=transport)
        self._followers.add(follower)
        return follower

    async def aclose(self) -> None:
        """Close idle connections and every follower of this client."""
        for follower in list(self._followers):
            await follower.aclose()
        self._followers.clear()
        while self._idle:
            await self._idle.pop().aclose()


def _absolute(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute against this process's working directory (the daemon's is not ours)."""
    return os.path.abspath(os.fspath(path))


def _q(project: str) -> str:
    return quote(project, safe="")


def _qpath(path: str) -> str:
    """A path in a query: its bytes percent-encoded (undecodable bytes travel as lone surrogates)."""
    return quote(os.fsencode(path), safe="")


@asynccontextmanager
async def open_client(*, socket: str | os.PathLike[str] | None = None, url: str | None = None,
                      token_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                      policy: FollowPolicy | None = None,
                      request_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> AsyncIterator[AsyncClient]:
    """Open a client of the daemon found through ``socket``/``url``, the environment or the discovery file.

    Nothing is connected yet: the first request connects (and raises :class:`~syncsnap.DaemonNotRunning`
    if nothing answers). See :func:`syncsnap.find_endpoint` for the lookup order.
    """
    client = AsyncClient(find_endpoint(env, socket=socket, url=url, token_file=token_file), policy=policy,
                         request_timeout=request_timeout)
    try:
        yield client
    finally:
        await client.aclose()
