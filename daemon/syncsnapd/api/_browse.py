"""Browsing and downloading (docs/api.md, "Browsing and downloading"): one directory of a snapshot's tree,
and one file's content streamed from the store's chunks.

Everything is read from the store (never from the live folder), in worker threads: a listing reads the
snapshot's tree group by group (``store.list_directory``), a download one chunk at a time, each
decompressed and checked against its hash before a byte of it is sent. A chunk found damaged after the
head has gone out ends the connection early (the client sees fewer bytes than ``Content-Length``), so a
download is never silently wrong.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, TypeVar
from urllib.parse import quote

import trio

from ..http import BodyWriter, Request, Response, Router, StreamResponse, json_response
from ..runs import Scheduler
from ..store import CorruptDataError, Entry, Store, StoreError, find_entry, hash_bytes, list_directory
from ._endpoints import known_project
from ._errors import api_error
from ._operations import MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_SNAPSHOT_ID
from ._store_view import SnapshotLists

__all__ = ["parse_range", "register_browse", "snapshot_path"]

T = TypeVar("T")
log = logging.getLogger("syncsnapd.api")

API = "/api/v1"
# The most bytes handed to the connection's writer at once: a chunk (1 MiB) goes out in four pieces, so
# what waits unsent stays well under the writer's limit of pending bytes (HttpConfig.stream_max_pending).
WRITE_PIECE = 256 * 1024
# A download is a file, never a page of ours: browsers must save it, not render it in the daemon's
# origin (where the session cookie lives), whatever its name says it is.
DOWNLOAD_HEADERS = (
    ("Accept-Ranges", "bytes"),
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; sandbox"),
)
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


def snapshot_path(raw: str) -> str:
    """``raw`` as a path inside a snapshot: relative POSIX, ``""`` for the root; else 400 ``path_invalid``
    (absolute, empty or dot components, NUL, a lone surrogate that stands for no byte, over PATH_MAX or
    NAME_MAX)."""
    if raw == "":
        return raw
    try:
        encoded = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise api_error("path_invalid", "The path holds a lone surrogate that names no byte of a file name "
                                        "(only U+DC80..U+DCFF stand for undecodable bytes).") from None
    if b"\0" in encoded:
        raise api_error("path_invalid", "The path must not contain NUL.")
    if raw.startswith("/"):
        raise api_error("path_invalid", "The path must be relative to the snapshot's root (no leading '/').")
    if len(encoded) > MAX_PATH_BYTES:
        raise api_error("path_invalid", f"The path is longer than {MAX_PATH_BYTES} bytes.")
    for name in raw.split("/"):
        if name in ("", ".", ".."):
            raise api_error("path_invalid", "The path must not have empty, '.' or '..' components.")
        if len(os.fsencode(name)) > MAX_NAME_BYTES:
            raise api_error("path_invalid", f"The path has a name longer than {MAX_NAME_BYTES} bytes.")
    return raw


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte range ``(first, last)`` (inclusive) that a ``Range`` header asks of ``size`` bytes, or None
    to send everything: no header, or one we ignore as RFC 9110 allows (not ``bytes=``, several ranges,
    malformed). A single range that no byte satisfies raises 416 ``range_unsatisfiable``."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, size - 1 if last == "" else min(int(last), size - 1)


def _unsatisfiable(size: int) -> Exception:
    return api_error("range_unsatisfiable", f"The range asks for bytes outside the file's {size} bytes.",
                     (("Content-Range", f"bytes */{size}"), ("Accept-Ranges", "bytes")))


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` (others as ``_``) and the exact name in ``filename*``
    (UTF-8; bytes of a name that are not UTF-8 become U+FFFD there)."""
    fallback = "".join(ch if " " <= ch < "\x7f" and ch not in '"\\' else "_" for ch in name)
    exact = os.fsencode(name).decode("utf-8", "replace")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(exact, safe='')}"


def _mtime(ns: int) -> str | None:
    try:
        return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None  # outside the years 1..9999 that datetime can show


def entry_json(e: Entry) -> dict[str, Any]:
    """A tree entry as the API shows it."""
    return {"name": e.path.rpartition("/")[2], "path": e.path, "kind": e.kind, "size": e.size,
            "mode": f"{e.mode:04o}", "mtime": _mtime(e.mtime_ns),
            "target": e.data if e.kind == "symlink" else None}


async def read_store(fn: Callable[[], T]) -> T:
    """``fn()`` (blocking reads of a store) in a worker thread; a StoreError becomes 500 ``store_error``."""
    try:
        return await trio.to_thread.run_sync(fn)
    except StoreError as exc:
        log.warning("cannot read the store: %s", exc)
        raise api_error("store_error", f"{exc} (`syncsnapd check` tells what is damaged).") from None


