"""Whether the bucket of an S3 store answers: the state health and ``STATUS=`` show, and the local side
of a store opened while its bucket was unreachable (``_remote.py``, "Offline at start").

* :class:`Reachability`: the outcome of the last request that needed the bucket; :class:`Link` keeps it
  (thread-safe) and logs each change once.
* :func:`open_offline`: the store directory as a store of its own while the bucket does not answer: its
  cached metadata as it is, or, for a store never opened here, a new store's ``config.json`` (what the
  bucket would get) with the :data:`PENDING` marker, so the store is created in the bucket at the first
  contact (``Remote.confirm``).
* :func:`staged_bytes`: what waits in staging for the bucket (bounded by ``daemon.s3.staging_max``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core import utc_now
from ._errors import StoreError
from ._format import new_config

__all__ = ["PENDING", "Link", "Reachability", "UnreachableWait", "open_offline", "staged_bytes"]

log = logging.getLogger("syncsnapd.remote")

# Marks a store directory whose config.json was written here while the bucket was unreachable at the first
# start: the store is created in the bucket, with this config.json, at the first contact.
PENDING = "remote-pending"

# Called (in the uploading thread) when the bucket is unreachable during step 5, with the error and the
# number of attempts so far (0 first); returns when it is time to try again, or raises to stop.
UnreachableWait = Callable[[StoreError, int], None]


@dataclass(frozen=True)
class Reachability:
    """Whether the bucket answered the last request that needed it (health, ``STATUS=``)."""

    reachable: bool = True
    code: str | None = None  # store_unreachable, store_auth, store_full, store_error: why not
    message: str | None = None
    since: str | None = None  # when it stopped answering (RFC 3339), while unreachable


class Link:
    """The reachability of one bucket, as last seen. Thread-safe."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.state = Reachability()
        self._lock = threading.Lock()

    def note(self, error: StoreError | None) -> None:
        """Record the outcome of a request to the bucket; log each change once."""
        with self._lock:
            before = self.state
            if error is None:
                if before.reachable:
                    return
                self.state = Reachability()
            else:
                since = before.since if not before.reachable and before.since else utc_now()
                self.state = Reachability(False, error.code, error.message, since)
        if error is None:
            log.info("the store at %s answers again", self.description)
        elif before.reachable:
            log.warning("the store at %s is unreachable (%s): %s", self.description, error.code, error.message)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def open_offline(root: Path, description: str, create: Callable[[], dict[str, bytes]] | None = None) -> None:
    """Make ``root`` openable while the bucket does not answer: its cache as it is, or a new store's
    config.json (``create()``'s objects: an encrypted store's key files and config.json) marked
    :data:`PENDING` when no store was ever opened here."""
    for sub in ("index", "snapshots"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if not (root / "config.json").exists():
        # The marker first: a crash between the two leaves a marker and no config, which is redone here.
        _write(root / PENDING, b"")
        objects = create() if create is not None else {"config.json": new_config()}
        for name, data in objects.items():
            if name != "config.json":
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                _write(root / name, data)
        _write(root / "config.json", objects["config.json"])
        log.warning("%s is unreachable and no store was ever opened here: a new store is made in %s and will "
                    "be created in the bucket once it answers", description, root)
    log.warning("opened the store from its local cache in %s; snapshots are staged there until %s answers",
                root, description)


def staged_bytes(root: Path) -> int:
    """Bytes of the packs staged in ``root`` (not known to be in the bucket)."""
    total = 0
    for pack in (root / "packs").glob("*/*.pack"):
        with contextlib.suppress(FileNotFoundError):
            total += pack.stat().st_size
    return total
