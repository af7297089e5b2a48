"""Syncthing as the source of change and of readiness for a project (REST API of Syncthing 1.19).

Three entry points, each called from elsewhere:

* :func:`folder_path` (when a project configured without a ``path`` starts): the folder's path from
  Syncthing's config. Loading the configuration never calls Syncthing.
* :func:`wait_for_sync` (step 1 of every run): ask Syncthing to rescan, then wait until the folder is
  ``idle`` with nothing left to pull, showing Syncthing's own progress in step 1's message and percent.
* :func:`serve_syncthing_changes` (the project's change source): follow ``/rest/events`` and send one item
  per settled batch of changes into the debounce, plus a "full check" whenever events may have been missed.

How the event stream is read, and why it cannot silently miss a change:

* ``/rest/events?events=MASK`` is served from a subscription Syncthing creates for that mask on first use
  and keeps, with a ring buffer of the last 1000 events (``EventSubBufferSize``). Each event's ``id`` is
  its sequence number *within that subscription* (``globalID`` counts all events), so ids are dense:
  a first id above ``since + 1`` means events fell out of the buffer (or were dropped for a slow reader)
  before we asked. That sends a full check.
* After a restart Syncthing counts from 1 again, and a request with our old ``since`` would block until
  the new process had produced that many events, silently skipping the first ones. A restart breaks our
  connection (the long poll is almost always in flight), so after any failed request, and after every
  long poll that ended with nothing, we compare the instance's identity (``myID`` and ``startTime`` from
  ``/rest/system/status``): the same process resumes from ``since`` without loss; a different one gets a
  new position and a full check.
* A full check is just a change: the snapshot walks the whole folder anyway.

Only events that mean this disk changed are changes: ``LocalIndexUpdated`` (a scan found local edits, or
pulled items were committed) and ``ItemFinished`` (an item was pulled or deleted here). ``StateChanged``
marks batches: changes seen while the folder is scanning or syncing are held until it is idle again, so
a sync pass longer than ``settle`` still becomes one snapshot instead of one now and a redundant one
later. ``RemoteIndexUpdated`` and ``FolderSummary`` are not followed: a remote index changes nothing here
until items are pulled (which ``ItemFinished`` reports), and summaries follow every scan, including the
one step 1 asks for, so either would make every snapshot trigger the next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import httpx
import trio

from ..core import RunProgress, SyncsnapdError, SyncthingConfig, human_bytes
from ..engine import SnapshotError

if TYPE_CHECKING:
    from ._watch import WatchStatus

__all__ = ["SyncthingChange", "SyncthingError", "folder_path", "serve_syncthing_changes", "wait_for_sync"]

log = logging.getLogger("syncsnapd.syncthing")

# --- timeouts (seconds), each applied as a cancel scope around one request -------------------------------
# An ordinary REST call (status, config, ping) answers in milliseconds on loopback; ten seconds means the
# process is hung or swapping, which we treat like "not answering".
REQUEST_TIMEOUT_SECONDS = 10.0
# POST /rest/db/scan returns only when the scan is done (after a pull in progress, if any). Hashing a
# large first-time folder takes hours (1 TB at 200 MB/s is 1.4 h); liveness is checked meanwhile by the
# status polls, so this only bounds a scan that never ends.
SCAN_TIMEOUT_SECONDS = 6 * 3600.0
# Long poll: Syncthing holds /rest/events up to this long when nothing happens (its default is 60 s) ...
EVENTS_POLL_SECONDS = 60
# ... and we give it this much more before calling the request hung.
EVENTS_GRACE_SECONDS = 15.0

# How often step 1 asks /rest/db/status while waiting: fast enough for a smooth message, two cheap
# requests a second at most (in 1.19 the counts come from Syncthing's database metadata, not a walk).
STATUS_POLL_SECONDS = 0.5

# Retry policy when Syncthing does not answer: 1 s, doubling, at most 30 s, back to 1 s once it answers.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0

# Events that mean files on this disk changed (see the module docstring for the others).
CHANGE_EVENTS = frozenset({"LocalIndexUpdated", "ItemFinished"})
EVENT_MASK = "LocalIndexUpdated,ItemFinished,StateChanged"
SCAN_PROGRESS_MASK = "FolderScanProgress"
# Folder states from which Syncthing returns to "idle" by itself; changes seen meanwhile are held.
# ("error", "paused" and unknown states are not busy: holding changes there could hold them forever.)
BUSY_STATES = frozenset({"scan-waiting", "scanning", "sync-waiting", "sync-preparing", "syncing",
                         "clean-waiting", "cleaning"})


class SyncthingError(SyncsnapdError):
    """Syncthing could not be asked, or said no; ``code`` says which and the message says what to fix.

    Codes: ``sync_auth`` (API key refused), ``sync_folder_unknown`` (no such folder id),
    ``sync_unreachable`` (not answering, or not answering like Syncthing), ``sync_folder_error``
    (Syncthing reports a problem with the folder itself, e.g. its path is missing).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True)
