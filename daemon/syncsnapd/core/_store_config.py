"""The configuration of stores: ``s3`` tables (``[daemon.s3]``, a project's ``[projects.s3]``), and the checks
that stores are told apart and that a store named twice is reached and opened one way. Used by
``_config.py``; raises :class:`ConfigError` naming the key at fault.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._s3 import S3Options, staging_dir, store_location
from ._sizes import DEFAULT_STAGING_MAX, staging_max

if TYPE_CHECKING:
    from ._config import ProjectConfig

__all__ = ["S3_KEYS", "check_shared", "check_staging", "parse_s3", "project_s3"]

S3_KEYS = {"endpoint", "region", "path_style", "concurrency", "staging_max", "profile"}
# An AWS shared-credentials profile name, as it appears between brackets in ~/.aws/credentials.
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=,:/-]{0,127}")


def parse_s3(raw: object, key: str) -> S3Options:
    """An ``s3`` table (``[daemon.s3]``, or a project's: ``key`` is ``projects[N].s3``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table ([daemon.s3] or [projects.s3])")
    if unknown := sorted(set(raw) - S3_KEYS):
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(S3_KEYS))})")
    endpoint = raw.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not re.fullmatch(r"https?://[^/\s]+/?", endpoint)):
        raise ConfigError(f"{key}.endpoint: expected the service's URL such as https://s3.example.com or "
                          f"http://127.0.0.1:9000, got {endpoint!r}")
    region = raw.get("region")
    if region is not None and (not isinstance(region, str) or not re.fullmatch(r"[a-z0-9-]{1,64}", region)):
        raise ConfigError(f"{key}.region: expected a region name such as us-east-1, got {region!r}")
    concurrency = raw.get("concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise ConfigError(f"{key}.concurrency: expected uploads at once from 1 to 64, got {concurrency!r}")
    profile = raw.get("profile")
    if profile is not None and (not isinstance(profile, str) or not _PROFILE.fullmatch(profile)):
        raise ConfigError(f"{key}.profile: expected the name of a profile in the AWS credentials or config "
                          f"file, such as \"work\", got {profile!r}")
    return S3Options(endpoint=endpoint.rstrip("/") if endpoint else None, region=region,
                     path_style=_bool(raw.get("path_style", False), f"{key}.path_style"), concurrency=concurrency,
                     staging_max=staging_max(raw.get("staging_max", DEFAULT_STAGING_MAX), f"{key}.staging_max"),
                     profile=profile)


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def project_s3(raw: object) -> bool:
    """True when some project's ``store`` is a bucket (then ``[daemon.s3]`` applies to it)."""
    return isinstance(raw, list) and any(isinstance(p, dict) and isinstance(p.get("store"), str)
                                         and p["store"].startswith("s3://") for p in raw)


def check_staging(projects: list[ProjectConfig], daemon_url: str | None) -> None:
    # staging_dir joins the bucket and the prefix's parts with "-": s3://a-b and s3://a/b would share a
    # local directory, and two stores must never share staging.
    seen = {} if daemon_url is None else {staging_dir(Path("/"), daemon_url): (daemon_url, "daemon.store")}
    for i, p in enumerate(projects):
        if p.store_url is not None:
            url, key = seen.setdefault(staging_dir(Path("/"), p.store_url), (p.store_url, f"projects[{i}].store"))
            if url != p.store_url:
                raise ConfigError(f"projects[{i}].store: {p.store_url!r} and {url!r} ({key}) would share one "
                                  "local directory under the state directory; use another bucket or prefix")


def check_shared(projects: list[ProjectConfig], settings: dict[str, Any]) -> None:
    """Projects naming one store (or the daemon's) must reach and open it one way: one open store has one
    set of S3 settings and one key. The later project's key is named."""
    daemon_url: str | None = settings.get("store_url")
    daemon_key = settings.get("key_file")
    way = {store_location(settings["store"], daemon_url):
           ("the daemon's (daemon.store)", settings.get("s3") if daemon_url else None, _real(daemon_key))}
    for i, p in enumerate(projects):
        if p.store is None:
            continue
        where = store_location(p.store, p.store_url)
        s3 = (p.s3 if p.s3 is not None else settings.get("s3")) if p.store_url is not None else None
        key_file = _real(p.key_file if p.key_file is not None else daemon_key)
        other, other_s3, other_key = way.setdefault(where, (f"projects[{i}]'s", s3, key_file))
        if s3 != other_s3:
            raise ConfigError(f"projects[{i}].s3: the store {where} is also {other}, with other S3 settings; "
                              "one store is reached one way: give both the same s3 table (or neither)")
        if key_file != other_key:
            raise ConfigError(f"projects[{i}].key_file: the store {where} is also {other}, with another "
                              "key file; one store has one master key: give both the same key_file (or neither)")


def _real(path: Path | None) -> str | None:
    return None if path is None else os.path.realpath(path)
