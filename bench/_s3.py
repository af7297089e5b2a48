"""The S3 row: the bench tree into an S3 emulator, syncsnap against restic's own S3 backend, side by side.

Both tools write into the same ``moto_server`` on loopback (an emulator: state in memory, path-style
addressing, moto's dummy credentials), each into its own bucket:

* syncsnap: a daemon with ``store = "s3://syncsnap-bench/store"`` and ``[daemon.s3]`` pointing at it;
  an initial snapshot and a no-change snapshot through the API, as the other rows;
* restic: ``restic -r s3:http://127.0.0.1:PORT/restic-bench``, ``init`` then ``backup`` twice.

What it reports per tool: wall time of each snapshot, the bytes and objects in its bucket after them, and
the requests each no-change snapshot made (syncsnap sends one object: its snapshot file).
Skipped with a note when restic or moto_server is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ._backup_tools import _last_json
from ._daemon import SYNCSNAPD, timed_snapshot
from ._http import Endpoint
from ._proc import run_timed

ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Moto:
    def __init__(self) -> None:
        exe = Path(sys.executable).parent / "moto_server"
        self.exe = str(exe) if exe.exists() else shutil.which("moto_server")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.exe is not None
        self.proc = subprocess.Popen([self.exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def usage(self, bucket: str, prefix: str = "") -> tuple[int, int]:
        """(objects, bytes) in ``bucket`` under ``prefix``."""
        client = self.client()
        n = size = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                n += 1
                size += o["Size"]
        client.close()
        return n, size


def _syncsnap(moto: _Moto, tree: Path, work: Path, log: Callable[[str], None], *,
              encrypted: bool) -> dict[str, Any]:
    """One syncsnap daemon into bucket ``syncsnap-bench`` (prefix ``encrypted`` or ``plain``): the store is
    made first by ``syncsnapd init`` (``--encrypt`` with a key file, as an unattended daemon runs, or
    ``--no-encrypt``), then an initial and a no-change snapshot."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runtime = Path(tempfile.mkdtemp(prefix="ssb3-"))
    os.chmod(runtime, 0o700)
    conf = work / "syncsnapd.toml"
    label_of = "syncsnap (encrypted)" if encrypted else "syncsnap (not encrypted)"
    prefix = "encrypted" if encrypted else "plain"
    conf.write_text("\n".join([
        "[daemon]", f"socket = {json.dumps(str(runtime / 'syncsnapd.sock'))}", 'tcp = ""',
        f'store = "s3://syncsnap-bench/{prefix}"', f"state_dir = {json.dumps(str(work / 'state'))}",
        *([f"key_file = {json.dumps(str(work / 'master.key'))}"] if encrypted else []),
        f"token_file = {json.dumps(str(work / 'token'))}", "watch = false",
        "[daemon.s3]", f"endpoint = {json.dumps(moto.url)}", "path_style = true",
        "[[projects]]", 'id = "bench"', f"path = {json.dumps(str(tree))}", ""]))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_CONFIG_FILE=str(work / "none"), AWS_SHARED_CREDENTIALS_FILE=str(work / "none"),
               XDG_RUNTIME_DIR=str(runtime), XDG_STATE_HOME=str(work / "state"))
    out: dict[str, Any] = {}
    init = subprocess.run([str(SYNCSNAPD), "init", "--encrypt" if encrypted else "--no-encrypt", "--config",
                           str(conf)], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if init.returncode != 0:
        raise RuntimeError(f"syncsnapd init: {init.stdout[-400:]}{init.stderr[-400:]}")
    with open(work / "syncsnapd.log", "wb") as logf:
        proc = subprocess.Popen([str(SYNCSNAPD), "--config", str(conf)], env=env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        sock = runtime / "syncsnapd.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"syncsnapd did not start: {(work / 'syncsnapd.log').read_text()[-800:]}")
            time.sleep(0.02)
        time.sleep(0.2)
        endpoint = Endpoint(unix=str(sock))
        for label in ("initial", "no_change"):
            run = trio.run(timed_snapshot, endpoint, "bench")
            final = run.final
            if final.get("state") != "completed":
                raise RuntimeError(f"syncsnap {label} snapshot: {final.get('state')} {final.get('error')}")
            out[label] = {"seconds": run.seconds, "bytes_added": final["snapshot"]["bytes_added"]}
            out[label]["objects"], out[label]["bucket_bytes"] = moto.usage("syncsnap-bench", prefix + "/")
            log(f"  {label_of} -> S3 {label}: {run.seconds:.2f} s, bucket {out[label]['bucket_bytes'] / 2**20:,.1f} "
                f"MiB in {out[label]['objects']:,} objects")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(runtime, ignore_errors=True)
    return out


def _restic(moto: _Moto, tree: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    (work / "home").mkdir(parents=True)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=f"s3:{moto.url}/restic-bench",
               RESTIC_CACHE_DIR=str(work / "cache"), HOME=str(work / "home"),
               AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    run_timed(["restic", "init", "--quiet"], env=env)
    out: dict[str, Any] = {}
    for label in ("initial", "no_change"):
        r = run_timed(["restic", "backup", "--json", "--host", "bench", str(tree)], env=env)
        s = _last_json(r.stdout, "message_type", "summary")
        out[label] = {"seconds": r.seconds, "bytes_added": s.get("data_added"), "max_rss_bytes": r.max_rss_bytes}
        out[label]["objects"], out[label]["bucket_bytes"] = moto.usage("restic-bench")
        log(f"  restic -> S3 {label}: {r.seconds:.2f} s, bucket {out[label]['bucket_bytes'] / 2**20:,.1f} MiB "
            f"in {out[label]['objects']:,} objects")
    return out


def run(tree: Path, work: Path, res: dict[str, Any], log: Callable[[str], None]) -> None:
    """Measure both tools into one emulator; results in ``res["s3"]``."""
    moto = _Moto()
    if moto.exe is None:
        res["notes"].append('S3 row: moto_server not installed (pip install "moto[server]")')
        return
    moto.start()
    try:
        client = moto.client()
        for bucket in ("syncsnap-bench", "restic-bench"):
            client.create_bucket(Bucket=bucket)
        client.close()
        log("S3 (moto emulator on loopback): syncsnap vs restic's S3 backend")
        s3: dict[str, Any] = {"endpoint": "moto_server on loopback (emulator)"}
        res["s3"] = s3
        # Alternating, so a drift in the machine's speed favours none of them.
        s3["syncsnap"] = _syncsnap(moto, tree, work / "syncsnap-s3", log, encrypted=False)
        if shutil.which("restic"):
            s3["restic"] = _restic(moto, tree, work / "restic-s3", log)
        else:
            res["notes"].append("S3 row: restic not installed")
        s3["syncsnap-encrypted"] = _syncsnap(moto, tree, work / "syncsnap-s3-encrypted", log, encrypted=True)
    finally:
        moto.stop()


def markdown(res: dict[str, Any]) -> str:
    """The S3 table for docs/benchmarks.md ('' when not measured)."""
    s3 = res.get("s3")
    if not s3:
        return ""
    lines = ["", "## Into an S3-compatible store (moto emulator on loopback)", "",
             "Same tree; each tool into its own bucket of one `moto_server` (an emulator: in-memory, "
             "path-style, loopback), restic through its own S3 backend (restic always encrypts). syncsnap "
             "into a store made by `syncsnapd init --no-encrypt`, then by `syncsnapd init --encrypt` with a "
             "key file (AES-256-GCM here). Bucket size after the snapshot.", "",
             "| tool | initial | no change | bucket after initial | objects |", "|---|---:|---:|---:|---:|"]
    names = {"syncsnap": "syncsnap (not encrypted)", "syncsnap-encrypted": "syncsnap (encrypted)",
             "restic": "restic"}
    for tool, name in names.items():
        t = s3.get(tool)
        if not t:
            continue
        lines.append(f"| {name} | {t['initial']['seconds']:.2f} s | {t['no_change']['seconds']:.2f} s | "
                     f"{t['initial']['bucket_bytes'] / 2**20:,.1f} MiB | {t['initial']['objects']:,} |")
    return "\n".join(lines) + "\n"