class SyncthingChange:
    """What :func:`serve_syncthing_changes` sends: a settled batch of changes, or a full check."""

    events: int
    full_check: bool = False
    reason: str = ""


class Backoff:
    """Delays for retrying a peer that does not answer: 1, 2, 4, ... capped, reset after success."""

    def __init__(self, first: float = BACKOFF_FIRST_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> None:
        self.first = first
        self.cap = cap
        self._next = first
        self.failures = 0  # failed tries since the last success

    def next_delay(self) -> float:
        """Count a failed try and return how long to wait before the next one."""
        self.failures += 1
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first
        self.failures = 0

    def retry_message(self, problem: str, delay: float) -> str:
        """``problem`` with when we try again; later tries say how many failed, so a long outage is
        visible as such (and each try changes the text)."""
        if self.failures <= 1:
            return f"{problem}; retrying in {delay:g} s"
        return f"{problem}; retrying in {delay:g} s ({self.failures} tries so far)"


# --- errors from responses (pure) ------------------------------------------------------------------------

def _auth_error(cfg: SyncthingConfig, response: httpx.Response) -> SyncthingError:
    return SyncthingError(
        "sync_auth",
        f"Syncthing at {cfg.url} refused the API key (HTTP {response.status_code}); check api_key/api_key_file "
        "against the key in Syncthing's Actions > Settings > GUI")


def _unknown_folder_error(cfg: SyncthingConfig) -> SyncthingError:
    return SyncthingError(
        "sync_folder_unknown",
        f"Syncthing at {cfg.url} has no folder with id {cfg.folder!r}; check syncthing.folder (the folder ID "
        "shown in Syncthing's folder settings, not its label)")


def _unreachable(cfg: SyncthingConfig, reason: str) -> SyncthingError:
    return SyncthingError("sync_unreachable", f"Syncthing at {cfg.url} is not answering ({reason})")


def _transport_reason(exc: httpx.RequestError) -> str:
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return "its TLS certificate is not trusted"
        return "cannot connect"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "connection lost"
    return type(exc).__name__


def _check_response(cfg: SyncthingConfig, response: httpx.Response, *, folder_call: bool) -> None:
    """Raise the :class:`SyncthingError` a non-2xx answer stands for.

    Syncthing answers a wrong key with 403 "CSRF Error" (401 when GUI user/password auth is on), an unknown
    folder with 404 (500 from POST /rest/db/scan), both with "no such folder" in the text.
    """
    code = response.status_code
    if code < 300:
        return
    if code in (401, 403):
        raise _auth_error(cfg, response)
    text = response.text.strip()[:200]
    if folder_call and (code == 404 or "no such folder" in text.lower()):
        raise _unknown_folder_error(cfg)
    if folder_call and code == 500:
        raise SyncthingError("sync_folder_error", f"Syncthing reports a problem with folder {cfg.folder!r}: {text}")
    raise _unreachable(cfg, f"HTTP {code} from {response.request.url.path}: {text}")


def _json(cfg: SyncthingConfig, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _unreachable(cfg, f"{response.request.url.path} did not answer with JSON; is this Syncthing's "
                                "GUI address?") from None


def _headers(cfg: SyncthingConfig) -> dict[str, str]:
    return {"X-API-Key": cfg.api_key, "Accept": "application/json"}


def _folder_config_path(cfg: SyncthingConfig) -> str:
    return f"/rest/config/folders/{quote(cfg.folder, safe='')}"


# --- the async REST client -------------------------------------------------------------------------------

class _Rest:
    """The calls we make, each with its own deadline (a cancel scope: httpx's own timeouts are off)."""

    def __init__(self, cfg: SyncthingConfig, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self._client = client

    async def _call(self, method: str, path: str, *, params: dict[str, str | int] | None = None,
                    deadline: float, folder_call: bool = False) -> httpx.Response:
        response: httpx.Response | None = None
        with trio.move_on_after(deadline):
            try:
                response = await self._client.request(method, path, params=params)
            except httpx.RequestError as exc:  # connection refused or lost, bad HTTP, undecodable body
                raise _unreachable(self.cfg, _transport_reason(exc)) from exc
        if response is None:
            raise _unreachable(self.cfg, f"no answer to {path} within {deadline:g} s")
        _check_response(self.cfg, response, folder_call=folder_call)
        return response

    async def db_status(self) -> dict[str, Any]:
        r = await self._call("GET", "/rest/db/status", params={"folder": self.cfg.folder},
                             deadline=REQUEST_TIMEOUT_SECONDS, folder_call=True)
        data = _json(self.cfg, r)
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            raise _unreachable(self.cfg, "/rest/db/status has no folder state")
        return data

    async def scan(self) -> None:
        await self._call("POST", "/rest/db/scan", params={"folder": self.cfg.folder},
                         deadline=SCAN_TIMEOUT_SECONDS, folder_call=True)

    async def check_folder(self) -> None:
        await self._call("GET", _folder_config_path(self.cfg), deadline=REQUEST_TIMEOUT_SECONDS,
                         folder_call=True)

    async def folder_path(self) -> str:
        r = await self._call("GET", _folder_config_path(self.cfg), deadline=REQUEST_TIMEOUT_SECONDS,
                             folder_call=True)
        data = _json(self.cfg, r)
        path = data.get("path") if isinstance(data, dict) else None
        if not isinstance(path, str) or not path:
            raise _unreachable(self.cfg, f"its config of folder {self.cfg.folder!r} has no path")
        return path

    async def identity(self) -> tuple[str, str]:
        """Which Syncthing process answers: (device id, start time); changes when it restarts."""
        r = await self._call("GET", "/rest/system/status", deadline=REQUEST_TIMEOUT_SECONDS)
        data = _json(self.cfg, r)
        if not isinstance(data, dict):
            raise _unreachable(self.cfg, "/rest/system/status is not an object")
        return str(data.get("myID", "")), str(data.get("startTime", ""))

    async def events(self, mask: str, since: int, *, wait: int = EVENTS_POLL_SECONDS,
                     limit: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"events": mask, "since": since, "timeout": wait}
        if limit is not None:
            params["limit"] = limit
        r = await self._call("GET", "/rest/events", params=params, deadline=wait + EVENTS_GRACE_SECONDS)
        data = _json(self.cfg, r)
        if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), int)
                                                  for e in data):
            raise _unreachable(self.cfg, "/rest/events did not answer with a list of events")
        return data

    async def latest_event_id(self, mask: str) -> int:
        """The id of the newest event in the mask's subscription (0 if none yet), without waiting.

        The first call with a mask makes Syncthing create that subscription; it holds events from then on.
        """
        evs = await self.events(mask, 0, wait=0, limit=1)
        return int(evs[-1]["id"]) if evs else 0


