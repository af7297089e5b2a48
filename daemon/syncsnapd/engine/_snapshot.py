"""The snapshot engine: walk the folder, compare with the previous snapshot, read/hash/compress what
changed in worker threads, and commit a new snapshot to the store.

Steps reported through :class:`~syncsnapd.core.RunProgress` (the scheduler already set step 1):

2. browsing folder status: check the folder, find the project's previous snapshot (its entries are read
   one directory at a time as the walk goes: ``_previous.py``);
3. walk + stat (``os.scandir``; one ``lstat`` per entry), deciding per file whether it can be re-used
   (same inode, size and mtime as in the previous snapshot, and no ctime since it started);
4. read, hash (blake3) and compress (see ``store/_writer.py``) the new and changed files;
5. make packs durable, store the tree, write the snapshot file (last). With an S3 store whose bucket is
   unreachable, the run waits here and tries again with backoff until it answers (``_reconnect.py``).

Performance shape: step 4 is one shared queue of batches feeding a worker per core (at most
:data:`MAX_WORKERS`, and no more than the run's limiter has tokens): a file over one chunk is a batch of
its own, queued first, largest first, so no core idles at the end while one reads a big file; small files
go in walk order, :data:`BATCH_FILES` or :data:`BATCH_BYTES` to a batch. The GIL is held for about a
quarter of a small file's cost (system calls, blake3 and zstd release it), so the workers keep the cores
busy. Each reads into one reused buffer (``Store.chunk_size``: 1 MiB in a version 1 store; with
content-defined chunks the largest chunk plus a read, 6 MiB): memory stays at a chunk or two per worker.
Per file, the run keeps records in a few buffers freed whole at its end, not Python objects
(``_entrylog.py``; why: docs/memory.md).

System calls: an unchanged file costs the walk's ``lstat`` (``getdents`` gives the type, not the times)
and a dict lookup. A file read costs ``openat`` relative to the directory descriptor the worker holds
(:class:`_DirChain`), a ``read`` per chunk, one ``fstat`` after the read, compared with the walk's
``lstat`` (inode, size, ctime: every write and chmod moves it), and ``close``. Pack data is written a few
MiB at a time (``store/_writer.py``).

What a snapshot records when files misbehave while it runs:

* a file or directory that vanishes before it is read, or a file that cannot be read (permission denied,
  I/O error): warning, **omitted** from the snapshot (the snapshot holds only content it actually read);
* a directory that cannot be listed: warning, kept as an empty directory;
* a file that changes while it is read (its size after the read is not what was read): warning,
  **kept** with the bytes read (at most the size the walk saw), and marked (inode 0) so the next snapshot
  reads it again;
* a file changed after the run started (its ctime is not earlier than the run's start; the walk begins
  once the filesystem's coarse clock has passed it, see :meth:`_Run.wait_for_tick`): warning, kept as
  read, marked. The walk says the same of a file it re-uses unread (same size and mtime: chmod'ed) and
  of a symlink made during the run. So every file and symlink recorded otherwise than it was when the
  run started is named in the warnings (a directory's changes are its entries'; a file deleted before
  the walk reached it is simply not in the snapshot);
* a file modified within :data:`RACY_WINDOW_NS` before it was read: kept, no warning, but also marked, so
  that a later write within the same timestamp tick cannot go unnoticed ("racy git" problem);
* fifos, sockets and devices: skipped and counted.
"""

from __future__ import annotations

import array
import collections
import errno
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import trio

from ..core import RunProgress, SnapshotSummary, walked_path
from ..store import SnapshotStats, Store, StoreError, StoreWriter, error_code, make_snapshot_id
from ._dirs import DirChain as _DirChain
from ._dirs import SnapshotError
from ._entrylog import EntryLog, Records, Table, Work, pack_entry, pack_work, unpack_work, work_size
from ._malloc import give_back, tune_allocator
from ._previous import PreviousFiles, id_time_ns
from ._reconnect import StagingBound, store_waiter
from ._restore import TEMP_PREFIX
from ._threads import run_threads, token_lender
from ._writing_lock import WritingLock

