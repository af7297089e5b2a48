"""docs/encryption.md is precise enough for another program to read an encrypted store: this file is that
program. It uses only the document, ``cryptography``, ``blake3`` and ``zstandard`` (nothing of
``syncsnapd.store`` but writing the store in the first place) and reads back every file of a snapshot."""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from helpers.store import backdate, snapshot, write_files
from syncsnapd.store import CIPHERS, MasterKey, NewStore, Passphrase, Store

PASSPHRASE = b"a passphrase from the docs"


def seal_open(cipher: str, key: bytes, sealed: bytes, ad: bytes) -> bytes:
    aead = AESGCM(key) if cipher == "aes-256-gcm" else ChaCha20Poly1305(key)
    return aead.decrypt(sealed[:12], sealed[12:], ad)


def read_store(root: Path, passphrase: bytes) -> dict[str, dict[str, bytes]]:
    """Every snapshot of the store, as {snapshot id: {path: content}}, following docs/encryption.md."""
    # 1. config.json
    config = json.loads((root / "config.json").read_bytes())
    assert config["format"] == "syncsnap-store" and config["version"] == 2
    assert config["chunk_id"] == "blake3-keyed" and config["compression"] == "zstd"
    cipher = config["encryption"]
    # 2. the master key, from a key file, checked against key_check
    master = None
    for path in sorted((root / "keys").iterdir()):
        doc = json.loads(path.read_bytes())
        kdf = doc["kdf"]
        kek = Scrypt(salt=base64.b64decode(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"],
                     p=kdf["p"]).derive(passphrase)
        try:
            master = seal_open("aes-256-gcm", kek, base64.b64decode(doc["master"]),
                               b"syncsnap key " + path.name.encode())
            break
        except Exception:
            continue
    assert master is not None and len(master) == 64
    k_enc, k_id = master[:32], master[32:]
    check = seal_open(cipher, k_enc, base64.b64decode(config["key_check"]), b"syncsnap key check")
    assert check == blake3.blake3(b"syncsnap key check", key=k_id).digest()
    k_name = blake3.blake3(k_id, derive_key_context="syncsnap 2026-12 snapshot file names").digest()
    # 3. the indexes
    where: dict[str, tuple[str, int, int, int, int]] = {}
    for path in (root / "index").glob("*.idx"):
        sealed = path.read_bytes()
        assert blake3.blake3(sealed).hexdigest() == path.stem  # the pack id
        plain = seal_open(cipher, k_enc, sealed, b"syncsnap index")
        assert plain.startswith(b"SYNIDX01") and blake3.blake3(plain[:-32]).digest() == plain[-32:]
        for rid, off, stored, raw, flags in struct.iter_unpack("<32sQIIB", plain[8:-32]):
            where[rid.hex()] = (path.stem, off, stored, raw, flags)

    def blob(blob_id: str) -> bytes:
        pack, off, stored, raw, flags = where[blob_id]
        with open(root / "packs" / pack[:2] / f"{pack}.pack", "rb") as f:
            f.seek(off)
            sealed = f.read(stored)
        payload = seal_open(cipher, k_enc, sealed, b"syncsnap blob " + bytes.fromhex(blob_id))
        data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw) if flags & 1 else payload
        assert len(data) == raw and blake3.blake3(data, key=k_id).hexdigest() == blob_id
        return data

    # 4. the snapshot files, and 5. their trees and files
    out: dict[str, dict[str, bytes]] = {}
    for path in (root / "snapshots").glob("*.json"):
        name = path.stem
        snap = json.loads(seal_open(cipher, k_enc, path.read_bytes(), b"syncsnap snapshot " + name.encode()))
        assert blake3.blake3(snap["id"].encode(), key=k_name).hexdigest() == name
        files: dict[str, bytes] = {}
        for group in snap["tree"]:
            for entry_path, kind, _size, _mtime, _mode, _inode, data in json.loads(blob(group)):
                if kind == "file":
                    files[entry_path] = b"".join(blob(c) for c in data)
        out[snap["id"]] = files
    return out


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_program_following_the_document_reads_the_store(tmp_path: Path, cipher: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCSNAP_SCRYPT_N", "1024")
    src = tmp_path / "src"
    files = {"text.txt": b"compressible " * 50_000, "random.bin": os.urandom(1_500_000),
             "dir/empty.txt": b"", "dir/small": b"x"}
    write_files(src, files)
    backdate(src)
    master = MasterKey.generate()
    with Store.open(tmp_path / "store", writable=True, key=master,
                    create=NewStore(master=master, passphrase=Passphrase(PASSPHRASE), cipher=cipher)) as store:
        info = await snapshot(store, src)
    assert read_store(tmp_path / "store", PASSPHRASE) == {info.id: files}
