"""The cipher of an encrypted store: :class:`Crypto` seals and opens every object, names chunks and
snapshot files with keys (docs/encryption.md is the format, byte by byte).

A sealed object is ``nonce (12 bytes) | ciphertext | tag (16 bytes)``: AES-256-GCM or ChaCha20-Poly1305
(``config.json``'s ``encryption``) from the ``cryptography`` library, under the master key's
``encryption`` secret, with a random nonce per object and *associated data* that binds the object to
where it belongs (a blob to its id, a snapshot file to its name), so an object swapped for another of the
same store fails to open as surely as a damaged one. Random 96-bit nonces are safe for 2**32 objects per
key (NIST SP 800-38D, 8.3): 2**32 blobs of 0.6 MiB are 2.5 PiB, far beyond a store's life.

Chunk ids are keyed blake3 (the ``chunk_id`` secret as the key): equal content still has one id within
the store, so dedup is unchanged, but an id says nothing about content to whoever lacks the key.
Snapshot files are named by a keyed hash of their id (a key derived from the same secret): the id holds
the snapshot's time, the name holds nothing.
"""

from __future__ import annotations

import base64
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ._errors import BackendError, CorruptDataError, StoreError
from ._format import new_config
from ._keys import (
    CREDENTIAL_NAME,
    PASSWORD_FILE_ENV,
    KeyInfo,
    MasterKey,
    Passphrase,
    StoreKey,
    StoreKeyError,
    key_info,
    new_key_file,
    open_key_file,
)

if TYPE_CHECKING:
    from ._repository import Store

__all__ = ["CIPHERS", "KEYED_CHUNK_ID", "NONCE_BYTES", "OVERHEAD", "TAG_BYTES", "Crypto", "NewStore",
           "default_cipher", "key_files", "unlock"]

# config.json's "encryption" values of an encrypted store, and its "chunk_id" value there.
AES_GCM = "aes-256-gcm"
CHACHA = "chacha20-poly1305"
CIPHERS = (AES_GCM, CHACHA)
KEYED_CHUNK_ID = "blake3-keyed"
NONCE_BYTES = 12
TAG_BYTES = 16
# What sealing adds to an object's size.
OVERHEAD = NONCE_BYTES + TAG_BYTES

# Associated data (docs/encryption.md): a domain string per kind of object, plus its name where the name
# is known before opening.
AD_BLOB = b"syncsnap blob "  # + the 32 bytes of the blob's id
AD_INDEX = b"syncsnap index"
AD_SNAPSHOT = b"syncsnap snapshot "  # + the file's name (64 hex digits, ASCII)
AD_KEY_CHECK = b"syncsnap key check"
AD_LOCK = b"syncsnap lock "  # + the lock object's name (ASCII)
# blake3's key derivation context for the key of snapshot file names (from the chunk id secret).
SNAPSHOT_NAME_CONTEXT = "syncsnap 2026-12 snapshot file names"


