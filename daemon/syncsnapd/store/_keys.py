"""The store's master key (issue 15: client-side encryption).

A :class:`MasterKey` is the secret of an encrypted store: one key for the authenticated cipher of every
object (chunks, trees, pack headers, indexes, snapshot files) and one for keyed chunk ids. It is random,
made once by ``syncsnapd init --encrypt`` (or the first start of a new encrypted store), and kept only
wrapped: by a key derived from a passphrase, or in a key file. How it is wrapped and where those copies
live is the rest of this module.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

__all__ = ["KEY_BYTES", "MasterKey"]

KEY_BYTES = 32


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The two 256-bit secrets of an encrypted store. Never printed (``repr`` hides them)."""

    encryption: bytes  # the AEAD key of every object in the store
    chunk_id: bytes  # the blake3 key of chunk ids (keyed hashing)

    def __post_init__(self) -> None:
        if len(self.encryption) != KEY_BYTES or len(self.chunk_id) != KEY_BYTES:
            raise ValueError(f"a master key is two {KEY_BYTES}-byte keys")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES))

    def to_bytes(self) -> bytes:
        return self.encryption + self.chunk_id

    @classmethod
    def from_bytes(cls, data: bytes) -> MasterKey:
        if len(data) != 2 * KEY_BYTES:
            raise ValueError(f"a master key is {2 * KEY_BYTES} bytes, not {len(data)}")
        return cls(bytes(data[:KEY_BYTES]), bytes(data[KEY_BYTES:]))

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"
