"""Encrypted stores (issue 15): nothing readable on disk, a wrong key changes nothing, tampering is caught,
and a second machine restores with only the key. The S3 side is in test_encryption_s3.py."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.store import backdate, flip_byte, snapshot, tree_state, write_files
from syncsnapd.engine import RestoreError, restore_snapshot
from syncsnapd.store import (
    CIPHERS,
    MasterKey,
    NewStore,
    Passphrase,
    Problem,
    Store,
    StoreError,
    StoreKeyError,
    default_cipher,
    hash_bytes,
)

# Strings the tree holds in file content and in file and folder names: none may appear anywhere on disk.
MARKERS = [b"MARKER-content-7f3a9c", b"MARKER-name-b81e44", b"MARKER-dir-c0ffee", b"MARKER-link-5e5e5e"]
PASSPHRASE = Passphrase(b"correct horse battery staple")


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The documented knob for new key files' scrypt cost (docs/encryption.md): 1024 instead of 2**17.
    monkeypatch.setenv("SYNCSNAP_SCRYPT_N", "1024")


def marker_tree(root: Path) -> None:
    content = MARKERS[0].decode()
    write_files(root, {
        f"{MARKERS[1].decode()}.txt": (content + " compressible text\n").encode() * 2000,
        f"{MARKERS[2].decode()}/small.txt": content.encode(),
        f"{MARKERS[2].decode()}/random.bin": os.urandom(300_000) + MARKERS[0] + os.urandom(1000),
        "big.bin": os.urandom(3 << 20),
    })
    os.symlink(MARKERS[3].decode(), root / "link")
    backdate(root)


def every_file(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def disk_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file of a store directory: its content hash and mtime."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def new_encrypted(root: Path, *, cipher: str | None = None, passphrase: Passphrase | None = PASSPHRASE
                  ) -> tuple[Store, MasterKey]:
    master = MasterKey.generate()
    store = Store.open(root, writable=True, key=master,
                       create=NewStore(master=master, passphrase=passphrase, cipher=cipher))
    return store, master


@pytest.fixture
def encrypted(tmp_path: Path) -> Iterator[Store]:
    store, _ = new_encrypted(tmp_path / "store")
    yield store
    store.close()


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_no_plaintext_on_disk_and_a_restore_with_only_the_passphrase_is_byte_identical(
        tmp_path: Path, cipher: str) -> None:
    src = tmp_path / "src"
    marker_tree(src)
    store, _ = new_encrypted(tmp_path / "store", cipher=cipher)
    with store:
        first = await snapshot(store, src)
        second = await snapshot(store, src)  # unchanged: dedup within the store still works
        assert second.bytes_added == 0
    files = every_file(tmp_path / "store")
    assert any(name.startswith("packs/") for name in files) and any(n.startswith("keys/") for n in files)
    for name, data in files.items():
        for marker in MARKERS:
            assert marker not in data, f"{marker!r} in {name}"
            assert marker.decode() not in name
        if name.startswith("snapshots/"):
            assert first.id not in name and first.id[:8] not in name  # the time is not in the name
    config = json.loads(files["config.json"])
    assert config["encryption"] == cipher and config["chunk_id"] == "blake3-keyed"
    # A chunk id says nothing: the plain blake3 of the content is nowhere in the store.
    plain_id = hash_bytes((src / "big.bin").read_bytes()[:100])  # not a chunk; the index holds none in clear
    assert all(plain_id.encode() not in data for data in files.values())
    # Another machine: a copy of the store, opened with only the passphrase.
    with Store.open(tmp_path / "store", writable=False, key=PASSPHRASE) as reader:
        assert [s.id for s in reader.list_snapshots()] == [first.id, second.id]
        restore_snapshot(reader, first.id, tmp_path / "out")
    assert tree_state(tmp_path / "out") == tree_state(src)


async def test_chunk_ids_are_keyed(tmp_path: Path) -> None:
    """The same file has another chunk id in each encrypted store, and its plain blake3 in none."""
    src = tmp_path / "src"
    write_files(src, {"a.bin": b"well known file " * 1000})
    backdate(src)
    ids = []
    for name in ("one", "two"):
        store, _ = new_encrypted(tmp_path / name)
        with store:
            info = await snapshot(store, src)
            (entry,) = [e for e in store.load_entries(info.id) if e.path == "a.bin"]
            ids.append(entry.chunks[0])
    assert ids[0] != ids[1] and hash_bytes(b"well known file " * 1000) not in ids


async def test_a_wrong_passphrase_or_key_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    marker_tree(src)
    store, _ = new_encrypted(tmp_path / "store")
    with store:
        await snapshot(store, src)
    (tmp_path / "store" / "tmp" / "leftover").write_bytes(b"x")  # a writable open would remove it
    before = disk_state(tmp_path / "store")
    for key in (Passphrase(b"wrong", "the passphrase in /x"), MasterKey.generate(), None):
        for writable in (True, False):
            with pytest.raises(StoreKeyError) as caught:
                Store.open(tmp_path / "store", writable=writable, key=key)
            message = str(caught.value)
            if key is None:
                assert "SYNCSNAP_PASSWORD_FILE" in message and "key_file" in message
            elif isinstance(key, Passphrase):
                assert message.startswith("wrong passphrase: the passphrase in /x opens none of the 1 keys")
            else:
                assert "does not hold the master key" in message
    assert disk_state(tmp_path / "store") == before


async def test_a_tampered_blob_is_found_by_check_and_refused_by_restore(encrypted: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a" * 50_000, "b.txt": b"b" * 50_000})
    backdate(src)
    info = await snapshot(encrypted, src)
    (a,) = [e for e in encrypted.load_entries(info.id) if e.path == "a.txt"]
    loc = encrypted.locate(a.chunks[0])
    assert loc is not None
    flip_byte(encrypted.pack_path(loc.pack), loc.offset + loc.length // 2)
    with Store.open(encrypted.root, writable=False, key=PASSPHRASE) as reader:
        report = reader.check()
        assert [(p.kind, p.object, p.id, p.detail) for p in report.problems] == [
            ("corrupt", "chunk", a.chunks[0], "fails authentication (damaged or tampered with)")]
        assert [(d.id, d.paths) for d in report.damaged] == [(info.id, ("a.txt",))]
        with pytest.raises(RestoreError) as caught:
            restore_snapshot(reader, info.id, tmp_path / "out")
        assert caught.value.code == "data_damaged"
    assert not (tmp_path / "out" / "a.txt").exists()


async def test_a_blob_swapped_for_another_is_refused(encrypted: Store, tmp_path: Path) -> None:
    """Two blobs of equal length swapped in place: each is intact, but bound to its own id."""
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a" * 5000, "b.txt": b"b" * 5000})
    backdate(src)
    info = await snapshot(encrypted, src)
    chunks = {e.path: e.chunks[0] for e in encrypted.load_entries(info.id) if e.kind == "file"}
    la, lb = encrypted.locate(chunks["a.txt"]), encrypted.locate(chunks["b.txt"])
    assert la is not None and lb is not None and la.length == lb.length and la.pack == lb.pack
    pack = bytearray(encrypted.pack_path(la.pack).read_bytes())
    blob_a = pack[la.offset:la.offset + la.length]
    pack[la.offset:la.offset + la.length] = pack[lb.offset:lb.offset + lb.length]
    pack[lb.offset:lb.offset + lb.length] = blob_a
    encrypted.pack_path(la.pack).write_bytes(bytes(pack))
    with Store.open(encrypted.root, writable=False, key=PASSPHRASE) as reader:
        report = reader.check()
    assert sorted(p.id for p in report.problems) == sorted(chunks.values())
    assert all(p.detail.startswith("fails authentication") for p in report.problems)


async def test_tampered_snapshot_and_index_files_are_reported_corrupt(encrypted: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a" * 5000})
    backdate(src)
    info = await snapshot(encrypted, src)
    (snap,) = (encrypted.root / "snapshots").iterdir()
    flip_byte(snap, 40)
    (idx,) = (encrypted.root / "index").iterdir()
    flip_byte(idx, 40)
    with Store.open(encrypted.root, writable=False, key=PASSPHRASE) as reader:
        assert reader.list_snapshots() == []  # never used
        report = reader.check()
    assert Problem("corrupt", "snapshot", snap.stem, "the snapshot file is damaged") in report.problems
    (index_problem,) = [p for p in report.problems if p.object == "index"]
    assert index_problem.id == idx.stem and index_problem.detail.startswith("the index fails authentication")
    assert info.id not in [p.id for p in report.problems]


async def test_a_snapshot_file_copied_under_another_name_is_refused(encrypted: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a"})
    backdate(src)
    await snapshot(encrypted, src)
    (snap,) = (encrypted.root / "snapshots").iterdir()
    (snap.parent / f"{'0' * 64}.json").write_bytes(snap.read_bytes())
    with Store.open(encrypted.root, writable=False, key=PASSPHRASE) as reader:
        assert len(reader.list_snapshots()) == 1
        report = reader.check()
    assert report.problems == [Problem("corrupt", "snapshot", "0" * 64, "the snapshot file is damaged")]


async def test_a_crash_left_pack_is_reindexed_from_its_sealed_copy(encrypted: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"a" * 5000})
    backdate(src)
    info = await snapshot(encrypted, src)
    encrypted.close()
    (idx,) = (encrypted.root / "index").iterdir()
    sealed = idx.read_bytes()
    idx.unlink()
    with Store.open(encrypted.root, writable=True, key=PASSPHRASE) as store:
        assert idx.read_bytes() == sealed  # the pack's copy is the same sealed bytes
        assert store.check().ok
        restore_snapshot(store, info.id, tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"a" * 5000


async def test_prune_deletes_and_repacks_an_encrypted_store(encrypted: Store, tmp_path: Path) -> None:
    """Repacking copies sealed blobs as they are (bound to their ids, not their pack) and seals the new
    pack's index."""
    src = tmp_path / "src"
    write_files(src, {"a.bin": os.urandom(60_000), "b.bin": os.urandom(60_000)})
    backdate(src)
    first = await snapshot(encrypted, src)
    write_files(src, {"b.bin": os.urandom(60_000)})
    backdate(src)
    second = await snapshot(encrypted, src)
    assert encrypted.forget([first.id]) == [first.id]
    stats = encrypted.collect_garbage()
    assert stats.packs_repacked == 1 and stats.packs_written == 1
    assert encrypted.check().ok and [s.id for s in encrypted.list_snapshots()] == [second.id]
    encrypted.close()
    with Store.open(encrypted.root, writable=False, key=PASSPHRASE) as reader:
        assert reader.check().ok
        restore_snapshot(reader, second.id, tmp_path / "out")
    assert tree_state(tmp_path / "out") == tree_state(src)


