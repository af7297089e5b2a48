"""Sending a run's packs to the bucket as soon as each is sealed in staging (an S3 store), so that step 5
has only the rest to send: a snapshot into a bucket then takes about the longer of reading and sending,
not their sum (restic and kopia upload while they back up, too).

When: only while the run holds its shared lock in the bucket, taken at step 2 (``engine/_writing_lock.py``).
Until the snapshot file is written, a pack sent early is referenced by nothing in the bucket, and the lock
is what keeps a prune on another machine from deleting it. A run whose lock was deferred (the bucket did
not answer at its start) sends nothing before step 5, nor while the bucket is unconfirmed or unreachable.

How: each pack as step 5 sends it (:meth:`Remote.upload_pack`: the pack, then its index, then the staged
copy is dropped), :attr:`Remote.concurrency` at a time, on threads of their own. Step 5 first stops them
(:meth:`EarlyUploads.stop`): packs not started stay staged, and it waits for those in flight, so it then
counts exactly what is left and sends no pack twice.

Failures: the first one ends early sending for the run: its packs stay staged, and step 5 sends them with
its retries and waits (the bucket unreachable: "store unreachable, retrying in N s"). When the run cannot
succeed anyway (credentials refused, bucket full), it ends at its next chunk instead, with that error
(``StoreWriter.check_early_uploads``), rather than after reading the whole folder. A run
cancelled meanwhile stops them the same way; a pack it sent stays in the bucket unreferenced, as after a
run killed in step 5, until a prune removes it or a later run re-uses its blobs.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import TYPE_CHECKING

from ._errors import StoreError

if TYPE_CHECKING:
    from ._remote import Remote

__all__ = ["EarlyUploads"]
log = logging.getLogger("syncsnapd.store")


class EarlyUploads:
    """The packs of one run sent to the bucket as they are sealed. Thread-safe."""

    def __init__(self, remote: Remote) -> None:
        self._remote = remote
        self._stopped = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(remote.concurrency,
                                                               thread_name_prefix="syncsnap-upload-early")
        self._lock = threading.Lock()
        self.sent_bytes = 0  # of packs and their indexes (the staging bound counts them as gone)
        self.failure: StoreError | None = None

    def submit(self, pack: str) -> None:
        """Send ``pack`` (sealed and indexed in staging) soon, unless stopped or the bucket is in doubt."""
        if self._stopped.is_set() or not self._remote.ready:
            return
        try:
            self._executor.submit(self._send, pack)
        except RuntimeError:
            pass  # stopped meanwhile: step 5 sends it

    def _count(self, objects: int, nbytes: int) -> None:
        with self._lock:
            self.sent_bytes += nbytes

    def _send(self, pack: str) -> None:
        if self._stopped.is_set():
            return
        try:
            self._remote.upload_pack(pack, self._count, self._stopped)
        except StoreError as exc:
            self.failure = exc
            self._stopped.set()
            log.info("sending pack %s early failed (%s); step 5 sends what is staged", pack, exc)

    def stop(self) -> None:
        """Start no more uploads and wait for those in flight (each ends with its object sent, or failed)."""
        self._stopped.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
