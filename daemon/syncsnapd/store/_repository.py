"""An open store: :class:`Store` (open, lock, clean-up after a crash, look-ups, snapshots, commits).

The pieces it is made of, one module each: the on-disk format (``_format.py``), the directory and its
durable writes (``_files.py``), the master index (``_index.py``), the snapshot files (``_snapshots.py``),
writing (``_writer.py``), reading (``_reader.py``), checking (``_check.py``), pruning (``_prune.py``) and,
for an S3 store, the bucket behind the directory (``_remote.py`` over ``_backend.py``).

Crash safety
============

Every pack, index and snapshot file is written under ``tmp/``, fsynced, renamed into place, and its
directory fsynced. A pack's index is written only once the pack is durable, and a snapshot file only once
every pack and index it needs is durable, so a snapshot exists exactly when its file does, and then all
of its data does. What a crash can leave: temporary files (removed by the next writable open), a pack
without index (re-indexed from its footer by the next writable open, which also re-creates a damaged
index file the same way), and packs no snapshot references (harmless; the next snapshot re-uses their
blobs, the next prune reclaims them). ``Store.open(..., on_durable_step=...)`` is how the crash tests
stop a process at each of those steps (see ``_files.py``).

Encryption
==========

A store whose config.json names a cipher is opened with ``key=``: its :class:`MasterKey` (from a key file)
or a :class:`Passphrase` that opens one of its key files (``keys/``, see ``_keys.py``). The key is checked
against config.json's ``key_check`` before anything is written, so a wrong one is a
:class:`StoreKeyError` and leaves the store as it was. ``create=`` (:class:`NewStore`) says what a store
this open creates is; by default a plaintext one, as before. Then ``files.crypto`` seals and opens
(``_crypto.py``), ``chunk_id`` names blobs with a key, and key files are managed by :meth:`Store.add_key`
and :meth:`Store.remove_key`.

Concurrency
===========

One writable opener per store (``fcntl.flock`` on ``lock``). Within it, several :class:`StoreWriter`
(one per snapshot run) may write at once; each keeps its unsealed blobs to itself, so a cancelled run
can never leave another run referencing data that was not made durable. One :class:`GarbageCollector`
at a time may run beside them (see ``_prune.py`` and ``_index.py``). Read-only opens take no lock and
clean nothing; they see snapshots written meanwhile by re-reading the index when a blob is unknown (and a
pack's footer when it has no index yet).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from . import _crypto as keyring
from ._check import CheckReport, StoreCheck
from ._chunker import Chunker
from ._config import ConfigError, StoreConfig, parse_config
from ._crypto import Crypto, NewStore, unlock
from ._errors import CorruptDataError, StoreError
from ._files import DurableStep, StoreFiles, fsync_dir, read_pack_footer, take_store_lock, write_all
from ._format import (
    PACK_FOOTER,
    PACK_MAGIC,
    SNAPSHOT_ID_RE,
    ChunkLocation,
    Entry,
    SnapshotInfo,
    SnapshotStats,
    decode_snapshot,
    decode_tree_group,
    encode_snapshot,
    encode_tree_group,
    footer_index_length,
    hash_bytes,
    pack_tail,
    tree_groups,
)
from ._index import MasterIndex
from ._keys import KeyInfo, Passphrase, StoreKey
from ._locks import StoreLocks, checking_lock
from ._prune import GarbageCollector, PruneStats, forget
from ._reachability import UnreachableWait
from ._reader import ChunkReader
from ._remote import Remote
from ._snapshots import SnapshotCatalog
from ._writer import StoreWriter

__all__ = ["Store"]


class Store:
    """An open store. Methods are synchronous and thread-safe; call them from worker threads.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block. Its parts are public for the other
    classes of the store: ``files`` (paths and durable writes), ``index`` (the :class:`MasterIndex`),
    ``catalog`` (the snapshot files) and ``remote`` (the bucket of an S3 store, else None).
    """

    def __init__(self, root: Path, writable: bool, config: StoreConfig, lock_fd: int | None,
                 remote: Remote | None = None, on_durable_step: DurableStep | None = None,
                 crypto: Crypto | None = None, key_id: str | None = None) -> None:
        self.root = root
        self.writable = writable
        # What config.json says (version, chunker, chunk ids, compression, encryption, pack size).
        self.config = config
        # How content is cut into chunks: fixed 1 MiB in a version 1 store, FastCDC in version 2.
        self.chunker: Chunker = config.chunker
        # The size of a reader's reusable buffer for this chunker (the chunk size of a fixed-chunk store;
        # for content-defined chunks, room for the largest chunk plus a read). Not a chunk size.
        self.chunk_size: int = config.chunker.buffer_size
        self.pack_size: int = config.pack_size
        self.files = StoreFiles(root, on_durable_step, crypto)
        self.index = MasterIndex(self.files.index_dir, self.files.index_records)
        # Blob ids: blake3, or keyed blake3 in an encrypted store (the engine names chunks with this).
        self.chunk_id: Callable[[bytes | bytearray | memoryview], str] = (
            hash_bytes if crypto is None else crypto.chunk_id)
        # The key file (in keys/) whose passphrase opened this store; None otherwise.
        self.key_id = key_id
        # Whether this open created the store.
        self.created = False
        self.catalog = SnapshotCatalog(self.files, exclusive=writable)
        # The bucket behind this store when its directory is the staging and cache of an S3 store
        # (see _remote.py); None for a local store.
        self.remote = remote
        # The machine name new snapshot files record (the daemon sets its configured ``host``).
        self.host: str = os.uname().nodename or "localhost"
        # Lock objects (an S3 store, or a directory on a network filesystem), else None: see _locks.py.
        self.locks = StoreLocks.for_store(root, None if remote is None else remote.backend)
        if self.locks is not None:
            self.locks.crypto = crypto  # sealed in an encrypted store, as every object
        self._lock_fd = lock_fd
        self._closed = False

    # --- opening ------------------------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self.files.crypto is not None

    @classmethod
    def open(cls, root: Path, *, writable: bool, key: StoreKey | None = None, create: NewStore | None = None,
             on_durable_step: Callable[[str], None] | None = None, offline_ok: bool = False) -> Store:
        """Open the store at ``root``.

        ``key``: for an encrypted store, its master key or a passphrase of one of its key files (ignored
        by a plaintext store). ``create``: what the store is if this (writable) open creates it; by
        default a plaintext store.

        A writable open creates the store if ``root`` is missing or empty, takes the exclusive lock,
        removes leftover temporary files and re-indexes packs whose index was not written. A read-only
        open needs an existing store and changes nothing on disk.

        A directory marked by ``remote.json`` is the staging and cache directory of an S3 store (see
        ``_remote.py``): opening first syncs its cached metadata with the bucket (creating the store
        there, writable, when missing), and ``self.remote`` is set.

        ``offline_ok`` (the daemon's writable open of an S3 store): a bucket that does not answer is not an
        error; the store opens from its local cache (see ``_remote.py``, "Offline at start").

        ``on_durable_step(label)``, for crash tests: called right after every durable-write step (see
        ``_files.py`` for the labels); it may kill the process to simulate a crash there.

        Raises:
            StoreKeyError: an encrypted store and no key, or a wrong one (nothing was written); or
                ``create.refuse`` and no store there.
            StoreError: not a store, unsupported version, or (writable) in use by another process.
        """
        root = Path(root)
        new = create or NewStore()
        created: list[bool] = []

        def objects() -> dict[str, bytes]:
            made = new.objects()
            created.append(True)
            return made

        try:
            # An S3 store: sync the cached metadata with the bucket first (creates the store there if needed).
            remote = Remote.attach(root, writable=writable, offline_ok=offline_ok, create=objects)
            try:
                return cls._open_local(root, writable, remote, on_durable_step, key, objects, created, new)
            except BaseException:
                if remote is not None:
                    remote.close()
                raise
        except OSError as exc:
            raise StoreError(f"cannot open store {root}: {exc.strerror or exc}") from exc

    @classmethod
    def _open_local(cls, root: Path, writable: bool, remote: Remote | None, on_durable_step: DurableStep | None,
                    key: StoreKey | None, objects: Callable[[], dict[str, bytes]], created: list[bool],
                    new: NewStore) -> Store:
        config_path = root / "config.json"
        if writable and not config_path.exists():
            cls._create(root, objects)
        try:
            doc = json.loads(config_path.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"{root} is not a syncsnap store (no config.json)") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the store configuration {config_path}: {exc}") from exc
        try:
            config = parse_config(doc)
        except ConfigError as exc:
            if str(exc) == "not a syncsnap store":
                raise StoreError(f"{root} is not a syncsnap store") from None
            raise StoreError(f"cannot use store {root}: its config.json {exc}") from None
        if created and new.master is not None:
            key = new.master  # made by this open: no need to derive it again from the passphrase
        # Before anything is written: a wrong key leaves the store as it was.
        crypto, key_id = unlock(root, config.encryption, config.key_check, key)
        lock_fd = None
        if writable:
            for sub in ("tmp", "packs", "index", "snapshots"):
                (root / sub).mkdir(exist_ok=True)
            lock_fd = take_store_lock(root)
        store = cls(root, writable, config, lock_fd, remote, on_durable_step, crypto, key_id)
        store.created = bool(created)
        try:
            if writable:
                store.files.clean_tmp()
                store._reindex_orphan_packs()
            store.index.refresh()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _create(root: Path, objects: Callable[[], dict[str, bytes]]) -> None:
        # A crash during creation can leave tmp/ (and keys/) behind; anything else is someone's data.
        if root.exists() and {p.name for p in root.iterdir()} - {"tmp", "keys"}:
            raise StoreError(f"{root} is not empty and not a syncsnap store")
        made = objects()
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        files = StoreFiles(root)
        for name, data in made.items():  # key files first, config.json last: the store exists once it does
            if name != "config.json":
                (root / name).parent.mkdir(exist_ok=True)
                files.write_durable(root / name, data, "create")
        tmp = files.tmp_name("config.json")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, made["config.json"])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, root / "config.json")
        fsync_dir(root)

    def _reindex_orphan_packs(self) -> None:
        # A crash between renaming a pack into place and writing its index (or a prune's crash between
        # deleting a pack's index and the pack) leaves a durable pack that no index names. Its footer
        # holds the index; write it out so its blobs are found again. A damaged index file is re-created
        # the same way.
        for pack_id, index_bytes in self._orphan_footers(repair_damaged=True):
            self.files.write_durable(self.files.index_path(pack_id), index_bytes, "reindex")

    def _orphan_footers(self, *, repair_damaged: bool = False) -> Iterator[tuple[str, bytes]]:
        """(pack id, index bytes) from the footers of packs that have no (readable) index file."""
        indexed = set(self.files.indexed_packs())
        if repair_damaged:
            for pack in list(indexed):
                try:
                    data = self.files.index_path(pack).read_bytes()
                    self.files.index_records(data)
                    if hash_bytes(data) != pack:
                        raise CorruptDataError("name mismatch")
                except (OSError, CorruptDataError):
                    indexed.discard(pack)
        for pack_path in self.files.pack_files():
            pack_id = pack_path.name[:-5]
            if pack_id in indexed:
                continue
            try:
                index_bytes = read_pack_footer(pack_path)
                self.files.index_records(index_bytes)
            except (OSError, CorruptDataError):
                continue  # not readable: leave it for `check`, no snapshot can reference it
            if hash_bytes(index_bytes) == pack_id:
                yield pack_id, index_bytes

    def close(self) -> None:
        """Release the lock (writable) and forget cached state. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
        if self.remote is not None:
            self.remote.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- several machines on one bucket --------------------------------------------------------------

    def refresh(self, max_age: float = 0.0) -> bool:
        """An S3 store: take in what other machines added to the bucket (and drop what a prune removed)
        since the last refresh, unless that was less than ``max_age`` seconds ago (see
        ``Remote.refresh``): their indexes join the master index, so their blobs are not uploaded again,
        and their snapshots are listed. Returns whether anything changed (always False for a local store).

        Raises:
            StoreError: the bucket cannot be reached (``code`` store_unreachable, store_auth); what is
                cached stands.
        """
        if self.remote is None:
            return False
        changed = self.remote.refresh(max_age)
        if changed is None:
            return False
        if changed.indexes_dropped:
            self.index.forget_packs(set(changed.indexes_dropped))
        if changed.indexes_added:
            self.index.refresh()
        if changed.snapshots_added or changed.snapshots_dropped:
            self.catalog.refresh()
        return bool(changed.indexes_added or changed.indexes_dropped or changed.snapshots_added
                    or changed.snapshots_dropped)

    # --- packs wherever they are (staged here, or in the bucket) --------------------------------------

    def pack_path(self, pack: str) -> Path:
        """The local file of a pack (of an S3 store: while it is staged)."""
        return self.files.pack_path(pack)

    def pack_sizes(self) -> dict[str, int]:
        """Every pack file with its size: here, and (S3 store) in the bucket, listed now."""
        sizes = {} if self.remote is None else self.remote.pack_sizes()
        for p in self.files.pack_files():
            with contextlib.suppress(FileNotFoundError):
                sizes[p.name[:-5]] = p.stat().st_size
        return sizes

    def pack_footer(self, pack: str) -> bytes:
        """The index copy at the end of a pack (local, else in the bucket).

        Raises:
            OSError: no such pack (FileNotFoundError), or it cannot be read.
            CorruptDataError: its footer is damaged.
        """
        path = self.pack_path(pack)
        if self.remote is None or path.exists():
            return read_pack_footer(path)
        size = self.remote.pack_sizes().get(pack)
        if size is None:
            raise FileNotFoundError(pack)
        tail = self.remote.read_range(pack, size - PACK_FOOTER.size, PACK_FOOTER.size)
        length = footer_index_length(tail, size)
        return self.remote.read_range(pack, size - PACK_FOOTER.size - length, length)

    def pack_frame_ok(self, pack: str, index_bytes: bytes, size: int) -> bool:
        """Whether a pack of ``size`` bytes has an intact header and ends with ``index_bytes`` and footer."""
        path = self.pack_path(pack)
        try:
            if self.remote is None or path.exists():
                with open(path, "rb") as f:
                    head = f.read(len(PACK_MAGIC))
                return head == PACK_MAGIC and read_pack_footer(path) == index_bytes
            head = self.remote.read_range(pack, 0, len(PACK_MAGIC))
            tail = pack_tail(index_bytes)
            return head == PACK_MAGIC and self.remote.read_range(pack, size - len(tail), len(tail)) == tail
        except (OSError, StoreError):
            return False

    # --- blobs --------------------------------------------------------------------------------------

    def has_chunk(self, chunk: str) -> bool:
        """Whether a durable blob with this hash is in the store (as last loaded; no disk access)."""
        return self.index.has(chunk)

    def locate(self, chunk: str) -> ChunkLocation | None:
        """Where a blob is stored, reading index files (and, read-only, pack footers) not seen yet."""
        loc = self.index.lookup(chunk)
        if loc is None:
            self.index.refresh()
            loc = self.index.lookup(chunk)
            if loc is None and not self.writable:
                # A read-only opener may look at a pack whose index the daemon has not written yet (or
                # that a crash left without one): its footer holds the same records.
                for pack_id, index_bytes in self._orphan_footers():
                    if not self.index.is_loaded(pack_id):
                        self.index.add_pack(pack_id, self.files.index_records(index_bytes))
                loc = self.index.lookup(chunk)
        return loc

    def locate_moved(self, pack: str, chunk: str) -> ChunkLocation | None:
        """``pack``, named by the index, is gone: where ``chunk`` is now, if anywhere (a prune writes the
        blobs it moves into new packs, with their indexes, before it deletes the old ones)."""
        self.index.drop_pack(pack, chunk)
        return self.locate(chunk)

    def chunk_at(self, chunks: Sequence[str], position: int) -> tuple[int, int]:
        """Which of a file's ``chunks`` holds byte ``position``, and the offset that chunk starts at, from
        the lengths the index records (chunks differ in size; no data is read). Past the end: (number of
        chunks, size).

        Raises:
            StoreError: a chunk before it is not in the store.
        """
        start = 0
        for i, chunk in enumerate(chunks):
            loc = self.locate(chunk)
            if loc is None:
                raise StoreError(f"chunk {chunk} is not in the store")
            if position < start + loc.raw_length:
                return i, start
            start += loc.raw_length
        return len(chunks), start

    def read_chunk(self, chunk: str) -> bytes:
        """Return the verified, uncompressed bytes of a blob. For many reads use :class:`ChunkReader`."""
        with ChunkReader(self) as reader:
            return reader.read(chunk)

    def reader(self) -> ChunkReader:
        """A :class:`ChunkReader` for this thread (keeps pack files open between reads)."""
        return ChunkReader(self)

    # --- snapshots ----------------------------------------------------------------------------------

    def list_snapshots(self, project: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of ``project`` (all projects if None), oldest first."""
        infos = self.catalog.scan()
        return [infos[sid] for sid in sorted(infos) if project is None or infos[sid].project == project]

    def latest(self, project: str) -> SnapshotInfo | None:
        """The most recent snapshot of ``project``, or None."""
        snaps = self.list_snapshots(project)
        return snaps[-1] if snaps else None

    def snapshot_root(self, snapshot_id: str) -> str:
        """The folder path the snapshot was taken of."""
        return self.catalog.record(snapshot_id).root

    def snapshot_root_mode(self, snapshot_id: str) -> int | None:
        """The permission bits (0 to 0o777) of the folder the snapshot was taken of; None for a snapshot
        made by a version that did not record them.

        Raises:
            UnknownSnapshotError: no such snapshot.
            CorruptDataError: its snapshot file is damaged (a recorded mode out of range included).
            StoreError: it cannot be read.
        """
        return self.catalog.record(snapshot_id).root_mode

    def load_entries(self, snapshot_id: str) -> list[Entry]:
        """All entries of a snapshot, a directory always before its contents.

        Raises:
            UnknownSnapshotError: no such snapshot.
            CorruptDataError: its snapshot file or a list of entries is damaged (an entry that is not
                valid: see :func:`decode_tree_group`); the message names the snapshot.
            StoreError: its tree data is missing or cannot be read.
        """
        record = self.catalog.record(snapshot_id)
        entries: list[Entry] = []
        with self.reader() as reader:
            for h in record.tree:
                data = reader.read(h)
                try:
                    entries.extend(decode_tree_group(data))
                except CorruptDataError as exc:
                    raise CorruptDataError(f"the list of files of snapshot {snapshot_id} is damaged: {exc}") from exc
        return entries

    def pinned(self, snapshot_ids: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """Keep these snapshots (and so their data) from being forgotten while the block runs: a
        restore or diff reading them is never cut short by a prune."""
        return self.catalog.pinned(snapshot_ids)

    # --- writing ------------------------------------------------------------------------------------

    def begin_write(self) -> StoreWriter:
        """Start writing blobs for one snapshot run. See :class:`StoreWriter`."""
        if not self.writable:
            raise StoreError(f"store {self.root} is open read-only")
        return StoreWriter(self)

    def commit_snapshot(self, writer: StoreWriter, *, snapshot_id: str, project: str, root: str,
                        entries: Sequence[Entry], stats: SnapshotStats, root_mode: int | None = None,
                        on_written: Callable[[int, int], None] | None = None,
                        check: Callable[[], None] | None = None,
                        on_total: Callable[[int, int], None] | None = None,
                        on_unreachable: UnreachableWait | None = None,
                        before_upload: Callable[[], None] | None = None) -> SnapshotInfo:
        """Store the tree, make every pack of ``writer`` durable, then write the snapshot file.

        ``before_upload()`` (S3): called once every pack is sealed in staging, before anything is sent.

        ``root_mode``: the permission bits of the folder itself (0 to 0o777), which a restore gives the
        target it creates; None leaves them out of the snapshot file (as older versions wrote it).

        For an S3 store, "durable" means uploaded: ``on_total(objects, nbytes)`` is called once what
        the upload sends is known, and ``on_written`` counts the bytes sent.

        ``on_unreachable(error, attempt)``: while the bucket is unreachable, called before each further
        attempt to upload (see ``Remote.upload_staged``); without it such a failure is raised.

        ``on_written(objects, nbytes)`` is called as packs and the snapshot file become durable;
        ``check()`` is called before each step and may raise to abandon the commit (then call
        ``writer.abort()``). Returns the new snapshot's info.
        """
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise ValueError(f"bad snapshot id {snapshot_id!r}")
        tree: list[str] = []
        for group in tree_groups(entries):
            if check is not None:
                check()
            data = encode_tree_group(group)
            h = self.chunk_id(data)
            writer.add_chunk(h, data, metadata=True)
            tree.append(h)
        payload = encode_snapshot(snapshot_id, project, root, tree, stats, root_mode, self.host)
        stored = self.files.seal_snapshot(snapshot_id, payload)
        remote = self.remote
        # Remote: packs are sealed here (staging), those not sent early (_early_upload.py) are sent (index
        # after pack), then the snapshot file; step 5 counts the bytes sent.
        writer.finish(on_written=None if remote is not None else on_written, check=check)
        if check is not None:
            check()
        if remote is not None:
            if before_upload is not None:
                before_upload()
            remote.upload_staged(on_written, check, on_total=on_total, extra=(1, len(stored)), wait=on_unreachable)
            if check is not None:
                check()
            # Its object's name: the id, or in an encrypted store a keyed hash of it.
            remote.put_snapshot(self.files.snapshot_name(snapshot_id), stored, wait=on_unreachable)
        try:
            self.files.write_durable(self.files.snapshot_path(snapshot_id), stored, "snapshot")
        except OSError as exc:
            raise StoreError(f"cannot write to store {self.root}: {exc.strerror or exc}") from exc
        if on_written is not None:
            on_written(1, len(stored))
        info = decode_snapshot(snapshot_id, payload).info
        self.catalog.added(info)
        writer.committed()
        return info

    # --- forget, prune, check -----------------------------------------------------------------------

    def forget(self, snapshot_ids: Iterable[str]) -> list[str]:
        """Delete these snapshots' files (their data stays until :meth:`collect_garbage`).

        Never forgets a pinned snapshot, nor the newest snapshot of a project: a running snapshot re-uses
        the newest one's blobs for unchanged files without reading them again (retention policies always
        keep it anyway). Returns the ids actually forgotten.
        """
        return forget(self, snapshot_ids)

    def collect_garbage(self, *, dry_run: bool = False, exclude: Iterable[str] = (),
                        check: Callable[[], None] | None = None) -> PruneStats:
        """Delete the blobs no snapshot references: every phase of :class:`GarbageCollector` in turn.

        ``exclude``: snapshots to treat as forgotten (for a dry run of a prune that would forget them).
        """
        with GarbageCollector(self, dry_run=dry_run, exclude=exclude, check=check) as gc:
            gc.mark()
            gc.plan()
            if not dry_run:
                gc.repack()
                gc.delete()
            return gc.stats

    def check(self, *, read_data: bool = True, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Verify the store: every phase of :class:`StoreCheck` in turn.

        ``progress(nbytes)`` is called as pack data is read (with ``read_data``). A store shared with other
        processes is checked under its shared lock (:func:`checking_lock`).

        Raises:
            StoreLocked: a prune holds the store's exclusive lock.
        """
        with checking_lock(self):
            checker = StoreCheck(self, read_data=read_data)
            checker.scan()
            checker.verify_packs(None if progress is None else lambda packs, nbytes: progress(nbytes))
            return checker.verify_snapshots()

    # --- key files (an encrypted store; see _crypto.py) ----------------------------------------------

    def list_keys(self) -> list[KeyInfo]:
        """The key files of the store (each a copy of the master key under its own passphrase)."""
        return keyring.list_keys(self)

    def add_key(self, passphrase: Passphrase) -> str:
        """Add a key file opened by ``passphrase``; returns its id. In the bucket first (an S3 store)."""
        return keyring.add_key(self, passphrase)

    def remove_key(self, key_id: str) -> str:
        """Remove a key file (a unique prefix of its id will do); returns its id. Never the last one, nor
        the one that opened this store. Raises StoreKeyError."""
        return keyring.remove_key(self, key_id)

    def change_passphrase(self, passphrase: Passphrase) -> str:
        """Replace the key file that opened this store by one of ``passphrase``; returns the new id."""
        return keyring.change_passphrase(self, passphrase)