async def test_a_plaintext_store_ignores_a_key_and_stays_plaintext(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"plain marker"})
    backdate(src)
    with Store.open(tmp_path / "store", writable=True) as store:
        info = await snapshot(store, src)
    with Store.open(tmp_path / "store", writable=True, key=PASSPHRASE) as store:
        assert not store.encrypted
        await snapshot(store, src)
        assert store.read_chunk(store.load_entries(info.id)[-1].chunks[0]) == b"plain marker"
    assert json.loads((tmp_path / "store" / "config.json").read_bytes())["encryption"] == "none"
    assert (tmp_path / "store" / "snapshots" / f"{info.id}.json").exists()
    assert not (tmp_path / "store" / "keys").exists()


def test_a_new_store_may_be_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(StoreKeyError, match="no key for a new store"):
        Store.open(tmp_path / "store", writable=True, create=NewStore(refuse="no key for a new store"))
    assert not (tmp_path / "store").exists()


def test_config_of_an_encrypted_store_is_checked(tmp_path: Path) -> None:
    store, _ = new_encrypted(tmp_path / "store")
    store.close()
    path = tmp_path / "store" / "config.json"
    good = json.loads(path.read_bytes())
    for change, said in (({"encryption": "rot13"}, '"encryption" is "rot13"'),
                         ({"key_check": None}, '"key_check" is missing'),
                         ({"chunk_id": "blake3"}, '"chunk_id" is "blake3" in an encrypted store')):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(StoreError, match=said):
            Store.open(tmp_path / "store", writable=False, key=PASSPHRASE)


def test_the_cipher_follows_the_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 aes avx2\n")
    assert default_cipher(cpuinfo) == "aes-256-gcm"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert default_cipher(cpuinfo) == "chacha20-poly1305"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd aes pmull sha1\n")
    assert default_cipher(cpuinfo) == "aes-256-gcm"
