"""The master index in its compact form (``_chunkmap.py``): the same answers as a plain dict through
merges of recent entries, removals, revivals and compaction, and the prune bookkeeping on top of it."""

from __future__ import annotations

import random
from pathlib import Path

from syncsnapd.store import ChunkLocation
from syncsnapd.store._chunkmap import ChunkMap
from syncsnapd.store._index import MasterIndex


def _records(rng: random.Random, n: int) -> list[tuple[bytes, int, int, int, int]]:
    return [(rng.randbytes(32), 8 + i * 100, 50, 100, i & 1) for i in range(n)]


def test_chunk_map_answers_as_a_dict_through_merges_removals_and_compaction() -> None:
    rng = random.Random(14)
    cmap = ChunkMap()
    model: dict[bytes, ChunkLocation] = {}
    keys: list[bytes] = []
    for step in range(12):
        # Enough additions that the recent entries are merged into the table several times.
        pack = f"{step:064x}"
        for h, off, length, raw, flags in _records(rng, 3000):
            keys.append(h)
            loc = ChunkLocation(pack, off, length, raw, flags)
            cmap.put(h, loc, replace=False)
            model.setdefault(h, loc)
        again = rng.sample(keys, 200)  # known keys keep their location unless replaced
        for h in again[:100]:
            cmap.put(h, ChunkLocation("f" * 64, 1, 2, 3, 0), replace=False)
            model.setdefault(h, ChunkLocation("f" * 64, 1, 2, 3, 0))
        for h in again[100:]:
            model[h] = ChunkLocation("e" * 64, 7, 8, 9, 1)
            cmap.put(h, model[h], replace=True)
        for h in rng.sample(keys, 500):
            loc = model.get(h)
            wrong = cmap.remove(h, "0" * 64, 0)  # only at the given place
            assert not wrong or loc == ChunkLocation("0" * 64, 0, 0, 0, 0)
            assert cmap.remove(h) == (loc is not None)
            model.pop(h, None)
        revived = rng.sample(keys, 100)
        for h in revived:
            if h not in model:
                model[h] = ChunkLocation("d" * 64, 3, 4, 5, 0)
                cmap.put(h, model[h], replace=False)
        if step % 4 == 3:
            gone = f"{step - 2:064x}"
            assert cmap.remove_packs({gone}) == sum(1 for loc in model.values() if loc.pack == gone)
            model = {h: loc for h, loc in model.items() if loc.pack != gone}
        assert len(cmap) == len(model)
    cmap.flush()
    for h in keys:
        assert cmap.get(h) == model.get(h)
        assert cmap.contains(h) == (h in model)
    assert dict(cmap.items()) == model
    assert cmap.get(rng.randbytes(32)) is None


def test_master_index_answers_across_merges_and_a_prune_sweep(tmp_path: Path) -> None:
    rng = random.Random(3)
    index = MasterIndex(tmp_path)
    packs = {f"{p:064x}": _records(rng, 2500) for p in range(6)}
    for pack, records in packs.items():
        index.add_pack(pack, records)
    first = next(iter(packs))
    # The same blob in a later pack keeps its first location.
    index.add_pack("a" * 64, [packs[first][0]])
    assert index.lookup(packs[first][0][0].hex()) == ChunkLocation(first, *packs[first][0][1:])
    assert len(index) == 6 * 2500
    for pack, records in packs.items():
        for h, off, length, raw, flags in records[::97]:
            assert index.lookup(h.hex()) == ChunkLocation(pack, off, length, raw, flags)
            assert index.has(h.hex())
    assert not index.has("00" * 32) and index.lookup("not a hash") is None and not index.has("ab")

    # A writer relies on one blob of the last pack; a prune finds nothing used: that pack is kept
    # for it (repacked), every other one is deleted and its blobs hidden from writers at once.
    last = list(packs)[-1]
    claims = index.open_claims()
    kept = packs[last][5][0].hex()
    assert index.use(kept, claims)
    index.begin_collection()
    sweep = index.sweep(packs, set(), min_unused=0.1, hide=True)
    assert sorted(sweep.delete) == sorted(p for p in packs if p != last)
    assert [h for h, _ in sweep.repack[last]] == [kept]
    assert index.has(kept)
    assert not index.has(packs[last][6][0].hex()) and not index.has(packs[first][1][0].hex())
    assert len(index) == 1  # the kept blob only
    # The prune moves the kept blob; readers find its new place.
    index.relocate("b" * 64, [(bytes.fromhex(kept), 8, 50, 100, 0)])
    assert index.lookup(kept) == ChunkLocation("b" * 64, 8, 50, 100, 0)
    index.forget_packs({last})
    assert index.lookup(kept) == ChunkLocation("b" * 64, 8, 50, 100, 0)
    index.end_collection()
    index.close_claims(claims)
