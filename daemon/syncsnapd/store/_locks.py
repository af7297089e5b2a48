"""Lock objects: how several processes, on one machine or several, share a store (after restic's locks).

Where they are used
===================

A store whose writers may be on different machines, an S3 store, or a local store whose directory is on a
network filesystem (NFS, SMB/CIFS, Ceph, AFS, 9p, Lustre, GFS2, OCFS2, sshfs...; told apart by ``statfs``'s
``f_type``), holds one object per lock under ``locks/<64 hex>`` (random names). A store on a local disk
has none: one daemon holds its ``flock`` (see ``_repository.py``) and coordinates its own runs and prunes
in memory (``_index.py``, "Pruning while writing").

* **shared**: taken by a snapshot run for the whole of its work on the store, from step 2 (reading the
  previous snapshot) to the snapshot file's upload, and then released. So another machine can prune
  between runs, and a paused run keeps it. A run finding an exclusive lock waits for it, trying again
  every 5 seconds for up to 30 minutes, then fails with ``store_locked`` (``engine/_writing_lock.py``).
* **exclusive**: taken by forget, prune and garbage collection; it conflicts with every other lock. A
  prune does not wait: it fails at once with ``store_locked``, naming who holds the lock.

Locks of the same open store (one daemon) never conflict with each other: a daemon's own runs and its
prune are coordinated in memory (the writers' claims). Each kind is held once per open store, counted:
the shared lock object exists while at least one of its runs is working.

Taking a lock (restic's order, which closes the race between two processes taking conflicting locks at
the same moment): look for conflicting locks; write our own; look again, and if a conflicting one
appeared meanwhile, delete ours and fail (or wait). At worst both back off.

A held lock is **refreshed** (its ``time`` rewritten) every :data:`REFRESH_EVERY` seconds by a thread of
its own. A lock is **stale**, and then blocks nobody and is removed by ``syncsnapd unlock``, when its
``time`` is more than :data:`STALE_AFTER` old, or at once when it was taken on this host by a process
that no longer exists. A holder whose refreshes fail for long enough that others may think its lock
stale stops before it deletes anything (:meth:`HeldLock.verify`).

Format
======

A lock object is one JSON document (UTF-8), encoded and decoded only by :func:`encode_lock` and
:func:`decode_lock`, called only by :meth:`StoreLocks.seal` and :meth:`StoreLocks.unseal` (where an
encrypted store seals and opens it)::

    {"version": 1, "exclusive": false, "purpose": "snapshot", "host": "laptop", "pid": 4242,
     "username": "ann", "created": "2026-12-07T14:00:00.123456Z", "time": "2026-12-07T14:05:00.123456Z"}

``time`` is the last refresh (UTC); ``created`` when it was taken. An object that is not such a document
blocks like a live lock (it might be a newer version's) until ``syncsnapd unlock`` removes it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ._crypto import AD_LOCK
from ._errors import CorruptDataError, StoreError, StoreLocked
from ._lockdirs import PREFIX, BucketLocks, DirectoryLocks, LockDir, network_filesystem

if TYPE_CHECKING:
    from ._backend import Backend
    from ._crypto import Crypto
    from ._repository import Store

__all__ = ["REFRESH_EVERY", "RETRY_EVERY", "STALE_AFTER", "WRITER_WAIT", "BucketLocks", "DirectoryLocks", "HeldLock",
           "LockInfo", "StoreLocks", "decode_lock", "encode_lock", "network_filesystem", "pruning_lock",
           "writing_lock"]

log = logging.getLogger("syncsnapd.locks")

# restic's figures (internal/restic/lock.go): a lock not refreshed for 30 minutes is stale, and holders
# refresh every 5 minutes, so a lock goes stale only after six missed refreshes.
STALE_AFTER = 30 * 60.0
REFRESH_EVERY = 5 * 60.0
# A snapshot run finding the store locked by a prune polls this often, for at most this long.
RETRY_EVERY = 5.0
WRITER_WAIT = 30 * 60.0
LOCK_VERSION = 1

# --- the format ---------------------------------------------------------------------------------------

def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(s: object) -> float:
    if not isinstance(s, str) or not s.endswith("Z"):
        raise ValueError("not a UTC time")
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class LockInfo:
    """One lock object. ``name``: its name under ``locks/``; ``time``/``created``: seconds since the epoch."""

    name: str
    exclusive: bool
    purpose: str
    host: str
    pid: int
    username: str
    created: float
    time: float

    def stale(self, now: float, host: str) -> bool:
        """Older than :data:`STALE_AFTER`, or taken on ``host`` (this one) by a process that is gone."""
        if now - self.time > STALE_AFTER:
            return True
        return self.host == host and not _pid_alive(self.pid)

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (f"{kind} lock of a {self.purpose} by {self.username}@{self.host} (pid {self.pid}), taken "
                f"{_iso(self.created)[:19]}Z, refreshed {_iso(self.time)[:19]}Z")


def encode_lock(info: LockInfo) -> bytes:
    """The bytes of a lock object (the one place they are made)."""
    doc = {"version": LOCK_VERSION, "exclusive": info.exclusive, "purpose": info.purpose, "host": info.host,
           "pid": info.pid, "username": info.username, "created": _iso(info.created), "time": _iso(info.time)}
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


def decode_lock(name: str, data: bytes) -> LockInfo:
    """A lock object read back. Raises :class:`CorruptDataError` naming what is wrong."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
            raise ValueError(f"not a version {LOCK_VERSION} lock")
        pid = doc["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise ValueError("bad pid")
        for key in ("purpose", "host", "username"):
            if not isinstance(doc[key], str):
                raise ValueError(f"bad {key}")
        if not isinstance(doc["exclusive"], bool):
            raise ValueError("bad exclusive flag")
        return LockInfo(name, doc["exclusive"], doc["purpose"], doc["host"], pid, doc["username"],
                        _parse_iso(doc["created"]), _parse_iso(doc["time"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"lock object {PREFIX}{name} is not a syncsnap lock ({exc})") from None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# --- taking, holding, releasing ---------------------------------------------------------------------------

class HeldLock:
    """A lock object of ours, refreshed by a thread every ``refresh_every`` seconds until released."""

    def __init__(self, locks: StoreLocks, info: LockInfo, refresh_every: float) -> None:
        self._locks = locks
        self.info = info
        self._stop = threading.Event()
        self._last_ok = time.monotonic()
        self._lost = False  # removed by someone else (`syncsnapd unlock --remove-all`)
        self._thread = threading.Thread(target=self._refresher, args=(refresh_every,), daemon=True,
                                        name=f"syncsnap-lock-{info.name[:8]}")
        self._thread.start()

    def _refresher(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.refresh()
            except StoreError as exc:
                log.warning("cannot refresh the store's %s lock (%s); retrying in %.0f s",
                            "exclusive" if self.info.exclusive else "shared", exc, every)

    def refresh(self) -> None:
        """Rewrite the lock object with the current time, unless it was removed meanwhile (then it stays
        removed, and :meth:`verify` says so). Raises :class:`StoreError`."""
        if self._lost or self.info.name not in self._locks.dir.names():
            self._lost = True
            log.warning("the store's lock %s%s was removed by someone else; not taking it again", PREFIX,
                        self.info.name)
            return
        info = replace(self.info, time=self._locks.clock())
        self._locks.dir.put(info.name, self._locks.seal(info))
        self.info = info
        self._last_ok = time.monotonic()

    def verify(self) -> None:
        """Raise :class:`StoreLocked` if others may no longer see this lock as held: it was not refreshed
        for most of :data:`STALE_AFTER`, or its object is gone (``syncsnapd unlock --remove-all``)."""
        if time.monotonic() - self._last_ok > STALE_AFTER - 2 * REFRESH_EVERY:
            raise StoreLocked(f"the store's lock could not be refreshed since {_iso(self.info.time)[:19]}Z; "
                              "another machine may think it stale: stopping before anything is deleted")
        if self._lost or self.info.name not in self._locks.dir.names():
            self._lost = True
            raise StoreLocked(f"this process's lock on {self._locks.dir.description} was removed (by `syncsnapd "
                              "unlock --remove-all`?): stopping before anything is deleted")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self._locks.dir.delete(self.info.name)
        except StoreError as exc:
            # Removed at this store's next lock (it is ours meanwhile, blocking nothing of ours), else stale
            # after STALE_AFTER.
            self._locks.abandoned.add(self.info.name)
            log.warning("cannot remove the store's lock %s%s (%s); removing it at the next run, or it goes stale "
                        "after %d minutes", PREFIX, self.info.name, exc, STALE_AFTER // 60)


class StoreLocks:
    """The lock objects of one open store (see the module docstring). Thread-safe.

    Args:
        dir: where the lock objects are.
        clock: seconds since the epoch (injected by tests); ``sleep`` likewise.
        host: this machine's name as locks record it (the pid check applies only to locks of this host).
    """

    def __init__(self, dir: LockDir, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, host: str | None = None,
                 refresh_every: float = REFRESH_EVERY) -> None:
        self.dir = dir
        self.clock = clock
        self._sleep = sleep
        self.host = host or os.uname().nodename  # gethostname(); socket is not for the store (lint-imports)
        self.refresh_every = refresh_every
        # An encrypted store's cipher: its lock objects are sealed like every other object (set by Store).
        self.crypto: Crypto | None = None
        self._mutex = {False: threading.Lock(), True: threading.Lock()}
        self._slots: dict[bool, tuple[HeldLock, int]] = {}
        self._state = threading.Lock()
        # Our lock objects whose removal failed (the bucket was unreachable): removed at the next take.
        self.abandoned: set[str] = set()

    @classmethod
    def for_store(cls, root: Path, backend: Backend | None) -> StoreLocks | None:
        """The locks of the store at ``root``: in its bucket (``backend``), in ``root/locks`` when ``root``
        is on a network filesystem, else None (a local disk: ``flock`` alone)."""
        if backend is not None:
            return cls(BucketLocks(backend))
        kind = network_filesystem(root)
        if kind is None:
            return None
        log.info("store %s is on a network filesystem (%s): using lock objects in %s/locks", root, kind, root)
        return cls(DirectoryLocks(root))

    # --- the bytes of a lock object: the one place an encrypted store seals and opens them ----------------

    def seal(self, info: LockInfo) -> bytes:
        data = encode_lock(info)
        if self.crypto is None:
            return data
        return bytes(self.crypto.seal(data, AD_LOCK + info.name.encode()))

    def unseal(self, name: str, data: bytes) -> LockInfo:
        """Raises :class:`CorruptDataError`."""
        if self.crypto is not None:
            data = self.crypto.open(data, AD_LOCK + name.encode(), "the lock object")
        return decode_lock(name, data)

    # --- reading -------------------------------------------------------------------------------------

    def read_all(self) -> tuple[list[LockInfo], list[str]]:
        """Every lock object: (decoded ones, names of those that cannot be decoded), in name order."""
        good: list[LockInfo] = []
        bad: list[str] = []
        for name in self.dir.names():
            try:
                data = self.dir.get(name)
            except FileNotFoundError:
                continue  # released meanwhile
            try:
                good.append(self.unseal(name, data))
            except CorruptDataError:
                bad.append(name)
        return good, bad

    def owned(self) -> set[str]:
        with self._state:
            return {held.info.name for held, _ in self._slots.values()} | self.abandoned

    def is_stale(self, info: LockInfo) -> bool:
        return info.stale(self.clock(), self.host)

    def holds_exclusive(self) -> bool:
        with self._state:
            return True in self._slots

    def _conflicts(self, exclusive: bool, new: str = "") -> list[str]:
        mine = self.owned() | {new}
        good, bad = self.read_all()
        out = [f"an unreadable lock object {PREFIX}{name}" for name in bad if name not in mine]
        for info in good:
            if info.name in mine or self.is_stale(info):
                continue
            if exclusive or info.exclusive:
                out.append(info.describe())
        return out

    # --- taking --------------------------------------------------------------------------------------

    def _try_take(self, exclusive: bool, purpose: str) -> tuple[HeldLock | None, list[str]]:
        for name in sorted(self.abandoned):
            self.dir.delete(name)
            self.abandoned.discard(name)
        conflicts = self._conflicts(exclusive)
        if conflicts:
            return None, conflicts
        now = self.clock()
        info = LockInfo(secrets.token_hex(32), exclusive, purpose, self.host, os.getpid(), _username(), now, now)
        self.dir.put(info.name, self.seal(info))
        try:
            conflicts = self._conflicts(exclusive, info.name)
        except BaseException:
            self.dir.delete(info.name)
            raise
        if conflicts:
            self.dir.delete(info.name)
            return None, conflicts
        return HeldLock(self, info, self.refresh_every), []

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool, purpose: str, wait: float = 0.0,
             check: Callable[[], None] | None = None) -> Iterator[HeldLock]:
        """Hold a shared or exclusive lock while the block runs (counted: nested holds of one kind share
        one lock object).

        ``wait``: seconds to keep trying (every :data:`RETRY_EVERY`) while another process holds a
        conflicting lock; ``check()`` is called between tries and may raise to stop.

        Raises:
            StoreLocked: a conflicting lock is held (after ``wait``); the message says by whom.
            StoreError: the lock objects cannot be read or written.
        """
        held = self._acquire(exclusive, purpose, wait, check)
        try:
            yield held
        finally:
            self._release(exclusive)

    def _acquire(self, exclusive: bool, purpose: str, wait: float, check: Callable[[], None] | None
                 ) -> HeldLock:
        with self._mutex[exclusive]:
            with self._state:
                slot = self._slots.get(exclusive)
                if slot is not None:
                    self._slots[exclusive] = (slot[0], slot[1] + 1)
                    return slot[0]
            deadline = self.clock() + wait
            while True:
                held, conflicts = self._try_take(exclusive, purpose)
                if held is not None:
                    with self._state:
                        self._slots[exclusive] = (held, 1)
                    return held
                if self.clock() >= deadline:
                    what = "an exclusive" if exclusive else "a shared"
                    raise StoreLocked(f"cannot take {what} lock on {self.dir.description} for a {purpose}: it is "
                                      f"locked by {'; '.join(conflicts)}. If that process is gone, `syncsnapd "
                                      "unlock` removes its lock (it counts as stale after "
                                      f"{int(STALE_AFTER // 60)} minutes without refresh)")
                log.info("store %s is locked by %s; retrying in %.0f s", self.dir.description, conflicts[0],
                         RETRY_EVERY)
                self._sleep(RETRY_EVERY)
                if check is not None:
                    check()

    def _release(self, exclusive: bool) -> None:
        with self._state:
            held, count = self._slots[exclusive]
            if count > 1:
                self._slots[exclusive] = (held, count - 1)
                return
            del self._slots[exclusive]
        held.release()

    # --- unlock --------------------------------------------------------------------------------------

    def remove(self, *, everything: bool = False) -> tuple[list[str], list[LockInfo]]:
        """Remove the stale locks and the unreadable lock objects (``everything``: every lock but this
        process's own). Returns (descriptions of what was removed, live locks kept)."""
        mine = self.owned()
        good, bad = self.read_all()
        removed: list[str] = []
        kept: list[LockInfo] = []
        for name in bad:
            if name not in mine:
                self.dir.delete(name)
                removed.append(f"unreadable lock object {PREFIX}{name}")
        for info in good:
            if info.name in mine:
                continue
            if everything or self.is_stale(info):
                self.dir.delete(info.name)
                removed.append(("stale " if self.is_stale(info) else "") + info.describe())
            else:
                kept.append(info)
        return removed, kept


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# --- what a store's users call ---------------------------------------------------------------------------

@contextlib.contextmanager
def writing_lock(store: Store, *, check: Callable[[], None] | None = None, wait: float = WRITER_WAIT
                 ) -> Iterator[None]:
    """Hold the store's shared lock while a snapshot is written (nothing for a store without lock
    objects). Once it is held, the cached metadata of an S3 store is brought up to date with the bucket,
    so that blobs a prune elsewhere deleted meanwhile are not taken as stored."""
    locks = store.locks
    if locks is None:
        yield
        return
    with locks.hold(exclusive=False, purpose="snapshot", wait=wait, check=check):
        resync(store)
        yield


@contextlib.contextmanager
def pruning_lock(store: Store) -> Iterator[HeldLock | None]:
    """Hold the store's exclusive lock (forget, prune); fails at once if another process holds any lock.
    Once held, the cached metadata of an S3 store is brought up to date with the bucket (snapshots and
    indexes other machines wrote). Yields None for a store without lock objects."""
    locks = store.locks
    if locks is None:
        yield None
        return
    fresh = not locks.holds_exclusive()
    with locks.hold(exclusive=True, purpose="prune") as held:
        if fresh:
            resync(store)
        yield held


@contextlib.contextmanager
def checking_lock(store: Store) -> Iterator[None]:
    """Hold the store's shared lock while it is checked (nothing for a store without lock objects, or one
    this process holds exclusively), as restic's check does: a prune elsewhere cannot delete packs under
    the check, which would then report them missing. Fails at once while a prune holds the exclusive
    lock (StoreLocked, naming it). Once held, the cached metadata is brought up to date with the bucket,
    so the check verifies what is there now."""
    locks = store.locks
    if locks is None or locks.holds_exclusive():
        yield
        return
    with locks.hold(exclusive=False, purpose="check"):
        resync(store)
        yield


def resync(store: Store) -> None:
    """Bring the cached metadata of an S3 store up to date with its bucket, and the index and the
    snapshot list with the cache (a local store on a network filesystem: with its directory)."""
    if store.remote is not None:
        store.remote.refresh()
    store.index.refresh()
    store.index.drop_missing()
    store.catalog.refresh()