def default_cipher(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """AES-256-GCM where the CPU has AES instructions (the ``aes`` flag of x86, ``aes`` feature of
    arm64), else ChaCha20-Poly1305, which is about three times faster than AES in software."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return AES_GCM  # no /proc (not Linux): every CPU made in the last decade has them
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features") and "aes" in value.split():
            return AES_GCM
    return CHACHA


class Crypto:
    """Seals and opens the objects of one encrypted store; names its chunks and snapshot files.

    Thread-safe (the cipher objects hold only the key); sealing runs in the snapshot workers, beside
    compression, never under the writer's lock.
    """

    def __init__(self, key: MasterKey, cipher: str) -> None:
        if cipher == AES_GCM:
            self._aead: AESGCM | ChaCha20Poly1305 = AESGCM(key.encryption)
        elif cipher == CHACHA:
            self._aead = ChaCha20Poly1305(key.encryption)
        else:
            raise ValueError(f"unknown cipher {cipher!r}")
        self.cipher = cipher
        self.key = key
        self._id_key = key.chunk_id
        self._name_key = blake3.blake3(key.chunk_id, derive_key_context=SNAPSHOT_NAME_CONTEXT).digest()

    # --- sealing ------------------------------------------------------------------------------------

    def seal(self, data: bytes | bytearray | memoryview, ad: bytes) -> bytearray:
        """``nonce | ciphertext | tag`` of ``data``, bound to ``ad``."""
        out = bytearray(NONCE_BYTES + len(data) + TAG_BYTES)
        nonce = os.urandom(NONCE_BYTES)
        out[:NONCE_BYTES] = nonce
        self._aead.encrypt_into(nonce, data, ad, memoryview(out)[NONCE_BYTES:])
        return out

    def open(self, sealed: bytes | bytearray | memoryview, ad: bytes, what: str) -> bytes:
        """The plaintext of a sealed object.

        Raises:
            CorruptDataError: it does not authenticate (damaged, tampered with, swapped for another
                object, or sealed with another key); the message starts with ``what``.
        """
        if len(sealed) < OVERHEAD:
            raise CorruptDataError(f"{what} is too short to be sealed")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], ad)
        except InvalidTag:
            raise CorruptDataError(f"{what} fails authentication (damaged or tampered with)") from None

    def seal_blob(self, chunk: str, stored: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
        """A blob sealed as :meth:`seal` does, in two parts to be written one after the other: the nonce,
        and ``ciphertext | tag``. ``encrypt`` lets other threads run while it works (``encrypt_into``
        holds the GIL), and the parts need no copy into one buffer."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, stored, AD_BLOB + bytes.fromhex(chunk))

    def open_blob(self, chunk: str, sealed: bytes | bytearray | memoryview, what: str) -> bytes:
        return self.open(sealed, AD_BLOB + bytes.fromhex(chunk), what)

    # --- names --------------------------------------------------------------------------------------

    def chunk_id(self, data: bytes | bytearray | memoryview) -> str:
        """A blob's id: keyed blake3-256 of its plaintext, 64 hex digits."""
        return blake3.blake3(data, key=self._id_key).hexdigest()

    def snapshot_name(self, snapshot_id: str) -> str:
        """The name (without ``.json``) of a snapshot's file: keyed blake3 of its id, 64 hex digits."""
        return blake3.blake3(snapshot_id.encode("ascii"), key=self._name_key).hexdigest()

    # --- the key check of config.json ---------------------------------------------------------------

    def _check_value(self) -> bytes:
        return blake3.blake3(AD_KEY_CHECK, key=self._id_key).digest()

    def key_check(self) -> str:
        """config.json's ``key_check``: a sealed value that only this master key opens (both secrets)."""
        return base64.b64encode(self.seal(self._check_value(), AD_KEY_CHECK)).decode("ascii")

    def matches(self, key_check: str) -> bool:
        """Whether ``key_check`` (from config.json) was made with this master key."""
        try:
            sealed = base64.b64decode(key_check, validate=True)
            return self.open(sealed, AD_KEY_CHECK, "key check") == self._check_value()
        except (ValueError, CorruptDataError):
            return False


@dataclass(frozen=True)
class NewStore:
    """What a store created by ``Store.open(..., create=...)`` is: plaintext (no ``master``), or encrypted
    with ``master``, wrapped in a first key file by ``passphrase`` when given (else the master key is kept
    only in a key file outside the store). ``refuse``: creating is refused with this sentence (a daemon
    with no key for a new S3 store, which is encrypted by default)."""

    master: MasterKey | None = None
    passphrase: Passphrase | None = None
    cipher: str | None = None  # None: default_cipher()
    refuse: str | None = None

    def objects(self) -> dict[str, bytes]:
        """The new store's objects by name, ``config.json`` last (the store exists once it does).

        Raises:
            StoreKeyError: ``refuse`` is set.
        """
        if self.refuse is not None:
            raise StoreKeyError(self.refuse)
        if self.master is None:
            return {"config.json": new_config()}
        objects: dict[str, bytes] = {}
        if self.passphrase is not None:
            key_id, data = new_key_file(self.master, self.passphrase)
            objects[f"keys/{key_id}"] = data
        crypto = Crypto(self.master, self.cipher or default_cipher())
        objects["config.json"] = new_config(cipher=crypto.cipher, key_check=crypto.key_check())
        return objects


_KEY_NAME_LEN = 64


def key_files(root: Path) -> list[tuple[str, bytes]]:
    """(id, bytes) of every key file in ``root/keys``, by id."""
    found: list[tuple[str, bytes]] = []
    try:
        names = sorted(os.listdir(root / "keys"))
    except FileNotFoundError:
        return found
    for name in names:
        if len(name) == _KEY_NAME_LEN and all(c in "0123456789abcdef" for c in name):
            with contextlib.suppress(FileNotFoundError):
                found.append((name, (root / "keys" / name).read_bytes()))
    return found


def unlock(root: Path, cipher: str, key_check: str | None, key: StoreKey | None) -> tuple[Crypto | None, str | None]:
    """The cipher of the store at ``root`` whose config.json says ``cipher`` and ``key_check`` (None for a
    plaintext store), and the key file that opened it.

    Raises:
        StoreKeyError: no key given, or a wrong one; the message says where a key comes from.
    """
    if cipher == "none" or key_check is None:
        return None, None
    if key is None:
        raise StoreKeyError(f"store {root} is encrypted and no key was given: set {PASSWORD_FILE_ENV} to a file "
                            f"holding its passphrase, or give systemd's credential {CREDENTIAL_NAME} "
                            "(LoadCredential=), or key_file = ... in [daemon] (see docs/encryption.md)")
    if isinstance(key, MasterKey):
        crypto = Crypto(key, cipher)
        if not crypto.matches(key_check):
            raise StoreKeyError(f"the key file does not hold the master key of store {root}")
        return crypto, None
    files = key_files(root)
    for key_id, data in files:
        master = open_key_file(key_id, data, key)
        if master is None:
            continue
        crypto = Crypto(master, cipher)
        if not crypto.matches(key_check):
            raise StoreKeyError(f"key file {key_id[:8]} of store {root} holds the key of another store")
        return crypto, key_id
    if not files:
        raise StoreKeyError(f"store {root} has no passphrase keys: open it with its key_file")
    raise StoreKeyError(f"wrong passphrase: {key.source} opens none of the {len(files)} keys of store {root}")


# --- key files of an open store (Store.list_keys, add_key, remove_key, change_passphrase) ----------------

def _crypto_of(store: Store) -> Crypto:
    if store.files.crypto is None:
        raise StoreKeyError(f"store {store.root} is not encrypted: it has no keys")
    return store.files.crypto


def list_keys(store: Store) -> list[KeyInfo]:
    crypto = _crypto_of(store)
    return [key_info(kid, data, crypto.key) for kid, data in key_files(store.root)]


def add_key(store: Store, passphrase: Passphrase) -> str:
    # Key files are written once and never changed, so a read-only opener may add one while the daemon
    # holds the store: like restic's `key add`, no exclusive lock.
    crypto = _crypto_of(store)
    key_id, data = new_key_file(crypto.key, passphrase)
    if store.remote is not None:
        try:
            store.remote.backend.put_bytes(f"keys/{key_id}", data)
        except BackendError as exc:
            raise StoreError(f"cannot add the key to {store.remote.description}: {exc.message}") from exc
    store.files.keys_dir.mkdir(exist_ok=True)
    # An S3 store's cache directory only ever opened read-only on this machine has no tmp/ yet.
    store.files.tmp.mkdir(exist_ok=True)
    store.files.write_durable(store.files.keys_dir / key_id, data, "key")
    return key_id


def remove_key(store: Store, key_id: str, *, in_use_too: bool = False) -> str:
    _crypto_of(store)
    ids = [kid for kid, _ in key_files(store.root)]
    matches = [kid for kid in ids if kid.startswith(key_id)] if key_id else []
    if len(matches) != 1:
        raise StoreKeyError(f"no key {key_id!r} in the store (`syncsnapd key list` shows them)" if not matches
                            else f"{key_id!r} names {len(matches)} keys: give more of its id")
    (found,) = matches
    if found == store.key_id and not in_use_too:
        raise StoreKeyError(f"key {found[:8]} is the one in use: open the store with another key to remove it "
                            "(or change its passphrase with `syncsnapd key passwd`)")
    if len(ids) == 1:
        raise StoreKeyError("the last key of a store is never removed: add another first")
    if store.remote is not None:
        try:
            store.remote.backend.delete(f"keys/{found}")
        except BackendError as exc:
            raise StoreError(f"cannot remove the key from {store.remote.description}: {exc.message}") from exc
    from ._files import fsync_dir  # here: _files imports this module

    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.files.keys_dir / found)
    fsync_dir(store.files.keys_dir)
    return found


def change_passphrase(store: Store, passphrase: Passphrase) -> str:
    old = store.key_id
    if old is None:
        raise StoreKeyError("the store was opened with its master key, not a passphrase: `syncsnapd key add` "
                            "adds a passphrase")
    new = add_key(store, passphrase)  # first: a crash in between leaves both, never none
    remove_key(store, old, in_use_too=True)
    store.key_id = new
    return new
