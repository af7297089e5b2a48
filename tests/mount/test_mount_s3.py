"""The mount of an S3 store: another machine's snapshots appear, the bucket's lists refreshed while mounted.

Real daemons against ``moto_server`` on loopback (an S3 **emulator**, tests/helpers/s3.py), as in
tests/api/test_snapshots_host.py; the mount is ``syncsnapd mount`` with machine B's configuration, beside
B's daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from helpers.daemon import wait_until
from helpers.s3 import MotoServer
from helpers.shared_bucket import start_machine, start_run, wait_run


def test_another_machines_new_snapshot_appears_in_the_mount(bucket: MotoServer, short_tmp: Path,
                                                             mount_offline: Any) -> None:
    (short_tmp / "fa").mkdir()
    (short_tmp / "fa/a.txt").write_text("alpha one")
    (short_tmp / "fb").mkdir()
    a = start_machine(short_tmp / "a", "alpha", {"docs": short_tmp / "fa"}, bucket.url)
    b = start_machine(short_tmp / "b", "beta", {"docs": short_tmp / "fb"}, bucket.url)
    try:
        first = wait_run(a, start_run(a, "docs"))["snapshot"]["id"]  # type: ignore[index]
        m = mount_offline(b.config, short_tmp / "mnt", env=b.env)
        assert (m.dir / "docs" / str(first) / "a.txt").read_text() == "alpha one"
        (short_tmp / "fa/a.txt").write_text("alpha two")
        second = str(wait_run(a, start_run(a, "docs"))["snapshot"]["id"])  # type: ignore[index]
        wait_until(lambda: second in os.listdir(m.dir / "docs"), 30, "machine A's new snapshot in B's mount")
        assert (m.dir / "docs/latest/a.txt").read_text() == "alpha two"
    finally:
        for d in (a, b):
            d.proc.kill()
            d.proc.wait()
