"""The filesystem operations of the mount (pyfuse3 on Trio), read-only.

Layout (``DIR`` the mount point)::

    DIR/PROJECT/SNAPSHOT_ID/...          the snapshot's tree: modes, mtimes, symlinks as stored
    DIR/PROJECT/latest -> SNAPSHOT_ID    the newest snapshot of the project
    DIR/PROJECT/by-date/2026-12-01T14:03 -> ../SNAPSHOT_ID   (UTC; see _catalog.py for the names)

Names are bytes on the wire: an entry's name comes out as the bytes it had on disk (``os.fsencode`` of
the stored path), UTF-8 or not. A symlink's target is shown as stored and never followed by us (the
kernel resolves it, like any symlink, relative to where it sits in the mount). Files and directories
belong to the user who mounted; ``default_permissions`` lets the kernel check the stored modes.

Anything that would change the tree answers EROFS (the mount is also made with ``ro``, so the kernel
refuses most of those before they get here). Store reads (trees, chunks) run in worker threads; a
snapshot's contents never change, so the kernel may cache them for long (:data:`CONTENT_TIMEOUT`), while
the root and the projects' directories are asked again after :data:`LISTING_TIMEOUT`.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext

from ..store import Entry, Store, StoreError, UnknownSnapshotError
from ._catalog import Catalog, Listing
from ._chunks import ChunkCache, chunk_index, chunk_starts, known_starts
from ._inodes import InodeTable, Node
from ._tree import SnapshotTree, TreeCache

__all__ = ["MountOps"]

log = logging.getLogger("syncsnapd.mount")

# Seconds the kernel may keep a snapshot's entries and attributes (they never change while mounted).
CONTENT_TIMEOUT = 3600.0
# Seconds it may keep the root's and the projects' entries: how late a new snapshot or `latest` shows.
LISTING_TIMEOUT = 1.0
# Trees read at once (each a worker thread); chunk reads have their own threads (_chunks.READ_THREADS).
TREE_THREADS = 2
# Reading ahead the small files of a directory (see MountOps._read_ahead): at most this many files, this
# many bytes, in one worker-thread call; files larger than SMALL_FILE have their own read-ahead (read).
AHEAD_FILES = 64
AHEAD_BYTES = 4 * 1024 * 1024
SMALL_FILE = 1024 * 1024
# Chunks of a large file read ahead of the one being read.
AHEAD_CHUNKS = 4
BY_DATE = "by-date"
LATEST = "latest"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


P = ParamSpec("P")
T = TypeVar("T")


def _erofs() -> NoReturn:
    raise FUSEError(errno.EROFS)


def _eio_on_surprise(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    # pyfuse3 answers a FUSEError and lets anything else end its main loop (and so the mount): an error
    # we did not foresee fails that one request with EIO, logged, and the mount goes on.
    @functools.wraps(fn)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except FUSEError:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return guarded


@dataclass
class _OpenFile:
    entry: Entry
    cache: ChunkCache
    starts: list[int]  # each chunk's first offset, then the size
    inode: int


class MountOps(pyfuse3.Operations):
    """The read-only filesystem of the snapshots in ``catalog``'s stores."""

    def __init__(self, catalog: Catalog, stores: Sequence[Store], background: trio.Nursery | None = None) -> None:
        """``background``: where reads ahead run (None: no read-ahead)."""
        super().__init__()
        self.background = background
        self.catalog = catalog
        self.inodes = InodeTable()
        self.trees = TreeCache()
        self._caches = {id(s): ChunkCache(s) for s in stores}
        self._tree_limiter = trio.CapacityLimiter(TREE_THREADS)
        self._pending_trees: dict[str, trio.Event] = {}
        self._files: dict[int, _OpenFile] = {}
        self._dirs: dict[int, list[tuple[bytes, Node]]] = {}
        self._handles = itertools.count(1)
        self._uid, self._gid = os.getuid(), os.getgid()
        self._push_pages = True  # False once the kernel said it cannot take pages (ENOSYS), or unmounting
        self._open_inodes: Counter[int] = Counter()  # files open now, by inode: never handed pages
        self._push_limiter = trio.CapacityLimiter(1)

    def caches(self) -> list[ChunkCache]:
        """The chunk cache of each store."""
        return list(self._caches.values())

    # --- what a node is ---------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.inodes.node(inode)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    async def _tree(self, listing: Listing, project: str, snapshot_id: str) -> SnapshotTree:
        while True:
            tree = self.trees.get(snapshot_id)
            if tree is not None:
                return tree
            pending = self._pending_trees.get(snapshot_id)
            if pending is None:
                break
            await pending.wait()
        store = listing.stores.get(snapshot_id)
        if store is None or listing.snapshot(project, snapshot_id) is None:
            raise FUSEError(errno.ENOENT)
        done = self._pending_trees[snapshot_id] = trio.Event()
        try:
            tree = await trio.to_thread.run_sync(SnapshotTree.read, store, snapshot_id,
                                                 limiter=self._tree_limiter)
        except UnknownSnapshotError:
            raise FUSEError(errno.ENOENT) from None  # forgotten (pruned) since it was listed
        except StoreError as exc:
            log.warning("cannot read the tree of snapshot %s: %s", snapshot_id, exc)
            raise FUSEError(errno.EIO) from None
        finally:
            del self._pending_trees[snapshot_id]
            done.set()
        self.trees.put(tree)
        return tree

    async def _listing(self, node: Node) -> Listing:
        # The root and a project's own directory list the stores again (at most every REFRESH_SECONDS).
        if node.kind in ("root", "project", "by-date", "latest"):
            return await self.catalog.refresh()
        return self.catalog.listing

    async def _entry(self, node: Node) -> Entry:
        tree = await self._tree(self.catalog.listing, node.project, node.snapshot)
        entry = tree.entries.get(node.path)
        if entry is None:
            raise FUSEError(errno.ENOENT)
        return entry

    def _attrs(self, node: Node, mode: int, size: int = 0, mtime_ns: int = 0,
               timeout: float = CONTENT_TIMEOUT) -> EntryAttributes:
        a = EntryAttributes()
        a.st_ino = self.inodes.inode(node)
        a.generation = 0
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        a.st_mode = mode
        a.st_nlink = 1
        a.st_uid = self._uid
        a.st_gid = self._gid
        a.st_rdev = 0
        a.st_size = size
        a.st_blksize = 4096
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = a.st_ctime_ns = a.st_mtime_ns = max(0, mtime_ns)
        return a

    async def _node_attrs(self, node: Node) -> EntryAttributes:
        listing = await self._listing(node)
        newest = max((infos[-1].id for infos in listing.projects.values() if infos), default="")
        if node.kind == "root":
            return self._attrs(node, stat.S_IFDIR | 0o555, mtime_ns=_time_ns(newest), timeout=LISTING_TIMEOUT)
        infos = listing.projects.get(node.project)
        if infos is None:
            raise FUSEError(errno.ENOENT)
        last = infos[-1].id if infos else ""
        if node.kind in ("project", "by-date"):
            return self._attrs(node, stat.S_IFDIR | 0o555, mtime_ns=_time_ns(last), timeout=LISTING_TIMEOUT)
        if node.kind == "latest":
            if not infos:
                raise FUSEError(errno.ENOENT)
            return self._attrs(node, stat.S_IFLNK | 0o777, len(last), _time_ns(last), LISTING_TIMEOUT)
        if node.kind == "date-link":
            sid = listing.dates.get(node.project, {}).get(node.name)
            if sid is None:
                raise FUSEError(errno.ENOENT)
            return self._attrs(node, stat.S_IFLNK | 0o777, len(sid) + 3, _time_ns(sid), LISTING_TIMEOUT)
        if node.kind == "snapshot":
            tree = await self._tree(listing, node.project, node.snapshot)
            mode = tree.root_mode if tree.root_mode is not None else 0o755
            return self._attrs(node, stat.S_IFDIR | mode, mtime_ns=_time_ns(node.snapshot))
        e = await self._entry(node)
        return self._entry_attrs(node, e)

    def _entry_attrs(self, node: Node, e: Entry) -> EntryAttributes:
        kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(e.kind, stat.S_IFREG)
        size = e.size if e.kind == "file" else len(os.fsencode(e.target)) if e.kind == "symlink" else 0
        return self._attrs(node, kind | (e.mode & 0o7777), size, e.mtime_ns)

    async def _children(self, node: Node) -> list[tuple[bytes, Node]]:
        """The entries of directory ``node`` (name as bytes, node), in a fixed order."""
        listing = await self._listing(node)
        if node.kind == "root":
            return [(os.fsencode(p), Node("project", p)) for p in sorted(listing.projects)]
        infos = listing.projects.get(node.project)
        if infos is None:
            raise FUSEError(errno.ENOENT)
        if node.kind == "project":
            out = [(i.id.encode(), Node("snapshot", node.project, i.id)) for i in infos]
            if infos:
                out.append((LATEST.encode(), Node("latest", node.project)))
            out.append((BY_DATE.encode(), Node("by-date", node.project)))
            return out
        if node.kind == "by-date":
            return [(name.encode(), Node("date-link", node.project, name=name))
                    for name in listing.dates.get(node.project, {})]
        if node.kind in ("snapshot", "entry"):
            tree = await self._tree(listing, node.project, node.snapshot)
            paths = tree.children.get(node.path)
            if paths is None:
                raise FUSEError(errno.ENOTDIR)
            return [(os.fsencode(p.rpartition("/")[2]), Node("entry", node.project, node.snapshot, p))
                    for p in paths]
        raise FUSEError(errno.ENOTDIR)

    async def _child(self, parent: Node, name: str) -> Node:
        listing = await self._listing(parent)
        if parent.kind == "root":
            if name in listing.projects:
                return Node("project", name)
        elif parent.kind == "project":
            infos = listing.projects.get(parent.project, [])
            if name == LATEST and infos:
                return Node("latest", parent.project)
            if name == BY_DATE:
                return Node("by-date", parent.project)
            if listing.snapshot(parent.project, name) is not None:
                return Node("snapshot", parent.project, name)
        elif parent.kind == "by-date":
            if name in listing.dates.get(parent.project, {}):
                return Node("date-link", parent.project, name=name)
        elif parent.kind in ("snapshot", "entry"):
            tree = await self._tree(listing, parent.project, parent.snapshot)
            if parent.path not in tree.children:
                raise FUSEError(errno.ENOTDIR)
            path = f"{parent.path}/{name}" if parent.path else name
            if path in tree.entries and "/" not in name:
                return Node("entry", parent.project, parent.snapshot, path)
        else:
            raise FUSEError(errno.ENOTDIR)
        raise FUSEError(errno.ENOENT)

    # --- reading ------------------------------------------------------------------------------------

    @_eio_on_surprise
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        parent = self._node(parent_inode)
        if name in (b".", b".."):
            raise FUSEError(errno.ENOENT)  # the kernel answers these itself
        return await self._node_attrs(await self._child(parent, os.fsdecode(name)))

    @_eio_on_surprise
    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return await self._node_attrs(self._node(inode))

    @_eio_on_surprise
    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind == "latest":
            infos = (await self._listing(node)).projects.get(node.project)
            if not infos:
                raise FUSEError(errno.ENOENT)
            return infos[-1].id.encode()
        if node.kind == "date-link":
            sid = (await self._listing(node)).dates.get(node.project, {}).get(node.name)
            if sid is None:
                raise FUSEError(errno.ENOENT)
            return f"../{sid}".encode()
        if node.kind == "entry":
            e = await self._entry(node)
            if e.kind == "symlink":
                return os.fsencode(e.target)
        raise FUSEError(errno.EINVAL)

    @_eio_on_surprise
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        # The listing is taken once, at opendir: offsets stay valid while it is read, however long.
        fh = next(self._handles)
        self._dirs[fh] = await self._children(self._node(inode))
        return fh

    @_eio_on_surprise
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self._dirs.get(fh)
        if children is None:
            raise FUSEError(errno.EBADF)
        for i in range(start_id, len(children)):
            name, node = children[i]
            try:
                attrs = await self._node_attrs(node)
            except FUSEError:
                continue  # gone since opendir (a pruned snapshot)
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_eio_on_surprise
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        if flags & _WRITE_FLAGS:
            _erofs()
        node = self._node(inode)
        if node.kind != "entry":
            raise FUSEError(errno.EISDIR if node.kind in ("root", "project", "by-date", "snapshot") else errno.EINVAL)
        e = await self._entry(node)
        if e.kind == "dir":
            raise FUSEError(errno.EISDIR)
        if e.kind != "file":
            raise FUSEError(errno.ELOOP)  # O_NOFOLLOW on a symlink
        store = self.catalog.listing.stores.get(node.snapshot)
        if store is None:
            raise FUSEError(errno.ENOENT)
        try:
            starts = known_starts(store, e.chunks)
            if starts is None:
                starts = await trio.to_thread.run_sync(chunk_starts, store, e.chunks)
        except StoreError as exc:
            log.warning("cannot open %r of snapshot %s: %s", e.path, node.snapshot, exc)
            raise FUSEError(errno.EIO) from None
        if starts[-1] != e.size:
            log.warning("%r of snapshot %s: its chunks add up to %d bytes, not %d", e.path, node.snapshot,
                        starts[-1], e.size)
            raise FUSEError(errno.EIO)
        fh = next(self._handles)
        cache = self._caches[id(store)]
        self._files[fh] = _OpenFile(e, cache, starts, inode)
        self._open_inodes[inode] += 1
        if self.background is not None and e.size <= SMALL_FILE:
            self._read_ahead(node, store, cache)
        # A snapshot's file never changes: the kernel may keep its pages between opens.
        return FileInfo(fh=fh, keep_cache=True)

    def _read_ahead(self, node: Node, store: Store, cache: ChunkCache) -> None:
        """On opening a small file, read its chunks and those of the small files after it in its directory
        (the order ``readdir`` gives, which ``tar``, ``cp -r`` and ``rsync`` follow) in one batch, in the
        background: one worker-thread call for up to :data:`AHEAD_FILES` files instead of one per file,
        which is what a read of many small files costs most. The files read ahead are handed to the
        kernel's page cache, so that their reads never come here. The next batch starts when the reader is
        half-way through the last, so that it is ready in time."""
        tree = self.trees.get(node.snapshot)
        if tree is None or self.background is None:
            return
        parent = node.path.rpartition("/")[0]
        siblings = tree.children.get(parent)
        at = tree.position.get(node.path)
        if siblings is None or at is None:
            return
        horizon = tree.ahead.get(parent, 0)
        if at < horizon - AHEAD_FILES or horizon - at > AHEAD_FILES // 2:
            return  # read ahead far enough already (or the reader went back: reads fetch what they need)
        i = max(at, horizon)
        batch: list[tuple[str, int]] = []
        files: list[tuple[int, Entry]] = []
        total = 0
        while i < len(siblings) and len(files) < AHEAD_FILES and total < AHEAD_BYTES:
            e = tree.entries[siblings[i]]
            i += 1
            if e.kind != "file" or e.size > SMALL_FILE or not e.size:
                continue
            if e.path != node.path:  # being read: its pages come from its reads
                files.append((self.inodes.inode(Node("entry", node.project, node.snapshot, e.path)), e))
            for chunk in e.chunks:
                loc = store.index.lookup(chunk)
                if loc is not None:
                    batch.append((chunk, loc.raw_length))
                    total += loc.raw_length
        tree.ahead[parent] = i
        if batch:
            self.background.start_soon(self._read_ahead_files, cache, batch, files)

    async def _read_ahead_files(self, cache: ChunkCache, batch: list[tuple[str, int]],
                                files: list[tuple[int, Entry]]) -> None:
        got = await cache.prefetch_many(batch)
        if not self._push_pages:
            return
        pages: list[tuple[int, bytes]] = []
        for inode, e in files:
            parts = [got.get(c) or cache.peek(c) for c in e.chunks]
            data = b"".join(p for p in parts if p is not None)
            if len(data) == e.size and all(p is not None for p in parts):
                pages.append((inode, data))
        if pages:
            # In a thread of its own: a store into pages the kernel holds for a read waits for that read's
            # answer, which this loop gives (from the chunks just cached).
            await trio.to_thread.run_sync(self._push, pages, limiter=self._push_limiter)

    def stop_reading_ahead(self) -> None:
        """No more pages handed to the kernel: called before the loop stops answering (unmounting)."""
        self._push_pages = False

    def _push(self, pages: list[tuple[int, bytes]]) -> None:
        """Hand files read ahead to the kernel's page cache (FUSE's notify_store): their reads then never
        come here (blocking: a worker thread).

        A store into pages that a read holds waits for that read's answer. Open files are skipped (only
        they can be read), so that this never waits on a read, above all not on one that an unmount leaves
        unanswered; and nothing more is handed over once the mount is stopping."""
        for inode, data in pages:
            if not self._push_pages:
                return
            if inode in self._open_inodes:
                continue
            try:
                pyfuse3.notify_store(inode, 0, data)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:  # an old kernel: reads come here, as without read-ahead
                    self._push_pages = False
                    return
                # ENOENT: the kernel has not seen (or has forgotten) that inode; its reads come here.

    @_eio_on_surprise
    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self._files.get(fh)
        if f is None:
            raise FUSEError(errno.EBADF)
        end = min(off + size, f.entry.size)
        pieces: list[bytes] = []
        at = off
        chunks = f.entry.chunks
        try:
            while at < end:
                i = chunk_index(f.starts, at)
                if self.background is not None:
                    for following in range(i + 1, min(i + 1 + AHEAD_CHUNKS, len(chunks))):
                        if f.cache.wanted(chunks[following]):
                            self.background.start_soon(f.cache.prefetch, chunks[following],
                                                       f.starts[following + 1] - f.starts[following])
                data = await f.cache.get(chunks[i], f.starts[i + 1] - f.starts[i])
                piece = data[at - f.starts[i]:end - f.starts[i]]
                pieces.append(piece)
                at += len(piece)
        except StoreError as exc:
            log.warning("cannot read %r: %s", f.entry.path, exc)
            raise FUSEError(errno.EIO) from None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def release(self, fh: int) -> None:
        f = self._files.pop(fh, None)
        if f is not None:
            self._open_inodes[f.inode] -= 1
            if not self._open_inodes[f.inode]:
                del self._open_inodes[f.inode]

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        if mode & os.W_OK:
            _erofs()
        self._node(inode)
        return True

    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.inodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # --- anything that would write: EROFS -------------------------------------------------------------

    async def setattr(self, *args: object) -> EntryAttributes:
        _erofs()

    async def mknod(self, *args: object) -> EntryAttributes:
        _erofs()

    async def mkdir(self, *args: object) -> EntryAttributes:
        _erofs()

    async def unlink(self, *args: object) -> None:
        _erofs()

    async def rmdir(self, *args: object) -> None:
        _erofs()

    async def symlink(self, *args: object) -> EntryAttributes:
        _erofs()

    async def rename(self, *args: object) -> None:
        _erofs()

    async def link(self, *args: object) -> EntryAttributes:
        _erofs()

    async def write(self, *args: object) -> int:
        _erofs()

    async def create(self, *args: object) -> tuple[FileInfo, EntryAttributes]:
        _erofs()

    async def setxattr(self, *args: object) -> None:
        _erofs()

    async def removexattr(self, *args: object) -> None:
        _erofs()


def _time_ns(snapshot_id: str) -> int:
    """The start time a snapshot id encodes (``20261201T140305.123Z-...``), in ns; 0 for ``""``."""
    if len(snapshot_id) < 19:
        return 0
    when = datetime.strptime(snapshot_id[:19], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
    return int(when.timestamp()) * 1_000_000_000 + int(snapshot_id[16:19]) * 1_000_000
