"""The store's errors: every one is a :class:`~syncsnapd.core.SyncsnapdError` with a stable ``code``.

* :class:`StoreError` (``store_error``): the store cannot be opened, read or written. Raised with
  ``store_unreachable`` / ``store_auth`` / ``store_full`` when the bucket of an S3 store is the cause
  (:func:`error_code` tells those apart).
* :class:`UnknownSnapshotError` (``unknown_snapshot``) and :class:`CorruptDataError` (``corrupt_data``).
* :class:`StoreLocked` (``store_locked``): another process holds a conflicting lock (``_locks.py``).
* :class:`BackendError`: what the object layer (``_backend.py``) raises, with the same remote codes, or
  ``not_found`` (:class:`ObjectMissing`); ``_remote.py`` turns it into a :class:`StoreError`.
"""

from __future__ import annotations

import errno

from ..core import SyncsnapdError

__all__ = ["REMOTE_CODES", "BackendError", "CorruptDataError", "ObjectMissing", "PackMissing", "StoreError",
           "StoreLocked", "UnknownSnapshotError", "error_code"]

# The codes of failures whose cause is the bucket of an S3 store (docs/api.md).
REMOTE_CODES = frozenset({"store_unreachable", "store_auth", "store_full"})


class StoreError(SyncsnapdError):
    """The store cannot be opened, read or written."""

    code = "store_error"


class UnknownSnapshotError(StoreError):
    """No snapshot with the given id exists in the store."""

    code = "unknown_snapshot"


class CorruptDataError(StoreError):
    """Stored data does not match its hash or cannot be decoded."""

    code = "corrupt_data"


class StoreLocked(StoreError):
    """Another process holds a conflicting lock on the store (see ``_locks.py``); the message says who."""

    code = "store_locked"


class PackMissing(StoreError):
    """A pack named by the index is not on disk (deleted by a prune since the index was read, or lost)."""

    def __init__(self, pack: str) -> None:
        super().__init__(f"pack {pack} is missing from the store")
        self.pack = pack


class BackendError(SyncsnapdError):
    """A backend operation failed. ``code``: ``store_unreachable``, ``store_auth``, ``store_full``,
    ``not_found`` or ``store_error``; the message never holds credentials."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class ObjectMissing(BackendError):
    """The key does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__("not_found", f"{key} does not exist")
        self.key = key


def error_code(exc: BaseException, default: str = "store_error") -> str:
    """The docs/api.md code a failed run reports for a store error: ``store_unreachable``, ``store_auth``
    or ``store_full`` when the bucket of an S3 store is the cause, ``store_full`` when the local disk or
    quota is (ENOSPC, EDQUOT anywhere in the chain of causes), else ``default``."""
    code = getattr(exc, "code", None)
    if isinstance(exc, StoreError) and (code in REMOTE_CODES or isinstance(exc, StoreLocked)):
        return str(code)
    cause: BaseException | None = exc
    for _ in range(10):  # a chain of causes is short; never loop on a cycle
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return "store_full"
        cause = cause.__cause__ or cause.__context__
    return default
