"""``syncsnap diff``, ``restore``, ``check`` and ``prune`` through the console script, against a real daemon:
what a user reads, what lands on disk, and the exit codes."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from helpers.client import SYNCSNAP, Pty, cli  # noqa: E402
from helpers.daemon import DaemonProcess


def project_config(base: Path, pid: str, folder: Path, extra: str = "") -> str:
    """A ``[[projects]]`` table for ``extra_daemon`` (for settings the fixture does not write, e.g. ``keep``)."""
    return f'[[projects]]\nid = "{pid}"\npath = "{folder}"\n{extra}\n'


def small_tree(root: Path) -> None:
    root.mkdir()
    (root / "sub").mkdir()
    files = {"a.txt": b"hello\n", "b.txt": b"bye bye\n", "sub/c.txt": b"c" * 3000}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
        os.chmod(root / rel, 0o644)
    os.symlink("a.txt", root / "link")


def tree(root: Path) -> dict[str, Any]:
    """path -> (kind, content or target, permission bits) of everything below ``root``."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("symlink", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", p.stat().st_mode & 0o7777)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def wait_for_history(d: DaemonProcess, run: str) -> None:
    """The daemon writes its history about 0.25 s after a run's end went out on the streams."""
    deadline = time.monotonic() + 10
    while '"ended_at":"' not in d.curl(f"http://localhost/api/v1/runs/{run}").stdout:
        assert time.monotonic() < deadline, f"{run} not in the daemon's history"
        time.sleep(0.02)


def snapshot_ids(d: DaemonProcess, project: str = "docs") -> list[str]:
    return [s["id"] for s in json.loads(cli(d, "snapshots", project, "--json").stdout)["snapshots"]]


def test_diff_lists_each_change_and_sums_them_up(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    small_tree(docs)
    d = daemon_factory({"docs": docs})
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    (docs / "new.txt").write_bytes(b"new\n")
    (docs / "b.txt").unlink()
    (docs / "a.txt").write_bytes(b"hello again\n")
    os.chmod(docs / "sub/c.txt", 0o600)
    (docs / "link").unlink()
    (docs / "link").write_bytes(b"now a file")
    [first] = snapshot_ids(d)

    changes = ["M a.txt  (content 6 B -> 12 B)", "- b.txt  (8 B)", "T link  (symlink -> file)", "+ new.txt  (4 B)",
               "M sub/c.txt  (mode 0644 -> 0600)"]
    r = cli(d, "diff", "docs", "latest")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == changes + [
        "", f"{first} -> the live folder: 1 added (4 B), 1 removed (8 B), 3 modified, 1 unchanged; "
            "2.9 KiB -> 3.0 KiB"]

    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    second = snapshot_ids(d)[-1]
    r = cli(d, "diff", "docs", first, second)  # between two snapshots: the same changes
    assert r.stdout.splitlines()[:-2] == changes and r.stdout.splitlines()[-1].startswith(f"{first} -> {second}: ")
    assert cli(d, "diff", "docs", "latest").stdout.splitlines() == [
        f"{second} -> the live folder: 0 added (0 B), 0 removed (0 B), 0 modified, 5 unchanged; 3.0 KiB -> 3.0 KiB"]

    doc = json.loads(cli(d, "diff", "docs", first, "latest", "--json").stdout)
    assert (doc["from"], doc["to"], doc["truncated"]) == (first, second, False)
    assert doc["summary"] == {"added": 1, "removed": 1, "modified": 3, "unchanged": 1, "size_added": 4,
                              "size_removed": 8, "size_before": 3014, "size_after": 3026}
    r = cli(d, "diff", "docs", first, "--limit", "1")
    assert r.stdout.splitlines()[:3] == ["M a.txt  (content 6 B -> 12 B)", "- b.txt  (8 B)", "+ new.txt  (4 B)"]
    assert r.stdout.splitlines()[-1] == ("(lists cut at 1 entries each; --limit N shows more, --json gives them "
                                         "to scripts)")

    r = cli(d, "diff", "docs", "nope")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "syncsnap: Project 'docs' has no snapshot 'nope'. "
                                                        "(`syncsnap snapshots PROJECT` lists a project's snapshots.)\n")


