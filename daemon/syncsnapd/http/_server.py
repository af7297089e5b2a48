"""The HTTP server: listeners in, connections out. :func:`serve_http` runs it; :class:`HttpServer` keeps
its counters and shuts it down. Each connection is a :class:`~._connection.Connection`.

- **Accepting**: one task per listener; the errors ``accept(2)`` returns when the system is out of
  resources are retried after a pause, and logged (as trio's ``serve_listeners`` does).
- **Limits**: at most ``max_connections`` open connections, of which TCP may take all but the Unix
  socket's reserved share (``HttpConfig.max_tcp``), and connections not yet authenticated at most
  ``HttpConfig.max_unauthenticated_tcp``; the next ones get a canned 503 and are closed without being read
  (beyond a little draining so the kernel does not reset the answer away). Every write has a deadline on
  progress (``send_timeout``), so a client that never reads cannot keep its slot.
- **Peers**: a Unix connection's peer is read with ``SO_PEERCRED`` (our uid or root: authenticated at
  accept); authorization happens per request.
- **Shutdown**: :meth:`HttpServer.begin_shutdown` stops accepting, closes idle connections, lets requests
  in progress finish (their responses carry ``Connection: close``), ends streams with their final chunk
  (a shielded send of at most ``FINAL_CHUNK_SECONDS``), and :func:`serve_http` returns once every
  connection is gone or ``shutdown_grace`` has passed, whichever comes first.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ._config import LINGER_SECONDS, MAX_RECV, HttpConfig
from ._connection import Connection, send_eof_and_drain
from ._context import ServerContext
from ._heads import format_head
from ._messages import App, Peer, error_response

__all__ = ["HttpServer", "HttpStatistics", "serve_http"]

LOGGER = logging.getLogger("syncsnapd.http")

# Refusing connections beyond max_connections costs a task each; beyond this many refusals at once we
# close without answering.
MAX_REFUSING = 64

# Errors that accept(2) returns when the system is out of resources: retried after a pause, and logged
# (trio's serve_listeners handles them the same way, with the same pause).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_SECONDS = 0.100

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TCP_PEER = Peer("tcp")
_TOO_MANY = error_response(503, "unavailable", "Too many connections; try again shortly.")


@dataclass(frozen=True)
class HttpStatistics:
    """A snapshot of the server's counters (see :meth:`HttpServer.statistics`).

    Attributes:
        open_connections: connections being served (not counting those refused with 503).
        open_streams: streaming responses in progress.
        requests_by_status: responses sent since start, by status code (503s to refused connections
            included).
        connections_refused: connections answered 503 because of ``max_connections``, TCP's share of it
            or the budget of unauthenticated connections.
        unauthenticated_connections: open connections not yet authenticated.
    """

    open_connections: int
    open_streams: int
    requests_by_status: dict[int, int]
    connections_refused: int
    unauthenticated_connections: int = 0


class HttpServer:
    """The HTTP server: serves connections with an app, and keeps counters.

    :func:`serve_http` creates one and hands it out through ``task_status``. Tests may also build one and
    call :meth:`serve_connection` on any half-closeable stream (e.g. ``trio.testing.memory_stream_pair``).
    """

    def __init__(self, app: App, config: HttpConfig) -> None:
        self.app = app
        self.config = config
        self._context = ServerContext(app, config)
        self._connections: set[Connection] = set()
        self._tcp: set[Connection] = set()  # the TCP ones among them
        self._refusing = 0
        self._refused = 0
        self._shutdown_started = trio.Event()
        self._drained: trio.Event | None = None
        self._accept_scope = trio.CancelScope()

    def statistics(self) -> HttpStatistics:
        """Open connections, open streams, responses sent by status, connections refused."""
        context = self._context
        return HttpStatistics(
            open_connections=len(self._connections),
            open_streams=context.open_streams,
            requests_by_status=dict(context.by_status),
            connections_refused=self._refused,
            unauthenticated_connections=len(context.unauthenticated),
        )

    def begin_shutdown(self) -> None:
        """Stop accepting, close idle connections, end streams; requests in progress may finish.

        Idempotent and synchronous. :func:`serve_http` returns once every connection is closed, or after
        ``HttpConfig.shutdown_grace`` seconds (then the stragglers are cancelled).
        """
        if self._context.shutting_down:
            return
        self._context.shutting_down = True
        self._accept_scope.cancel()
        for connection in list(self._connections):
            connection.begin_shutdown()
        self._shutdown_started.set()

    async def serve_connection(self, stream: trio.abc.HalfCloseableStream, peer: Peer) -> None:
        """Serve one connection until it closes; closes ``stream`` at the end. Never raises for a
        misbehaving client (errors are logged)."""
        connection = Connection(self._context, stream, peer)
        self._connections.add(connection)
        await self._run_connection(connection)

    # -- internals ---------------------------------------------------------------------------------

    async def _run_connection(self, connection: Connection) -> None:
        try:
            await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-send
        except Exception:
            LOGGER.exception("error on an HTTP connection; closing it")
        finally:
            self._connections.discard(connection)
            self._tcp.discard(connection)
            self._context.unauthenticated.discard(connection)
            await trio.aclose_forcefully(connection.stream)
            self._wake_if_drained()

    def _wake_if_drained(self) -> None:
        if not self._connections and not self._refusing and self._drained is not None:
            self._drained.set()

    async def _wait_drained(self) -> None:
        while self._connections or self._refusing:
            self._drained = trio.Event()
            await self._drained.wait()

    async def _serve_listeners(
        self,
        listeners: Sequence[tuple[trio.abc.Listener[trio.SocketStream], str]],
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with self._accept_scope:
            async with trio.open_nursery() as accept_nursery:
                for listener, transport in listeners:
                    accept_nursery.start_soon(self._accept_loop, listener, transport, nursery)
                task_status.started()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.SocketStream], transport: str, nursery: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    LOGGER.error(
                        "accept returned %s (%s); retrying in %.0f ms",
                        errno.errorcode.get(exc.errno or 0, "?"),
                        os.strerror(exc.errno or 0),
                        ACCEPT_BACKOFF_SECONDS * 1000,
                        exc_info=True,
                    )
                    await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                    continue
                peer = _unix_peer(stream) if transport == "unix" else _TCP_PEER
                # Unix peers authenticate by their uid at accept; TCP ones with their first valid token.
                authenticated = peer.uid is not None and (peer.uid == 0 or peer.uid == os.getuid())
                if not self._admits(transport, authenticated):
                    self._refused += 1
                    if self._refusing < MAX_REFUSING:
                        self._refusing += 1
                        nursery.start_soon(self._refuse, stream)
                    else:
                        stream.socket.close()
                    continue
                connection = Connection(self._context, stream, peer)
                connection.authenticated = authenticated
                if not authenticated:
                    self._context.unauthenticated.add(connection)
                if transport == "tcp":
                    self._tcp.add(connection)
                self._connections.add(connection)
                nursery.start_soon(self._run_connection, connection)

    def _admits(self, transport: str, authenticated: bool) -> bool:
        # The connection budgets: all connections, TCP's share (the rest is kept for the Unix socket), and
        # connections not yet authenticated (their own, smaller budget).
        config = self.config
        if len(self._connections) >= config.max_connections:
            return False
        if transport == "tcp" and len(self._tcp) >= config.max_tcp:
            return False
        return authenticated or len(self._context.unauthenticated) < config.max_unauthenticated_tcp

    async def _refuse(self, stream: trio.SocketStream) -> None:
        # Answer 503 without parsing anything, then close. The little draining avoids a reset that could
        # discard the answer before the client reads it.
        response = _TOO_MANY
        head = format_head(response, self._context.date.get()) + b"Connection: close\r\n\r\n"
        try:
            with trio.move_on_after(LINGER_SECONDS):
                await stream.send_all(head + response.body)
                self._context.count(503)
                await send_eof_and_drain(stream, MAX_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self._refusing -= 1
            self._wake_if_drained()


def _unix_peer(stream: trio.SocketStream) -> Peer:
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return Peer("unix")  # unknown peer: authorize() refuses it
    return Peer("unix", uid, pid)


async def serve_http(
    app: App,
    listeners: Sequence[tuple[trio.abc.Listener[trio.SocketStream], str]],
    config: HttpConfig,
    *,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 with ``app`` on every listener until cancelled or shut down.

    Args:
        app: ``async (Request) -> Response | StreamResponse``; see
            :func:`~syncsnapd.http.router_app`. :class:`~syncsnapd.http.HTTPError`
            becomes its JSON error; any other exception becomes 500 ``internal_error``.
        listeners: ``(listener, transport)`` pairs, transport ``"unix"`` (peers checked with
            ``SO_PEERCRED``) or ``"tcp"`` (``Host`` and bearer token checked). The listeners are closed
            when serving ends.
        config: limits, timeouts and the TCP token.
        task_status: receives the :class:`HttpServer` once every listener is accepting.

    Returns once :meth:`HttpServer.begin_shutdown` has been called and every connection is closed (or the
    shutdown grace has passed). Cancelling the caller's scope closes everything at once.
    """
    for _, transport in listeners:
        if transport not in ("unix", "tcp"):
            raise ValueError(f"unknown transport {transport!r}; expected 'unix' or 'tcp'")
    server = HttpServer(app, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server._serve_listeners, listeners, nursery)
        task_status.started(server)
        await server._shutdown_started.wait()
        with trio.move_on_after(config.shutdown_grace):
            await server._wait_drained()
        nursery.cancel_scope.cancel()
