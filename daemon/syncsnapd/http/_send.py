"""Writes with a deadline on progress: a client that stops taking bytes cannot hold a connection forever.

Every write of the Trio adapter (complete responses, stream bodies, WebSocket sessions) goes through
:func:`send_with_deadline` or keeps its own progress clock (``TrioBodyWriter``). The deadline is a cancel
scope at this edge whose deadline moves forward each time bytes move (``HttpConfig.send_timeout`` of no
progress), so a slow reader keeps its connection and only one that stopped reading loses it.
"""

from __future__ import annotations

import os

import trio

__all__ = ["SendTimeout", "send_with_deadline", "socket_fd"]


class SendTimeout(trio.BrokenResourceError):
    """The client took no byte for ``send_timeout`` seconds: treated like a broken connection."""


def socket_fd(stream: trio.abc.Stream) -> int:
    """The descriptor of a socket stream, for direct non-blocking writes; -1 for a stream without one
    (the memory streams of tests)."""
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1


async def send_with_deadline(
    stream: trio.abc.Stream, fd: int, data: bytes | bytearray | memoryview, stall_seconds: float
) -> None:
    """Send all of ``data``; raise :class:`SendTimeout` when no byte moves for ``stall_seconds``.

    The deadline is a cancel scope in here, not the caller's, because it moves each time bytes move: a
    caller's ``fail_after`` could only bound the whole send, and cut a slow reader that is still reading.

    With a descriptor (``fd >= 0``) the bytes are written with non-blocking ``os.write`` and the deadline
    restarts after each write that moved bytes. Without one (a stream of tests) progress cannot be seen,
    so the whole ``send_all`` gets ``stall_seconds``. Not a checkpoint when everything is written at once.

    Raises:
        SendTimeout: no progress for ``stall_seconds``; the connection should be closed.
        trio.BrokenResourceError, trio.ClosedResourceError: the connection broke or was closed.
    """
    if not data:
        return
    if fd < 0:
        with trio.move_on_after(stall_seconds) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            raise SendTimeout(f"the client took no data for {stall_seconds} s")
        return
    view = memoryview(data)
    with trio.CancelScope(deadline=trio.current_time() + stall_seconds) as scope:
        while True:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"client connection broke: {exc}") from exc
            if written:
                view = view[written:]
                if not view:
                    return
                scope.deadline = trio.current_time() + stall_seconds
            await trio.lowlevel.wait_writable(fd)
    raise SendTimeout(f"the client took no data for {stall_seconds} s")