@asynccontextmanager
async def _open_rest(cfg: SyncthingConfig) -> AsyncIterator[_Rest]:
    # timeout=None: deadlines are cancel scopes in _Rest._call. trust_env=False: no proxies for loopback.
    async with httpx.AsyncClient(base_url=cfg.url, headers=_headers(cfg), timeout=None,
                                 trust_env=False) as client:
        yield _Rest(cfg, client)


async def folder_path(cfg: SyncthingConfig) -> Path:
    """The folder's path as Syncthing has it configured (``GET /rest/config/folders/{id}``).

    Called when a project configured without a ``path`` starts (loading the configuration does no
    network I/O); one request, bounded by :data:`REQUEST_TIMEOUT_SECONDS`, not retried here.

    Raises:
        SyncthingError: ``sync_auth``, ``sync_folder_unknown`` or ``sync_unreachable``.
    """
    async with _open_rest(cfg) as rest:
        path = await rest.folder_path()
    return _expand_home(path)


def _expand_home(path: str) -> Path:
    # Syncthing keeps "~/..." as typed in its GUI; it runs as the same user, so our ~ is its ~.
    return Path(path).expanduser()


def _reraise_cancelled(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise a nursery's all-``Cancelled`` group as one plain ``Cancelled``, so the scheduler (which
    catches ``trio.Cancelled`` to publish the run's ``cancelled`` event) sees what it expects."""
    cancelled, rest = group.split(trio.Cancelled)
    if rest is not None or cancelled is None:
        raise group
    first: BaseException = cancelled
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    raise first from None


# --- step 1: wait until Syncthing has the folder in sync -------------------------------------------------

@dataclass
class ScanProgress:
    """The latest ``FolderScanProgress`` event of the folder: bytes hashed of bytes to hash."""

    current: int
    total: int


def completion_percent(status: Mapping[str, Any]) -> float:
    """How complete the local copy is, computed as Syncthing's ``/rest/db/completion`` does (bytes; a
    folder with nothing but deletions left shows 95 %)."""
    global_bytes = int(status.get("globalBytes") or 0)
    need_bytes = int(status.get("needBytes") or 0)
    if global_bytes <= 0:
        pct = 100.0
    else:
        pct = 100.0 * (1.0 - min(need_bytes, global_bytes) / global_bytes)
    if need_bytes == 0 and int(status.get("needDeletes") or 0) > 0:
        pct = 95.0
    return pct


def in_sync(status: Mapping[str, Any]) -> bool:
    """Idle with nothing to pull: no files, bytes, deletions (nor directories or links) still needed."""
    return status.get("state") == "idle" and all(
        int(status.get(k) or 0) == 0 for k in ("needFiles", "needBytes", "needDeletes", "needTotalItems"))


def describe_status(folder: str, status: Mapping[str, Any], scan: ScanProgress | None = None, *,
                    scanned: bool = True) -> tuple[str, float]:
    """Step 1's message and position within the step (0-1) for a ``/rest/db/status`` answer.

    Scanning fills the first half of the step, syncing the second; Syncthing's own numbers are in the text.
    ``scanned=False`` (our rescan has not returned yet): an idle folder is not "in sync" yet.
    """
    state = str(status.get("state", "unknown"))
    need_items = int(status.get("needTotalItems") or 0)
    need_files = int(status.get("needFiles") or 0) + int(status.get("needSymlinks") or 0)
    need_bytes = int(status.get("needBytes") or 0)
    need_deletes = int(status.get("needDeletes") or 0)
    pct = completion_percent(status)
    sync_fraction = 0.5 + 0.5 * pct / 100.0
    if state == "scanning":
        if scan is not None and scan.total > 0:
            done = min(scan.current, scan.total) / scan.total
            return (f"Syncthing is scanning folder {folder!r}: {human_bytes(scan.current)} of "
                    f"{human_bytes(scan.total)} hashed ({math.floor(done * 100)} %)", 0.5 * done)
        return f"Syncthing is scanning folder {folder!r}", 0.0
    if state == "scan-waiting":
        return f"Syncthing is about to scan folder {folder!r}", 0.0
    if need_items or need_bytes or need_deletes:
        parts = [f"{need_files:,} file{'s' if need_files != 1 else ''} ({human_bytes(need_bytes)})"]
        if need_deletes:
            parts.append(f"{need_deletes:,} deletion{'s' if need_deletes != 1 else ''}")
        needed = " and ".join(parts)
        if state in ("syncing", "sync-preparing", "sync-waiting"):
            return (f"Syncthing is syncing folder {folder!r}: {needed} still needed "
                    f"({math.floor(pct)} % complete)"), sync_fraction
        errors = int(status.get("pullErrors") or 0)
        why = (f"; {errors:,} item{'s' if errors != 1 else ''} failed to sync" if errors
               else "; waiting for Syncthing to pull them from a connected device")
        return f"Syncthing folder {folder!r} is {state} but {needed} still needed{why}", sync_fraction
    if state == "idle":
        if not scanned:
            return f"Syncthing is rescanning folder {folder!r}", 0.0
        return f"Syncthing folder {folder!r} is in sync", 1.0
    if state == "error":
        error = status.get("error") or status.get("invalid") or "see Syncthing's GUI"
        return f"Syncthing reports an error on folder {folder!r}: {error}", 0.5
    return f"Syncthing folder {folder!r} is {state}", 0.5


class _StepReporter:
    """Writes step 1's message into the run, publishing only when it changed."""

    def __init__(self, progress: RunProgress) -> None:
        self._progress = progress
        self._last: tuple[str, float | None] | None = None

    def show(self, message: str, fraction: float | None = None) -> None:
        if self._last == (message, fraction):
            return
        self._last = (message, fraction)
        self._progress.set_message(message, fraction=fraction)
        self._progress.flush()


async def wait_for_sync(cfg: SyncthingConfig, progress: RunProgress) -> None:
    """Step 1 for a Syncthing folder: rescan, then wait until it is idle with nothing left to pull.

    Shows Syncthing's progress (scan progress, files and bytes still needed, its completion percent) in
    the step's message and percent. While Syncthing does not answer, says so and retries with backoff
    (1 s doubling to 30 s), then carries on where it was.

    Raises:
        SnapshotError: ``sync_auth`` (API key refused) or ``sync_folder_unknown`` (no such folder id).
    """
    reporter = _StepReporter(progress)
    backoff = Backoff()
    async with _open_rest(cfg) as rest:
        while True:
            try:
                await _wait_for_sync_once(rest, reporter, backoff)
                return
            except SyncthingError as exc:
                if exc.code in ("sync_auth", "sync_folder_unknown"):
                    raise SnapshotError(exc.code, exc.message) from exc
                delay = backoff.next_delay()
                message = backoff.retry_message(exc.message, delay)
                log.warning("%s: %s", cfg.folder, message)
                reporter.show(message)
                await trio.sleep(delay)


async def _wait_for_sync_once(rest: _Rest, reporter: _StepReporter, backoff: Backoff) -> None:
    cfg = rest.cfg
    # Check key and folder first, so a misconfiguration fails the run before anything else happens.
    status = await rest.db_status()
    backoff.reset()
    reporter.show(*describe_status(cfg.folder, status, scanned=False))

    scan = _ScanRequest()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_follow_scan_progress, rest, scan.progress)
            nursery.start_soon(scan.run, rest)
            try:
                while True:
                    if not scan.done.is_set():
                        # Wake at once when the scan returns; otherwise poll at the usual pace.
                        with trio.move_on_after(STATUS_POLL_SECONDS):
                            await scan.done.wait()
                    if scan.error is not None:
                        break
                    status = await rest.db_status()
                    backoff.reset()
                    if status["state"] != "scanning":
                        scan.progress.clear()  # a later scan must not show this one's figures
                    reporter.show(*describe_status(cfg.folder, status, scan.latest(),
                                                   scanned=scan.done.is_set()))
                    if scan.done.is_set():
                        # Only a state seen after the scan returned counts: before, "idle" may just
                        # mean that the scan has not started yet.
                        if in_sync(status):
                            break
                        await trio.sleep(STATUS_POLL_SECONDS)
            except SyncthingError as exc:
                scan.error = scan.error or exc
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _reraise_cancelled(group)
    if scan.error is not None:
        raise scan.error


