"""Syncthing as the source of change and of readiness for a project (REST API of Syncthing 1.19).

Three entry points, each called from elsewhere (the REST client under them is ``_syncthing_rest``):

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ..core import RunProgress, SyncthingConfig, human_bytes
from ..engine import SnapshotError
from ._status import WatchStatus
from ._syncthing_rest import (
    BUSY_STATES,
    CHANGE_EVENTS,
    EVENT_MASK,
    SCAN_PROGRESS_MASK,
    STATUS_POLL_SECONDS,
    Backoff,
    SyncthingChange,
    SyncthingError,
    SyncthingRest,
    folder_path,
    open_rest,
    reraise_cancelled,
)

__all__ = ["SyncthingChange", "SyncthingError", "folder_path", "serve_syncthing_changes", "wait_for_sync"]

log = logging.getLogger("syncsnapd.syncthing")

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


def who(project: str, cfg: SyncthingConfig) -> str:
    """How log lines name a Syncthing project: by the project's id, which users know from the config
    and the API, with the Syncthing folder id beside it."""
    folder = f"Syncthing folder {cfg.folder!r}"
    return f"{project} ({folder})" if project else folder


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
    async with open_rest(cfg) as rest:
        while True:
            try:
                await _wait_for_sync_once(rest, reporter, backoff)
                return
            except SyncthingError as exc:
                if exc.code in ("sync_auth", "sync_folder_unknown"):
                    raise SnapshotError(exc.code, exc.message) from exc
                delay = backoff.next_delay()
                message = backoff.retry_message(exc.message, delay)
                log.warning("%s: %s", who(progress.project, cfg), message)
                reporter.show(message)
                await trio.sleep(delay)


async def _wait_for_sync_once(rest: SyncthingRest, reporter: _StepReporter, backoff: Backoff) -> None:
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
        reraise_cancelled(group)
    if scan.error is not None:
        raise scan.error


class _ScanRequest:
    """POST /rest/db/scan, run beside the status polls: how it ended, and the scan's progress."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: SyncthingError | None = None
        self.progress: list[ScanProgress] = []

    async def run(self, rest: SyncthingRest) -> None:
        try:
            await rest.scan()
        except SyncthingError as exc:
            self.error = exc
        self.done.set()

    def latest(self) -> ScanProgress | None:
        return self.progress[-1] if self.progress else None


async def _follow_scan_progress(rest: SyncthingRest, into: list[ScanProgress]) -> None:
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
                                  status: WatchStatus, *, project: str = "",
                                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Follow Syncthing's event stream for ``cfg.folder`` and send a :class:`SyncthingChange` per batch.

    A batch is the changes of one scan or sync pass: sent once the folder is idle again. A
    :class:`SyncthingChange` with ``full_check=True`` is sent whenever changes may have gone unseen
    (events dropped from Syncthing's buffer, Syncthing restarted). Started at once, without waiting
    for Syncthing. While Syncthing does not answer (or refuses the key, or lacks the folder),
    ``status.warning`` says so and requests are retried with backoff (1 s doubling to 30 s). Log lines
    name ``project`` (the project's id) and the Syncthing folder.
    """
    name = who(project, cfg)
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
    async with open_rest(cfg) as rest:
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
                        log.info("%s: Syncthing at %s answers again", name, cfg.url)
                        status.warning = None
                    backoff.reset()
                if owed is None:
                    events = await rest.events(EVENT_MASK, since)
            except SyncthingError as exc:
                verify = True
                delay = backoff.next_delay()
                status.warning = backoff.retry_message(exc.message, delay)
                log.warning("%s: %s", name, status.warning)
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
                log.warning("%s: full check: %s", name, owed)
                await changes.send(SyncthingChange(pending, full_check=True, reason=owed))
                owed, pending = None, 0
            elif pending and not busy:
                log.debug("%s: %d change event(s)", name, pending)
                await changes.send(SyncthingChange(pending))
                pending = 0
