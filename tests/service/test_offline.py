"""The offline commands (`syncsnapd snapshots|restore|check`): output and exit codes, also while a
daemon holds the store open for writing."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from helpers.store import flip_byte, snapshot, tree_state, write_files
from syncsnapd.service import run_check, run_restore, run_snapshots
from syncsnapd.store import Store


@pytest.fixture
def daemon_store(tmp_path: Path) -> Iterator[Store]:
    """A store held open for writing, as by a running daemon (its lock is taken) with two snapshots."""
    store = Store.open(tmp_path / "store", writable=True)
    write_files(tmp_path / "docs", {"readme.txt": b"hello\n", "img/logo.bin": os.urandom(5000)})
    write_files(tmp_path / "code", {"main.py": b"print('hi')\n"})
    trio.run(snapshot, store, tmp_path / "docs", "docs")
    trio.run(snapshot, store, tmp_path / "code", "code")
    yield store
    store.close()


def run(fn: object, *args: object, **kw: object) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = fn(*args, out, **kw)  # type: ignore[operator]
    return code, out.getvalue().splitlines()


def test_snapshots_prints_a_table_oldest_first(daemon_store: Store) -> None:
    docs, code_ = daemon_store.list_snapshots()
    code, lines = run(run_snapshots, daemon_store.root)
    assert code == 0
    assert lines[0].split() == ["ID", "PROJECT", "TIME", "FILES", "BYTES"]
    assert lines[1].split() == [docs.id, "docs", docs.time, "2", "4.9", "KiB"]
    assert lines[2].split() == [code_.id, "code", code_.time, "1", "12", "B"]
    assert len(lines) == 3
    code, lines = run(run_snapshots, daemon_store.root, project="code")
    assert code == 0 and len(lines) == 2 and lines[1].startswith(code_.id)
    code, lines = run(run_snapshots, daemon_store.root, project="nope")
    assert (code, lines) == (0, ["No snapshots of project 'nope'."])


def test_commands_on_a_missing_store_fail_with_2(tmp_path: Path) -> None:
    code, lines = run(run_snapshots, tmp_path / "nowhere")
    assert code == 2 and lines == [f"Cannot open the store: {tmp_path / 'nowhere'} is not a syncsnap store "
                                   "(no config.json)."]
    assert run(run_check, tmp_path / "nowhere")[0] == 2
    assert run(run_restore, tmp_path / "nowhere", "x", tmp_path / "out")[0] == 2
    assert not (tmp_path / "nowhere").exists()


def test_restore_command(daemon_store: Store, tmp_path: Path) -> None:
    docs = daemon_store.list_snapshots("docs")[0]
    code, lines = run(run_restore, daemon_store.root, docs.id, tmp_path / "out")
    assert code == 0
    assert lines == [f"Restored snapshot {docs.id} into {tmp_path / 'out'}: 2 files (4.9 KiB), "
                     "1 directories, 0 symlinks."]
    assert tree_state(tmp_path / "out") == tree_state(tmp_path / "docs")


def test_restore_command_errors(daemon_store: Store, tmp_path: Path) -> None:
    docs = daemon_store.list_snapshots("docs")[0]
    code, lines = run(run_restore, daemon_store.root, "20200101T000000.000Z-abcdef", tmp_path / "out")
    assert code == 2
    assert lines == [f"There is no snapshot '20200101T000000.000Z-abcdef' in {daemon_store.root}; "
                     "`syncsnapd snapshots` lists them."]
    assert run(run_restore, daemon_store.root, "../etc", tmp_path / "out")[0] == 2
    assert not (tmp_path / "out").exists()
    code, lines = run(run_restore, daemon_store.root, docs.id, tmp_path / "code")
    assert code == 2
    assert lines == [f"Cannot restore: the target {tmp_path / 'code'} is not empty; restore into a new "
                     "or empty directory (or allow overwriting)."]


def test_check_command_on_a_healthy_store(daemon_store: Store) -> None:
    code, lines = run(run_check, daemon_store.root, read_data=True)
    assert code == 0 and len(lines) == 1
    assert re.fullmatch(r"Checked 2 snapshots, 2 packs, 5 chunks \(5\.\d KiB read\): no problems found\.",
                        lines[0])
    assert run(run_check, daemon_store.root) == (0, ["Checked 2 snapshots, 2 packs, 5 chunks (data not read; "
                                                     "--read-data re-hashes it): no problems found."])


def test_check_command_reports_damage(daemon_store: Store) -> None:
    docs = daemon_store.list_snapshots("docs")[0]
    logo = next(e for e in daemon_store.load_entries(docs.id) if e.path == "img/logo.bin")
    loc = daemon_store.locate(logo.chunks[0])
    assert loc is not None
    flip_byte(daemon_store.pack_path(loc.pack), loc.offset + 10)
    code, lines = run(run_check, daemon_store.root, read_data=True)
    assert code == 1
    assert lines == [
        f"corrupt: chunk {logo.chunks[0]} in pack {loc.pack} (does not match its hash)",
        f"  damages snapshot {docs.id}: 1 file(s): 'img/logo.bin'",
        f"damaged: snapshot {docs.id}: 1 file(s) cannot be fully restored: 'img/logo.bin'",
        lines[3],
    ]
    assert lines[3].endswith(": 1 problem(s), 1 damaged snapshot(s).")
    # Without reading data only structure is checked, and the flipped byte goes unnoticed.
    assert run(run_check, daemon_store.root)[0] == 0
