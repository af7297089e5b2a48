"""The copies of an encrypted store's master key: key files in the store (add, list, remove), master key
files outside it, and where a passphrase comes from."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from syncsnapd.store import (
    MasterKey,
    NewStore,
    Passphrase,
    Store,
    StoreKeyError,
    passphrase_source,
    read_master_key_file,
    write_master_key_file,
)

ONE = Passphrase(b"first passphrase")
TWO = Passphrase(b"second passphrase")


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCSNAP_SCRYPT_N", "1024")  # the documented knob (docs/encryption.md)


def new_store(root: Path) -> MasterKey:
    master = MasterKey.generate()
    Store.open(root, writable=True, key=master, create=NewStore(master=master, passphrase=ONE)).close()
    return master


def test_a_key_added_opens_the_store_and_a_removed_one_no_longer_does(tmp_path: Path) -> None:
    root = tmp_path / "store"
    new_store(root)
    with Store.open(root, writable=True, key=ONE) as store:
        first = store.key_id
        assert first is not None
        second = store.add_key(TWO)
        listed = store.list_keys()
    assert sorted(k.id for k in listed) == sorted([first, second])
    assert all(k.host == os.uname().nodename and k.created.endswith("Z") and k.scrypt_n == 1024 for k in listed)
    with Store.open(root, writable=True, key=TWO) as store:
        assert store.key_id == second
        with pytest.raises(StoreKeyError, match="is the one in use"):
            store.remove_key(second[:8])
        store.remove_key(first[:8])
    with pytest.raises(StoreKeyError, match="wrong passphrase"):
        Store.open(root, writable=False, key=ONE)
    with Store.open(root, writable=False, key=TWO) as store:
        assert [k.id for k in store.list_keys()] == [second]


def test_the_last_key_is_never_removed_and_unknown_ids_are_named(tmp_path: Path) -> None:
    root = tmp_path / "store"
    master = new_store(root)
    # Opened by the master key (a key file outside the store): the one key file is not "in use".
    with Store.open(root, writable=True, key=master) as store:
        (only,) = [k.id for k in store.list_keys()]
        with pytest.raises(StoreKeyError, match="the last key of a store is never removed"):
            store.remove_key(only)
        with pytest.raises(StoreKeyError, match="no key 'ffff' in the store"):
            store.remove_key("ffff")
    assert (root / "keys" / only).exists()


def test_key_files_hold_no_plain_metadata(tmp_path: Path) -> None:
    """Host, user and time are sealed with the master key: the bucket shows random names only."""
    root = tmp_path / "store"
    new_store(root)
    (path,) = (root / "keys").iterdir()
    text = path.read_text()
    doc = json.loads(text)
    assert set(doc) == {"format", "version", "kdf", "wrap", "master", "info"}
    assert doc["kdf"]["name"] == "scrypt" and doc["kdf"]["n"] == 1024
    host = os.uname().nodename
    # Only the sealed fields can hold it (a short host name may occur by chance in their base64).
    assert host not in json.dumps({k: v for k, v in doc.items() if k not in ("master", "info")})
    assert isinstance(doc["info"], str) and len(base64.b64decode(doc["info"])) > 28  # sealed: nonce + tag


def test_a_master_key_file_is_written_0600_never_overwritten_and_refused_if_others_may_read(
        tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    master = MasterKey.generate()
    write_master_key_file(path, master)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_master_key_file(path) == master
    with pytest.raises(StoreKeyError, match="exists; a key file is never overwritten"):
        write_master_key_file(path, MasterKey.generate())
    path.chmod(0o640)
    with pytest.raises(StoreKeyError, match=r"may be read by others \(mode 0640\): `chmod 600 "):
        read_master_key_file(path)
    with pytest.raises(StoreKeyError, match="No such file or directory .*syncsnapd init --encrypt"):
        read_master_key_file(tmp_path / "missing.key")
    (tmp_path / "bad.key").write_text("hello")
    (tmp_path / "bad.key").chmod(0o600)
    with pytest.raises(StoreKeyError, match="is not a syncsnap master key file"):
        read_master_key_file(tmp_path / "bad.key")


def test_a_passphrase_comes_from_the_password_file_then_systemd_credentials(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"from the file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "syncsnap-password").write_bytes(b"from systemd")
    assert passphrase_source({}) is None
    assert passphrase_source({"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None  # no credential of ours
    got = passphrase_source({"CREDENTIALS_DIRECTORY": str(creds)})
    assert got is not None and got.secret == b"from systemd" and "systemd credential syncsnap-password" in got.source
    got = passphrase_source({"SYNCSNAP_PASSWORD_FILE": str(pw), "CREDENTIALS_DIRECTORY": str(creds)})
    assert got is not None and got.secret == b"from the file"  # one final newline is not part of it
    with pytest.raises(StoreKeyError, match=r"SYNCSNAP_PASSWORD_FILE: cannot read .*/nope"):
        passphrase_source({"SYNCSNAP_PASSWORD_FILE": str(tmp_path / "nope")})
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(StoreKeyError, match="is empty"):
        passphrase_source({"SYNCSNAP_PASSWORD_FILE": str(tmp_path / "empty")})


def test_a_passphrase_opens_a_store_made_elsewhere_with_the_default_cost(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Key files record their scrypt parameters: one made with the default cost opens whatever the knob."""
    monkeypatch.delenv("SYNCSNAP_SCRYPT_N")
    root = tmp_path / "store"
    new_store(root)
    (path,) = (root / "keys").iterdir()
    assert json.loads(path.read_text())["kdf"]["n"] == 1 << 17
    monkeypatch.setenv("SYNCSNAP_SCRYPT_N", "1024")
    Store.open(root, writable=False, key=ONE).close()
    monkeypatch.setenv("SYNCSNAP_SCRYPT_N", "1000")
    with pytest.raises(StoreKeyError, match="SYNCSNAP_SCRYPT_N is '1000': expected a power of two"):
        new_store(tmp_path / "other")


def test_passwd_replaces_the_key_in_use(tmp_path: Path) -> None:
    root = tmp_path / "store"
    master = new_store(root)
    with Store.open(root, writable=False, key=ONE) as store:
        old = store.key_id
        new = store.change_passphrase(TWO)
        assert store.key_id == new != old
    assert [p.name for p in (root / "keys").iterdir()] == [new]
    with pytest.raises(StoreKeyError, match="wrong passphrase"):
        Store.open(root, writable=False, key=ONE)
    Store.open(root, writable=False, key=TWO).close()
    with Store.open(root, writable=False, key=master) as store, \
            pytest.raises(StoreKeyError, match="opened with its master key"):
        store.change_passphrase(ONE)


def test_a_key_file_with_absurd_scrypt_parameters_is_refused_not_run(tmp_path: Path) -> None:
    """A key file is input like any other: a planted one asking for terabytes of memory is refused."""
    root = tmp_path / "store"
    new_store(root)
    (path,) = (root / "keys").iterdir()
    doc = json.loads(path.read_text())
    for n in (1 << 30, 1000):
        doc["kdf"]["n"] = n
        path.write_text(json.dumps(doc))
        with pytest.raises(StoreKeyError, match="scrypt parameters out of range"):
            Store.open(root, writable=False, key=ONE)
