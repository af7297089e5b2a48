"""Where an S3-compatible store is and how to reach it: ``[daemon.s3]``'s (or a project's ``s3``)
options, the ``s3://`` URL, and the local directory of each bucket's store. Pure, no I/O; the configuration loader (``_config.py``)
parses the keys into these.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ._sizes import DEFAULT_STAGING_MAX

# botocore's own retries ("standard" mode: exponential backoff with jitter, 1 s base for throttling such
# as 503 SlowDown, 50 ms for transient errors; honours Retry-After). Per request.
BOTOCORE_ATTEMPTS = 5
# Our retries around a whole operation (an upload that botocore gave up on, a 429 botocore does not
# count as throttling): waits in seconds before each further attempt. Bounded, so a store that is down
# fails the run within about a minute with store_unreachable instead of hanging it.
RETRY_DELAYS: tuple[float, ...] = (1.0, 4.0, 10.0)
# Time limits of one request (seconds): connecting, and waiting for a response or the next bytes.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible service (``[daemon.s3]``, or a project's own ``s3`` table).

    ``endpoint``: the service's URL (``https://s3.eu-central-003.backblazeb2.com``,
    ``http://127.0.0.1:9000``); None for AWS itself. ``path_style``: address buckets as
    ``endpoint/bucket/key`` rather than ``bucket.endpoint/key`` (MinIO, Ceph and most self-hosted
    services need it). ``concurrency``: uploads in flight at once. ``profile``: the AWS shared-credentials
    profile whose credentials sign the requests (None: the standard chain), so that two stores can use
    two accounts.
    """

    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    concurrency: int = 4
    profile: str | None = None
    # The bounds default to this module's constants as they are when the options are made (tests
    # shorten them for a store that is down).
    botocore_attempts: int = field(default_factory=lambda: BOTOCORE_ATTEMPTS)
    retry_delays: tuple[float, ...] = field(default_factory=lambda: RETRY_DELAYS)
    connect_timeout: float = field(default_factory=lambda: CONNECT_TIMEOUT)
    read_timeout: float = field(default_factory=lambda: READ_TIMEOUT)
    staging_max: int = DEFAULT_STAGING_MAX  # bytes staged while the bucket is unreachable (_sizes.py)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, ``some/prefix/``); the prefix may be empty.

    Raises:
        ValueError: not an s3:// URL with a bucket name.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket = parts.netloc
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", bucket):
        raise ValueError(f"{bucket!r} is not a valid bucket name")
    prefix = parts.path.strip("/")
    if any(p in (".", "..") for p in prefix.split("/")) or "//" in parts.path.strip("/"):
        raise ValueError(f"{url!r}: the prefix has empty, '.' or '..' parts")
    return bucket, (prefix + "/" if prefix else "")


def staging_dir(state_dir: Path, url: str) -> Path:
    """The local directory of the S3 store at ``url``: ``<state_dir>/s3/<bucket>-<prefix>``."""
    bucket, prefix = parse_s3_url(url)
    name = "-".join([bucket, *[p for p in prefix.split("/") if p]])
    return state_dir / "s3" / name


def store_location(store: Path, store_url: str | None) -> str:
    """A store as users name it, and the key that tells stores apart: its URL, or its directory."""
    return store_url if store_url is not None else os.path.realpath(store)
