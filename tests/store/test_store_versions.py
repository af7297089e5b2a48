"""Store format versions: new stores are version 2 with content-defined chunks; a version 1 store (made
by the version 1 code, tests/store/fixtures/v1-store) keeps working as it is; a config.json value this
version does not know is refused by name; and content-defined chunks are what a snapshot, restore, diff,
check and prune work on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blake3
import pytest

from helpers.store import backdate, snapshot, write_files
from syncsnapd.engine import diff_entries, restore_snapshot, scan_live
from syncsnapd.store import FixedChunker, Store, StoreError

MiB = 1 << 20
FIXTURE = Path(__file__).parent / "fixtures" / "v1-store"
# What the fixture's only snapshot (project "p") holds: made by tests/store/fixtures/README.md's recipe.
V1_FILES = {"a.txt": b"hello\n", "dir/b.bin": bytes(range(256)) * 6144}


def pseudo_random(n: int, seed: bytes) -> bytes:
    return blake3.blake3(seed).digest(length=n)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def v1_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root)
    return root


async def test_a_version_1_store_opens_restores_checks_and_takes_new_snapshots(
        v1_store: Path, tmp_path: Path) -> None:
    config_before = (v1_store / "config.json").read_bytes()
    with Store.open(v1_store, writable=True) as store:
        assert store.config.version == 1 and isinstance(store.chunker, FixedChunker)
        [old] = store.list_snapshots("p")
        restore_snapshot(store, old.id, tmp_path / "restored")
        assert files_of(tmp_path / "restored") == V1_FILES
        assert (tmp_path / "restored" / "link").readlink() == Path("a.txt")
        assert store.check().ok

        # New data in a version 1 store is cut as version 1 cut it: fixed 1 MiB chunks.
        src = tmp_path / "src"
        big = pseudo_random(3 * MiB + 5, b"v1")
        write_files(src, {**V1_FILES, "new.bin": big})
        backdate(src)
        new = await snapshot(store, src)
        assert new.files_new == 1 and new.bytes_added == len(big)  # a.txt and b.bin deduplicated
        entries = {e.path: e for e in store.load_entries(new.id)}
        locations = [store.locate(h) for h in entries["new.bin"].chunks]
        assert [loc.raw_length for loc in locations if loc] == [MiB, MiB, MiB, 5]
        restore_snapshot(store, new.id, tmp_path / "restored-new")
        assert files_of(tmp_path / "restored-new") == {**V1_FILES, "new.bin": big}
        assert store.check().ok
    # The store was not converted: its config is the one version 1 wrote.
    assert (v1_store / "config.json").read_bytes() == config_before
    with Store.open(v1_store, writable=False) as store:
        assert [s.id for s in store.list_snapshots("p")] == [old.id, new.id]


V2_CONFIG = {"format": "syncsnap-store", "version": 2,
             "chunker": {"algorithm": "fastcdc-2020", "min": 262144, "avg": 524288, "max": 2097152,
                         "normalization": 2},
             "chunk_id": "blake3", "compression": "zstd", "compression_level": -1, "encryption": "none",
             "pack_size": 16 * MiB}


@pytest.mark.parametrize(("change", "named"), [
    ({"version": 3}, '"version" is 3'),
    ({"encryption": "aes-128-ocb"}, '"encryption" is "aes-128-ocb"'),  # issue 15's values are known now
    ({"encryption": None}, '"encryption" is missing'),
    ({"chunk_id": "sha256"}, '"chunk_id" is "sha256"'),
    ({"chunk_id": "blake3-keyed"}, '"chunk_id" is "blake3-keyed" in a store that is not encrypted'),
    ({"encryption": "aes-256-gcm"}, '"chunk_id" is "blake3" in an encrypted store'),
    ({"compression": "lz4"}, '"compression" is "lz4"'),
    ({"chunker": {"algorithm": "rabin", "avg": 524288}}, '"chunker": "algorithm" is \'rabin\''),
    ({"chunker": {**V2_CONFIG["chunker"], "seed": 3}}, '"chunker": "seed" is a parameter'),  # type: ignore[dict-item]
    ({"chunker": None}, '"chunker" is missing'),
    ({"pack_size": -1}, '"pack_size" is -1'),
])
@pytest.mark.parametrize("writable", [False, True])
def test_a_config_value_this_version_does_not_know_is_refused_by_name(
        tmp_path: Path, change: dict[str, object], named: str, writable: bool) -> None:
    root = tmp_path / "store"
    with Store.open(root, writable=True):
        pass
    config = {**V2_CONFIG, **change}
    config = {k: v for k, v in config.items() if v is not None}
    (root / "config.json").write_text(json.dumps(config))
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(StoreError) as info:
        Store.open(root, writable=writable)
    assert named in str(info.value) and str(root) in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == before
    assert json.loads((root / "config.json").read_text()) == config


def test_a_new_store_records_its_chunker_chunk_ids_and_encryption(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store", writable=True) as store:
        assert store.config.version == 2
        assert store.chunker.describe() == V2_CONFIG["chunker"]
    assert json.loads((tmp_path / "store" / "config.json").read_text()) == V2_CONFIG


async def test_one_byte_inserted_at_the_start_of_a_large_file_adds_about_one_chunk(tmp_path: Path) -> None:
    src = tmp_path / "src"
    data = pseudo_random(24 * MiB, b"insert")
    write_files(src, {"big.bin": data, "same.bin": pseudo_random(3 * MiB, b"same")})
    backdate(src)
    with Store.open(tmp_path / "store", writable=True) as store:
        first = await snapshot(store, src)
        assert first.bytes_added == 27 * MiB
        write_files(src, {"big.bin": b"!" + data})
        backdate(src)
        inserted = await snapshot(store, src)
        # Fixed 1 MiB chunks re-stored all 24 MiB here; content-defined ones re-store the first chunk.
        assert 0 < inserted.bytes_added <= 2 * MiB
        write_files(src, {"big.bin": b"!" + data + pseudo_random(MiB, b"tail")})
        backdate(src)
        appended = await snapshot(store, src)
        assert MiB < appended.bytes_added < 2 * MiB
        middle = bytearray(b"!" + data)
        middle[12 * MiB:12 * MiB + 4096] = bytes(4096)
        write_files(src, {"big.bin": bytes(middle)})
        backdate(src)
        changed = await snapshot(store, src)
        assert 0 < changed.bytes_added <= 2 * MiB

        # Restore, diff, check and prune work on content-defined chunks as on any.
        for s, content in ((first, data), (inserted, b"!" + data), (changed, bytes(middle))):
            target = tmp_path / f"restored-{s.id}"
            restore_snapshot(store, s.id, target)
            assert (target / "big.bin").read_bytes() == content
        old, new = store.load_entries(first.id), store.load_entries(inserted.id)
        diff = diff_entries(old, new, from_=first.id, to=inserted.id)
        assert [m.path for m in diff.modified] == ["big.bin"] and diff.unchanged == 1
        live = {e.path: e for e in scan_live(str(src), {e.path: e for e in new}, chunker=store.chunker)}
        assert live["same.bin"].chunks == {e.path: e for e in new}["same.bin"].chunks
        (src / "big.bin").write_bytes(b"!" + data)  # same content, new mtime: read and hashed, not modified
        live_diff = diff_entries(new, list(scan_live(str(src), {e.path: e for e in new}, chunker=store.chunker)),
                                 from_=inserted.id, to="live")
        assert live_diff.modified == [] and live_diff.unchanged == 2
        assert store.check().ok
        store.forget([first.id, inserted.id, appended.id])
        assert store.collect_garbage().chunks_unused > 0  # the chunks only the forgotten ones used
        restore_snapshot(store, changed.id, tmp_path / "after-prune")
        assert (tmp_path / "after-prune" / "big.bin").read_bytes() == bytes(middle)
        assert store.check().ok