__all__ = ["SnapshotError", "take_snapshot"]
log = logging.getLogger("syncsnapd.snapshot")

_S_IFMT = 0o170000
# The temporary name a restore writes a file under (_restore.py), left out of snapshots.
_RESTORE_TEMP = re.compile(re.escape(TEMP_PREFIX) + "[0-9a-f]{16}")
_S_IFREG = stat.S_IFREG
_S_IFDIR = stat.S_IFDIR
_S_IFLNK = stat.S_IFLNK
# A file whose mtime is this close to the moment it was read could be written again within the same
# timestamp tick without its mtime changing; such files are read again next time. Linux filesystems
# stamp with the coarse clock (a jiffy, <= 10 ms); 100 ms leaves a wide margin. Filesystems with
# whole-second stamps (FAT: 2 s) show it as mtimes without a sub-second part and get 2 s.
RACY_WINDOW_NS = 100_000_000
RACY_WINDOW_COARSE_NS = 2_000_000_000

# Linux stamps file times from the coarse real-time clock (a tick, <= 10 ms, and a little more behind
# the fine one), or with a fine time when the file's times were just read (multigrain timestamps).
# (Python's time module names it from 3.13 on; Linux's CLOCK_REALTIME_COARSE is 5.)
_COARSE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform == "linux" else time.CLOCK_REALTIME)
# Waiting for it to pass the run's start: polled every millisecond, at most 50 times (a tick is 1-10 ms).
_TICK_POLL_SECONDS = 0.001
_TICK_POLLS = 50

# Step 4 (see the module docstring). Past about four workers the GIL-held quarter of the work caps the gain.
MAX_WORKERS = 4
# Lists of an S3 store refreshed this recently (by taking the run's lock) are not listed again at step 2.
REFRESHED_SECONDS = 5.0
# A batch of small files: enough to make taking one from the queue negligible, few enough that the
# workers finish together (20,000 files make ~300 batches).
BATCH_FILES = 64
BATCH_BYTES = 4 << 20



def _ns_datetime(ns: int) -> datetime:
    ms = ns // 1_000_000
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)


@dataclass
class _Tally:
    """Per-worker counters (summed at the end, so workers never share a counter)."""

    files: int = 0
    bytes: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0


