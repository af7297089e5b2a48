"""The versions cache of a store (``store/_versions.py``): built incrementally (a new snapshot decodes only
the tree groups no other snapshot had), kept in a file that survives a restart, never trusted when
damaged, following forgotten snapshots; in memory only for read-only opens and local encrypted stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers.store import commit_entries
from syncsnapd.store import MasterKey, NewStore, Store, VersionIndex, versions_of
from syncsnapd.store._versions import CACHE_DIR, CACHE_FILE

N = 3000  # files: about a dozen tree groups of ~256 entries


def base_entries(changed: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> list[tuple[str, str, bytes | str | None]]:
    out: list[tuple[str, str, bytes | str | None]] = [("d", "dir", None)]
    files = {f"d/f{i:05d}.txt": b"file %d" % i for i in range(N)}
    files.update(changed or {})
    out += [(p, "file", data) for p, data in sorted(files.items()) if p not in drop]
    out.append(("link", "symlink", "d/f00001.txt"))
    return out


def history(store: Store, path: str) -> list[tuple[str, str, str, int]]:
    index = VersionIndex.of(store)
    index.update()
    ids = [i.id for i in store.list_snapshots("p")]
    held = index.lookup(ids, [path]).get(path, {})
    return [(v.kind, v.first, v.last, v.count) for v in versions_of([(s, held.get(s)) for s in ids])]


def cache_file(root: Path) -> Path:
    return root / CACHE_DIR / CACHE_FILE


def test_a_new_snapshot_decodes_only_its_new_groups(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", writable=True) as store:
        s1 = commit_entries(store, "p", base_entries())
        index = VersionIndex.of(store)
        assert index.update() is True
        first = index.statistics()
        assert first["groups"] >= 8 and first["groups_decoded"] == first["groups"]
        s2 = commit_entries(store, "p", base_entries({"d/f01234.txt": b"changed"}))
        s3 = commit_entries(store, "p", base_entries())  # back to the first content: no new group at all
        assert index.update() is True
        stats = index.statistics()
        assert 1 <= stats["groups_decoded"] - first["groups_decoded"] <= 2
        assert index.update() is False  # nothing new: nothing read
        assert history(store, "d/f01234.txt") == [("file", s1, s1, 1), ("file", s2, s2, 1), ("file", s3, s3, 1)]
        assert history(store, "d/f00007.txt") == [("file", s1, s3, 3)]
        assert history(store, "link")[0][0] == "symlink"
        # The cache file is private, and the store's check does not mind it.
        assert os.stat(cache_file(store.root)).st_mode & 0o777 == 0o600
        assert os.stat(cache_file(store.root).parent).st_mode & 0o777 == 0o700
        assert store.check(read_data=False).problems == []


def test_the_cache_survives_a_restart(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", writable=True) as store:
        s1 = commit_entries(store, "p", base_entries())
        s2 = commit_entries(store, "p", base_entries(drop=("d/f00002.txt",)))
        before = history(store, "d/f00002.txt")
        assert before == [("file", s1, s1, 1), ("deleted", s2, s2, 1)]
    with Store.open(tmp_path / "s", writable=True) as store:
        index = VersionIndex.of(store)
        assert index.statistics()["loaded_from_file"] == 1
        assert history(store, "d/f00002.txt") == before
        assert index.statistics()["groups_decoded"] == 0  # answered from the file, no tree read


def test_a_damaged_or_foreign_cache_file_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.open(root, writable=True) as store:
        s1 = commit_entries(store, "p", base_entries())
        s2 = commit_entries(store, "p", base_entries({"d/f00003.txt": b"new"}))
        good = history(store, "d/f00003.txt")
    raw = cache_file(root).read_bytes()
    head, _, body = raw.partition(b"\n")
    # A lie that keeps the JSON valid: the newest snapshot is said to hold the first snapshot's groups.
    doc = json.loads(body)
    doc["snapshots"][s2] = doc["snapshots"][s1]
    damaged = [raw[: len(raw) // 2], raw.replace(b"f00003", b"f00004", 1),
               head + b"\n" + json.dumps(doc).encode(), head.replace(b" 1 ", b" 99 ") + b"\n" + body, b"", b"\xff" * 100]
    for i, data in enumerate(damaged):
        cache_file(root).write_bytes(data)
        with Store.open(root, writable=True) as store:
            index = VersionIndex.of(store)
            assert index.statistics()["loaded_from_file"] == 0, i
            assert history(store, "d/f00003.txt") == good, i
            assert index.statistics()["groups_decoded"] >= 8
        assert cache_file(root).read_bytes() == raw, i  # written again, whole


def test_a_forgotten_snapshot_disappears(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", writable=True) as store:
        s1 = commit_entries(store, "p", base_entries())
        s2 = commit_entries(store, "p", base_entries({"d/f00005.txt": b"two"}))
        s3 = commit_entries(store, "p", base_entries({"d/f00005.txt": b"three"}))
        assert len(history(store, "d/f00005.txt")) == 3
        groups = VersionIndex.of(store).statistics()["groups"]
        assert store.forget([s2]) == [s2]
        assert history(store, "d/f00005.txt") == [("file", s1, s1, 1), ("file", s3, s3, 1)]
        stats = VersionIndex.of(store).statistics()
        assert stats["snapshots"] == 2 and stats["groups"] < groups
        store.collect_garbage()
    with Store.open(tmp_path / "s", writable=True) as store:  # the file says so too
        assert history(store, "d/f00005.txt") == [("file", s1, s1, 1), ("file", s3, s3, 1)]
        assert VersionIndex.of(store).statistics()["groups_decoded"] == 0


def test_read_only_and_local_encrypted_stores_keep_it_in_memory(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", writable=True) as store:
        s1 = commit_entries(store, "p", base_entries())
    with Store.open(tmp_path / "s", writable=False) as store:
        assert history(store, "d/f00001.txt") == [("file", s1, s1, 1)]
        assert VersionIndex.of(store).path is None
    assert not (tmp_path / "s" / CACHE_DIR).exists()
    master = MasterKey.generate()
    with Store.open(tmp_path / "e", writable=True, key=master, create=NewStore(master=master)) as store:
        e1 = commit_entries(store, "p", base_entries())
        assert history(store, "d/f00001.txt") == [("file", e1, e1, 1)]
    assert not (tmp_path / "e" / CACHE_DIR).exists()  # no plaintext path on the store's disk


def test_names_that_look_like_the_json_between_entries(tmp_path: Path) -> None:
    """Pieces are cut at ``],[``: a name (or a symlink target) holding it, or quotes and backslashes,
    must not mislead the cache, in the first group that holds it or in later ones."""
    odd = ['a],[b.txt', 'x"],["y.txt', 'back\\slash],[', "new\nline", "caf\udce9.txt"]
    with Store.open(tmp_path / "s", writable=True) as store:
        extra: list[tuple[str, str, bytes | str | None]] = [(name, "file", b"one") for name in odd]
        extra.append(("z],[link", "symlink", '"],["d","dir",0,0,0,0,null'))
        s1 = commit_entries(store, "p", base_entries() + extra)
        extra2 = [(name, "file", b"two") if name == odd[1] else (name, kind, data) for name, kind, data in extra]
        s2 = commit_entries(store, "p", base_entries() + extra2)
        for name in odd:
            expected = [("file", s1, s1, 1), ("file", s2, s2, 1)] if name == odd[1] else [("file", s1, s2, 2)]
            assert history(store, name) == expected, name
        assert history(store, "z],[link") == [("symlink", s1, s2, 2)]
        assert history(store, "d") == [("dir", s1, s2, 2)]
        held = VersionIndex.of(store).lookup([s1], ["z],[link"])["z],[link"][s1]
        assert held[6] == '"],["d","dir",0,0,0,0,null'


def test_a_write_cut_by_a_kill_leaves_the_old_file_and_its_temporary_file_goes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.open(root, writable=True) as store:
        s1 = commit_entries(store, "p", base_entries())
        history(store, "d/f00001.txt")
    old = cache_file(root).read_bytes()
    # What a kill between writing the temporary file and renaming it leaves: the old file, and half a new one.
    leftover = cache_file(root).parent / f".{CACHE_FILE}.deadbeef.tmp"
    leftover.write_bytes(old[: len(old) // 3])
    with Store.open(root, writable=True) as store:
        assert VersionIndex.of(store).statistics()["loaded_from_file"] == 1
        s2 = commit_entries(store, "p", base_entries({"d/f00001.txt": b"new"}))
        assert history(store, "d/f00001.txt") == [("file", s1, s1, 1), ("file", s2, s2, 1)]
    assert not leftover.exists()
    assert sorted(p.name for p in cache_file(root).parent.iterdir()) == [CACHE_FILE]
