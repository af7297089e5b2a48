"""The ``syncsnap`` console script against hostile input, as a user at a terminal or in a pipeline would
meet it: file names that carry terminal escapes or bytes that are not UTF-8, and a reader that goes away
(``syncsnap status | head -1``). Real daemon, real console script."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers.client import SYNCSNAP, cli  # noqa: E402
from helpers.daemon import make_tree


def test_diff_shows_escapes_and_undecodable_bytes_in_names_visibly(daemon_factory: Any, short_tmp: Path) -> None:
    """A name with an escape sequence (here: red text, and a title change) and one that is not UTF-8 are
    printed escaped, so they cannot drive the terminal; ``--json`` keeps them exact for scripts."""
    docs = short_tmp / "docs"
    docs.mkdir()
    (docs / "plain.txt").write_text("plain")
    d = daemon_factory({"docs": docs})
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    (docs / "evil\x1b[31mred\x1b]0;pwned\x07.txt").write_text("x")
    with open(os.fsencode(docs) + b"/bad\xff\n.txt", "wb") as f:
        f.write(b"y")

    r = cli(d, "diff", "docs", "latest")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert r.stdout.splitlines()[:2] == ["+ bad\\xff\\n.txt  (1 B)", "+ evil\\x1b[31mred\\x1b]0;pwned\\x07.txt  (1 B)"]
    doc = json.loads(cli(d, "diff", "docs", "latest", "--json").stdout)
    assert "evil\x1b[31mred\x1b]0;pwned\x07.txt" in [e["path"] for e in doc["added"]]


@pytest.mark.parametrize("args", [["status"], ["projects"], ["snapshots", "docs"], ["runs", "docs"],
                                  ["diff", "docs", "latest"], ["snapshot", "docs", "--follow", "--json"],
                                  ["status", "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(daemon_factory: Any, short_tmp: Path,
                                                          args: list[str]) -> None:
    """``syncsnap ... | head -1``: the pipe's reader is gone before we write (its end closed at once, so
    every write fails, deterministically); no traceback, the status a shell shows for ``ls | head``."""
    make_tree(short_tmp / "docs", files=3)
    d = daemon_factory({"docs": short_tmp / "docs"})
    assert cli(d, "snapshot", "docs", "--follow").returncode == 0
    proc = subprocess.Popen([SYNCSNAP, *args], env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(30), err) == (141, "")
