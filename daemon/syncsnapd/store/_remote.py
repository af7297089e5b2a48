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
  uploaded in step 5; a pack file is deleted once it and its index are in the bucket. So the packs found
  here are precisely those not known to be uploaded: this is the local cache of the remote's object
  list, and a snapshot of an unchanged folder sends one object (its snapshot file) and lists nothing.

Upload order: every pack, then its index, then (last) the snapshot file, which is visible only once all
of its objects are. A run killed mid-upload leaves packs here and perhaps some in the bucket, never a
snapshot; the next run checks the staged packs against the bucket in batches (one LIST per folder, see
:meth:`Backend.exists_many`) and uploads only what is missing.

Reading: blobs of a pack that is not staged are fetched with ranged GETs (one per blob, verified against
its hash as always).

Opening syncs the metadata cache with the bucket: two LISTs (``index/``, ``snapshots/``), downloading
what is new and dropping what the bucket no longer has. If the bucket's ``config.json`` differs from the
cached one (a different store at that URL), the cache is rebuilt.

Concurrency between machines: objects are content-addressed and immutable, so two daemons writing to one
bucket are safe for snapshots (at worst a pack is uploaded twice, with the same bytes); each sees the
other's snapshots at its next start. Deleting is not safe without a lock object, which this version does
not implement: ``forget``/``prune`` refuse on an S3 store (:func:`refuse_on_remote`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import S3Options, parse_s3_url, staging_dir
from ._backend import Backend, S3Backend
from ._errors import REMOTE_CODES, BackendError, CorruptDataError, ObjectMissing, StoreError
from ._format import new_config, pack_file_size

if TYPE_CHECKING:
    from ..core import DaemonConfig
    from ._writer import StoreWriter

__all__ = ["MARKER", "Remote", "RemoteSpec", "footprint", "prepare", "prepare_store", "staging_dir"]

log = logging.getLogger("syncsnapd.remote")

MARKER = "remote.json"
# Bytes fetched per ranged GET when reading blobs from the bucket (see Remote.read_range), and the number
# of packs whose last window each thread keeps: 4 MiB x 4 per reading thread.
READ_AHEAD = 4 << 20
_READ_AHEAD_PACKS = 4


def _store_error(exc: BackendError) -> StoreError:
    """A backend failure as the store error a run reports (store_unreachable, store_auth, store_full)."""
    return StoreError(exc.message, code=exc.code if exc.code in REMOTE_CODES else "store_error")


@dataclass(frozen=True)
class RemoteSpec:
    """What ``remote.json`` records: where the bucket is. No credentials."""

    url: str
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    concurrency: int = 4

    def options(self) -> S3Options:
        return S3Options(endpoint=self.endpoint, region=self.region, path_style=self.path_style,
                         concurrency=self.concurrency)


def prepare(root: Path, spec: RemoteSpec) -> None:
    """Mark ``root`` as the local directory of the S3 store ``spec`` (written only when it changes)."""
    parse_s3_url(spec.url)
    data = (json.dumps(asdict(spec), indent=1) + "\n").encode()
    marker = root / MARKER
    with contextlib.suppress(FileNotFoundError):
        if marker.read_bytes() == data:
            return
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MARKER}.{secrets.token_hex(4)}"
    tmp.write_bytes(data)
    os.replace(tmp, marker)


def prepare_store(config: DaemonConfig) -> Path:
    """The store directory of ``config``, marked as the staging of its S3 store when it has one."""
    if config.store_url is not None:
        prepare(config.store, spec_from(config.store_url, config.s3))
    return config.store


def footprint(root: Path) -> tuple[int, int]:
    """(packs, their bytes) of the S3 store whose directory is ``root``, from its cached indexes (no
    request): a pack is its header, its blobs, a copy of its index and the footer."""
    packs = size = 0
    for path in (root / "index").glob("*.idx"):
        try:
            size += pack_file_size(path.read_bytes())
        except (OSError, CorruptDataError):
            continue
        packs += 1
    return packs, size


def load_spec(root: Path) -> RemoteSpec | None:
    try:
        doc = json.loads((root / MARKER).read_bytes())
    except FileNotFoundError:
        return None
    return RemoteSpec(**{k: v for k, v in doc.items() if k in RemoteSpec.__dataclass_fields__})


