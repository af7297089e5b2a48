"""The first start on an empty, just-created folder takes no snapshot, and says why; the first file put
in it does start one (a real daemon, its log at the default level, the API as a user reads it)."""

from __future__ import annotations

from pathlib import Path

from helpers.daemon import api, spawn_daemon, wait_until, write_config


def test_an_empty_new_folder_is_not_snapshotted_until_something_is_put_in_it(short_tmp: Path) -> None:
    folder = short_tmp / "Sync"
    folder.mkdir()
    (folder / ".stfolder").mkdir()  # Syncthing's marker: not content
    config = write_config(short_tmp, {"Sync": folder}, watch=True)
    config.write_text(config.read_text() + 'settle = "0.2s"\n')
    d = spawn_daemon(short_tmp, config)
    try:
        # The start-up check has run once the warning is there: no run was asked for.
        watch = wait_until(lambda: api(d, "/projects/Sync")["watch"]["warning"] and api(d, "/projects/Sync")["watch"],
                           20, "the empty-folder warning")
        assert watch["warning"] == (f"{folder} is empty and has no snapshot yet: nothing to snapshot until "
                                    "something is put in it")
        assert api(d, "/projects/Sync/runs")["runs"] == []
        assert api(d, "/projects/Sync/snapshots")["snapshots"] == []
        (folder / "first.txt").write_text("hello")
        wait_until(lambda: [r["state"] for r in api(d, "/projects/Sync/runs")["runs"]] == ["completed"], 20,
                   "one completed run for the first file")
        assert api(d, "/projects/Sync")["watch"]["warning"] is None
    finally:
        d.stop()
    log = (short_tmp / "daemon.log").read_text()
    assert log.count("is empty and has no snapshot yet") == 1, log
