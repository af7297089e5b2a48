"""Sources of change for plain folders: a file watcher, debounce, periodic and start-up checks.

Data flows one way: the watcher (watchfiles on inotify, or polling past the kernel's limits) sends
"something changed" into a channel; :func:`serve_debounce` turns bursts of changes into snapshot
requests once the folder has been quiet for ``settle`` seconds, or at the latest ``max_delay`` seconds
after the first change of a burst. The scheduler keeps at most one run and one queued run per project.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import trio

from ..core import ProjectConfig, RunProgress
from ..store import Entry

log = logging.getLogger("syncsnapd.watch")

# watchfiles batches raw events for this long before yielding (ms). Our own debounce does the real
# settling; this only keeps a burst of thousands of events from waking us thousands of times.
WATCH_BATCH_MS = 50
# Poll interval when inotify is not available (limits reached): slow enough to be cheap on a big tree.
POLL_INTERVAL_MS = 2000


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
    """A predicate over absolute paths from the watcher: True when the change is user content."""
    root_s = str(root).rstrip("/") + "/"
    excluded = tuple(str(p).rstrip("/") for p in exclude)

    def wanted(path: str) -> bool:
        if any(path == e or path.startswith(e + "/") for e in excluded):
            return False
        if not path.startswith(root_s):
            return path == root_s.rstrip("/")
        parts = path[len(root_s):].split("/")
        # A change inside an ignored directory is ignored too.
        return not any(ignore("/".join(parts[:i])) for i in range(1, len(parts) + 1))

    return wanted


@dataclass
class WatchStatus:
    """What the watcher reports about itself (shown in the project's status)."""

    mode: str = "starting"  # "inotify", "polling", "stopped"
    warning: str | None = None


async def serve_folder_watch(root: Path, changes: trio.MemorySendChannel[object], wanted: Callable[[str], bool],
                             status: WatchStatus, *, force_polling: bool = False,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Watch ``root`` recursively and send one item per batch of wanted changes.

    Falls back to polling, with a warning, when the kernel refuses more inotify watches or instances:
    never silently stops watching. New directories are covered by the snapshot's own walk, so files a
    fresh watch misses are still captured; the batch that reports a new directory triggers the debounce.
    """
    import watchfiles  # imported here: only a watching daemon pays for it

    def wf_filter(_change: watchfiles.Change, path: str) -> bool:
        return wanted(path)

    polling = force_polling
    started = False
    # watchfiles runs the inotify wait in a thread that trio cannot interrupt; it returns within one
    # `step` once this event is set. A sibling task sets it the moment we are cancelled, so shutting
    # down does not wait for the watcher's 5 s internal timeout.
    stop = threading.Event()

    async def stop_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_cancel)
        while True:
            status.mode = "polling" if polling else "inotify"
            try:
                watcher = watchfiles.awatch(
                    root, watch_filter=wf_filter, debounce=WATCH_BATCH_MS, step=WATCH_BATCH_MS,
                    force_polling=polling, poll_delay_ms=POLL_INTERVAL_MS, ignore_permission_denied=True,
                    # awatch only calls is_set(), which a threading.Event has (typed for async events).
                    stop_event=cast(Any, stop), recursive=True,
                )
                if not started:
                    started = True
                    task_status.started()
                async for batch in watcher:
                    if batch:
                        await changes.send(len(batch))
                break
            except (OSError, RuntimeError) as exc:  # WatchfilesRustInternalError is a RuntimeError
                if polling:
                    raise
                polling = True
                status.warning = (f"file watch limit reached ({exc}); polling {root} every "
                                  f"{POLL_INTERVAL_MS / 1000:g} s instead")
                log.warning("%s", status.warning)
                # Whatever happened before the watcher failed may have been missed: treat it as a change.
                await changes.send(0)
        nursery.cancel_scope.cancel()


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
                if ignore(rel):
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
    """
    ignore = project.ignore_fn(exclude)
    status = status or WatchStatus()

    async def changed_since_last() -> bool:
        current = await trio.to_thread.run_sync(summarize_folder, project.path, ignore)
        return current != await last_summary()

    async with trio.open_nursery() as nursery:
        if project.watch:
            send, recv = trio.open_memory_channel[object](16)
            if project.syncthing is not None:
                # Syncthing's event stream is the source of changes: it knows when remote changes land.
                from ._syncthing import serve_syncthing_changes

                await nursery.start(serve_syncthing_changes, project.syncthing, send, status)
            else:
                await nursery.start(serve_folder_watch, project.path, send,
                                    make_filter(project.path, ignore=ignore), status)
            await nursery.start(functools.partial(serve_debounce, recv, lambda: request("watch"),
                                                  settle=project.settle, max_delay=project.max_delay))
        else:
            status.mode = "off"
        if (project.watch or project.interval) and await changed_since_last():
            log.info("%s: changed since its last snapshot", project.id)
            request("start-up")
        task_status.started()
        if project.interval:
            while True:
                await trio.sleep(project.interval)
                if await changed_since_last():
                    request("schedule")
