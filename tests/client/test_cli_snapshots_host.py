"""``syncsnap snapshots [PROJECT] [--host H]`` through the real console script against a real daemon: the
HOST column, every project's snapshots, and the filter by machine.

Two machines are played by one store and two daemon lives with different ``daemon.host`` settings, one
after the other (the store's lock allows one daemon at a time on a local store; a bucket several daemons
share at once is tests/store/test_s3_shared.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.client import cli
from helpers.daemon import api, make_tree, wait_until


def snap(d: Any, project: str) -> str:
    run = api(d, f"/projects/{project}/snapshots", "POST")["run"]
    rec = wait_until(lambda: (r := api(d, f"/runs/{run}")).get("state") in ("completed", "failed") and r, 60,
                     f"run {run}")
    assert rec["state"] == "completed", rec
    return str(rec["snapshot"]["id"])


def test_snapshots_shows_hosts_and_filters_by_host(daemon_factory: Any, short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=3)
    make_tree(short_tmp / "code", files=2)
    projects = {"docs": short_tmp / "docs", "code": short_tmp / "code"}
    alpha = daemon_factory(projects, extra_daemon='host = "alpha"')
    first = snap(alpha, "docs")
    alpha.stop()
    beta = daemon_factory(projects, extra_daemon='host = "beta"')
    second, third = snap(beta, "docs"), snap(beta, "code")

    r = cli(beta, "snapshots", "docs")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:3] == ["SNAPSHOT", "HOST", "TIME"]
    assert [(row[0], row[1]) for row in rows[1:]] == [(first, "alpha"), (second, "beta")]

    r = cli(beta, "snapshots", "docs", "--host", "alpha")
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()[1:]] == [first]

    # Every project's: a PROJECT column too.
    r = cli(beta, "snapshots", "--host", "beta")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:4] == ["SNAPSHOT", "PROJECT", "HOST", "TIME"]
    assert [(row[0], row[1], row[2]) for row in rows[1:]] == [(second, "docs", "beta"), (third, "code", "beta")]

    r = cli(beta, "snapshots", "--json", "--host", "alpha")
    assert [(s["id"], s["host"]) for s in json.loads(r.stdout)["snapshots"]] == [(first, "alpha")]

    r = cli(beta, "snapshots", "--host", "gamma")
    assert r.returncode == 0 and r.stdout.strip() == "No snapshots taken on gamma yet."
    r = cli(beta, "snapshots", "code", "--host", "alpha")
    assert r.returncode == 0 and r.stdout.strip() == ("code has no snapshots taken on alpha yet; take one with "
                                                      "`syncsnap snapshot code`.")
