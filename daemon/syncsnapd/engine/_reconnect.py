"""Step 5 while the bucket of an S3 store is unreachable: wait, then try again, until it answers.

A run that cannot reach the bucket in step 5 keeps everything it made staged (``store/_remote.py``) and
waits with the message "store unreachable, retrying in N s", N being the delay before its next attempt:
:data:`RETRY_FIRST_SECONDS`, doubling up to :data:`RETRY_MAX_SECONDS`. The wait ends early once the
bucket is known to answer again (another run, or the daemon's probe, reached it). Each attempt asks the
bucket which staged objects it already has, so nothing is sent twice. Meanwhile the run is like any
other: cancelling it ends it at once; pausing it holds it after the current wait; its worker thread's
limiter token is lent back (as during a pause, ``_threads.py``), so waiting runs never keep others from
working.

Step 4 of a run with an S3 store checks the bound on staging (``daemon.s3.staging_max``) while the
bucket is unreachable: past it the run fails with ``staging_full`` rather than fill the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..core import RunProgress, SyncsnapdError, human_bytes
from ..store import Store, StoreError, StoreWriter, UnreachableWait

__all__ = ["RETRY_FIRST_SECONDS", "RETRY_MAX_SECONDS", "StagingBound", "retry_delay", "store_waiter", "wait_for_bucket"]

log = logging.getLogger("syncsnapd.engine")

# The first wait after the bucket did not answer, doubling at each attempt up to the last: a short outage
# (a laptop joining a network) costs seconds; a long one costs one cheap request every 5 minutes.
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
# How often a waiting run looks whether the bucket answers again (an attribute read, no request).
_LOOK_SECONDS = 1.0


def retry_delay(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` 0 after the first failure)."""
    return float(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(attempt, 16)))


def waiting_message(delay: float) -> str:
    return f"store unreachable, retrying in {delay:g} s"


async def wait_for_bucket(store: Store, progress: RunProgress, limiter: trio.CapacityLimiter, error: StoreError,
                          attempt: int) -> None:
    """Wait before attempt ``attempt + 1`` to reach the bucket (the message says so; the run's worker
    thread waits, and its limiter token is lent back meanwhile; a pause holds it after the wait)."""
    remote = store.remote
    delay = retry_delay(attempt)
    log.info("%s: %s (attempt %d: %s)", progress.project, waiting_message(delay), attempt + 1, error.message)
    progress.set_message(waiting_message(delay))
    progress.flush()
    limiter.total_tokens += 1  # this run's thread waits: its token is lent back meanwhile
    try:
        with trio.move_on_after(delay):
            # The state is set by worker threads (any run's, the daemon's probe): looked at, not awaited.
            while remote is None or not remote.reachable:  # noqa: ASYNC110
                await trio.sleep(_LOOK_SECONDS)
        await progress.wait_resumed()
    finally:
        limiter.total_tokens -= 1
    # The next attempt counts again what it sends (a failed attempt's partial bytes are sent again).
    now = progress.current()
    progress.set_step(5, files_total=now.files_total, bytes_total=now.bytes_total)


def store_waiter(store: Store, progress: RunProgress, limiter: trio.CapacityLimiter,
                 check: Callable[[], None]) -> UnreachableWait:
    """The ``on_unreachable`` of ``Store.commit_snapshot`` for a run: called in its uploading thread (one
    started by ``trio.to_thread.run_sync(..., limiter=limiter)``), it waits on the Trio thread and returns
    when the next attempt is due; ``check`` (the run's) then raises if the run was cancelled."""
    async def wait(error: StoreError, attempt: int) -> None:
        await wait_for_bucket(store, progress, limiter, error, attempt)

    def in_thread(error: StoreError, attempt: int) -> None:
        trio.from_thread.run(wait, error, attempt)
        check()

    return in_thread


class StagingFull(SyncsnapdError):
    code = "staging_full"


class StagingBound:
    """The bound on staged bytes for one run in step 4, checked between files (cheap: no I/O unless the
    bucket is known to be unreachable and the bound is reached; then one quick request to the bucket)."""

    def __init__(self, store: Store) -> None:
        remote = store.remote
        self._remote = remote
        self.limit = None if remote is None else remote.staging_max
        self._base = 0
        if remote is not None and self.limit is not None:
            self._base = remote.staged_bytes()  # what earlier runs left waiting (staged packs)

    def check(self, writer: StoreWriter) -> None:
        """Raise ``staging_full`` (a ``SyncsnapdError``) when, with the bucket unreachable, staging holds
        more than the limit."""
        remote, limit = self._remote, self.limit
        if remote is None or limit is None or remote.reachable:
            return
        staged = self._base + max(0, writer.data_bytes_added - writer.sent_early)
        if staged <= limit:
            return
        try:
            remote.confirm(quick=True)  # maybe back meanwhile: then the bound does not apply
            return
        except StoreError:
            pass
        raise StagingFull(
            f"{human_bytes(staged)} of snapshots wait in the staging directory for {remote.description}, which "
            f"is unreachable; the limit is {human_bytes(limit)} (daemon.s3.staging_max). Snapshots go on once "
            "the bucket answers again.")
