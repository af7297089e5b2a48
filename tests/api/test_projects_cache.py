"""``GET /api/v1/projects`` reuses the store's listing until the next event; what a poller sees after a
run's events is still that run's snapshot (a real daemon, curl over the Unix socket).
"""

from __future__ import annotations

from pathlib import Path

from helpers.daemon import api, make_tree, start_daemon, wait_until


def test_a_poll_after_a_snapshot_shows_it(short_tmp: Path) -> None:
    folder = short_tmp / "docs"
    make_tree(folder, files=3)
    d = start_daemon(short_tmp, {"docs": folder})
    try:
        first = api(d, "/projects")
        assert first["projects"][0]["last_snapshot"] is None
        assert api(d, "/projects") == first  # asked again with nothing new: the same answer
        for n in (1, 2):
            (folder / f"new{n}.txt").write_text(f"new {n}")
            run = api(d, "/projects/docs/snapshots", "POST")["run"]
            done = wait_until(lambda run=run: api(d, f"/runs/{run}").get("state") == "completed", 30,
                              f"snapshot {n}")
            assert done
            project = api(d, "/projects")["projects"][0]
            # The snapshot this run made, not the listing cached before it.
            assert project["last_snapshot"]["id"] == api(d, f"/runs/{run}")["snapshot"]["id"]
            assert project["progress"]["run"] == run
            assert api(d, "/projects/docs")["last_snapshot"] == project["last_snapshot"]
    finally:
        d.proc.kill()
        d.proc.wait()
