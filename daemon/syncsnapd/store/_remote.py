"""A store whose durable home is an S3-compatible bucket: the local directory is staging and cache.

Layout
======

The bucket (under its prefix) holds exactly the objects of a local store (see ``_format.py``)::

    config.json  packs/<2hex>/<packid>.pack  index/<packid>.idx  snapshots/<id>.json

The store's local directory (under the daemon's state directory, ``s3/<name>/``) is marked by
``remote.json`` (the URL, endpoint, region and addressing style; never credentials) and keeps:

* ``config.json``, ``index/`` and ``snapshots/``: a cache of the bucket's (small) metadata objects, so
  look-ups, listings and the comparison with the previous snapshot need no request;
* ``packs/``: **staging**. Packs are built and sealed here during step 4 exactly as in a local store and
  uploaded as soon as each is sealed (``_early_upload.py``) or in step 5; a pack file is deleted once it
  and its index are in the bucket. So the packs found here are precisely those not known to be
  uploaded: this is the local cache of the remote's object list, and a snapshot of an unchanged folder
  sends one object (its snapshot file) and lists nothing.

Upload order: every pack, then its index, then (last) the snapshot file, which is visible only once all
of its objects are. A run killed mid-upload leaves packs here and perhaps some in the bucket, never a
snapshot; the next run checks the staged packs against the bucket in batches (one LIST per folder, see
:meth:`Backend.exists_many`) and uploads only what is missing.

Reading: blobs of a pack that is not staged are fetched with ranged GETs (one per blob, verified against
its hash as always).

Opening syncs the metadata cache with the bucket: two LISTs (``index/``, ``snapshots/``), downloading
what is new and dropping what the bucket no longer has. If the bucket's ``config.json`` differs from the
cached one (a different store at that URL), the cache is rebuilt.

Refreshing (:meth:`Remote.refresh`): the same two LISTs, downloading only the index and snapshot files
that are new and dropping those the bucket no longer has, without the ``config.json`` check. The daemon
refreshes before each snapshot run (so its master index knows the packs other machines uploaded, and a
file one machine stored is not uploaded again by another) and when a listing (``GET /snapshots``) finds
the last refresh older than ``refresh_age``. One refresh runs at a time per store; a caller that waited
for another's refresh skips its own when that one is recent enough. A refresh that fails (the bucket is
unreachable) changes nothing: the cached lists stand, and the caller says so.

Offline at start (the daemon's open, ``offline_ok``): when the bucket does not answer (one quick probe,
no retries), the store opens from this cache as it is, marked unreachable (``_reachability.py``), and
snapshots are staged here. A store never seen before has no cache: its ``config.json`` is then written
here as a new store's (:func:`new_config`, what the bucket would get) and the directory is marked
``remote-pending``; at the first contact the store is created in the bucket with that config.json (and
the bucket, if missing). If the bucket then already holds a store with another config.json (made by
another machine with other settings), what was staged here cannot go there: uploads fail with
``store_error`` naming this directory, to be removed before the next start. Before any upload after an
offline open, :meth:`Remote.confirm` checks that the bucket still holds this store (its config.json).
Runs retry the upload while the bucket is unreachable (``wait``, see :meth:`Remote.upload_staged`); the
metadata cache is not synced again at that point.

Concurrency between machines: objects are content-addressed and immutable, so two daemons writing to one
bucket are safe for snapshots (at worst a pack is uploaded twice, with the same bytes; see ``_format.py``
for why snapshot ids and pack names cannot collide between machines); each sees the other's snapshots at
its next run or refresh. Deleting is coordinated by lock objects in the bucket (``locks/``, see
``_locks.py``): a snapshot run holds a shared lock, forget and prune an exclusive one, and each, once its
lock is held, brings the cached metadata up to date (:meth:`Remote.refresh`). A prune on S3
(``_prune.py``) uploads the packs it repacked, each before its index, before it deletes anything; then
deletes the old indexes, then the old packs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..core import parse_s3_url
from ._backend import Backend, S3Backend
from ._errors import REMOTE_CODES, BackendError, CorruptDataError, ObjectMissing, StoreError
from ._format import PACK_MAGIC, decode_index, new_config, pack_tail
from ._reachability import PENDING, Link, Reachability, UnreachableWait, open_offline, staged_bytes
from ._remote_prune import BucketPruning
from ._remote_spec import RemoteSpec, _index_key, _pack_key, _store_error, load_spec, write_cache_file

if TYPE_CHECKING:
    from ._files import StoreFiles
    from ._writer import StoreWriter

__all__ = ["Refreshed", "Remote", "footprint"]

log = logging.getLogger("syncsnapd.remote")

# Bytes fetched per ranged GET when reading blobs from the bucket (see Remote.read_range), and the number
# of packs whose last window each thread keeps: 4 MiB x 4 per reading thread.
READ_AHEAD = 4 << 20
_READ_AHEAD_PACKS = 4
# The probe of a bucket that is (or was) unreachable: one request, no retries, a short connect timeout,
# so a daemon starting offline, and a run waiting in step 5, learn it within seconds.
_PROBE_CONNECT_SECONDS = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class Refreshed:
    """What :meth:`Remote.refresh` changed in the cache: pack ids whose index was fetched or dropped,
    snapshot ids fetched or dropped."""

    indexes_added: frozenset[str]
    indexes_dropped: frozenset[str]
    snapshots_added: frozenset[str]
    snapshots_dropped: frozenset[str]


def footprint(root: Path, files: StoreFiles | None = None) -> tuple[int, int]:
    """(packs, their bytes) of the S3 store whose directory is ``root``, from its cached indexes (no
    request): a pack is its header, its blobs, a copy of its index and the footer. An encrypted store's
    indexes are sealed: pass its open store's ``files`` to read them."""
    packs = size = 0
    for path in (root / "index").glob("*.idx"):
        try:
            stored = path.read_bytes()
            records = files.index_records(stored) if files is not None else decode_index(stored)
        except (OSError, CorruptDataError):
            continue
        size += len(PACK_MAGIC) + sum(r[2] for r in records) + len(pack_tail(stored))
        packs += 1
    return packs, size


