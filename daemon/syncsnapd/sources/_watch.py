"""Sources of change for plain folders: a file watcher, debounce, periodic and start-up checks.

Data flows one way: the watcher (inotify on every directory a snapshot walks, ``_inotify.py``, or polling
past the kernel's limits) sends
"something changed" into a channel; :func:`serve_debounce` turns bursts of changes into snapshot
requests once the folder has been quiet for ``settle`` seconds, or at the latest ``max_delay`` seconds
after the first change of a burst. The scheduler keeps at most one run and one queued run per project.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from ..core import ProjectConfig, RunProgress, SyncsnapdError, ignored_at_or_above, walked_path
from ..store import Entry
from ._inotify import TreeWatch, WatchLimit
from ._status import WatchStatus

log = logging.getLogger("syncsnapd.watch")

# Raw events are gathered for this long before they are read (ms). Our own debounce does the real
# settling; this only keeps a burst of thousands of events from waking us thousands of times.
WATCH_BATCH_MS = 50
# Poll interval when inotify is not available (limits reached, undecodable names): slow enough to be
# cheap on a big tree.
POLL_INTERVAL_MS = 2000
# How often an inotify watch checks that its folder is still there and still the same directory (a
# removed folder gives one event, then silence; one created again under the same name is not watched).
IDENTITY_CHECK_MS = 5000


@dataclass
class Debouncer:
    """Pure debounce state: when should a burst of changes become a snapshot request?"""

    settle: float
    max_delay: float
    first: float | None = None
    last: float | None = None

    def change(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        """The time at which a snapshot is due, or None when nothing changed."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.settle, self.first + self.max_delay)

    def reset(self) -> None:
        self.first = self.last = None


