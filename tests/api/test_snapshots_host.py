"""``GET /api/v1/snapshots`` and a project's snapshots on a bucket several machines share: another
machine's snapshots show once the lists are older than ``refresh_age``, ``?host=`` filters, ``host`` is
in the JSON, a restore (of a snapshot or of one version) naming what another machine took since the lists
were refreshed refreshes them first, and a bucket that cannot be reached is said so while the cached lists
answer.

Real daemons (tests/helpers/daemon.py), curl over their Unix sockets, against ``moto_server`` on loopback
(an S3 **emulator**, tests/helpers/s3.py); :class:`ThrottlingProxy` in front of it where the bucket must
go away (it stops listening: connections are refused).
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers.daemon import api, wait_until
from helpers.s3 import MotoServer, ThrottlingProxy
from helpers.shared_bucket import start_machine, start_run, wait_run


def folder(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text(text)
    return root


def test_another_machines_snapshot_shows_and_host_filters(bucket: MotoServer, short_tmp: Path) -> None:
    a = start_machine(short_tmp / "a", "alpha", {"docs": folder(short_tmp / "fa", "alpha")}, bucket.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": folder(short_tmp / "fb", "beta")}, bucket.url,
                      extra='refresh_age = "0s"')
    try:
        snap_a = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        # Beta has not run since: its listing refreshes (refresh_age 0) and shows alpha's snapshot.
        listed = api(b, "/snapshots")
        assert [(s["id"], s["host"], s["project"]) for s in listed["snapshots"]] == [(snap_a, "alpha", "docs")]
        assert listed["stale"] is None
        snap_b = wait_run(b, start_run(b, "docs"))["snapshot"]["id"]  # type: ignore[index]
        assert [s["id"] for s in api(b, "/snapshots")["snapshots"]] == [snap_a, snap_b]
        assert [s["id"] for s in api(b, "/snapshots?host=alpha")["snapshots"]] == [snap_a]
        assert [s["id"] for s in api(b, "/snapshots?host=beta")["snapshots"]] == [snap_b]
        assert [s["id"] for s in api(b, "/snapshots?host=beta&project=docs")["snapshots"]] == [snap_b]
        assert api(b, "/snapshots?project=other")["snapshots"] == []
        assert api(b, "/snapshots?host=gamma")["snapshots"] == []
        assert [s["id"] for s in api(b, "/projects/docs/snapshots?host=alpha")["snapshots"]] == [snap_a]
        assert api(b, "/projects/docs/snapshots")["snapshots"][1]["host"] == "beta"
        bad = b.curl("-w", "%{http_code}", "http://localhost/api/v1/snapshots?host=")
        error = json.loads(bad.stdout[:-3])["error"]
        assert bad.stdout.endswith("400") and error["code"] == "bad_request" and "host" in error["message"]
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()


def test_lists_younger_than_refresh_age_are_not_refreshed(bucket: MotoServer, short_tmp: Path) -> None:
    """With ``refresh_age = "1h"`` the listing serves the cached lists; the next run refreshes them."""
    a = start_machine(short_tmp / "a", "alpha", {"docs": folder(short_tmp / "fa", "alpha")}, bucket.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": folder(short_tmp / "fb", "beta")}, bucket.url,
                      extra='refresh_age = "1h"')
    try:
        snap_a = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        assert api(b, "/snapshots")["snapshots"] == []
        assert api(b, "/projects")["projects"][0]["last_snapshot"] is None
        snap_b = wait_run(b, start_run(b, "docs"))["snapshot"]["id"]  # type: ignore[index]
        assert [s["id"] for s in api(b, "/snapshots")["snapshots"]] == [snap_a, snap_b]
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()


def test_a_restore_of_another_machines_new_snapshot_refreshes_the_lists_first(bucket: MotoServer,
                                                                            short_tmp: Path) -> None:
    """Against moto_server on loopback. Beta's lists are fresh (``refresh_age = "1h"``) when alpha takes a
    snapshot; a restore of alpha's id on beta does not answer "no such snapshot": an id not seen yet
    makes beta bring its lists up to date first, and the restore runs."""
    a = start_machine(short_tmp / "a", "alpha", {"docs": folder(short_tmp / "fa", "alpha")}, bucket.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": folder(short_tmp / "fb", "beta")}, bucket.url,
                      extra='refresh_age = "1h"')
    try:
        assert api(b, "/snapshots")["snapshots"] == []
        snap_a = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        target = short_tmp / "restored"
        started = api(b, "/projects/docs/restore", "POST", {"snapshot": snap_a, "target": str(target)})
        assert "run" in started, started
        wait_run(b, started["run"])
        assert (target / "a.txt").read_text() == "alpha"
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()


def test_a_one_version_restore_of_another_machines_new_version_refreshes_the_lists_first(
        bucket: MotoServer, short_tmp: Path) -> None:
    """Against moto_server on loopback. Beta's lists are fresh (``refresh_age = "1h"``) when alpha takes a
    snapshot; restoring one file by alpha's snapshot id on beta does not answer "no such version": beta
    brings its lists up to date first. The same for a content id of alpha's next snapshot, which no
    snapshot listed on beta holds."""
    fa = folder(short_tmp / "fa", "alpha one")
    a = start_machine(short_tmp / "a", "alpha", {"docs": fa}, bucket.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": folder(short_tmp / "fb", "beta")}, bucket.url,
                      extra='refresh_age = "1h"')
    try:
        assert api(b, "/snapshots")["snapshots"] == []
        snap_a = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        by_id = api(b, "/projects/docs/restore", "POST", {"path": "a.txt", "version": snap_a,
                                                          "to": str(short_tmp / "by-id.txt")})
        assert by_id.get("snapshot", {}).get("id") == snap_a, by_id
        assert (short_tmp / "by-id.txt").read_text() == "alpha one"
        (fa / "a.txt").write_text("alpha two")
        snap_a2 = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        cid = api(a, "/projects/docs/versions?path=a.txt")["versions"][0]["content_id"]
        by_cid = api(b, "/projects/docs/restore", "POST", {"path": "a.txt", "version": cid[:10],
                                                           "to": str(short_tmp / "by-cid.txt")})
        assert (by_cid.get("content_id"), by_cid.get("snapshot", {}).get("id")) == (cid, snap_a2), by_cid
        assert (short_tmp / "by-cid.txt").read_text() == "alpha two"
        # A version no machine has is still unknown (after that one refresh).
        unknown = api(b, "/projects/docs/restore", "POST", {"path": "a.txt", "version": "0123456789"})
        assert unknown["error"]["code"] == "version_unknown", unknown
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()


def test_unreachable_bucket_answers_from_the_cache_and_says_so(bucket: MotoServer, short_tmp: Path) -> None:
    proxy = ThrottlingProxy(bucket.port)
    b = start_machine(short_tmp / "b", "beta", {"docs": folder(short_tmp / "fb", "beta")}, proxy.url,
                      extra='refresh_age = "0s"')
    try:
        snap = wait_run(b, start_run(b, "docs"))["snapshot"]["id"]  # type: ignore[index]
        proxy.down()
        listed = api(b, "/snapshots")  # answers within the refresh wait (5 s), not the backend's retries
        assert [s["id"] for s in listed["snapshots"]] == [snap]
        assert isinstance(listed["stale"], str) and "cached" in listed["stale"], listed
        assert api(b, "/projects")["projects"][0]["last_snapshot"]["id"] == snap
        proxy.up()
        # Back: a later listing refreshes again and no longer says stale (once the refresh still retrying
        # in the background has given up).
        wait_until(lambda: api(b, "/snapshots")["stale"] is None, 90, "a fresh listing")
    finally:
        b.proc.kill()
        b.proc.wait()
        proxy.close()