class Remote(BucketPruning):
    """The bucket behind one open store. Thread-safe."""

    def __init__(self, root: Path, backend: Backend, spec: RemoteSpec) -> None:
        self.root = root
        self.backend = backend
        self.spec = spec
        self.concurrency = max(1, spec.concurrency)
        self._lock = threading.Lock()
        # Pack id -> its upload in progress (another run needing the same pack waits for it).
        self._inflight: dict[str, concurrent.futures.Future[None]] = {}
        self._tls = threading.local()
        # One refresh at a time; time.monotonic() of the last successful sync with the bucket (None: never).
        self._refresh_lock = threading.Lock()
        self.refreshed_at: float | None = None
        # Offline at start: the reachability of the bucket, whether it was seen to hold this store since the
        # open, the probe's backend (one request, no retries) and the bound on staged bytes while it is down.
        self._link = Link(backend.description)
        self._confirm_lock = threading.Lock()
        self._confirmed = True
        self._probe: Backend | None = None
        self.staging_max: int | None = None

    @property
    def description(self) -> str:
        return self.backend.description

    @classmethod
    def attach(cls, root: Path, *, writable: bool, backend: Backend | None = None,
               offline_ok: bool = False, create: Callable[[], dict[str, bytes]] | None = None) -> Remote | None:
        """The remote of the store directory ``root`` (None for a plain local store), its metadata cache
        synced. A writable open creates the bucket and the store in it when missing.

        ``offline_ok`` (writable only; the daemon's open): a bucket that does not answer is not an error;
        the store opens from its local cache, or as a new store created here (see the module docstring),
        and :attr:`reachability` says it is unreachable.

        Raises:
            StoreError: with ``code`` store_unreachable / store_auth / store_full, or not a store.
        """
        spec = load_spec(root)
        if spec is None:
            return None
        probe: S3Backend | None = None
        if backend is None:
            bucket, prefix = parse_s3_url(spec.url)
            try:
                backend = S3Backend(bucket, prefix, spec.options())
            except BackendError as exc:  # a credentials profile that does not exist
                raise _store_error(exc) from exc
            if offline_ok and writable:
                probe = _probe_backend(backend)
        remote = cls(root, backend, spec)
        remote._probe = probe
        try:
            try:
                remote._sync(writable, first=probe or backend, create=create)
            except BackendError as exc:
                if not (offline_ok and writable and exc.code == "store_unreachable"):
                    raise
                remote._open_offline(_store_error(exc), create)
        except BackendError as exc:
            remote.close()
            raise _store_error(exc) from exc
        except BaseException:
            remote.close()
            raise
        return remote

    def _open_offline(self, error: StoreError, create: Callable[[], dict[str, bytes]] | None = None) -> None:
        open_offline(self.root, self.description, create)
        self._confirmed = False
        self._note(error)

    @property
    def reachability(self) -> Reachability:
        """Whether the bucket answered the last request that needed it, and if not why and since when."""
        return self._link.state

    @property
    def reachable(self) -> bool:
        return self._link.state.reachable

    @property
    def ready(self) -> bool:
        """Confirmed to hold this store since the open, and answering: uploads may go without asking."""
        return self._confirmed and self.reachable

    def _note(self, error: StoreError | None) -> None:
        self._link.note(error)

    def confirm(self, *, quick: bool = False) -> None:
        """Make sure the bucket answers and holds this store (its ``config.json`` is the cached one). A
        store made here offline (``remote-pending``) is created there now, the bucket too if missing.
        ``quick``: one request without retries (a bucket known to be down answers within seconds).

        Raises:
            StoreError: store_unreachable / store_auth / store_full, or ``store_error`` when the bucket holds
                no store or another one.
        """
        with self._confirm_lock:
            if quick and self._probe is None and isinstance(self.backend, S3Backend):
                self._probe = _probe_backend(self.backend)
            backend = self._probe if quick and self._probe is not None else self.backend
            try:
                self._confirm(backend)
            except BackendError as exc:
                error = _store_error(exc)
                self._note(error)
                raise error from exc
            except StoreError as exc:
                self._note(exc)
                raise
            self._confirmed = True
        self._note(None)

    def _confirm(self, backend: Backend) -> None:
        pending = (self.root / PENDING).exists()
        if pending and isinstance(backend, S3Backend):
            backend.ensure_bucket()
        cached = (self.root / "config.json").read_bytes()
        try:
            config = backend.get("config.json")
        except ObjectMissing:
            if not pending:
                raise StoreError(f"there is no syncsnap store at {self.description} any more (its config.json "
                                 "is gone)") from None
            for key_file in sorted((self.root / "keys").glob("*")):  # an encrypted store's: before config.json
                backend.put_bytes(f"keys/{key_file.name}", key_file.read_bytes())
            backend.put_bytes("config.json", cached)
            log.info("created the store at %s (made in %s while it was unreachable)", self.description, self.root)
            config = cached
        if config != cached:
            raise StoreError(
                f"{self.description} holds another store than the one in {self.root}"
                + (" (made there while the bucket was unreachable at the first start); stop syncsnapd, move "
                   f"{self.root} away and start it again" if pending else ""))
        if pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / PENDING)

    def _retrying(self, fn: Callable[[], T], wait: UnreachableWait | None) -> T:
        """``fn()``, first confirming the bucket after an offline open or a failure (one quick request);
        while the bucket is unreachable, ``wait`` decides when to try again (without it: raise)."""
        attempt = 0
        while True:
            try:
                if not self._confirmed or not self.reachable:
                    self.confirm(quick=True)
                result = fn()
            except StoreError as exc:
                if exc.code in REMOTE_CODES:
                    self._note(exc)
                if wait is None or exc.code != "store_unreachable":
                    raise
                wait(exc, attempt)
                attempt += 1
                continue
            self._note(None)
            return result

    def staged_bytes(self) -> int:
        """Bytes of the packs staged here (not known to be in the bucket)."""
        return staged_bytes(self.root)

    def close(self) -> None:
        self.backend.close()
        if self._probe is not None:
            self._probe.close()

    # --- opening ------------------------------------------------------------------------------------

    def _sync(self, writable: bool, first: Backend | None = None,
              create: Callable[[], dict[str, bytes]] | None = None) -> None:
        root, backend = self.root, self.backend
        # ``first`` makes the first request (the daemon's: a quick probe, so an offline start is quick).
        opener = first or backend
        if writable and isinstance(opener, S3Backend):
            opener.ensure_bucket()
        cached = None
        with contextlib.suppress(FileNotFoundError):
            cached = (root / "config.json").read_bytes()
        if writable and cached is not None and (root / PENDING).exists():
            self._confirm(backend)  # made here offline: created in the bucket now, or refused
        try:
            config = backend.get("config.json")
        except ObjectMissing:
            if not writable:
                raise StoreError(f"there is no syncsnap store at {self.description}") from None
            config = self._create(create)
            log.info("created a new store at %s", self.description)
        for sub in ("index", "snapshots"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if cached != config:
            # Another store at this URL (or a first open): the cached metadata is not its metadata.
            if cached is not None:
                log.warning("the store at %s is not the one cached in %s: rebuilding the cache",
                            self.description, root)
            for sub in ("index", "snapshots"):
                shutil.rmtree(root / sub)
                (root / sub).mkdir()
            write_cache_file(root / "config.json", config)
        self._sync_folder("index/", ".idx", self._staged_packs)
        self._sync_folder("snapshots/", ".json", set)
        if b'"key_check"' in config:  # an encrypted store: its key files (issue 15, see _keys.py)
            (root / "keys").mkdir(exist_ok=True)
            self._sync_folder("keys/", "", set)
        self.refreshed_at = time.monotonic()

    def _create(self, create: Callable[[], dict[str, bytes]] | None) -> bytes:
        """Put a new store's objects (``create()``: key files and config.json; default: a plaintext
        config.json) in the bucket, config.json last: the store exists once it does."""
        objects = create() if create is not None else {"config.json": new_config()}
        for name, data in objects.items():
            if name != "config.json":
                self.backend.put_bytes(name, data)
        self.backend.put_bytes("config.json", objects["config.json"])
        return objects["config.json"]

    def refresh(self, max_age: float = 0.0) -> Refreshed | None:
        """Bring the cached index and snapshot files up to date with the bucket (what other machines
        added or a prune removed): one LIST of ``index/`` and one of ``snapshots/``, then a GET per new
        file. Skipped (None) when the last refresh is younger than ``max_age`` seconds, which a caller that
        waited for another caller's refresh finds.

        Raises:
            StoreError: with ``code`` store_unreachable / store_auth (the cache is as it was), or the
                cache cannot be written (``store_error``; files fetched so far stay).
        """
        with self._refresh_lock:
            if self.refreshed_at is not None and time.monotonic() - self.refreshed_at < max_age:
                return None
            started = time.monotonic()
            try:
                indexes = self._sync_folder("index/", ".idx", self._staged_packs)
                snapshots = self._sync_folder("snapshots/", ".json", set)
            except BackendError as exc:
                raise _store_error(exc) from exc
            except OSError as exc:
                raise StoreError(f"cannot update the cache of the bucket's lists in {self.root}: "
                                 f"{exc.strerror or exc}") from exc
            self.refreshed_at = started
        return Refreshed(*indexes, *snapshots)

    def _sync_folder(self, prefix: str, suffix: str, staged: Callable[[], set[str]]
                     ) -> tuple[frozenset[str], frozenset[str]]:
        """Fetch the bucket's ``prefix`` files that are not cached, drop those it no longer has; the
        names (without ``suffix``) fetched and dropped."""
        folder = self.root / prefix.rstrip("/")
        # In this order: the local names, then the staged packs, then the bucket's listing. A daemon
        # writing meanwhile writes a pack's index, uploads pack and index, then drops the staged pack;
        # so an index seen here is either still staged or already listed in the bucket.
        local = {n for n in os.listdir(folder) if n.endswith(suffix)}
        keep_local = staged()
        remote = {k[len(prefix):] for k, _ in self.backend.list(prefix)
                  if k.endswith(suffix) and "/" not in k[len(prefix):]}
        def fetch(name: str) -> None:
            with contextlib.suppress(ObjectMissing):
                write_cache_file(folder / name, self.backend.get(prefix + name))

        # A new machine fetches every index and snapshot file once: a few at a time.
        new = sorted(remote - local)
        if new:
            with concurrent.futures.ThreadPoolExecutor(self.concurrency * 2, thread_name_prefix="syncsnap-sync") as ex:
                for f in [ex.submit(fetch, name) for name in new]:
                    f.result()
        dropped = []
        for name in local - remote:
            if name[: -len(suffix)] in keep_local:
                continue  # the index of a pack staged here, not uploaded yet
            # Gone from the bucket (pruned elsewhere, or a bucket emptied): not in the store any more.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
            dropped.append(name)
        return (frozenset(n[: -len(suffix)] for n in new), frozenset(n[: -len(suffix)] for n in dropped))

    def _staged_packs(self) -> set[str]:
        packs = self.root / "packs"
        if not packs.is_dir():
            return set()
        return {p.name[:-5] for p in packs.glob("*/*.pack")}

    # --- uploading ----------------------------------------------------------------------------------

    def pending(self, writer: StoreWriter | None = None) -> tuple[int, int]:
        """(objects, bytes) step 5 will upload: staged packs with their indexes, ``writer``'s unsealed
        packs (about one index each), and the snapshot file."""
        objects, nbytes = 1, 0
        for pack in self._staged_packs():
            with contextlib.suppress(FileNotFoundError):
                nbytes += (self.root / "packs" / pack[:2] / f"{pack}.pack").stat().st_size
                nbytes += (self.root / "index" / f"{pack}.idx").stat().st_size
                objects += 2
        if writer is not None:
            packs, size = writer.unsealed()
            objects += 2 * packs
            nbytes += size
        return objects, nbytes

    def upload_staged(self, on_written: Callable[[int, int], None] | None = None,
                      check: Callable[[], None] | None = None,
                      on_total: Callable[[int, int], None] | None = None, extra: tuple[int, int] = (0, 0),
                      wait: UnreachableWait | None = None) -> tuple[int, int]:
        """Upload every staged pack (then its index) that the bucket does not have, ``concurrency`` at a
        time, and drop the staged copies. Returns (objects, bytes) sent.

        ``on_written(objects, nbytes)``: bytes as they are sent, and each object once complete.
        ``on_total(objects, nbytes)``: once what is missing is known, what will be sent, plus ``extra``
        (the snapshot file that follows). ``check()`` may raise to stop between objects.
        ``wait(error, attempt)``: while the bucket is unreachable, called before each further attempt
        (each asks the bucket again which staged objects it has, so nothing it got is sent twice).

        Raises:
            StoreError: with ``code`` store_unreachable / store_auth / store_full when the bucket fails.
        """
        return self._retrying(lambda: self._upload_staged(on_written, check, on_total, extra), wait)

    def _upload_staged(self, on_written: Callable[[int, int], None] | None,
                       check: Callable[[], None] | None,
                       on_total: Callable[[int, int], None] | None, extra: tuple[int, int]) -> tuple[int, int]:
        staged = sorted(p for p in self._staged_packs() if (self.root / "index" / f"{p}.idx").exists())
        report = on_written or (lambda objects, nbytes: None)
        present: set[str] = set()
        if staged:
            try:
                present = self.backend.exists_many([k for p in staged for k in (_pack_key(p), _index_key(p))])
            except BackendError as exc:
                raise _store_error(exc) from exc
        if on_total is not None:
            objects, nbytes = extra
            for p in staged:
                for key, path in ((_pack_key(p), self.root / "packs" / p[:2] / f"{p}.pack"),
                                  (_index_key(p), self.root / "index" / f"{p}.idx")):
                    if key not in present:
                        with contextlib.suppress(FileNotFoundError):
                            nbytes += path.stat().st_size
                            objects += 1
            on_total(objects, nbytes)
        if not staged:
            return 0, 0
        sent = [0, 0]
        sent_lock = threading.Lock()

        def count(objects: int, nbytes: int) -> None:
            with sent_lock:
                sent[0] += objects
                sent[1] += nbytes
            report(objects, nbytes)

        # ``check`` is called here only: it may need the Trio thread's context (cancellation), which the
        # pool's threads lack. They look at ``stop`` between objects instead.
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="syncsnap-upload") as ex:
            futures = [ex.submit(self.upload_pack, p, count, stop, present) for p in staged]
            try:
                pending = set(futures)
                while pending:
                    done, pending = concurrent.futures.wait(pending, timeout=0.1,
                                                            return_when=concurrent.futures.FIRST_EXCEPTION)
                    for f in done:
                        f.result()
                    if check is not None:
                        check()
            except BaseException:
                stop.set()
                for f in futures:
                    f.cancel()
                raise
        return sent[0], sent[1]

    def upload_pack(self, pack: str, count: Callable[[int, int], None], stop: threading.Event,
                    present: frozenset[str] | set[str] = frozenset()) -> None:
        """Send a staged pack, then its index (but those in ``present``), and drop the staged copy; wait
        instead for a run already sending it. Raises StoreError."""
        with self._lock:
            theirs = self._inflight.get(pack)
            if theirs is None:
                mine: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._inflight[pack] = mine
        if theirs is not None:
            theirs.result()  # another run is uploading the same pack: wait for it (its error is ours)
            return
        try:
            self._do_upload(pack, present, count, stop)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(None)
        finally:
            with self._lock:
                self._inflight.pop(pack, None)

    def _do_upload(self, pack: str, present: frozenset[str] | set[str], count: Callable[[int, int], None],
                   stop: threading.Event) -> None:
        path = self.root / "packs" / pack[:2] / f"{pack}.pack"
        index = self.root / "index" / f"{pack}.idx"
        if not path.exists():
            return  # uploaded by a run that finished meanwhile
        try:
            if stop.is_set():
                return
            if _pack_key(pack) not in present:
                self.backend.put_file(_pack_key(pack), path, lambda n: count(0, n))
                count(1, 0)
            index_bytes = index.read_bytes()
            if _index_key(pack) not in present:
                self.backend.put_bytes(_index_key(pack), index_bytes, lambda n: count(0, n))
                count(1, 0)
        except BackendError as exc:
            raise _store_error(exc) from exc
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # in the bucket now; its index stays here as the cache

    def put_snapshot(self, snapshot_id: str, payload: bytes, wait: UnreachableWait | None = None) -> None:
        """Upload a snapshot file: the last object of a snapshot (``wait``: as for :meth:`upload_staged`)."""
        def put() -> None:
            try:
                self.backend.put_bytes(f"snapshots/{snapshot_id}.json", payload)
            except BackendError as exc:
                raise _store_error(exc) from exc

        self._retrying(put, wait)

    # --- reading ------------------------------------------------------------------------------------

    def read_range(self, pack: str, offset: int, length: int) -> bytes:
        """Bytes of a pack in the bucket. Raises FileNotFoundError if the bucket does not have it.

        Reads ahead: one GET fetches at least :data:`READ_AHEAD` bytes, kept per thread for a few packs,
        so the many small blobs a restore or check reads in pack order cost one request per window, not
        one each (measured: 7 MiB/s restoring small files with a GET per blob).
        """
        cache: OrderedDict[str, tuple[int, bytes]] | None = getattr(self._tls, "windows", None)
        if cache is None:
            cache = self._tls.windows = OrderedDict()
        hit = cache.get(pack)
        if hit is not None:
            start, data = hit
            if start <= offset and offset + length <= start + len(data):
                cache.move_to_end(pack)
                return data[offset - start:offset - start + length]
        try:
            data = self.backend.get_range(_pack_key(pack), offset, max(length, READ_AHEAD))
        except ObjectMissing:
            raise FileNotFoundError(pack) from None
        except BackendError as exc:
            raise _store_error(exc) from exc
        cache[pack] = (offset, data)
        cache.move_to_end(pack)
        while len(cache) > _READ_AHEAD_PACKS:
            cache.popitem(last=False)
        return data[:length]

    def pack_sizes(self) -> dict[str, int]:
        """Every pack in the bucket with its size (one listing of ``packs/``)."""
        try:
            return {k.rsplit("/", 1)[-1][:-5]: size for k, size in self.backend.list("packs/")
                    if k.endswith(".pack")}
        except BackendError as exc:
            raise _store_error(exc) from exc


def _probe_backend(backend: S3Backend) -> S3Backend:
    """The same bucket, for one quick request: no retries, a short connect timeout."""
    options = backend.options
    return S3Backend(backend.bucket, backend.prefix, replace(
        options, botocore_attempts=1, retry_delays=(),
        connect_timeout=min(_PROBE_CONNECT_SECONDS, options.connect_timeout)))
