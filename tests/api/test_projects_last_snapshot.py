"""``GET /api/v1/projects`` (and ``/projects/{id}``) show the newest snapshot of each project, whichever
machine took it: after this daemon's own run, and after another machine's run into the same bucket, which
publishes no event here (so no cache of the listing keyed to this daemon's events may serve it).

Real daemons (tests/helpers/daemon.py), curl over their Unix sockets, against ``moto_server`` on loopback
(an S3 **emulator**, tests/helpers/s3.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.daemon import api
from helpers.s3 import MotoServer, create_bucket, s3_env
from helpers.shared_bucket import start_machine, start_run, wait_run


def test_a_snapshot_another_machine_added_shows_in_projects(moto: MotoServer, monkeypatch: pytest.MonkeyPatch,
                                                            short_tmp: Path) -> None:
    moto.reset()
    create_bucket(moto.url)
    s3_env(monkeypatch, short_tmp)
    fa, fb = short_tmp / "fa", short_tmp / "fb"
    for f in (fa, fb):
        f.mkdir()
        (f / "a.txt").write_text(f.name)
    a = start_machine(short_tmp / "a", "alpha", {"docs": fa}, moto.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": fb}, moto.url, extra='refresh_age = "0s"')
    try:
        first = api(b, "/projects")
        assert first["projects"][0]["last_snapshot"] is None
        assert api(b, "/projects") == first  # asked again with nothing new: the same answer
        # Beta's own run: the poll after it shows its snapshot.
        run = start_run(b, "docs")
        own = wait_run(b, run)["snapshot"]["id"]  # type: ignore[index]
        project = api(b, "/projects")["projects"][0]
        assert (project["last_snapshot"]["id"], project["last_snapshot"]["host"]) == (own, "beta")
        assert project["progress"]["run"] == run
        # Alpha's run into the same bucket: no event at beta, and yet its next poll shows it.
        other = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        project = api(b, "/projects")["projects"][0]
        assert (project["last_snapshot"]["id"], project["last_snapshot"]["host"]) == (other, "alpha")
        assert api(b, "/projects/docs")["last_snapshot"] == project["last_snapshot"]
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()
