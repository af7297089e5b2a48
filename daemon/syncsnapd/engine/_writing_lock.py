"""A snapshot run's hold on its store's shared lock (``store/_locks.py``), from step 2 to the snapshot file.

Only a store with lock objects (S3, or a local store on a network filesystem) has one; for a store on a
local disk :func:`open_writing_lock` does nothing (no request, no worker thread). While another process's
prune holds the exclusive lock, the run tries again every :data:`WRITER_LOCK_RETRY` seconds, waiting in
Trio (cancellable, its worker thread given back), for at most :data:`WRITER_LOCK_WAIT` seconds, then fails
with ``store_locked`` naming the holder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import trio

from ..store import Store, StoreLocked, writing_lock

__all__ = ["WRITER_LOCK_RETRY", "WRITER_LOCK_WAIT", "open_writing_lock"]

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
