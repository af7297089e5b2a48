"""A snapshot run's hold on its store's shared lock (``store/_locks.py``), from step 2 to the snapshot file.

Only a store with lock objects (S3, or a local store on a network filesystem) has one; for a store on a
local disk :func:`open_writing_lock` does nothing (no request, no worker thread). While another process's
prune holds the exclusive lock, the run tries again every :data:`WRITER_LOCK_RETRY` seconds, waiting in
Trio (cancellable, its worker thread given back), for at most :data:`WRITER_LOCK_WAIT` seconds, then fails
with ``store_locked`` naming the holder.

A bucket that does not answer at step 2 (offline at start, ``_reconnect.py``) does not stop the run: it
goes on without the lock, staging what it makes, and takes the lock before step 5 uploads anything, once
the bucket answers (waiting as step 5 waits). Taking it brings the cached metadata up to date; a prune
elsewhere may have run meanwhile, so the run then checks that what it relied on is still there (the
previous snapshot it compared with, the stored blobs it did not store again) and fails with
``store_error`` if not: its retry stores them again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import trio

from ..store import Store, StoreError, StoreLocked, UnreachableWait, writing_lock

__all__ = ["WRITER_LOCK_RETRY", "WRITER_LOCK_WAIT", "WritingLock", "open_writing_lock"]

log = logging.getLogger("syncsnapd.snapshot")

# Seconds between tries, and the longest wait, of a run finding the store locked by a prune elsewhere: a
# prune of a large bucket takes minutes; one that holds its lock longer fails the run (its retry follows).
WRITER_LOCK_RETRY = 5.0
WRITER_LOCK_WAIT = 30 * 60.0


@contextlib.asynccontextmanager
async def open_writing_lock(store: Store, limiter: trio.CapacityLimiter) -> AsyncIterator[None]:
    """Hold ``store``'s shared lock while the block runs (see the module docstring).

    Raises:
        StoreLocked: still locked by another process after :data:`WRITER_LOCK_WAIT` seconds.
        StoreError: the lock objects cannot be read or written (``store_unreachable``...).
    """
    if store.locks is None:
        yield
        return
    held = contextlib.ExitStack()
    deadline = trio.current_time() + WRITER_LOCK_WAIT
    while True:
        try:
            await trio.to_thread.run_sync(lambda: held.enter_context(writing_lock(store, wait=0)), limiter=limiter)
            break
        except StoreLocked as exc:
            if trio.current_time() >= deadline:
                raise
            log.info("%s; retrying in %.0f s", exc, WRITER_LOCK_RETRY)
            await trio.sleep(WRITER_LOCK_RETRY)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(held.close, limiter=limiter)


class WritingLock:
    """A run's hold on its store's shared lock: taken at step 2, or (the bucket unreachable then) late,
    before step 5 (see the module docstring). ``taken`` is True once held, and for a store without lock
    objects."""

    def __init__(self, store: Store, limiter: trio.CapacityLimiter) -> None:
        self.store = store
        self.limiter = limiter
        self.taken = store.locks is None
        self._stack = contextlib.AsyncExitStack()
        self._late = contextlib.ExitStack()  # the lock taken late, in the commit's thread
        self._late_held = False

    async def take(self, *, deferrable: bool) -> None:
        """Take the lock (step 2). ``deferrable``: a bucket that does not answer leaves it for
        :meth:`take_late` instead of failing the run."""
        if self.taken:
            return
        try:
            await self._stack.enter_async_context(open_writing_lock(self.store, self.limiter))
        except StoreError as exc:
            if not deferrable or exc.code != "store_unreachable":
                raise
            log.info("the store's lock is taken once the bucket answers (%s)", exc.message)
            return
        self.taken = True

    def take_late(self, wait: UnreachableWait, still_valid: Callable[[], None]) -> None:
        """Take the lock before step 5 sends anything, if step 2 could not (blocking: in the commit's
        worker thread, once every pack is sealed in staging): ``wait(error, attempt)`` between tries while
        the bucket does not answer; then ``still_valid()`` raises if a prune elsewhere removed what the run
        relied on. A prune elsewhere holding the lock now fails the run with ``store_locked`` (retried)."""
        attempt = 0
        remote = self.store.remote
        while not self.taken:
            try:
                if remote is not None:  # one quick request first (and a store made offline is created)
                    remote.confirm(quick=True)
                self._late.enter_context(writing_lock(self.store, wait=0))
                self.taken = self._late_held = True
            except StoreLocked:
                raise
            except StoreError as exc:
                if exc.code != "store_unreachable":
                    raise
                wait(exc, attempt)
                attempt += 1
        still_valid()

    async def release(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stack.aclose()
            if self._late_held:  # not with the run's limiter: a paused run has lent its tokens
                await trio.to_thread.run_sync(self._late.close)
