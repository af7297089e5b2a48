"""The object layer under an S3 store: where its durable objects live when they are not local.

A :class:`Backend` holds the store's immutable, content-addressed objects under keys such as
``config.json``, ``packs/ab/<id>.pack``, ``index/<id>.idx`` and ``snapshots/<id>.json``. It is small and
blocking on purpose: every method is called from a worker thread, and every method is thread-safe.
``_remote.py`` is its one user; a local store has no backend: its directory *is* the store, written by
``_files.py`` and ``_writer.py`` (streamed packs, a durable-step hook for the crash tests, directory
fsyncs batched by prune), which a whole-object interface could not express without copying every pack.

:class:`S3Backend`: a bucket (and key prefix) on S3 or an S3-compatible service (MinIO, Backblaze B2,
Cloudflare R2, Wasabi, Ceph, ...), through **boto3** in worker threads. Measured against the
alternatives: boto3 is the maintained reference client, signs requests itself (no hand-written SigV4),
does multipart through s3transfer and retries with backoff; its blocking calls release the GIL while they
wait on the network, so a few worker threads upload in parallel.

Errors are :class:`BackendError` with a ``code`` the daemon reports as is (docs/api.md):
``store_unreachable`` (no connection, timeouts, 5xx or throttling that outlasted the retries),
``store_auth`` (no or wrong credentials, access denied), ``store_full`` (quota, entity too large,
507 Insufficient Storage); :class:`ObjectMissing` (``not_found``) for a key that does not exist.

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, the credentials file ``~/.aws/credentials`` or ``AWS_SHARED_CREDENTIALS_FILE``, the
config file, instance roles), or, when the store's options name a ``profile``, from that profile of the
credentials and config files (botocore then ignores the ``AWS_ACCESS_KEY_ID`` variables), so that two
stores of one daemon can use two accounts. They are never logged: descriptions name endpoint, bucket and
prefix only, and error messages are scrubbed of the key id and secret before they leave this module.
"""

from __future__ import annotations

import io
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..core import S3Options, parse_s3_url
from ._errors import BackendError, ObjectMissing

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["Backend", "BackendError", "ObjectMissing", "Progress", "S3Backend", "S3Options", "parse_s3_url"]

log = logging.getLogger("syncsnapd.backend")

# Called with the number of bytes just sent (negative when a retried part rewinds).
Progress = Callable[[int], None]
T = TypeVar("T")

# Objects up to this size go in one PUT: the store's packs are ~16 MiB, and one request per pack is
# fewer round trips than three for a multipart upload (create, part, complete). Larger objects go in
# 16 MiB parts (restic's minio-go client uses the same part size), each retried on its own.
MULTIPART_THRESHOLD = 32 << 20
MULTIPART_CHUNKSIZE = 16 << 20
# More keys than this under one top-level folder (packs/ab/...): list that folder once instead of each
# subfolder (one LIST returns up to 1,000 keys; a HEAD per key is a round trip each).
_LIST_PARENT_AFTER = 8

_AUTH_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AuthorizationHeaderMalformed", "AllAccessDisabled", "AccountProblem",
    "InvalidSecurity", "UnauthorizedAccess", "Forbidden", "InvalidClientTokenId", "MissingSecurityHeader",
})
_FULL_CODES = frozenset({
    "EntityTooLarge", "QuotaExceeded", "InsufficientStorage", "StorageQuotaExceeded", "XMinioStorageFull",
    "ServiceQuotaExceeded", "StorageFull", "MaxMessageLengthExceeded", "NotEnoughSpace",
})
_THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled", "ServiceUnavailable",
    "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AIDA)[0-9A-Z]{12,}\b")


