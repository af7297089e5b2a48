"""Sizes in the configuration: ``daemon.s3.staging_max`` (a number of bytes, or "500 MiB", "4 GiB").

Its own module so that ``_config.py`` stays one readable piece under the size limit of modules.
"""

from __future__ import annotations

import re

from ._errors import ConfigError

__all__ = ["DEFAULT_STAGING_MAX", "STAGING_MIN", "staging_max"]

# While the bucket is unreachable, snapshots are staged in the state directory (their packs) until it is
# back; past this many bytes of staged packs a run fails with `staging_full` instead of filling the disk.
# 4 GiB holds a day of ordinary changes (a few hundred 16 MiB packs), and is small on a laptop's disk.
DEFAULT_STAGING_MAX = 4 << 30
# Less than a few packs would fail every run of a laptop that is offline for an hour.
STAGING_MIN = 64 << 20
_SIZE = re.compile(r"[ \t]*(\d+(?:\.\d+)?)[ \t]*(B|KiB|MiB|GiB|TiB)?[ \t]*", re.ASCII)
_UNIT_BYTES = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def staging_max(value: object, key: str = "daemon.s3.staging_max") -> int:
    """``daemon.s3.staging_max`` (or a project's ``s3.staging_max``, named by ``key``): a whole number of bytes, or a string such as "4 GiB" or "500MiB".

    Raises:
        ConfigError: naming the key, for anything else or a size below 64 MiB.
    """
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        size = float(m.group(1)) * _UNIT_BYTES[m.group(2)]
    if size is None or not STAGING_MIN <= size <= 1 << 50:
        raise ConfigError(f"{key}: expected a size from 64 MiB to 1024 TiB such as \"4 GiB\" "
                          f"or a number of bytes, got {value!r}")
    return int(size)