def test_restore_follows_to_its_end_and_never_overwrites_unless_told(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    small_tree(docs)
    d = daemon_factory({"docs": docs})
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    [sid] = snapshot_ids(d)
    work = short_tmp / "work"
    work.mkdir()

    def restore(*args: str) -> Any:
        return cli(d, "restore", *args, cwd=work)

    r = restore("docs", "latest", "out", "--follow", "--json")  # a relative target: from where the user is
    assert r.returncode == 0, r.stderr
    events = ndjson(r.stdout)
    assert {e["kind"] for e in events} == {"restore"} and [e["step"] for e in events][0] == 1
    assert events[-1]["state"] == "completed" and events[-1]["step"] == events[-1]["steps"] == 4
    assert events[-1]["result"] == {"snapshot": sid, "target": str(work / "out"), "paths": [], "files": 3,
                                    "dirs": 1, "symlinks": 1, "bytes": 3014}
    assert r.stderr == (f"docs: restored snapshot {sid} into {work}/out: 3 files (2.9 KiB), 1 directory, "
                        "1 symlink\n")
    assert tree(work / "out") == tree(docs)

    r = restore("docs", "latest", "out", "--follow")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"syncsnap: the target {work}/out is not empty; restore into a new or empty directory, "
                        "or add --overwrite to restore over what is there.\n")
    (work / "out/a.txt").write_bytes(b"scribbled over")
    (work / "out/mine.txt").write_bytes(b"not in the snapshot")
    r = restore("docs", sid, "out", "--overwrite", "--follow", "--transport", "ws")
    assert r.returncode == 0, r.stderr
    assert (work / "out/a.txt").read_bytes() == b"hello\n" and (work / "out/mine.txt").exists()

    r = restore("docs", "latest", "part", "--path", "sub", "--follow")
    assert r.returncode == 0 and tree(work / "part") == {"sub": ("dir", 0o755), **{
        k: v for k, v in tree(docs).items() if k.startswith("sub/")}}

    r = restore("docs", "latest", "none", "--path", "no/such", "--follow")  # the run fails: exit 1
    assert r.returncode == 1
    assert r.stderr == "docs: restore failed: the snapshot has nothing at 'no/such'\n"
    assert ndjson(r.stdout)[-1]["error"]["code"] == "path_unknown"

    # Started without --follow (piped: said in JSON), followed later by its run id: the daemon does not
    # replay operations to a new stream, the follower asks for the run's state first.
    r = restore("docs", "latest", "later")
    run = json.loads(r.stdout)["run"]
    assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "restore"
    for transport in ("sse", "ws"):
        r = cli(d, "follow", "docs", "--run", run, "--json", "--transport", transport)
        assert r.returncode == 0 and ndjson(r.stdout)[-1]["state"] == "completed"
    assert tree(work / "later") == tree(docs)
    wait_for_history(d, run)
    lines = cli(d, "run", run).stdout.splitlines()  # in the history, with what it did and its steps
    assert lines[0] == f"Run {run}: restore of docs, completed"
    assert f"  restored  {sid} into {work}/later: 3 files (2.9 KiB), 1 directory, 1 symlink" in lines
    assert [line.split()[:2] for line in lines[lines.index("  steps:") + 1:]] == [
        ["1", "Reading"], ["2", "Restoring"], ["3", "Directory"]]
    assert cli(d, "follow", "--run", run).returncode == 0  # the run says which project it is of
    r = cli(d, "cancel", "--run", run)
    assert (r.returncode, r.stderr) == (1, f"syncsnap: run {run} of docs has already ended (completed); nothing "
                                           "to cancel.\n")
    r = cli(d, "cancel", "--run", "r-nope")
    assert r.returncode == 2 and r.stderr.startswith("syncsnap: no run named 'r-nope'")
    r = cli(d, "restore", "docs", "latest", str(d.base / "store" / "x"))
    assert r.returncode == 2 and "inside the daemon's store or state directory" in r.stderr


def test_check_reports_each_problem_and_the_snapshots_it_damages(daemon_factory: Any, short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    docs.mkdir()
    (docs / "big.bin").write_bytes(os.urandom(256 * 1024))
    d = daemon_factory({"docs": docs})
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    [sid] = snapshot_ids(d)

    r = cli(d, "check", "--follow")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"store: check found no problem in 1 snapshot, \d+ packs?, \d+ chunks? \(structure and "
                        r"references\)\n", r.stderr)
    assert {(e["kind"], e["project"]) for e in ndjson(r.stdout)} == {("check", None)}

    pack = max((d.base / "store" / "packs").rglob("*.pack"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    t = Pty([SYNCSNAP, "check", "--read-data", "--follow"], d.env)
    assert t.wait() == 1
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", t.text).replace("\r\n", "\n").replace("\r", "\n")
    assert "store check step 2/4 Checking packs" in plain
    assert re.search(r"✘ store: check failed: 1 problem, 1 damaged snapshot in 1 snapshot, 1 pack, ", plain)
    assert re.search(rf"  1 problem:\n    corrupt chunk [0-9a-f]{{12}} in pack {pack.stem[:12]} \([^)]+\)\n"
                     rf"  1 snapshot cannot be fully restored:\n    {sid}: 1 file damaged: big.bin\n", plain), plain
    assert max(len(line) for line in plain.splitlines()) <= 80


def test_prune_applies_the_retention_policy_and_a_dry_run_changes_nothing(daemon_factory: Any,
                                                                          short_tmp: Path) -> None:
    docs = short_tmp / "docs"
    docs.mkdir()
    d = daemon_factory({}, extra_daemon=project_config(short_tmp, "docs", docs, "keep = { last = 1 }"))
    for i in range(3):  # each snapshot with data of its own
        for old in docs.iterdir():
            old.unlink()
        (docs / f"f{i}.bin").write_bytes(os.urandom(64 * 1024))
        assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    snaps = snapshot_ids(d)
    assert len(snaps) == 3

    r = cli(d, "prune", "--dry-run", "--follow", "--transport", "ws")
    assert r.returncode == 0, r.stderr
    final, *details = r.stderr.splitlines()
    assert final.startswith("store: prune (dry run) would remove 2 snapshots and ")
    assert details == ["  docs: 1 snapshot kept, 2 to remove", f"    would remove {snaps[0]}",
                       f"    would remove {snaps[1]}"]
    assert snapshot_ids(d) == snaps

    r = cli(d, "prune", "--follow")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[1:] == ["  docs: 1 snapshot kept, 2 removed", f"    removed {snaps[0]}",
                                         f"    removed {snaps[1]}"]
    assert snapshot_ids(d) == snaps[2:]
    final = ndjson(r.stdout)[-1]
    result = final["result"]
    assert result["snapshots_removed"] == snaps[:2] and result["bytes_freed"] > 0
    wait_for_history(d, final["run"])
    lines = cli(d, "run", final["run"]).stdout.splitlines()
    assert lines[0] == f"Run {final['run']}: prune of the store, completed"
    assert any(re.fullmatch(r"  pruned    removed 2 snapshots, \d+ packs?; freed \d+\.\d KiB", line) for line in lines)
    assert cli(d, "check", "--read-data", "--follow").returncode == 0

    r = cli(d, "prune")
    assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "prune"  # piped: the start as JSON

