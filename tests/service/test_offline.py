"""The offline commands (`syncsnapd snapshots|restore|check`): output and exit codes, also while a
daemon holds the store open for writing."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.daemon import make_env, write_config
from helpers.store import commit_raw, flip_byte, snapshot, tree_state, write_files
from syncsnapd.service import run_check, run_diff, run_restore, run_snapshots
from syncsnapd.store import Store, hash_bytes


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
    assert lines[0].split() == ["ID", "PROJECT", "HOST", "TIME", "FILES", "BYTES"]
    assert lines[1].split() == [docs.id, "docs", daemon_store.host, docs.time, "2", "4.9", "KiB"]
    assert lines[2].split() == [code_.id, "code", daemon_store.host, code_.time, "1", "12", "B"]
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
                     "1 directory, 0 symlinks."]
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
    assert lines[3].endswith(": 1 problem, 1 damaged snapshot.")
    # Without reading data only structure is checked, and the flipped byte goes unnoticed.
    assert run(run_check, daemon_store.root)[0] == 0


T0 = 1_650_000_000_000_000_000


def _stored(store: Store, data: bytes) -> str:
    h = hash_bytes(data)
    writer = store.begin_write()
    writer.add_chunk(h, data)
    writer.finish()
    writer.committed()
    return h


# Entries of crafted snapshots (as `[path, kind, size, mtime_ns, mode, inode, data]`, CHUNK standing for a
# stored chunk of one byte): what the adversarial trial fed `syncsnapd restore`, and its neighbours.
CRAFTED: dict[str, list[Any]] = {
    "mode a string": ["a", "file", 1, T0, "0644", 0, "CHUNK"],
    "mtime 10**30": ["a", "file", 1, 10**30, 0o644, 0, "CHUNK"],
    "mtime -10**30": ["a", "file", 1, -(10**30), 0o644, 0, "CHUNK"],
    "mtime NaN": ["a", "file", 1, math.nan, 0o644, 0, "CHUNK"],
    "mtime a float": ["a", "file", 1, 1.5e18, 0o644, 0, "CHUNK"],
    "size a string": ["a", "file", "1", T0, 0o644, 0, "CHUNK"],
    "size negative": ["a", "file", -1, T0, 0o644, 0, "CHUNK"],
    "path a number": [5, "file", 1, T0, 0o644, 0, "CHUNK"],
    "path with NUL": ["a\0b", "file", 1, T0, 0o644, 0, "CHUNK"],
    "path not encodable": ["\ud800", "file", 1, T0, 0o644, 0, "CHUNK"],
    "chunks a string": ["a", "file", 1, T0, 0o644, 0, "abc"],
    "chunks not hashes": ["a", "file", 1, T0, 0o644, 0, [1, 2]],
    "symlink target a list": ["a", "symlink", 1, T0, 0o777, 0, ["x"]],
    "symlink target empty": ["a", "symlink", 0, T0, 0o777, 0, ""],
    "missing field": ["a", "file", 1, T0, 0o644, 0],
    "extra field": ["a", "file", 1, T0, 0o644, 0, "CHUNK", "more"],
    "not a list": {"path": "a"},
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_snapshot_is_reported_damaged_not_a_traceback(daemon_store: Store, tmp_path: Path,
                                                                case: str) -> None:
    chunk = _stored(daemon_store, b"x")
    entry = CRAFTED[case]
    if isinstance(entry, list):
        entry = [[chunk] if v == "CHUNK" else v for v in entry]
    sid = commit_raw(daemon_store, "evil", [[entry]])
    code, lines = run(run_restore, daemon_store.root, sid, tmp_path / "out")
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"Cannot restore: the list of files of snapshot {sid} is damaged")
    assert not (tmp_path / "out").exists()
    code, lines = run(run_check, daemon_store.root)
    assert code == 1
    assert lines[-2].startswith(f"damaged: snapshot {sid}: 0 file(s) cannot be fully restored; part of its list")
    code, lines = run(run_diff, daemon_store.root, sid, daemon_store.list_snapshots("docs")[0].id)
    assert (code, lines) == (1, [lines[0]]) and sid in lines[0] and "damaged" in lines[0]
    assert run(run_snapshots, daemon_store.root)[0] == 0


SNAPSHOT_FIELDS = {
    "stats.files a string": ("stats", "files", "many", "stats.files is not a count"),
    "stats.bytes a float": ("stats", "bytes", 1.5, "stats.bytes is not a count"),
    "stats.duration a string": ("stats", "duration_seconds", "slow", "stats.duration_seconds is not a duration"),
    "project a number": (None, "project", 5, "project is not a string"),
    "root a list": (None, "root", ["/"], "root is not a string"),
    "tree a string": (None, "tree", "abc", "tree is not a list of hashes"),
    "tree not hashes": (None, "tree", [1], "tree is not a list of hashes"),
    "time a number": (None, "time", 5, "time is not a string"),
    "format 2": (None, "format", 2, "not a snapshot file of this id and format"),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_FIELDS))
def test_a_crafted_snapshot_file_is_reported_damaged(daemon_store: Store, tmp_path: Path, case: str) -> None:
    where, key, value, reason = SNAPSHOT_FIELDS[case]

    def edit(doc: dict[str, Any]) -> None:
        (doc if where is None else doc[where])[key] = value

    sid = commit_raw(daemon_store, "evil", [[["a", "dir", 0, T0, 0o755, 0, None]]], edit=edit)
    code, lines = run(run_snapshots, daemon_store.root)
    assert code == 0 and len(lines) == 3 and sid not in "".join(lines)  # listed only when intact
    code, lines = run(run_restore, daemon_store.root, sid, tmp_path / "out")
    assert code == 1 and lines == [f"Cannot restore: snapshot file {sid}.json is damaged ({reason}); nothing was "
                                   "restored."]
    code, lines = run(run_check, daemon_store.root)
    assert code == 1 and f"corrupt: snapshot {sid} (the snapshot file is damaged)" in lines


# Any JSON value, hostile ones first: out-of-range numbers, NaN and infinities, wrong types.
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**130), max_value=2**130),
              st.sampled_from([2**63, -(2**63) - 1, 10**30, 0o177777, -1]), st.floats(),
              st.text(max_size=8), st.sampled_from(["", "a/../b", "\ud800", "a\0", "/abs", "0" * 64])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=6,
)


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[str, Any]:
    """A change to a valid snapshot: one field of one entry, an entry's length, a whole group, or a field
    of the snapshot file."""
    what = draw(st.sampled_from(["field", "drop", "append", "group", "file"]))
    if what == "field":
        return what, (draw(st.integers(0, 3)), draw(st.integers(0, 6)), draw(JSON_VALUES))
    if what in ("drop", "append"):
        return what, (draw(st.integers(0, 3)), draw(JSON_VALUES))
    if what == "group":
        return what, draw(JSON_VALUES)
    key = draw(st.sampled_from(["project", "time", "root", "tree", "format", "stats.files", "stats.bytes",
                                "stats.warnings", "stats.skipped", "stats.duration_seconds", "stats"]))
    return what, (key, draw(JSON_VALUES))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations())
def test_mutated_snapshots_never_give_a_traceback(daemon_store: Store, mutation: tuple[str, Any]) -> None:
    """Whatever a snapshot file or list of entries says, restore, check, snapshots and diff answer with
    an exit code and sentences, never an exception."""
    chunk = _stored(daemon_store, b"x")
    entries: list[Any] = [["d", "dir", 0, T0, 0o755, 7, None], ["d/f", "file", 1, T0, 0o644, 8, [chunk]],
                          ["l", "symlink", 1, T0, 0o777, 9, "d"], ["e", "file", 0, T0, 0o600, 10, []]]
    what, how = mutation
    groups: list[Any] = [entries]
    edit = None
    if what == "field":
        i, field, value = how
        entries[i][field] = value
    elif what == "drop":
        entries[how[0]].pop()
    elif what == "append":
        entries[how[0]].append(how[1])
    elif what == "group":
        groups = [entries, how]
    else:
        key, value = how

        def edit(doc: dict[str, Any]) -> None:
            top, _, sub = key.partition(".")
            if sub and isinstance(doc.get(top), dict):
                doc[top][sub] = value
            else:
                doc[top] = value

    try:
        sid = commit_raw(daemon_store, "evil", groups, edit=edit)
    except ValueError:
        return  # not JSON (a lone surrogate in a key cannot be written either)
    other = daemon_store.list_snapshots("docs")[0].id
    with tempfile.TemporaryDirectory() as tmp:
        for fn, args in [(run_restore, (sid, Path(tmp) / "out")), (run_check, ()), (run_snapshots, ()),
                         (run_diff, (sid, other)), (run_diff, (other, sid))]:
            code, lines = run(fn, daemon_store.root, *args)
            assert code in (0, 1) and lines, (fn.__name__, lines)
    os.unlink(daemon_store.files.snapshot_path(sid))  # keep the store small for the next example


def test_offline_commands_exit_quietly_when_their_output_is_closed(daemon_store: Store, tmp_path: Path) -> None:
    """`syncsnapd snapshots | head -1`: the reader is gone; no BrokenPipeError traceback, status 1 (what
    the Python documentation recommends for a closed stdout, "Note on SIGPIPE" in the signal module)."""
    cfg = write_config(tmp_path, {})
    docs = daemon_store.list_snapshots("docs")[0].id
    for args in (["snapshots"], ["check"], ["diff", docs, docs], ["diff", docs, "--json"]):
        read, write = os.pipe()
        os.close(read)  # as `head -1` does once it has its line
        try:
            proc = subprocess.run([sys.executable, "-m", "syncsnapd", *args, "--config", str(cfg)], stdout=write,
                                  stderr=subprocess.PIPE, env=make_env(tmp_path), timeout=60)
        finally:
            os.close(write)
        assert (proc.returncode, proc.stderr) == (1, b""), (args, proc.stderr.decode())
