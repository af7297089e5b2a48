"""The worker threads of a snapshot run: running several at once, and lending their limiter tokens back
while a pause holds them.

A worker thread holds a token of the run's thread limiter (the daemon's, shared by every project) for as
long as it runs. A pause of its project holds it in :meth:`~syncsnapd.core.RunProgress.check_cancelled`;
meanwhile it lends that token back (``total_tokens + 1``), so a paused project never keeps another
project's threads waiting, and takes it back (``- 1``) when it leaves the hold, however it leaves it
(resumed, cancelled, the run failing or the daemon stopping: both wake it through
``trio.from_thread.check_cancelled``). The resumed thread goes on at once, with its own token: the limiter
may count more borrowers than tokens for a while, and lets no new thread start until it is back under.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


def token_lender(limiter: trio.CapacityLimiter) -> Callable[[bool], None]:
    """The ``held`` callback of :meth:`~syncsnapd.core.RunProgress.check_cancelled` for a thread started
    by ``trio.to_thread.run_sync(..., limiter=limiter)``: lends its token while held. Call it from that
    thread only (it runs the change on the Trio thread and waits for it)."""

    def adjust(delta: int) -> None:
        limiter.total_tokens += delta

    def held(holding: bool) -> None:
        trio.from_thread.run_sync(adjust, 1 if holding else -1)

    return held


async def run_threads(fns: list[Callable[[], None]], limiter: trio.CapacityLimiter | None) -> None:
    """Run ``fns`` in worker threads at once; re-raise the first failure unwrapped.

    A failing worker cancels the others (they poll ``trio.from_thread.check_cancelled``). Errors are
    re-raised outside the nursery so callers see ``SnapshotError``/``RunCancelled`` themselves rather
    than inside an exception group.
    """
    failures: list[BaseException] = []

    async def run(fn: Callable[[], None]) -> None:
        try:
            await trio.to_thread.run_sync(fn, limiter=limiter)
        except trio.Cancelled:
            raise
        except BaseException as exc:  # noqa: B036 - re-raised below, after the nursery
            failures.append(exc)
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            for fn in fns:
                nursery.start_soon(run, fn)
    except BaseExceptionGroup as group:
        cancelled, rest = group.split(trio.Cancelled)
        if rest is not None or cancelled is None:
            raise
        first: BaseException = cancelled
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    if failures:
        raise failures[0]
