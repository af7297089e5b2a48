"""Reading one file of a snapshot from the daemon as a stream: ``GET .../snapshots/{snap}/files?path=P``
(docs/api.md, "Browsing and downloading"), a piece at a time, never the whole file in memory.

The daemon ends the connection early when a chunk turns out damaged after the head went out; a body
shorter than its ``Content-Length`` is therefore an error here (:class:`~syncsnap.ConnectionLost`), never a
shorter file.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import trio

from ._errors import ConnectionLost, ProtocolError
from .protocol import API, error_for_response
from .transport import HttpConnection

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = ["FileStream", "copy_file", "open_file"]


def file_target(project: str, snapshot: str, path: str) -> str:
    """The request target of a file of a snapshot; ``path`` as its bytes, percent-encoded."""
    return (f"{API}/projects/{quote(project, safe='')}/snapshots/{quote(snapshot, safe='')}/files"
            f"?path={quote(os.fsencode(path), safe='')}")


class FileStream:
    """The content of one file as it arrives: ``size`` bytes in pieces (``async for piece in stream``)."""

    def __init__(self, conn: HttpConnection, size: int, timeout: float, what: str) -> None:
        self._conn = conn
        self.size = size
        self.received = 0
        self._timeout = timeout
        self._what = what

    async def receive(self) -> bytes | None:
        """The next piece; None once all ``size`` bytes came.

        Raises:
            ConnectionLost: the daemon stopped before the end (a damaged chunk, or it went away).
        """
        if self.received >= self.size:
            return None
        with trio.fail_after(self._timeout):
            piece = await self._conn.receive_body()
        if piece is None:
            raise ConnectionLost(f"{self._what} ended after {self.received} of {self.size} bytes (a damaged "
                                 "chunk ends a download early; `syncsnapd check --read-data` tells which).")
        self.received += len(piece)
        return piece

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        while (piece := await self.receive()) is not None:
            yield piece


@asynccontextmanager
async def open_file(client: AsyncClient, project: str, snapshot: str, path: str) -> AsyncIterator[FileStream]:
    """A stream of file ``path`` of ``snapshot`` (an id or ``latest``) of ``project``; see
    :meth:`AsyncClient.open_file`."""
    target = file_target(project, snapshot, path)
    conn = await HttpConnection.open(client.endpoint)
    try:
        try:
            with trio.fail_after(client.request_timeout):
                resp = await conn.start_stream(target)
        except trio.TooSlowError:
            raise ConnectionLost(f"syncsnapd at {client.endpoint.describe()} did not answer GET {target} within "
                                 f"{client.request_timeout:g} s; is it stuck? See its log.") from None
        if resp.status != 200:
            raise error_for_response(client.endpoint, "GET", target, resp.status, resp.body)
        length = resp.header(b"content-length")
        if length is None or not length.isdigit():
            raise ProtocolError(f"The daemon's answer to {target} has no Content-Length; is it syncsnapd?")
        yield FileStream(conn, int(length), client.request_timeout, f"The download of {path!r}")
    finally:
        await conn.aclose()


async def copy_file(client: AsyncClient, project: str, snapshot: str, path: str, out: BinaryIO) -> int:
    """Write file ``path`` of ``snapshot`` to ``out`` piece by piece; returns its size."""
    async with open_file(client, project, snapshot, path) as stream:
        async for piece in stream:
            await trio.to_thread.run_sync(out.write, piece)
        await trio.to_thread.run_sync(out.flush)
        return stream.size