class Backend(Protocol):
    """The durable objects of a store. Blocking; thread-safe; call from worker threads."""

    @property
    def description(self) -> str:
        """Where the objects are, for messages (never with credentials)."""

    def put_file(self, key: str, local_path: Path, progress: Progress | None = None) -> None:
        """Store the file's bytes under ``key`` (atomically: readers see all or nothing)."""

    def put_bytes(self, key: str, data: bytes, progress: Progress | None = None) -> None:
        """Store ``data`` under ``key`` (atomically)."""

    def get(self, key: str) -> bytes:
        """The whole object. Raises :class:`ObjectMissing`."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the object). Raises :class:`ObjectMissing`."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with ``prefix``, in key order."""

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` exist, checked in batches (a listing per folder, not a request per key)."""

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it does not exist."""

    def close(self) -> None:
        """Release connections. Idempotent."""


def _parents(keys: Iterable[str]) -> dict[str, set[str]]:
    """The listing prefixes that cover ``keys``: their folders, or the top-level folder when many
    folders below it are needed (``packs/`` instead of 200 ``packs/ab/``)."""
    by_parent: dict[str, set[str]] = {}
    for k in keys:
        by_parent.setdefault(k.rpartition("/")[0] + "/" if "/" in k else "", set()).add(k)
    tops: dict[str, list[str]] = {}
    for parent in by_parent:
        top = parent.split("/", 1)[0] + "/" if parent else ""
        tops.setdefault(top, []).append(parent)
    out: dict[str, set[str]] = {}
    for top, parents in tops.items():
        if len(parents) > _LIST_PARENT_AFTER:
            out[top] = set().union(*(by_parent[p] for p in parents))
        else:
            for p in parents:
                out[p] = by_parent[p]
    return out


# --- S3 ---------------------------------------------------------------------------------------------

class S3Backend:
    """Objects in ``bucket`` under ``prefix`` on an S3-compatible service, via boto3.

    Args:
        bucket, prefix: where (``prefix`` ends in ``/`` or is empty).
        options: endpoint, region, addressing style, concurrency and retry bounds.
        create_bucket: create the bucket if it does not exist (a writable store's first open).
    """

    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        import boto3
        import boto3.s3.transfer
        import botocore.config
        import botocore.exceptions

        self.bucket = bucket
        self.prefix = prefix
        self.options = options = options or S3Options()
        try:
            session = boto3.session.Session(profile_name=options.profile, region_name=options.region)
        except botocore.exceptions.ProfileNotFound:
            raise BackendError("store_auth", f"no profile {options.profile!r} in the AWS credentials or config "
                               "file (~/.aws/credentials, or AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE), "
                               f"for {f's3://{bucket}/{prefix}'.rstrip('/')}") from None
        # Resolved once so messages can be scrubbed of them; None when there are none (checked at the
        # first request, which then fails with store_auth).
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
        self._secrets = [s for s in ((frozen.access_key, frozen.secret_key, frozen.token) if frozen else ())
                         if s and len(s) >= 4]
        config = botocore.config.Config(
            region_name=options.region or "us-east-1",
            retries={"mode": "standard", "max_attempts": options.botocore_attempts},
            s3={"addressing_style": "path" if options.path_style else "auto"},
            connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
            max_pool_connections=max(10, options.concurrency * 4),
            # Checksums only when the service requires them: several S3-compatible services reject
            # the newer CRC32 trailers boto3 sends by default.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self._client: S3Client = session.client("s3", endpoint_url=options.endpoint, config=config)
        self._transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=options.concurrency, use_threads=True,
        )

    @property
    def description(self) -> str:
        where = self.options.endpoint or "AWS S3"
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") + f" at {where}"

    # --- errors and retries ----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return _ACCESS_KEY_RE.sub("***", text)

    def _translate(self, exc: Exception, what: str, key: str | None = None) -> BackendError:
        """A botocore/s3transfer error as a BackendError with a code and a scrubbed message."""
        import botocore.exceptions as bx

        where = self.description
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            if self.options.profile is not None:
                return BackendError("store_auth", f"no credentials for {where} in the profile "
                                    f"{self.options.profile!r} of the AWS credentials or config file")
            return BackendError("store_auth", f"no credentials for {where}: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a credentials file")
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = self._scrub(str(err.get("Message", "")) or code)
            if code in _MISSING_CODES and key is not None:
                return ObjectMissing(key)
            if code in _AUTH_CODES or status in (401, 403):
                return BackendError("store_auth", f"{where} refused the credentials ({code or status}: "
                                    f"{message})")
            if code in _FULL_CODES or status == 507:
                return BackendError("store_full", f"{where} has no room for more data ({code or status}: "
                                    f"{message})")
            if code == "NoSuchBucket":
                return BackendError("store_unreachable", f"the bucket {self.bucket} does not exist at "
                                    f"{self.options.endpoint or 'AWS S3'}")
            if code in _THROTTLE_CODES or status in (429, 500, 502, 503, 504):
                return BackendError("store_unreachable", f"{where} kept failing to {what} ({code or status}: "
                                    f"{message}); gave up after retrying")
            return BackendError("store_error", f"{where}: cannot {what} ({code or status}: {message})")
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
            return BackendError("store_unreachable", f"cannot reach {where}: {self._scrub(str(exc))}")
        if isinstance(exc, OSError):
            return BackendError("store_error", f"cannot read a file to upload to {where}: {exc.strerror or exc}")
        return BackendError("store_error", f"{where}: cannot {what}: {self._scrub(str(exc))}")

    def _retry(self, what: str, key: str | None, fn: Callable[[], T], rewind: Callable[[], None] | None = None
               ) -> T:
        """Run ``fn``; on throttling or a transient failure that botocore gave up on, wait and try again
        (bounded by ``options.retry_delays``). Authentication, quota and missing keys are not retried."""
        import boto3.exceptions
        import s3transfer.exceptions

        delays = list(self.options.retry_delays)
        while True:
            try:
                return fn()
            except (boto3.exceptions.S3UploadFailedError, s3transfer.exceptions.S3UploadFailedError) as exc:
                # s3transfer wraps the ClientError of a failed part in a string; recover the original.
                cause = exc.__context__ if isinstance(exc.__context__, Exception) else exc
                error = self._translate(cause, what, key)
            except Exception as exc:  # noqa: BLE001 - translated and re-raised below
                error = self._translate(exc, what, key)
            if error.code != "store_unreachable" or not delays:
                raise error from None
            delay = delays.pop(0) * (0.5 + random.random() / 2)
            log.warning("%s; retrying in %.1f s", error.message, delay)
            if rewind is not None:
                rewind()
            time.sleep(delay)

    def _key(self, key: str) -> str:
        return self.prefix + key

    # --- operations ------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (as restic's ``init`` does)."""
        def head() -> None:
            self._client.head_bucket(Bucket=self.bucket)
        try:
            self._retry("open the bucket", None, head)
            return
        except BackendError as exc:
            if "does not exist" not in exc.message and exc.code != "store_error":
                raise
        region = self.options.region
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._retry("create the bucket", None, lambda: self._client.create_bucket(**kwargs))

    def put_file(self, key: str, local_path: Path, progress: Progress | None = None) -> None:
        sent = [0]

        def count(n: int) -> None:
            sent[0] += n
            if progress is not None:
                progress(n)

        def rewind() -> None:
            if progress is not None and sent[0]:
                progress(-sent[0])
            sent[0] = 0

        self._retry("upload", key, lambda: self._client.upload_file(
            str(local_path), self.bucket, self._key(key), Config=self._transfer, Callback=count), rewind)

    def put_bytes(self, key: str, data: bytes, progress: Progress | None = None) -> None:
        if len(data) > MULTIPART_THRESHOLD:
            sent = [0]

            def count(n: int) -> None:
                sent[0] += n
                if progress is not None:
                    progress(n)

            def rewind() -> None:
                if progress is not None and sent[0]:
                    progress(-sent[0])
                sent[0] = 0

            self._retry("upload", key, lambda: self._client.upload_fileobj(
                io.BytesIO(data), self.bucket, self._key(key), Config=self._transfer, Callback=count), rewind)
            return
        self._retry("upload", key, lambda: self._client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data))
        if progress is not None:
            progress(len(data))

    def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return self._retry("download", key, fetch)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""

        def fetch() -> bytes:
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key),
                                               Range=f"bytes={offset}-{offset + length - 1}")
            except Exception as exc:
                import botocore.exceptions as bx
                if isinstance(exc, bx.ClientError) and exc.response.get("Error", {}).get("Code") in (
                        "InvalidRange", "416"):
                    return b""
                raise
            return resp["Body"].read()
        return self._retry("download", key, fetch)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        def collect() -> list[tuple[str, int]]:
            out: list[tuple[str, int]] = []
            paginator = self._client.get_paginator("list_objects_v2")
            cut = len(self.prefix)
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    out.append((obj["Key"][cut:], int(obj["Size"])))
            return out
        # Collected whole, so a retry after a failed page starts over rather than yielding duplicates.
        return iter(sorted(self._retry("list", None, collect)))

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for parent, wanted in _parents(keys).items():
            found.update(k for k, _ in self.list(parent) if k in wanted)
        return found

    def delete(self, key: str) -> None:
        self._retry("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def close(self) -> None:
        self._client.close()