def register_browse(router: Router, scheduler: Scheduler, lists: SnapshotLists | None = None) -> None:
    """Add the tree and file endpoints to ``router``; ``lists`` refreshes an S3 store's snapshot lists
    (another machine's snapshots) before a snapshot is looked up."""
    stores = scheduler.stores

    async def thread(fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(fn)

    async def resolve(pid: str | None, snap: str) -> tuple[str, Store]:
        # (snapshot id, the store holding it: the daemon may have several); 404 snapshot_unknown unless
        # the project (if named) has it.
        if lists is not None:
            await lists.refresh()
        infos = await thread(lambda: stores.list_snapshots(pid))
        if pid is not None and snap == "latest" and infos:
            snap = infos[-1].id
        if any(info.id == snap for info in infos):
            store = await thread(lambda: stores.find(snap, pid))
            if store is not None:
                return snap, store
        shown = snap if len(snap) <= MAX_SNAPSHOT_ID and snap.isascii() and snap.isprintable() else "(that id)"
        if pid is None:
            hint = " ('latest' needs a project: /projects/{id}/snapshots/latest/...)" if snap == "latest" else ""
            raise api_error("snapshot_unknown", f"No snapshot {shown}{hint}.")
        if snap == "latest":
            raise api_error("snapshot_unknown", f"Project {pid!r} has no snapshot yet.")
        raise api_error("snapshot_unknown", f"Project {pid!r} has no snapshot {shown}.")

    async def tree(request: Request, params: dict[str, str]) -> Response:
        pid = known_project(scheduler, params["id"])
        path = snapshot_path(request.query.get("path", ""))
        sid, store = await resolve(pid, params["snap"])
        entries = await read_store(lambda: list_directory(store, sid, path))
        if entries is None:
            raise api_error("path_unknown", f"Snapshot {sid} has no directory {path!r}.")
        entries.sort(key=lambda e: (e.kind != "dir", e.path))
        return json_response(200, {"snapshot": sid, "project": pid, "path": path,
                                   "entries": [entry_json(e) for e in entries]})

    async def project_file(request: Request, params: dict[str, str]) -> Response | StreamResponse:
        pid = known_project(scheduler, params["id"])
        return await download(request, pid, params["snap"])

    async def any_file(request: Request, params: dict[str, str]) -> Response | StreamResponse:
        return await download(request, None, params["snap"])

    async def download(request: Request, pid: str | None, snap: str) -> Response | StreamResponse:
        path = snapshot_path(request.query.get("path", ""))
        if path == "":
            raise api_error("path_unknown", "Name a file with ?path=...; the root is a directory.")
        sid, store = await resolve(pid, snap)
        entry = await read_store(lambda: find_entry(store, sid, path))
        if entry is not None and entry.kind == "dir":
            raise api_error("path_unknown", f"{path!r} is a directory in snapshot {sid}, not a file.")
        if entry is None:
            raise api_error("path_unknown", f"Snapshot {sid} has no file {path!r}.")
        if entry.kind != "file":
            raise api_error("not_a_file", f"{path!r} is a symlink in snapshot {sid} (to {entry.data!r}); "
                                          "download its target instead.")
        size = entry.size
        chunks = entry.chunks
        wanted = parse_range(request.headers.get("range"), size)
        first, last = wanted if wanted is not None else (0, size - 1)
        name = path.rpartition("/")[2]
        headers = [
            ("Content-Length", str(last - first + 1)),
            ("Content-Disposition", content_disposition(name)),
            ("ETag", '"' + hash_bytes(" ".join(chunks).encode())[:32] + '"'),
            ("Last-Modified", formatdate(max(0, min(entry.mtime_ns // 1_000_000_000, 2**37)), usegmt=True)),
            *DOWNLOAD_HEADERS,
        ]
        if wanted is not None:
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        content_type = mimetypes.guess_type(os.fsencode(name).decode("utf-8", "replace"))[0]
        # The snapshot stays until the response is over: a prune cannot take its data mid-download.
        pin = contextlib.ExitStack()
        pin.enter_context(store.pinned([sid]))
        try:
            index, start = 0, 0
            head: bytes | None = None
            if request.method == "GET" and size > 0:
                # Chunks differ in size (content-defined): the index's lengths say which holds `first`.
                index, start = await read_store(lambda: store.chunk_at(chunks, first))
                # The first chunk is read before the head is sent: damage there is still a proper 500.
                head = await read_store(lambda: store.read_chunk(chunks[index]))
        except BaseException:
            pin.close()
            raise

        async def body(writer: BodyWriter) -> None:
            await _send_file(writer, store, sid, path, chunks, size, (index, start), first, last, head)

        return StreamResponse(206 if wanted is not None else 200, content_type or "application/octet-stream",
                              tuple(headers), body, on_end=pin.close)

    router.add("GET", f"{API}/projects/{{id}}/snapshots/{{snap}}/tree", tree)
    for method in ("GET", "HEAD"):
        router.add(method, f"{API}/projects/{{id}}/snapshots/{{snap}}/files", project_file)
        router.add(method, f"{API}/snapshots/{{snap}}/files", any_file)


async def _send_file(writer: BodyWriter, store: Store, sid: str, path: str, chunks: list[str], size: int,
                     begin: tuple[int, int], first: int, last: int, head: bytes | None) -> None:
    # Bytes first..last of the file, one verified chunk in memory at a time, from chunk ``begin`` = (its
    # place, the offset it starts at). A chunk that is missing, damaged or does not end where its place
    # implies (the last at the file's size, the others before it) ends the connection (no wrong byte is
    # ever sent).
    index, start = begin
    offset = first - start
    remaining = last - first + 1
    data = head
    with store.reader() as reader:
        while remaining > 0 and not writer.closed:
            try:
                if data is None:
                    data = await trio.to_thread.run_sync(reader.read, chunks[index])
                end = start + len(data)
                if end > size or (end == size) != (index == len(chunks) - 1):
                    raise CorruptDataError(f"chunk {index} of the file ends at byte {end} of {size}")
            except (StoreError, IndexError) as exc:
                log.warning("download of %r from snapshot %s ended early: %s", path, sid, exc)
                writer.close()
                return
            piece = memoryview(data)[offset:offset + remaining]
            for at in range(0, len(piece), WRITE_PIECE):
                await writer.send(bytes(piece[at:at + WRITE_PIECE]))
            remaining -= len(piece)
            offset = 0
            index += 1
            start = end
            data = None