def _write_atomic(path: Path, data: bytes) -> None:
    # Cache files only (the bucket is the durable copy): no fsync. A name that does not end in .idx or
    # .json while being written, so a reader listing the folder never sees half a file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Remote:
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

    @property
    def description(self) -> str:
        return self.backend.description

    @classmethod
    def attach(cls, root: Path, *, writable: bool, backend: Backend | None = None,
               create: Callable[[], dict[str, bytes]] | None = None) -> Remote | None:
        """The remote of the store directory ``root`` (None for a plain local store), its metadata cache
        synced. A writable open creates the bucket and the store in it when missing.

        Raises:
            StoreError: with ``code`` store_unreachable / store_auth / store_full, or not a store.
        """
        spec = load_spec(root)
        if spec is None:
            return None
        if backend is None:
            bucket, prefix = parse_s3_url(spec.url)
            backend = S3Backend(bucket, prefix, spec.options())
        remote = cls(root, backend, spec)
        try:
            remote._sync(writable, create)
        except BackendError as exc:
            backend.close()
            raise _store_error(exc) from exc
        except BaseException:
            backend.close()
            raise
        return remote

    def close(self) -> None:
        self.backend.close()

    # --- opening ------------------------------------------------------------------------------------

    def _sync(self, writable: bool, create: Callable[[], dict[str, bytes]] | None = None) -> None:
        root, backend = self.root, self.backend
        if writable and isinstance(backend, S3Backend):
            backend.ensure_bucket()
        try:
            config = backend.get("config.json")
        except ObjectMissing:
            if not writable:
                raise StoreError(f"there is no syncsnap store at {self.description}") from None
            config = self._create(create)
            log.info("created a new store at %s", self.description)
        cached = None
        with contextlib.suppress(FileNotFoundError):
            cached = (root / "config.json").read_bytes()
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
            _write_atomic(root / "config.json", config)
        self._sync_folder("index/", ".idx", self._staged_packs)
        self._sync_folder("snapshots/", ".json", set)
        if b'"key_check"' in config:  # an encrypted store: its key files (issue 15, see _keys.py)
            (root / "keys").mkdir(exist_ok=True)
            self._sync_folder("keys/", "", set)

    def _create(self, create: Callable[[], dict[str, bytes]] | None) -> bytes:
        """Put a new store's objects (``create()``: key files and config.json; default: a plaintext
        config.json) in the bucket, config.json last: the store exists once it does."""
        objects = create() if create is not None else {"config.json": new_config()}
        for name, data in objects.items():
            if name != "config.json":
                self.backend.put_bytes(name, data)
        self.backend.put_bytes("config.json", objects["config.json"])
        return objects["config.json"]

    def _sync_folder(self, prefix: str, suffix: str, staged: Callable[[], set[str]]) -> None:
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
                _write_atomic(folder / name, self.backend.get(prefix + name))

        # A new machine fetches every index and snapshot file once: a few at a time.
        with concurrent.futures.ThreadPoolExecutor(self.concurrency * 2, thread_name_prefix="syncsnap-sync") as ex:
            for f in [ex.submit(fetch, name) for name in sorted(remote - local)]:
                f.result()
        for name in local - remote:
            if name[: -len(suffix)] in keep_local:
                continue  # the index of a pack staged here, not uploaded yet
            # Gone from the bucket (pruned elsewhere, or a bucket emptied): not in the store any more.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)

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
                      on_total: Callable[[int, int], None] | None = None, extra: tuple[int, int] = (0, 0)
                      ) -> tuple[int, int]:
        """Upload every staged pack (then its index) that the bucket does not have, ``concurrency`` at a
        time, and drop the staged copies. Returns (objects, bytes) sent.

        ``on_written(objects, nbytes)``: bytes as they are sent, and each object once complete.
        ``on_total(objects, nbytes)``: once what is missing is known, what will be sent, plus ``extra``
        (the snapshot file that follows). ``check()`` may raise to stop between objects.

        Raises:
            StoreError: with ``code`` store_unreachable / store_auth / store_full when the bucket fails.
        """
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
            futures = [ex.submit(self._upload_pack, p, present, count, stop) for p in staged]
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

    def _upload_pack(self, pack: str, present: set[str], count: Callable[[int, int], None],
                     stop: threading.Event) -> None:
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

    def _do_upload(self, pack: str, present: set[str], count: Callable[[int, int], None],
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

    def put_snapshot(self, snapshot_id: str, payload: bytes) -> None:
        """Upload a snapshot file: the last object of a snapshot."""
        try:
            self.backend.put_bytes(f"snapshots/{snapshot_id}.json", payload)
        except BackendError as exc:
            raise _store_error(exc) from exc

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


def _pack_key(pack: str) -> str:
    return f"packs/{pack[:2]}/{pack}.pack"


def _index_key(pack: str) -> str:
    return f"index/{pack}.idx"


def spec_from(url: str, options: S3Options | None) -> RemoteSpec:
    o = options or S3Options()
    return RemoteSpec(url=url, endpoint=o.endpoint, region=o.region, path_style=o.path_style,
                      concurrency=o.concurrency)