async def serve_debounce(changes: trio.MemoryReceiveChannel[object], request: Callable[[], object], *,
                         settle: float, max_delay: float,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call ``request()`` once per settled burst of items received on ``changes``."""
    deb = Debouncer(settle, max_delay)
    task_status.started()
    while True:
        deadline = deb.deadline()
        with trio.move_on_at(deadline if deadline is not None else float("inf")):
            async for _ in changes:
                deb.change(trio.current_time())
                break
            else:
                return  # the watcher closed the channel
            continue
        deb.reset()
        request()


def make_filter(root: Path, *, ignore: Callable[[str], bool],
                exclude: tuple[Path, ...] = ()) -> Callable[[str], bool]:
    """A predicate over absolute paths from the watcher (a directory's ends in ``/``): True when the
    change is user content, by the same rules as the snapshot walk (a path below an ignored directory is
    ignored too, as the walk never enters it)."""
    root_s = str(root).rstrip("/") + "/"
    excluded = tuple(str(p).rstrip("/") for p in exclude)

    def wanted(path: str) -> bool:
        bare = path.rstrip("/")
        if any(bare == e or bare.startswith(e + "/") for e in excluded):
            return False
        if not bare.startswith(root_s):
            return bare == root_s.rstrip("/")
        return not ignored_at_or_above(ignore, path[len(root_s):])

    return wanted


def folder_missing(root: Path) -> SyncsnapdError:
    return SyncsnapdError(f"The folder {root} does not exist (or is not a directory).", code="folder_missing")


def _identity(root: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder, None when it is missing: a folder removed and created again under
    the same name is another folder, which an inotify watch of the old one does not see."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def folder_fingerprint(root: Path, wanted: Callable[[str], bool]) -> bytes:
    """A digest of every wanted entry below ``root`` (name, type, mode, size, mtime): changes whenever a
    snapshot would differ. Names are handled as bytes-like ``os.fsdecode`` strings, so names that are not
    valid UTF-8 are fingerprinted like any other.

    Raises:
        SyncsnapdError: ``folder_missing`` when ``root`` is not a directory.
        OSError: ``root`` cannot be read.
    """
    digest = hashlib.blake2b(digest_size=16)
    stack = [str(root)]
    first = True
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            if first and _identity(root) is None:
                raise folder_missing(root) from None
            if first:
                raise
            continue  # vanished or unreadable meanwhile: the snapshot will say so
        first = False
        for entry in entries:
            if not wanted(walked_path(entry.path, entry)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            digest.update(f"{entry.path}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n"
                          .encode("utf-8", "surrogateescape"))
    return digest.digest()


class _Ready:
    """``task_status.started()`` that may be called more than once: only the first call counts."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self._task_status: trio.TaskStatus[None] | None = task_status

    def started(self) -> None:
        task_status, self._task_status = self._task_status, None
        if task_status is not None:
            task_status.started()


async def _serve_polling(root: Path, changes: trio.MemorySendChannel[object], wanted: Callable[[str], bool],
                         ready: _Ready, status: WatchStatus, warning: str | None) -> None:
    """Walk ``root`` every POLL_INTERVAL_MS and send a change whenever its fingerprint changed.

    With a ``warning`` (why inotify is not used), sends a change once the first walk is done: whatever
    happened before polling began may have been missed.
    """
    def fingerprint() -> bytes:
        return folder_fingerprint(root, wanted)

    # abandon_on_cancel: a walk of a big tree must not hold up a shutdown; its result is simply dropped.
    last = await trio.to_thread.run_sync(fingerprint, abandon_on_cancel=True)
    status.mode, status.warning = "polling", warning
    ready.started()
    if warning is not None:
        log.warning("%s", warning)
        await changes.send(0)
    while True:
        await trio.sleep(POLL_INTERVAL_MS / 1000)
        current = await trio.to_thread.run_sync(fingerprint, abandon_on_cancel=True)
        if current != last:
            last = current
            await changes.send(1)


class _InotifyGaveUp(Exception):
    """Inotify watching failed for good (a kernel limit, or an error watching the folder): poll instead."""

    def __init__(self, warning: str) -> None:
        super().__init__(warning)
        self.warning = warning


def _dir_keys(paths: tuple[Path, ...]) -> frozenset[tuple[int, int]]:
    """(device, inode) of those of ``paths`` that are directories."""
    keys = set()
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            if stat.S_ISDIR(st.st_mode):
                keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


async def _serve_inotify(root: Path, changes: trio.MemorySendChannel[object], wanted: Callable[[str], bool],
                         identity: tuple[int, int], ready: _Ready, skip: frozenset[tuple[int, int]]) -> tuple[int, int]:
    """Watch ``root`` with inotify (:class:`TreeWatch`) until cancelled, or until the folder was replaced
    by another one of the same name (returns that one's identity).

    Raises:
        _InotifyGaveUp: the kernel refuses more watches or instances, or the folder cannot be watched.
        SyncsnapdError: ``folder_missing`` when the folder was removed.
    """
    def wanted_bytes(path: bytes) -> bool:
        return wanted(os.fsdecode(path))

    try:
        tree = TreeWatch(os.fsencode(root), wanted_bytes, skip)
    except WatchLimit as exc:
        raise _InotifyGaveUp(str(exc)) from None
    except OSError as exc:
        raise _InotifyGaveUp(f"inotify is not available ({exc})") from None
    outcome: str | None = None  # why watching ended: _MISSING, a warning, or None (replaced)
    failed: str | None = None
    replaced = identity
    try:
        async with trio.open_nursery() as nursery:
            # The walks run in a worker thread that trio cannot interrupt; they return early once
            # `tree.stop` is set, which a sibling task does the moment we are cancelled.
            nursery.start_soon(_stop_on_cancel, tree.stop)
            await trio.to_thread.run_sync(tree.start)
            ready.started()
            while True:
                with trio.move_on_after(IDENTITY_CHECK_MS / 1000) as idle:
                    await trio.lowlevel.wait_readable(tree.fd)
                    # Let a burst gather: one batch, not thousands of wake-ups. Our own debounce does the
                    # real settling.
                    await trio.sleep(WATCH_BATCH_MS / 1000)
                batch = await trio.to_thread.run_sync(tree.read)
                # A quiet spell or an event on the folder itself: is it still the one we watch?
                if idle.cancelled_caught or batch.root_event:
                    now = await trio.to_thread.run_sync(_identity, root)
                    if now != identity:
                        outcome, replaced = (_MISSING, identity) if now is None else (None, now)
                        break
                if batch.changes:
                    await changes.send(batch.changes)
            nursery.cancel_scope.cancel()
    except* WatchLimit as group:  # raised inside our nursery: always in a group
        outcome = str(group.exceptions[0])
    except* OSError as group:
        log.debug("inotify watch of %s ended", root, exc_info=group)
        failed = f"{root} cannot be watched with inotify ({group.exceptions[0]})"
    finally:
        tree.close()
    if failed is not None:
        gone = await trio.to_thread.run_sync(_identity, root) is None
        outcome = _MISSING if gone else failed
    if outcome == _MISSING:
        raise folder_missing(root)
    if outcome is not None:
        raise _InotifyGaveUp(outcome)
    return replaced


async def _stop_on_cancel(stop: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()


_MISSING = "missing"


async def serve_folder_watch(root: Path, changes: trio.MemorySendChannel[object], wanted: Callable[[str], bool],
                             status: WatchStatus, *, force_polling: bool = False, exclude: tuple[Path, ...] = (),
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Watch ``root`` and send one item per batch of wanted changes.

    Watches exactly what a snapshot walks: every directory below ``root`` that ``wanted`` accepts,
    without following symlinks, and not the directories in ``exclude`` (the daemon's store and state,
    wherever they are reached), each with its own inotify watch; names are bytes, so any name is
    watched. When the kernel refuses a watch (its per-user watch or instance limit, at start or for a
    directory created later) it stops using inotify (freeing its watches for others), polls instead, says
    why in ``status.warning`` with ``status.mode == "polling"``, and sends a change at once (whatever
    happened meanwhile may have been missed). Polling walks the folder itself (every entry's name, type,
    mode, size and mtime). Never silently stops watching: a folder that is removed ends the watch with
    ``folder_missing`` (for its supervisor to retry), and one replaced by another folder of the same
    name is watched anew.

    Raises:
        SyncsnapdError: ``folder_missing`` when ``root`` is (or becomes) missing.
    """
    identity = await trio.to_thread.run_sync(_identity, root)
    if identity is None:
        raise folder_missing(root)
    ready = _Ready(task_status)
    warning: str | None = None
    skip = await trio.to_thread.run_sync(_dir_keys, exclude)
    if not force_polling:
        status.mode, status.warning = "inotify", None
        try:
            while True:
                identity = await _serve_inotify(root, changes, wanted, identity, ready, skip)
                log.info("%s was replaced by another folder; watching the new one", root)
                await changes.send(0)
        except _InotifyGaveUp as exc:
            warning = f"{exc.warning}; polling {root} every {POLL_INTERVAL_MS / 1000:g} s instead"
    await _serve_polling(root, changes, wanted, ready, status, warning)


@dataclass(frozen=True)
class FolderSummary:
    """A cheap fingerprint of a folder: detects "changed since the last snapshot" without reading content."""

    files: int
    bytes: int
    newest_mtime_ns: int


def summarize_folder(root: Path, ignore: Callable[[str], bool]) -> FolderSummary:
    """Walk ``root`` as a snapshot would (no symlink following, special files skipped), counting entries,
    file bytes and the newest mtime."""
    files = total = newest = 0
    stack = [("", str(root))]
    while stack:
        rel_dir, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for entry in it:
                rel = f"{rel_dir}{entry.name}"
                if ignore(walked_path(rel, entry)):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += st.st_size
                elif not entry.is_symlink():
                    continue  # fifos, sockets, devices: snapshots skip them too
                files += 1
                newest = max(newest, st.st_mtime_ns)
    return FolderSummary(files, total, newest)


async def wait_until_ready(project: ProjectConfig, progress: RunProgress) -> None:
    """Step 1 of every run: for a Syncthing folder, wait until Syncthing has scanned and has nothing
    left to pull; a plain folder settled already (the debounce waited) or was asked for explicitly."""
    if project.syncthing is not None:
        from ._syncthing import wait_for_sync

        await wait_for_sync(project.syncthing, progress)
    else:
        await trio.lowlevel.checkpoint()


def summary_of_entries(entries: Iterable[Entry]) -> FolderSummary:
    """The same fingerprint as :func:`summarize_folder`, from a snapshot's entries."""
    files = total = newest = 0
    for e in entries:
        files += 1
        newest = max(newest, e.mtime_ns)
        if e.kind == "file":
            total += e.size
    return FolderSummary(files, total, newest)


async def serve_project_watch(project: ProjectConfig, request: Callable[[str], object],
                              last_summary: Callable[[], Awaitable[FolderSummary | None]], *,
                              exclude: tuple[Path, ...] = (), status: WatchStatus | None = None,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """All automatic triggers of one project: start-up check, file watcher with debounce, interval.

    ``request(trigger)`` asks the scheduler for a snapshot (``"start-up"``, ``"watch"``, ``"schedule"``);
    ``last_summary()`` gives the fingerprint of the project's newest snapshot (None if it has none).
    ``task_status.started()`` is called once the start-up check has made its request, if any.
    """
    await _serve_project(project, request, last_summary, exclude, status or WatchStatus(), _Ready(task_status),
                         ready_before_check=False)


async def serve_project_source(project: ProjectConfig, request: Callable[[str], object],
                               last_summary: Callable[[], Awaitable[FolderSummary | None]], *,
                               status: WatchStatus, exclude: tuple[Path, ...] = (),
                               on_path: Callable[[ProjectConfig], object] | None = None,
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The daemon's change source of one project, meant to run under a supervisor that restarts it.

    As :func:`serve_project_watch`, except that ``task_status.started()`` comes as soon as the change
    source is set up (the start-up check, a walk of the whole folder, follows), that a Syncthing
    project configured without a path first asks Syncthing for it, then calls ``on_path(project)`` with
    the project as resolved, and that it never returns (with nothing to watch, it idles until cancelled).

    Raises:
        SyncthingError: Syncthing could not tell the folder's path (``sync_unreachable``, ``sync_auth``,
            ``sync_folder_unknown``).
        SyncsnapdError: ``folder_missing``, from the folder watcher.
    """
    cfg = project.syncthing
    if not project.path_known and cfg is not None:  # only Syncthing projects may lack a path
        from ._syncthing import folder_path

        status.mode = "syncthing"
        project = replace(project, path=await folder_path(cfg))
        log.info("%s: Syncthing has folder %r at %s", project.id, cfg.folder, project.path)
        if on_path is not None:
            on_path(project)
    await _serve_project(project, request, last_summary, exclude, status, _Ready(task_status),
                         ready_before_check=True)
    await trio.sleep_forever()


async def _serve_project(project: ProjectConfig, request: Callable[[str], object],
                         last_summary: Callable[[], Awaitable[FolderSummary | None]], exclude: tuple[Path, ...],
                         status: WatchStatus, ready: _Ready, *, ready_before_check: bool) -> None:
    ignore = project.ignore_fn(exclude)
    empty_note = (f"{project.path} is empty and has no snapshot yet: nothing to snapshot until something "
                  "is put in it")

    async def changed_since_last() -> bool:
        """Whether the folder differs from its newest snapshot. An empty folder without any snapshot
        does not count (a just-created ~/Sync): an empty snapshot would record nothing worth restoring."""
        current = await trio.to_thread.run_sync(summarize_folder, project.path, ignore)
        last = await last_summary()
        if last is None and current.files == 0:
            if status.warning is None:
                log.info("%s: %s", project.id, empty_note)
                status.warning = empty_note
            return False
        if status.warning == empty_note:
            status.warning = None
        return current != last

    def watch_request() -> None:
        if status.warning == empty_note:  # something was put in it
            status.warning = None
        request("watch")

    async with trio.open_nursery() as nursery:
        if project.watch:
            send, recv = trio.open_memory_channel[object](16)
            if project.syncthing is not None:
                # Syncthing's event stream is the source of changes: it knows when remote changes land.
                from ._syncthing import serve_syncthing_changes

                await nursery.start(functools.partial(serve_syncthing_changes, project.syncthing, send, status,
                                                      project=project.id))
            else:
                await nursery.start(functools.partial(serve_folder_watch, project.path, send,
                                                      make_filter(project.path, ignore=ignore), status,
                                                      exclude=exclude))
            await nursery.start(functools.partial(serve_debounce, recv, watch_request,
                                                  settle=project.settle, max_delay=project.max_delay))
        else:
            status.mode = "off"
        if ready_before_check:
            ready.started()
        if (project.watch or project.interval) and await changed_since_last():
            log.info("%s: changed since its last snapshot", project.id)
            request("start-up")
        ready.started()
        if project.interval:
            while True:
                await trio.sleep(project.interval)
                if await changed_since_last():
                    request("schedule")
