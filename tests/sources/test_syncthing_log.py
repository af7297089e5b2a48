"""The daemon's log at the default level with a real Syncthing: no line per HTTP request, and every
Syncthing line names the project (the id users know), not only Syncthing's folder id."""

from __future__ import annotations

import tempfile
from pathlib import Path

from helpers.daemon import api, spawn_daemon, wait_until, write_config
from helpers.syncthing import FOLDER_ID, Syncthing, needs_syncthing, syncthing_table


@needs_syncthing
def test_default_log_has_no_request_lines_and_names_projects(short_tmp: Path) -> None:
    st = Syncthing("solo", Path(tempfile.mkdtemp(prefix="ss-st-", dir="/tmp")) / "st")
    st.generate()
    st.start()
    try:
        folder = short_tmp / "notes"
        st.add_folder(folder, [])
        (folder / "a.txt").write_text("hello")
        config = write_config(short_tmp, {}, watch=True)
        with open(config, "a") as f:
            f.write(f'[[projects]]\nid = "notes"\npath = "{folder}"\nsyncthing = {syncthing_table(st)}\n'
                    f'[[projects]]\nid = "elsewhere"\npath = "{folder}"\n'
                    f'syncthing = {syncthing_table(st, folder="no-such-folder")}\n')
        d = spawn_daemon(short_tmp, config)  # no -v: the default level
        try:
            run = api(d, "/projects/notes/snapshots", "POST")["run"]
            wait_until(lambda: api(d, f"/runs/{run}")["state"] == "completed", 30, "the snapshot")
            wait_until(lambda: api(d, "/projects/elsewhere")["watch"]["warning"], 20, "the unknown folder's warning")
        finally:
            d.stop()
    finally:
        st.kill()
    log = (short_tmp / "daemon.log").read_text()
    assert "HTTP Request" not in log, log
    assert "elsewhere (Syncthing folder 'no-such-folder'): " in log, log
    for line in log.splitlines():  # every line about a Syncthing folder names its project too
        if "'no-such-folder'" in line:
            assert "elsewhere" in line, line
        if f"'{FOLDER_ID}'" in line:
            assert "notes" in line, line