class _Run:
    """The state of one snapshot run, shared by its worker threads."""

    def __init__(self, store: Store, root: Path, progress: RunProgress,
                 ignore: Callable[[str], bool] | None, limiter: trio.CapacityLimiter) -> None:
        self.store = store
        self.root = os.fsdecode(os.path.abspath(root))
        self.progress = progress
        self.ignore = ignore
        self.prev: PreviousFiles | None = None  # the previous snapshot's files, streamed by the walk
        self.prev_started_ns = 0  # when the previous snapshot started (from its id)
        self.prev_id: str | None = None  # its id (checked again after a late lock)
        # Per file, records in a few buffers freed whole (_entrylog.py), not objects (docs/memory.md).
        self.entries = EntryLog()
        self.work = Records()  # the files to read in step 4 (pack_work)
        self.to_read = Table()  # their records' offsets, in walk order (freed once batched)
        self.queue: collections.deque[array.array[int]] = collections.deque()  # step 4's batches of offsets
        self.changed_bytes = 0
        self.unchanged = _Tally()
        self.dirs = 0
        self.symlinks = 0
        self.skipped = 0
        self.root_mode: int | None = None  # the folder's own permission bits, read by the walk
        self.writer: StoreWriter | None = None
        self.staging: StagingBound | None = None  # S3 store: the bound on staging while the bucket is down
        self.store_key: tuple[int, int] | None = None  # (st_dev, st_ino) of the store directory
        # The run's start (see wait_for_tick): a file whose ctime is this or later changed during the run.
        self.started_ns = time.time_ns()
        self.lend_token = token_lender(limiter)

    def close(self) -> None:
        """Free the run's buffers (once no thread uses them)."""
        self.entries.close()
        self.work.close()
        self.to_read.close()

    def check(self) -> None:
        """Stop a worker thread promptly when the run is cancelled either way; hold it while the run is
        paused (called between files and between chunks, so a pause holds within a chunk's time), its
        limiter token lent to other runs meanwhile. Stop it too when the bucket refused a pack sent early
        in a way that dooms the run (``StoreWriter.check_early_uploads``)."""
        self.progress.check_cancelled(trio.from_thread.check_cancelled, self.lend_token)
        trio.from_thread.check_cancelled()
        if self.writer is not None:
            self.writer.check_early_uploads()

    # --- step 2 -------------------------------------------------------------------------------------

    def wait_for_tick(self) -> None:
        """Take the next millisecond as the run's start (its snapshot id names it), and wait (a tick,
        <= 10 ms) until the coarse clock filesystems stamp times with has passed it. A change made before
        the start is stamped earlier than it (a stamp is never later than the moment of the change), and
        a change made after this returns is stamped at or after it; so ``ctime >= started_ns`` tells the
        files changed during the run, and ``ctime <`` the previous run's start those unchanged since."""
        start = -(-time.time_ns() // 1_000_000) * 1_000_000
        for _ in range(_TICK_POLLS):
            if time.clock_gettime_ns(_COARSE_CLOCK) >= start:
                break
            time.sleep(_TICK_POLL_SECONDS)
        self.started_ns = start

    def refresh_store(self) -> None:
        """An S3 store: take in what other machines added (their snapshots, and their indexes, so their
        blobs are not uploaded again). An unreachable bucket does not stop the run (cached lists, said)."""
        try:
            # A lock just taken (S3) refreshed the lists already: not twice within a few seconds.
            self.store.refresh(max_age=REFRESHED_SECONDS)
        except StoreError as exc:
            log.warning("could not refresh the store's lists before the run (%s); using those cached", exc)
            self.progress.set_message(f"Could not refresh the store's lists ({exc}); using those cached")

    def load_previous(self, project: str) -> None:
        self.refresh_store()
        self.wait_for_tick()
        try:
            st = os.stat(self.store.root)
            self.store_key = (st.st_dev, st.st_ino)
        except OSError:
            pass
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise SnapshotError("folder_missing", f"The folder {self.root} does not exist.") from None
        except OSError as exc:
            raise SnapshotError("folder_missing", f"The folder {self.root} cannot be read: {exc.strerror}.") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise SnapshotError("folder_missing", f"{self.root} is not a folder.")
        # This machine's newest snapshot (or one of a version that did not record hosts): another
        # machine's files have other inodes and times, so its snapshot would only cost re-reading.
        previous = next((s for s in reversed(self.store.list_snapshots(project))
                         if s.host in (self.store.host, None)), None)
        if previous is None:
            return
        # Read one directory at a time as the walk goes (_previous.py); a damaged previous snapshot only
        # costs speed: the files it does not tell of are read (and deduplicated) again.
        self.prev = PreviousFiles(self.store, previous.id)
        self.prev_id = previous.id
        self.prev_started_ns = id_time_ns(previous.id)

    def still_valid(self, project: str) -> None:
        """After a late lock (``_writing_lock.py``): what this run relied on is still in the store."""
        assert self.writer is not None
        gone = self.writer.relied_missing()
        if self.prev_id is not None and all(s.id != self.prev_id for s in self.store.list_snapshots(project)):
            gone.append(f"snapshot {self.prev_id}")
        if gone:
            raise StoreError(f"a prune on another machine removed data this snapshot relied on ({len(gone)} "
                             "objects) while the bucket could not be reached; the run is tried again")

    # --- step 3 -------------------------------------------------------------------------------------

    def walk(self) -> None:
        chain = _DirChain(self.root)
        try:
            self._walk(chain)
        finally:
            chain.close()
            if self.prev is not None:
                self.prev.close()

    def _walk(self, chain: _DirChain) -> None:
        root, prev, ignore, entries = self.root, self.prev, self.ignore, self.entries
        has_chunk = self.store.has_chunk
        to_read, work = self.to_read, self.work
        warn = self.progress.warn
        add_done = self.progress.add_done
        unchanged = self.unchanged
        started, prev_started = self.started_ns, self.prev_started_ns
        stack: list[tuple[str, int]] = [("", -1)]  # (relative path, position of its entry)
        while stack:
            self.check()
            rel_dir, position = stack.pop()
            try:
                dir_fd = chain.open_dir(rel_dir)
                if not rel_dir:  # recorded without setuid, setgid and sticky: a restore gives no more
                    self.root_mode = stat.S_IMODE(os.fstat(dir_fd).st_mode) & 0o777
                with os.scandir(dir_fd) as it:
                    listing = sorted(it, key=lambda d: d.name)
            except OSError as exc:
                if not rel_dir:
                    raise SnapshotError("folder_missing",
                                        f"The folder {root} cannot be read: {exc.strerror}.") from exc
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    # Deleted, or replaced by a file or a symlink (never followed) since it was seen.
                    warn(rel_dir, "vanished before it could be read" if exc.errno == errno.ENOENT
                         else "was replaced by a file or symlink before it could be read")
                    entries.drop(position)
                    self.dirs -= 1
                else:
                    warn(rel_dir, f"cannot be listed: {exc.strerror}")  # kept, as an empty directory
                continue
            subdirs: list[tuple[str, int]] = []
            found = 0
            prev_files = prev.listing(rel_dir) if prev is not None else {}
            for de in listing:
                if de.name.startswith(TEMP_PREFIX) and _RESTORE_TEMP.fullmatch(de.name):
                    continue  # a restore's file being written (or left by a kill): not the user's
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                if ignore is not None and ignore(walked_path(rel, de)):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted before we got to it: not part of this snapshot
                except OSError as exc:
                    warn(rel, f"cannot be examined: {exc.strerror}")
                    continue
                mode = st.st_mode
                fmt = mode & _S_IFMT
                if fmt == _S_IFREG:
                    size, mtime, ino = st.st_size, st.st_mtime_ns, st.st_ino
                    p = prev_files.get(rel)
                    # ctime too: a file whose content changed and whose mtime was then set back (`touch
                    # -r`, `rsync -t`, an extraction) has a ctime after the previous run started.
                    if (p is not None and p.inode == ino and p.mtime_ns == mtime and p.size == size
                            and st.st_ctime_ns < prev_started and all(map(has_chunk, p.chunks))):
                        entries.add(rel, "file", size, mtime, mode & 0o7777, ino, p.data)
                        unchanged.files += 1
                        unchanged.bytes += size
                        if st.st_ctime_ns >= started:  # content as before, but chmod'ed during the run
                            warn(rel, "changed while the snapshot ran")
                    else:
                        # The position is filled in by a reader in step 4.
                        to_read.append(work.append(pack_work(
                            entries.reserve(), rel, p if p is not None and p.kind == "file" else None,
                            size, ino, st.st_ctime_ns)))
                        self.changed_bytes += size
                elif fmt == _S_IFDIR:
                    if (st.st_dev, st.st_ino) == self.store_key:
                        continue  # never snapshot the store into itself
                    subdirs.append((rel, entries.add(rel, "dir", 0, st.st_mtime_ns, mode & 0o7777, st.st_ino,
                                                     None)))
                    self.dirs += 1
                elif fmt == _S_IFLNK:
                    try:
                        target = os.readlink(de.name, dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        warn(rel, f"cannot be examined: {exc.strerror}")
                        continue
                    entries.add(rel, "symlink", st.st_size, st.st_mtime_ns, mode & 0o7777, st.st_ino, target)
                    self.symlinks += 1
                    if st.st_ctime_ns >= started:
                        warn(rel, "changed while the snapshot ran")
                else:
                    self.skipped += 1  # fifo, socket, device: no content to keep
                    continue
                found += 1
            # Reversed so the first subdirectory is listed next: a directory precedes its contents.
            stack.extend(reversed(subdirs))
            add_done(files=found)

    # --- step 4 -------------------------------------------------------------------------------------

    def make_batches(self) -> int:
        """Fill the queue of step 4 from the files the walk found; returns how many batches."""
        # A file larger than a whole batch is a batch of its own (the largest first, so the last worker
        # to finish is not the one left with the largest file).
        # Batches are arrays of record offsets (one object per batch, not per file).
        large_limit = BATCH_BYTES
        to_read, buf = self.to_read, self.work.buffer
        large: list[tuple[int, int]] = []  # (size, offset)
        queue = self.queue
        batch = array.array("Q")
        nbytes = 0
        for i in range(to_read.length):
            at = to_read[i]
            size = work_size(buf, at)
            if size > large_limit:
                large.append((size, at))
                continue
            batch.append(at)
            nbytes += size
            if len(batch) >= BATCH_FILES or nbytes >= BATCH_BYTES:
                queue.append(batch)
                batch, nbytes = array.array("Q"), 0
        if batch:
            queue.append(batch)
        large.sort(key=lambda w: w[0], reverse=True)
        queue.extendleft(array.array("Q", [at]) for _, at in reversed(large))
        to_read.close()
        return len(queue)

    def read_files(self, tally: _Tally) -> None:
        """One worker of step 4: take batches from the shared queue until it is empty."""
        chunk_size = self.store.chunk_size
        view = memoryview(bytearray(chunk_size))
        cursor = _DirChain(self.root)
        queue = self.queue
        staging, writer = self.staging, self.writer
        try:
            while True:
                try:
                    batch = queue.popleft()  # deque.popleft is atomic: the workers share the queue
                except IndexError:
                    return
                for at in batch:
                    self.check()
                    if staging is not None and writer is not None:
                        staging.check(writer)
                    work = unpack_work(self.work, at)
                    self._read_file(work, cursor, view, tally, per_chunk=work[3] > chunk_size)
        finally:
            cursor.close()

    def _read_file(self, work: Work, cursor: _DirChain, view: memoryview, tally: _Tally, *,
                   per_chunk: bool) -> None:
        index, rel, prev, walk_size, _, _ = work
        progress = self.progress
        got: tuple[int, int, int, int, bytes] | None = None
        try:
            got = self._capture(work, cursor, view, per_chunk)
        finally:
            done = 0 if got is None or not per_chunk else min(walk_size, got[0])
            progress.add_done(files=1, nbytes=walk_size - done)
        if got is None:
            return
        size, mtime, mode, inode, hashes = got
        self.entries.fill(index, pack_entry(rel, "file", size, mtime, mode, inode, hashes))
        tally.files += 1
        tally.bytes += size
        if prev is None:
            tally.new += 1
        elif prev[0] == size and prev[1] == mtime and prev[2] == hashes:
            # Read again only because it had been modified just before the previous snapshot.
            tally.unchanged += 1
        else:
            tally.changed += 1

    def _capture(self, work: Work, cursor: _DirChain, view: memoryview,
                 per_chunk: bool) -> tuple[int, int, int, int, bytes] | None:
        """Read one file; return its entry's size, mtime, mode, inode and chunk hashes (raw bytes), or None
        (with a warning) when it cannot be captured."""
        _, rel, _, walk_size, walk_ino, walk_ctime = work
        warn = self.progress.warn
        read_at = time.time_ns()
        try:
            fd = cursor.open_file(rel)
        except FileNotFoundError:
            warn(rel, "vanished before it could be read")
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # It, or a directory on its way, is now a symlink (never followed) or not a directory.
                warn(rel, "was replaced by a symlink before it could be read")
            else:
                warn(rel, f"cannot be read: {exc.strerror}")
            return None
        writer = self.writer
        assert writer is not None
        chunk_id = self.store.chunk_id
        hashes: list[str] = []
        total = 0
        try:
            # The walk's lstat stands for an fstat here: the one after the read tells whether it changed.
            # The store's chunker cuts what it reads into ``view`` (fixed 1 MiB chunks in a version 1
            # store, content-defined in version 2), up to the size the walk saw.
            for data in self.store.chunker.split(fd, view, walk_size):
                self.check()
                n = len(data)
                digest = chunk_id(data)  # blake3, keyed in an encrypted store
                writer.add_chunk(digest, data)
                hashes.append(digest)
                total += n
                if per_chunk:
                    self.progress.add_done(nbytes=n)
            st = os.fstat(fd)
        except OSError as exc:
            # EAGAIN: O_NONBLOCK at work, a fifo now stands where the file was.
            warn(rel, "was replaced by something that is not a file" if exc.errno == errno.EAGAIN
                 else f"cannot be read: {exc.strerror}")
            return None
        finally:
            os.close(fd)
        if st.st_mode & _S_IFMT != _S_IFREG:
            # O_NONBLOCK and O_NOFOLLOW: a fifo or device put in its place read nothing or little.
            warn(rel, "was replaced by something that is not a file")
            return None
        mtime = st.st_mtime_ns
        inode = st.st_ino
        if total != st.st_size:
            warn(rel, "changed while being read")
            inode = 0  # read it again next time
        elif st.st_ctime_ns >= self.started_ns or (inode, st.st_ctime_ns) != (walk_ino, walk_ctime):
            # Changed after the run started or since the walk saw it: written or chmod'ed between the
            # walk and this read, or written while it was read in a way its size cannot show (a write
            # stamps its times before it copies its data). ctime, not mtime: users can set mtimes (even
            # into the future), not ctimes; and every write and chmod moves it (one within the same
            # clock tick as the walk's lstat falls within the racy window below).
            warn(rel, "changed while the snapshot ran")
            inode = 0
        else:
            window = RACY_WINDOW_COARSE_NS if mtime % 1_000_000_000 == 0 else RACY_WINDOW_NS
            if mtime > read_at - window:
                inode = 0
        return total, mtime, st.st_mode & 0o7777, inode, bytes.fromhex("".join(hashes))


async def take_snapshot(store: Store, project: str, root: Path, progress: RunProgress, *,
                        ignore: Callable[[str], bool] | None = None,
                        limiter: trio.CapacityLimiter | None = None,
                        wait_for_store: bool = True) -> SnapshotSummary:
    """Take a snapshot of the folder ``root`` for ``project`` into ``store`` (opened writable).

    Drives steps 2-5 of ``progress``. ``ignore(relpath)`` returns True for relative POSIX paths to
    leave out (a directory's contents go with it); it is called from a worker thread. The store's own
    directory is always left out.
    Worker threads come from ``limiter`` (trio's default limiter if None); one held by a pause of
    ``progress`` lends its token back meanwhile (``_threads.py``).
    ``wait_for_store``: an S3 store's bucket that is unreachable in step 5 is waited for (``_reconnect.py``);
    False raises ``store_unreachable`` instead.

    Returns:
        The summary of the new snapshot.

    Raises:
        SnapshotError: ``folder_missing`` (no such folder or not readable) or ``store_error``.
        SyncsnapdError: ``staging_full`` (S3 store: its bucket unreachable, and staging at its bound).
        trio.Cancelled, RunCancelled: the run was cancelled; no snapshot was written, and the store
            holds no temporary files of this run.
    """
    started = time.monotonic()
    tune_allocator()  # once: freed memory goes back to the system (_malloc.py)
    limiter = limiter or trio.to_thread.current_default_thread_limiter()
    run = _Run(store, root, progress, ignore, limiter)
    writer: StoreWriter | None = None
    lock = WritingLock(store, limiter)
    try:
        # Between steps the Trio side waits out a pause itself, so the step shown while paused stays.
        await progress.wait_resumed()
        progress.set_step(2)
        # The shared lock (S3): _writing_lock.py; taken before step 5 instead when the bucket does not answer.
        await lock.take(deferrable=wait_for_store and store.remote is not None)
        await trio.to_thread.run_sync(run.load_previous, project, limiter=limiter)
        snapshot_id = make_snapshot_id(_ns_datetime(run.started_ns))

        await progress.wait_resumed()
        progress.set_step(3)
        await trio.to_thread.run_sync(run.walk, limiter=limiter)

        await progress.wait_resumed()
        progress.set_step(4, files_total=run.to_read.length, bytes_total=run.changed_bytes)
        writer = run.writer = store.begin_write()
        if lock.taken:
            writer.upload_early()  # S3: packs go to the bucket as they are sealed (store/_early_upload.py)
        if store.remote is not None:
            run.staging = await trio.to_thread.run_sync(StagingBound, store, limiter=limiter)
        batches = run.make_batches()
        n_workers = min(MAX_WORKERS, os.cpu_count() or 1, max(1, int(limiter.total_tokens)), batches)
        tallies = [_Tally() for _ in range(n_workers)]
        await run_threads([partial(run.read_files, t) for t in tallies], limiter)

        tally = _Tally(
            files=run.unchanged.files + sum(t.files for t in tallies),
            bytes=run.unchanged.bytes + sum(t.bytes for t in tallies),
            new=sum(t.new for t in tallies), changed=sum(t.changed for t in tallies),
            unchanged=run.unchanged.files + sum(t.unchanged for t in tallies),
        )
        packs, pack_bytes = writer.unsealed()
        if store.remote is not None:
            # Upload: every staged pack and index plus the snapshot file (exact once the bucket is asked).
            packs, pack_bytes = store.remote.pending(writer)
            packs -= 1
        await progress.wait_resumed()
        progress.set_step(5, files_total=packs + 1, bytes_total=pack_bytes)
        stats = SnapshotStats(
            files=tally.files, bytes=tally.bytes, files_new=tally.new, files_changed=tally.changed,
            files_unchanged=tally.unchanged, bytes_added=writer.data_bytes_added,
            duration_seconds=round(time.monotonic() - started - progress.paused_seconds, 3),
            warnings=progress.warning_count,
            skipped=run.skipped, dirs=run.dirs, symlinks=run.symlinks,
        )
        waiter = store_waiter(store, progress, limiter, run.check) if wait_for_store else None
        late = None if lock.taken or waiter is None else partial(lock.take_late, waiter, partial(run.still_valid, project))
        entries = run.entries.entries()  # decoded a tree group at a time as the commit groups them
        info = await trio.to_thread.run_sync(
            lambda: store.commit_snapshot(
                writer, snapshot_id=snapshot_id, project=project, root=run.root, entries=entries,
                stats=stats, root_mode=run.root_mode,
                on_written=lambda n, b: progress.add_done(files=n, nbytes=b), check=run.check,
                on_total=lambda n, b: progress.set_totals(files_total=n, bytes_total=b),
                on_unreachable=waiter, before_upload=late,
            ),
            limiter=limiter,
        )
    except BaseException as exc:
        if writer is not None:
            # Shielded: removing this run's temporary packs must happen even while being cancelled.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.abort, limiter=limiter)
        if isinstance(exc, StoreError):
            # store_unreachable / store_auth / store_full when the bucket is the cause; store_locked.
            raise SnapshotError(error_code(exc), str(exc)) from exc
        raise
    finally:
        run.close()  # the per-file buffers go back to the system whole
        give_back()
        await lock.release()
    return SnapshotSummary(
        id=info.id, files=stats.files, bytes=stats.bytes, files_new=stats.files_new,
        files_changed=stats.files_changed, files_unchanged=stats.files_unchanged,
        bytes_added=stats.bytes_added,
        duration_seconds=round(time.monotonic() - started - progress.paused_seconds, 3),
        warnings=progress.warning_count, warning_paths=tuple(progress.warnings), skipped=run.skipped,
    )

