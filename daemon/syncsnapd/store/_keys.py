"""The store's master key (issue 15: client-side encryption), and the copies of it that open a store.

A :class:`MasterKey` is the secret of an encrypted store: one key for the authenticated cipher of every
object (chunks, trees, pack headers, indexes, snapshot files) and one for keyed chunk ids. It is random,
made once by ``syncsnapd init --encrypt`` (or the first start of a new encrypted S3 store), and kept only
wrapped:

* **Key files in the store** (``keys/<64 hex digits>``, uploaded to the bucket of an S3 store): the
  master key sealed (AES-256-GCM) under a key derived from a passphrase with scrypt; the scrypt
  parameters and salt are in the file, so each copy has its own cost. A store may have several (``syncsnapd
  key add|list|remove|passwd``, like restic's), each opened by its own passphrase. Their host, user and
  creation time are sealed with the master key: the bucket shows nothing but random names.
* **A master key file** outside the store (``key_file = ...`` in the configuration, for unattended
  systemd use): the master key itself, in a file only its owner may read (0600; refused otherwise).

Where a passphrase comes from (:func:`passphrase_source`): ``SYNCSNAP_PASSWORD_FILE`` (a file holding
it), then systemd's credential ``syncsnap-password`` (``LoadCredential=syncsnap-password:...``, read from
``$CREDENTIALS_DIRECTORY``), then, for ``syncsnapd init`` and ``key`` commands on a terminal, a prompt.
The formats are in docs/encryption.md.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ._errors import StoreError

__all__ = ["CREDENTIAL_NAME", "KEY_BYTES", "PASSWORD_FILE_ENV", "SCRYPT_N_ENV", "KeyInfo", "MasterKey",
           "Passphrase", "StoreKey", "StoreKeyError", "key_info", "new_key_file", "open_key_file",
           "passphrase_source", "read_master_key_file", "scrypt_n", "write_master_key_file"]

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


@dataclass(frozen=True, repr=False)
class Passphrase:
    """A passphrase that opens a key file of the store (tried against each). Never printed."""

    secret: bytes
    source: str = "the passphrase"  # where it came from, for error messages

    def __repr__(self) -> str:
        return "Passphrase(<secret>)"


# What Store.open(key=...) takes: the master key itself (a key file), or a passphrase.
StoreKey = MasterKey | Passphrase


class StoreKeyError(StoreError):
    """An encrypted store cannot be opened: no key given, or a wrong one. Exit status 2 in the CLI."""

    code = "store_key"


# --- where a passphrase comes from ----------------------------------------------------------------

PASSWORD_FILE_ENV = "SYNCSNAP_PASSWORD_FILE"
# The systemd credential (LoadCredential=syncsnap-password:/etc/syncsnap/password): a file of this name in
# $CREDENTIALS_DIRECTORY.
CREDENTIAL_NAME = "syncsnap-password"
# The scrypt cost of new key files: N = 2**17, r = 8, p = 1 (128 MiB of memory), the minimum OWASP's
# password storage cheat sheet recommends for scrypt; 0.4 to 0.6 s measured here (2**15: 0.1 s; see
# docs/encryption.md, "Costs"), paid once per open, and per guess by whoever guesses. SYNCSNAP_SCRYPT_N
# sets another power of two for new key files (tests use 1024; a small machine may want 2**15); opening
# uses what each key file records.
SCRYPT_N = 1 << 17
SCRYPT_N_ENV = "SYNCSNAP_SCRYPT_N"
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_N_RANGE = (1 << 10, 1 << 22)
SALT_BYTES = 32


def _read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreKeyError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if data.endswith(b"\n"):  # one final newline, as `echo` or an editor writes it, is not part of it
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    if not data:
        raise StoreKeyError(f"{what}: {path} is empty")
    return data


def passphrase_source(env: Mapping[str, str] = os.environ) -> Passphrase | None:
    """The passphrase from ``$SYNCSNAP_PASSWORD_FILE``, else from the systemd credential
    ``$CREDENTIALS_DIRECTORY/syncsnap-password``; None when neither is set.

    Raises:
        StoreKeyError: a source is set but its file cannot be read or is empty (named).
    """
    name = env.get(PASSWORD_FILE_ENV)
    if name:
        path = Path(name)
        return Passphrase(_read_secret(path, PASSWORD_FILE_ENV), f"the passphrase in {path} ({PASSWORD_FILE_ENV})")
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / CREDENTIAL_NAME
        if path.exists():
            return Passphrase(_read_secret(path, f"systemd credential {CREDENTIAL_NAME}"),
                              f"the systemd credential {CREDENTIAL_NAME}")
    return None


def prompt_passphrase(prompt: str = "Passphrase of the store: ", *, new: bool = False) -> Passphrase:
    """Ask on the terminal (twice for a new passphrase). Raises StoreKeyError on a mismatch or empty answer."""
    try:
        first = getpass.getpass(prompt)
        if not first:
            raise StoreKeyError("an empty passphrase is not a passphrase")
        if new and getpass.getpass("Repeat it: ") != first:
            raise StoreKeyError("the two passphrases differ; nothing was changed")
    except EOFError:
        raise StoreKeyError("no passphrase was typed") from None
    return Passphrase(first.encode(), "the passphrase typed")


# --- key files in the store -----------------------------------------------------------------------

KEY_FORMAT = "syncsnap-key"
MASTER_KEY_FORMAT = "syncsnap-master-key"
AD_KEY = b"syncsnap key "  # + the key file's id (ASCII)
AD_KEY_INFO = b"syncsnap key info "  # + the key file's id


@dataclass(frozen=True)
class KeyInfo:
    """What ``syncsnapd key list`` shows of one key file."""

    id: str
    host: str
    user: str
    created: str
    scrypt_n: int


def scrypt_n(env: Mapping[str, str] = os.environ) -> int:
    """The scrypt cost N of new key files: ``$SYNCSNAP_SCRYPT_N`` (a power of two) or :data:`SCRYPT_N`.

    Raises:
        StoreKeyError: the variable is not a power of two in range.
    """
    value = env.get(SCRYPT_N_ENV)
    if not value:
        return SCRYPT_N
    lo, hi = _SCRYPT_N_RANGE
    if not value.isdigit() or not lo <= int(value) <= hi or int(value) & (int(value) - 1):
        raise StoreKeyError(f"{SCRYPT_N_ENV} is {value!r}: expected a power of two from {lo} to {hi}")
    return int(value)


def _kek(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _seal(key: bytes, data: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data, ad)


def _open(key: bytes, sealed: bytes, ad: bytes) -> bytes | None:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], ad)
    except (InvalidTag, ValueError):
        return None


def new_key_file(master: MasterKey, passphrase: Passphrase, *, n: int | None = None,
                 now: datetime | None = None) -> tuple[str, bytes]:
    """A new key file: (its id, its bytes) holding ``master`` wrapped under ``passphrase``."""
    key_id = secrets.token_hex(32)
    n = n or scrypt_n()
    salt = secrets.token_bytes(SALT_BYTES)
    kek = _kek(passphrase.secret, salt, n, SCRYPT_R, SCRYPT_P)
    info = {"host": os.uname().nodename, "user": _user(),
            "created": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    doc = {"format": KEY_FORMAT, "version": 1,
           "kdf": {"name": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
           "wrap": "aes-256-gcm",
           "master": _b64(_seal(kek, master.to_bytes(), AD_KEY + key_id.encode())),
           "info": _b64(_seal(master.encryption, json.dumps(info).encode(), AD_KEY_INFO + key_id.encode()))}
    return key_id, (json.dumps(doc, indent=1) + "\n").encode()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _parse_key_file(key_id: str, data: bytes) -> tuple[dict[str, Any], bytes, int, int, int]:
    try:
        doc = json.loads(data)
        kdf = doc["kdf"]
        if doc["format"] != KEY_FORMAT or doc["version"] != 1 or kdf["name"] != "scrypt" or doc["wrap"] != "aes-256-gcm":
            raise ValueError("format")
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        # scrypt needs a power of two N; and a key file is input like any other: its cost is bounded
        # (128 * N * r bytes of memory, here at most 4 GiB) so that a planted one cannot exhaust memory.
        if (not all(type(v) is int and v > 0 for v in (n, r, p)) or n < 2 or n & (n - 1)
                or n * r > 1 << 25 or p > 16):
            raise ValueError("scrypt parameters out of range")
        return doc, base64.b64decode(kdf["salt"], validate=True), n, r, p
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreKeyError(f"key file {key_id} is not a key file this syncsnapd reads ({exc})") from None


def open_key_file(key_id: str, data: bytes, passphrase: Passphrase) -> MasterKey | None:
    """The master key in a key file, or None when ``passphrase`` is not its passphrase.

    Raises:
        StoreKeyError: not a key file of a format this syncsnapd reads.
    """
    doc, salt, n, r, p = _parse_key_file(key_id, data)
    try:
        sealed = base64.b64decode(doc["master"], validate=True)
    except (ValueError, TypeError):
        raise StoreKeyError(f"key file {key_id} is damaged") from None
    plain = _open(_kek(passphrase.secret, salt, n, r, p), sealed, AD_KEY + key_id.encode())
    if plain is None:
        return None
    try:
        return MasterKey.from_bytes(plain)
    except ValueError:
        raise StoreKeyError(f"key file {key_id} is damaged") from None


def key_info(key_id: str, data: bytes, master: MasterKey) -> KeyInfo:
    """What a key file says of itself (its sealed host, user and creation time, opened with ``master``)."""
    doc, _, n, _, _ = _parse_key_file(key_id, data)
    info: dict[str, Any] = {}
    try:
        plain = _open(master.encryption, base64.b64decode(doc.get("info", ""), validate=True),
                      AD_KEY_INFO + key_id.encode())
        if plain is not None:
            info = json.loads(plain)
    except (ValueError, TypeError):
        pass
    return KeyInfo(key_id, str(info.get("host", "?")), str(info.get("user", "?")),
                   str(info.get("created", "?")), n)


# --- master key files (key_file = ...) ------------------------------------------------------------

def read_master_key_file(path: Path) -> MasterKey:
    """The master key in a key file (``key_file = ...``).

    Raises:
        StoreKeyError: missing, readable by group or others (it must be 0600 or stricter), or not a
            master key file; the message says how to fix it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreKeyError(f"key_file {path}: {exc.strerror or exc} (`syncsnapd init --encrypt` or "
                            "`syncsnapd key export` writes it)") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise StoreKeyError(f"key_file {path} may be read by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                                f"`chmod 600 {path}` first")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
        if doc["format"] != MASTER_KEY_FORMAT or doc["version"] != 1:
            raise ValueError
        return MasterKey.from_bytes(base64.b64decode(doc["key"], validate=True))
    except (ValueError, KeyError, TypeError):
        raise StoreKeyError(f"key_file {path} is not a syncsnap master key file") from None


def write_master_key_file(path: Path, master: MasterKey) -> None:
    """Write ``master`` to a new file ``path`` (0600; an existing file is never overwritten).

    Raises:
        StoreKeyError: the file exists or cannot be written.
    """
    data = json.dumps({"format": MASTER_KEY_FORMAT, "version": 1, "key": _b64(master.to_bytes())}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise StoreKeyError(f"{path} exists; a key file is never overwritten") from None
    except OSError as exc:
        raise StoreKeyError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
