"""The snapshot list is cached: a writable store (the daemon) does not list the snapshot directory again
at each run, yet sees its own snapshots and forgets at once; a read-only store (an offline command) sees
what another process wrote, at once.

The directory listings are counted with a wrapper around ``os.listdir`` that calls through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.store import HERE, commit_entries, write_files
from syncsnapd.store import Store


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.listdir

    def counting(path: str | os.PathLike[str] = ".") -> list[str]:
        if os.fspath(path).endswith("snapshots"):
            seen.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    return seen


def test_a_writable_store_lists_its_snapshots_once_and_follows_its_own_changes(
        tmp_path: Path, listings: list[str]) -> None:
    with Store.open(tmp_path / "store", writable=True) as store:
        ids = [commit_entries(store, "p", [("f", "file", str(n).encode())]) for n in range(5)]
        assert [s.id for s in store.list_snapshots("p")] == sorted(ids)
        listed = len(listings)
        for _ in range(50):  # what each run, the API and the watcher ask
            assert [s.id for s in store.list_snapshots("p")] == sorted(ids)
            assert store.latest("p") is not None
        new = commit_entries(store, "p", [("f", "file", b"new")])
        assert store.latest("p") is not None and store.latest("p").id == new  # type: ignore[union-attr]
        assert store.forget(ids[:2]) == sorted(ids[:2])
        assert [s.id for s in store.list_snapshots()] == sorted(ids[2:]) + [new]
        assert len(listings) == listed  # not one more listing for all of that
        store.catalog.refresh()
        assert [s.id for s in store.list_snapshots()] == sorted(ids[2:]) + [new]
        assert len(listings) == listed + 1


def test_a_snapshot_committed_before_the_first_listing_does_not_hide_the_older_ones(tmp_path: Path) -> None:
    """A writable store that commits before it has listed its directory lists it all the same."""
    root = tmp_path / "s"
    with Store.open(root, writable=True) as store:
        first = commit_entries(store, "p", [("a", "file", b"1")])
    with Store.open(root, writable=True) as store:
        second = commit_entries(store, "p", [("a", "file", b"2")])
        assert [s.id for s in store.list_snapshots()] == [first, second]


def test_a_read_only_store_sees_what_another_process_writes_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    write_files(folder, {"a": b"a"})
    root = tmp_path / "store"
    with Store.open(root, writable=True) as store:
        first = commit_entries(store, "p", [("a", "file", b"a")])
    with Store.open(root, writable=False) as reader:  # `syncsnapd snapshots` while the daemon runs
        assert [s.id for s in reader.list_snapshots()] == [first]
        for n in range(3):
            subprocess.run([sys.executable, str(HERE), "snapshot", str(root), str(folder), "p"], check=True,
                           capture_output=True)
            assert len(reader.list_snapshots("p")) == n + 2
        with Store.open(root, writable=True) as writer:
            gone = writer.forget([first])
        assert gone == [first]
        assert first not in [s.id for s in reader.list_snapshots()]
