"""Per-project stores (``store = ...`` in ``[[projects]]``), end to end: a real daemon with three projects
and two stores, driven over its Unix socket with curl, as a user would.

``docs`` uses the daemon's store; ``work`` and ``notes`` share a store of their own (one open ``Store``,
one lock: dedup holds across them). One test puts a project's store in a bucket, against moto_server on
loopback (an S3 emulator: tests/helpers/s3.py).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from helpers.daemon import DaemonProcess, api, make_tree, spawn_daemon, wait_until
from helpers.s3 import BUCKET, MotoServer, create_bucket, moto_server, s3_env

TERMINAL = ("completed", "failed", "cancelled")


def _config(base: Path, projects: list[tuple[str, Path, str | None]], extra: str = "") -> Path:
    lines = ["[daemon]", f'socket = "{base}/run/syncsnap/syncsnapd.sock"', 'tcp = ""', f'store = "{base}/main"',
             f'state_dir = "{base}/state"', f'token_file = "{base}/token"', "watch = false", extra]
    for pid, path, store in projects:
        lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"'] + ([f'store = "{store}"'] if store else [])
    cfg = base / "syncsnapd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _snapshot(d: DaemonProcess, pid: str) -> dict[str, Any]:
    """Take a snapshot of ``pid`` through the API; its terminal progress (completed, else the test fails)."""
    run = api(d, f"/projects/{pid}/snapshots", "POST")["run"]
    final = wait_until(lambda: (p := api(d, f"/projects/{pid}/progress"))["run"] == run and p["state"] in TERMINAL
                       and p, 60, f"the snapshot of {pid}")
    assert final["state"] == "completed", final
    return final  # type: ignore[no-any-return]


def _operation(d: DaemonProcess, path: str, body: object, pid: str | None = None) -> dict[str, Any]:
    run = api(d, path, "POST", body)["run"]
    return wait_until(lambda: (p := api(d, f"/operations/{run}"))["state"] in TERMINAL and p, 60,  # type: ignore[no-any-return]
                      f"operation {run}")


def _snapshot_files(store: Path) -> set[str]:
    return {p.stem for p in (store / "snapshots").glob("*.json")}


@pytest.fixture
def three(short_tmp: Path) -> Iterator[tuple[DaemonProcess, dict[str, dict[str, bytes]]]]:
    base = short_tmp
    trees = {pid: make_tree(base / pid, files=12) for pid in ("docs", "work", "notes")}
    shared = os.urandom(1_500_000)  # incompressible, several chunks
    for pid in ("work", "notes"):
        (base / pid / "report.bin").write_bytes(shared)
        trees[pid]["report.bin"] = shared
    (base / "work-store").mkdir()
    (base / "link-to-work-store").symlink_to("work-store")  # one store, spelled two ways
    cfg = _config(base, [("docs", base / "docs", None), ("work", base / "work", f"{base}/work-store"),
                         ("notes", base / "notes", f"{base}/link-to-work-store")])
    d = spawn_daemon(base, cfg)
    try:
        yield d, trees
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_snapshots_land_in_their_projects_store_and_everything_reads_the_right_one(
        three: tuple[DaemonProcess, dict[str, dict[str, bytes]]], short_tmp: Path) -> None:
    d, trees = three
    base = short_tmp
    snaps = {pid: _snapshot(d, pid)["snapshot"] for pid in ("docs", "work", "notes")}

    # The directories: docs in the daemon's store, work and notes in theirs (one store for both).
    assert _snapshot_files(base / "main") == {snaps["docs"]["id"]}
    assert _snapshot_files(base / "work-store") == {snaps["work"]["id"], snaps["notes"]["id"]}
    # One store for work and notes, so the report they both hold was stored once.
    assert snaps["notes"]["bytes_added"] < 200_000 < 1_500_000 < snaps["work"]["bytes_added"]

    # Listing, per project and in GET /projects.
    for pid, snap in snaps.items():
        assert [s["id"] for s in api(d, f"/projects/{pid}/snapshots")["snapshots"]] == [snap["id"]]
    last = {p["id"]: p["last_snapshot"]["id"] for p in api(d, "/projects")["projects"]}
    assert last == {pid: s["id"] for pid, s in snaps.items()}

    # Browse and download, by project and by snapshot id alone.
    tree = api(d, "/projects/work/snapshots/latest/tree")
    assert tree["snapshot"] == snaps["work"]["id"] and "report.bin" in [e["name"] for e in tree["entries"]]
    for pid in ("docs", "notes"):
        got = d.curl(f"http://localhost/api/v1/snapshots/{snaps[pid]['id']}/files?path=d1/sub1/f1.txt").stdout
        assert got.encode() == trees[pid]["d1/sub1/f1.txt"]

    # Diff, against the live folder and between two snapshots of one store.
    (base / "work" / "new.txt").write_text("new")
    diff = api(d, "/projects/work/diff?from=latest")
    assert [a["path"] for a in diff["added"]] == ["new.txt"], diff
    second = _snapshot(d, "work")["snapshot"]
    diff = api(d, f"/projects/work/diff?from={snaps['work']['id']}&to={second['id']}")
    assert [a["path"] for a in diff["added"]] == ["new.txt"]
    assert second["id"] in _snapshot_files(base / "work-store")

    # Restore each project from its own store.
    for pid in ("docs", "notes"):
        target = base / f"restored-{pid}"
        done = _operation(d, f"/projects/{pid}/restore", {"snapshot": "latest", "target": str(target)})
        assert done["state"] == "completed", done
        for rel, data in trees[pid].items():
            assert (target / rel).read_bytes() == data

    # GET /store and /metrics show both stores.
    store = api(d, "/store")
    by_store = {s["store"]: s for s in store["stores"]}
    assert list(by_store) == [str(base / "main"), str(base / "work-store")]
    assert (by_store[str(base / "main")]["projects"], by_store[str(base / "main")]["snapshots"]) == (["docs"], 1)
    assert (by_store[str(base / "work-store")]["projects"], by_store[str(base / "work-store")]["snapshots"]) == (
        ["work", "notes"], 3)
    assert store["snapshots"] == 4 and store["packs"] == sum(s["packs"] for s in store["stores"]) >= 2
    metrics = d.curl("http://localhost/metrics").stdout
    for where in by_store:
        assert f'syncsnap_store_packs_by_store{{store="{where}"}}' in metrics

    # Check and prune go through both stores.
    check = _operation(d, "/check", {})
    assert check["state"] == "completed", check
    assert [(s["store"], s["snapshots"], s["ok"]) for s in check["result"]["stores"]] == [
        (str(base / "main"), 1, True), (str(base / "work-store"), 3, True)]
    prune = _operation(d, "/prune", {"dry_run": True})
    assert prune["state"] == "completed" and len(prune["result"]["stores"]) == 2

    # Offline: --project picks the project's store; its lock is the daemon's (a prune there is refused).
    out = d.cli("snapshots", "--project", "notes")
    assert out.returncode == 0 and snaps["notes"]["id"] in out.stdout
    out = d.cli("restore", snaps["work"]["id"], str(base / "offline-work"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (base / "offline-work" / "report.bin").read_bytes() == trees["work"]["report.bin"]
    out = d.cli("check")
    assert out.returncode == 0 and str(base / "work-store") in out.stdout, out.stdout
    out = d.cli("diff", "latest", "--project", "notes")  # the project's store, its live folder
    assert out.returncode == 0 and "0 added, 0 removed, 0 modified" in out.stdout, out.stdout + out.stderr
    out = d.cli("prune", "--project", "work")
    assert out.returncode == 2 and "in use" in out.stdout, out.stdout

    assert d.stop() == 0


def test_a_damaged_project_store_is_found_by_check_and_refused_by_restore(
        three: tuple[DaemonProcess, dict[str, dict[str, bytes]]], short_tmp: Path) -> None:
    d, _ = three
    work = _snapshot(d, "work")["snapshot"]
    _snapshot(d, "docs")
    pack = max((short_tmp / "work-store" / "packs").rglob("*.pack"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    check = _operation(d, "/check", {"read_data": True})
    assert check["state"] == "failed" and check["error"]["code"] == "problems_found"
    assert {p["store"] for p in check["result"]["problems"]} == {str(short_tmp / "work-store")}
    assert [s["ok"] for s in check["result"]["stores"]] == [True, False]
    done = _operation(d, "/projects/work/restore", {"snapshot": work["id"], "target": str(short_tmp / "r")})
    assert done["state"] == "failed", done


def test_a_project_store_that_cannot_be_opened_stops_the_start_naming_the_project(short_tmp: Path) -> None:
    make_tree(short_tmp / "work", files=2)
    (short_tmp / "not-a-dir").write_text("a file where the store should be")
    cfg = _config(short_tmp, [("work", short_tmp / "work", f"{short_tmp}/not-a-dir")])
    with pytest.raises(RuntimeError, match="exited 1") as info:
        spawn_daemon(short_tmp, cfg)
    assert f"cannot open the store of project 'work' at {short_tmp}/not-a-dir" in str(info.value)
    assert not (short_tmp / "run/syncsnap/syncsnapd.json").exists()  # it never served


def test_reload_says_a_changed_project_store_needs_a_restart(
        three: tuple[DaemonProcess, dict[str, dict[str, bytes]]], short_tmp: Path) -> None:
    d, _ = three
    base = short_tmp
    (base / "extra").mkdir()
    _config(base, [("docs", base / "docs", None), ("work", base / "work", f"{base}/elsewhere"),
                   ("notes", base / "notes", f"{base}/work-store"), ("extra", base / "extra", f"{base}/new-store")])
    d.proc.send_signal(signal.SIGHUP)
    log = base / "daemon.log"
    wait_until(lambda: "reloaded" in log.read_text(), 30, "the reload")
    text = log.read_text()
    assert (f"reload: the store of project 'work' changed ({base}/work-store -> {base}/elsewhere); restart "
            "syncsnapd to apply it") in text
    assert f"reload: project 'extra' uses the store {base}/new-store, which is not open; restart" in text
    assert [p["id"] for p in api(d, "/projects")["projects"]] == ["docs", "work", "notes"]
    snap = _snapshot(d, "work")["snapshot"]  # still to the store it had
    assert snap["id"] in _snapshot_files(base / "work-store")
    assert not (base / "elsewhere").exists() and not (base / "new-store").exists()


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MotoServer]:
    with moto_server() as server:
        create_bucket(server.url)
        s3_env(monkeypatch, tmp_path)  # the daemon inherits these credentials from the environment
        yield server


def test_a_project_store_in_a_bucket_beside_a_local_one(moto: MotoServer, short_tmp: Path) -> None:
    """Against moto_server on loopback: ``cloud`` snapshots into s3://BUCKET/cloud, ``docs`` into the
    daemon's local store; both read back through the API."""
    base = short_tmp
    trees = {pid: make_tree(base / pid, files=8) for pid in ("docs", "cloud")}
    url = f"s3://{BUCKET}/cloud"
    cfg = _config(base, [("docs", base / "docs", None), ("cloud", base / "cloud", url)],
                  extra=f'[daemon.s3]\nendpoint = "{moto.url}"\npath_style = true\nregion = "us-east-1"')
    d = spawn_daemon(base, cfg)
    try:
        snaps = {pid: _snapshot(d, pid)["snapshot"] for pid in ("docs", "cloud")}
        client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        # A new S3 store is encrypted (issue 15): its snapshot file is named by a keyed hash of the id.
        assert len([k for k in keys if k.startswith("cloud/snapshots/")]) == 1
        assert any(k.startswith("cloud/keys/") for k in keys)
        assert any(k.startswith("cloud/packs/") for k in keys)
        assert not any(snaps["docs"]["id"] in k for k in keys)
        assert _snapshot_files(base / "main") == {snaps["docs"]["id"]}
        assert (base / "state" / "s3" / f"{BUCKET}-cloud" / "remote.json").exists()  # its own staging

        target = base / "restored"
        done = _operation(d, "/projects/cloud/restore", {"snapshot": "latest", "target": str(target)})
        assert done["state"] == "completed", done
        for rel, data in trees["cloud"].items():
            assert (target / rel).read_bytes() == data
        got = d.curl(f"http://localhost/api/v1/snapshots/{snaps['cloud']['id']}/files?path=d0/sub0/f0.txt").stdout
        assert got.encode() == trees["cloud"]["d0/sub0/f0.txt"]
        stores = [(s["store"], s["projects"], s["snapshots"]) for s in api(d, "/store")["stores"]]
        assert stores == [(str(base / "main"), ["docs"], 1), (url, ["cloud"], 1)]
        check = _operation(d, "/check", {})
        assert check["state"] == "completed" and [s["store"] for s in check["result"]["stores"]] == [
            str(base / "main"), url]
        assert json.loads(json.dumps(check["result"]))["ok"] is True
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_snapshots_from_before_a_store_change_stay_readable(short_tmp: Path) -> None:
    """``work`` first snapshots into the daemon's store; restarted with a store of its own, its new
    snapshots go there, and the old one is still listed and restorable (from the daemon's store)."""
    base = short_tmp
    files = make_tree(base / "work", files=6)
    d = spawn_daemon(base, _config(base, [("work", base / "work", None)]))
    try:
        old = _snapshot(d, "work")["snapshot"]
        assert d.stop() == 0
        d = spawn_daemon(base, _config(base, [("work", base / "work", f"{base}/work-store")]))
        new = _snapshot(d, "work")["snapshot"]
        assert _snapshot_files(base / "main") == {old["id"]}
        assert _snapshot_files(base / "work-store") == {new["id"]}
        assert new["bytes_added"] > 0  # a new store starts empty: nothing of the old one is reused
        assert [s["id"] for s in api(d, "/projects/work/snapshots")["snapshots"]] == [old["id"], new["id"]]
        done = _operation(d, "/projects/work/restore", {"snapshot": old["id"], "target": str(base / "old")})
        assert done["state"] == "completed", done
        for rel, data in files.items():
            assert (base / "old" / rel).read_bytes() == data
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
