"""Where an S3 store's local directory says its bucket is: ``remote.json`` (the URL, endpoint, region,
addressing style and the name of the credentials profile; never credentials), written by :func:`prepare`
and read by :func:`load_spec`; and the cache files ``_remote.py`` keeps there (:func:`write_cache_file`);
the keys of a pack and of an index in the bucket; a bucket's failure as the store error a run reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import S3Options, parse_s3_url
from ._errors import REMOTE_CODES, BackendError, StoreError

if TYPE_CHECKING:
    from ..core import DaemonConfig

__all__ = ["MARKER", "RemoteSpec", "load_spec", "prepare", "prepare_store", "spec_from", "write_cache_file"]

MARKER = "remote.json"


@dataclass(frozen=True)
class RemoteSpec:
    """What ``remote.json`` records: where the bucket is, and which credentials profile signs (its name,
never credentials)."""

    url: str
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    concurrency: int = 4
    profile: str | None = None

    def options(self) -> S3Options:
        return S3Options(endpoint=self.endpoint, region=self.region, path_style=self.path_style,
                         concurrency=self.concurrency, profile=self.profile)


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


def load_spec(root: Path) -> RemoteSpec | None:
    try:
        doc = json.loads((root / MARKER).read_bytes())
    except FileNotFoundError:
        return None
    return RemoteSpec(**{k: v for k, v in doc.items() if k in RemoteSpec.__dataclass_fields__})


def write_cache_file(path: Path, data: bytes) -> None:
    # Cache files only (the bucket is the durable copy): no fsync. A name that does not end in .idx or
    # .json while being written, so a reader listing the folder never sees half a file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def spec_from(url: str, options: S3Options | None) -> RemoteSpec:
    o = options or S3Options()
    return RemoteSpec(url=url, endpoint=o.endpoint, region=o.region, path_style=o.path_style,
                      concurrency=o.concurrency, profile=o.profile)


def _store_error(exc: BackendError) -> StoreError:
    """A backend failure as the store error a run reports (store_unreachable, store_auth, store_full)."""
    return StoreError(exc.message, code=exc.code if exc.code in REMOTE_CODES else "store_error")


def _pack_key(pack: str) -> str:
    return f"packs/{pack[:2]}/{pack}.pack"


def _index_key(pack: str) -> str:
    return f"index/{pack}.idx"