class _ScanRequest:
    """POST /rest/db/scan, run beside the status polls: how it ended, and the scan's progress."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: SyncthingError | None = None
        self.progress: list[ScanProgress] = []

    async def run(self, rest: _Rest) -> None:
        try:
            await rest.scan()
        except SyncthingError as exc:
            self.error = exc
        self.done.set()

    def latest(self) -> ScanProgress | None:
        return self.progress[-1] if self.progress else None


async def _follow_scan_progress(rest: _Rest, into: list[ScanProgress]) -> None:
    """Collect the folder's ``FolderScanProgress`` events (every 2 s during a scan, by default).

    Cosmetic only: any failure ends it quietly, since the status polls notice and report outages.
    """
    try:
        since = await rest.latest_event_id(SCAN_PROGRESS_MASK)
        while True:
            for ev in await rest.events(SCAN_PROGRESS_MASK, since):
                since = max(since, int(ev["id"]))
                data = ev.get("data")
                if isinstance(data, dict) and data.get("folder") == rest.cfg.folder:
                    into.append(ScanProgress(int(data.get("current") or 0), int(data.get("total") or 0)))
                    del into[:-1]
    except (SyncthingError, ValueError, TypeError) as exc:
        log.debug("scan progress of %s not followed: %s", rest.cfg.folder, exc)


# --- change source ---------------------------------------------------------------------------------------

@dataclass
class EventBatch:
    """What one answer of ``/rest/events`` means for the folder (see :func:`read_events`)."""

    since: int
    changes: int = 0
    busy: bool | None = None
    missed: str | None = None


def read_events(events: list[dict[str, Any]], since: int, folder: str) -> EventBatch:
    """Digest one answer of the long poll: the new ``since``, how many events changed the folder, its
    busy state after them (None: no ``StateChanged`` for it), and whether events were missed.

    Ids are dense within a subscription (see the module docstring), so a first id above ``since + 1``
    means events were lost; an id at or below ``since`` cannot come from the process we were following.
    """
    batch = EventBatch(since)
    if not events:
        return batch
    first = int(events[0]["id"])
    if first <= since:
        batch.missed = f"event ids went back from {since} to {first} (Syncthing restarted)"
    elif first > since + 1:
        lost = first - since - 1
        batch.missed = f"{lost} event{'s' if lost != 1 else ''} dropped from Syncthing's buffer before we read them"
    # A restarted process counts from 1 again: its newest id is our new position either way.
    batch.since = max(int(ev["id"]) for ev in events)
    for ev in events:
        data = ev.get("data")
        if not isinstance(data, dict) or data.get("folder") != folder:
            continue
        kind = ev.get("type")
        if kind in CHANGE_EVENTS:
            batch.changes += 1
        elif kind == "StateChanged":
            batch.busy = data.get("to") in BUSY_STATES
    return batch


async def serve_syncthing_changes(cfg: SyncthingConfig, changes: trio.MemorySendChannel[object],
                                  status: WatchStatus, *,
                                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Follow Syncthing's event stream for ``cfg.folder`` and send a :class:`SyncthingChange` per batch.

    A batch is the changes of one scan or sync pass: sent once the folder is idle again. A
    :class:`SyncthingChange` with ``full_check=True`` is sent whenever changes may have gone unseen
    (events dropped from Syncthing's buffer, Syncthing restarted). Started at once, without waiting
    for Syncthing. While Syncthing does not answer (or refuses the key, or lacks the folder),
    ``status.warning`` says so and requests are retried with backoff (1 s doubling to 30 s).
    """
    status.mode = "syncthing"
    status.warning = None
    task_status.started()
    backoff = Backoff()
    since: int | None = None  # position in our subscription; None: not placed yet
    identity: tuple[str, str] | None = None  # the Syncthing process `since` belongs to
    busy = False
    pending = 0  # changes seen while the folder was busy, not sent yet
    owed: str | None = None  # why a full check is due; kept until it has been sent
    # Check who answers before trusting `since`: after a failed request, and after a quiet long poll (a
    # restart slipped in between two polls would otherwise leave us waiting on ids the new process has
    # not reached; this bounds that to one poll).
    verify = False
    async with _open_rest(cfg) as rest:
        while True:
            try:
                if since is None or verify:
                    await rest.check_folder()
                    now = await rest.identity()
                    if since is None or now != identity:
                        if since is not None:
                            owed = owed or "Syncthing restarted; events may have been missed"
                        since = await rest.latest_event_id(EVENT_MASK)
                        identity = now
                        busy = (await rest.db_status())["state"] in BUSY_STATES
                    verify = False
                    # Answering again: say so now, not after the long poll below (up to a minute).
                    if status.warning is not None:
                        log.info("%s: Syncthing at %s answers again", cfg.folder, cfg.url)
                        status.warning = None
                    backoff.reset()
                if owed is None:
                    events = await rest.events(EVENT_MASK, since)
            except SyncthingError as exc:
                verify = True
                delay = backoff.next_delay()
                status.warning = backoff.retry_message(exc.message, delay)
                log.warning("%s: %s", cfg.folder, status.warning)
                await trio.sleep(delay)
                continue
            if owed is None:
                backoff.reset()
                batch = read_events(events, since, cfg.folder)
                since = batch.since
                if batch.busy is not None:
                    busy = batch.busy
                pending += batch.changes
                owed = batch.missed
                verify = not events
            if owed is not None:
                log.warning("%s: full check: %s", cfg.folder, owed)
                await changes.send(SyncthingChange(pending, full_check=True, reason=owed))
                owed, pending = None, 0
            elif pending and not busy:
                log.debug("%s: %d change event(s)", cfg.folder, pending)
                await changes.send(SyncthingChange(pending))
                pending = 0
