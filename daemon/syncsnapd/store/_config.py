"""A store's ``config.json``: what it may say, checked key by key (the layout is in ``_format.py``).

A value this syncsnapd does not know is refused with its key and value named, never guessed at: issue
15 added keyed chunk ids and encryption as new values of ``chunk_id`` (``blake3-keyed``) and
``encryption`` (``aes-256-gcm``, ``chacha20-poly1305``) within version 2, with ``key_check`` (a sealed
value telling the right master key from a wrong one), and a syncsnapd that does not know them must
neither read nor write such a store. An encrypted store always has keyed chunk ids, and a plaintext one
never (each alone would be a store no syncsnapd writes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._chunker import Chunker, FixedChunker, chunker_from_config
from ._crypto import CIPHERS, KEYED_CHUNK_ID
from ._format import FORMAT_NAME, READABLE_VERSIONS

__all__ = ["ConfigError", "StoreConfig", "parse_config"]

# The values this syncsnapd knows, key by key.
CHUNK_IDS = ("blake3", KEYED_CHUNK_ID)
ENCRYPTIONS = ("none", *CIPHERS)
COMPRESSIONS = ("zstd",)


@dataclass(frozen=True)
class StoreConfig:
    """A store's ``config.json``, checked: how its content is cut, named, compressed and packed."""

    version: int
    chunker: Chunker
    chunk_id: str
    compression: str
    compression_level: int
    encryption: str
    pack_size: int
    key_check: str | None = None  # encrypted stores: what tells the right master key (see _crypto.py)

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"


class ConfigError(ValueError):
    """A ``config.json`` this syncsnapd cannot use; the message names the key and its value."""


def _known(doc: dict[str, Any], key: str, known: Sequence[str], default: str | None = None) -> str:
    value = doc.get(key, default)
    if value not in known:
        shown = "missing" if key not in doc else json.dumps(value)[:80]
        choices = ", ".join(json.dumps(k) for k in known)
        raise ConfigError(f'"{key}" is {shown}, which this syncsnapd does not know (it knows {choices}); '
                          "the store may have been made by a newer syncsnapd")
    return str(value)


def _count(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if type(value) is not int or not low <= value <= high:
        shown = "missing" if key not in doc else json.dumps(value)[:80]
        raise ConfigError(f'"{key}" is {shown}, not a whole number from {low} to {high}')
    return value


def parse_config(doc: object) -> StoreConfig:
    """Check a parsed ``config.json`` (version 1 or 2) and say what it means.

    Raises:
        ConfigError: not a syncsnap store, a version this syncsnapd does not read, or a key whose value
            it does not know (named in the message).
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise ConfigError("not a syncsnap store")
    version = doc.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ConfigError(f'"version" is {json.dumps(version)[:40]}, this syncsnapd reads versions '
                          f"{' and '.join(map(str, READABLE_VERSIONS))}")
    pack_size = _count(doc, "pack_size", 1 << 16, 1 << 32)
    level = _count(doc, "compression_level", -(1 << 17), 22)
    compression = _known(doc, "compression", COMPRESSIONS)
    if version == 1:
        # Version 1 knew one way to cut and name chunks; its keys say so.
        chunker: Chunker = FixedChunker(_count(doc, "chunk_size", 1 << 10, 1 << 26))
        chunk_id = _known(doc, "hash", CHUNK_IDS)
        encryption = "none"
    else:
        spec = doc.get("chunker")
        if not isinstance(spec, dict):
            raise ConfigError(f'"chunker" is {json.dumps(spec)[:80] if "chunker" in doc else "missing"}, '
                              "not an object")
        try:
            chunker = chunker_from_config(spec)
        except ValueError as exc:
            raise ConfigError(f'"chunker": {exc}') from None
        chunk_id = _known(doc, "chunk_id", CHUNK_IDS)
        encryption = _known(doc, "encryption", ENCRYPTIONS)
    key_check = None
    if encryption != "none":
        if chunk_id != KEYED_CHUNK_ID:
            raise ConfigError(f'"chunk_id" is {json.dumps(chunk_id)} in an encrypted store, which must have '
                              f'"{KEYED_CHUNK_ID}"')
        key_check = doc.get("key_check")
        if not isinstance(key_check, str) or not key_check:
            raise ConfigError('"key_check" is missing in an encrypted store')
    elif chunk_id != "blake3":
        raise ConfigError(f'"chunk_id" is {json.dumps(chunk_id)} in a store that is not encrypted')
    return StoreConfig(version, chunker, chunk_id, compression, level, encryption, pack_size, key_check)
