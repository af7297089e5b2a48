"""Real Syncthing instances for the tests: Debian's ``syncthing`` (1.19) on loopback, each with its own home.

Nothing here is a test double. Each instance listens for peers on ``127.0.0.1:PORT`` and serves its REST API
on another loopback port; discovery, relays, NAT traversal, usage reports, crash reports and upgrades are
off, so nothing leaves the machine. ``STMONITORED=1`` keeps Syncthing to one process, so the pid we start
is the server and killing it kills Syncthing (see /work/shared/FIELD-NOTES.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SYNCTHING = shutil.which("syncthing")
needs_syncthing = pytest.mark.skipif(SYNCTHING is None, reason="syncthing is not installed "
                                     "(scripts/install-system-deps.sh installs it)")

# Syncthing answers /rest/system/ping about 1.5 s after it starts here; leave room for a loaded CI machine.
START_TIMEOUT_SECONDS = 20.0
REST_TIMEOUT_SECONDS = 10.0
FOLDER_ID = "ssnap-test"

# <options> of config.xml: everything that would reach outside the machine is off.
_OFFLINE_OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
    "crashReportingEnabled": "false",
    # Renicing itself only slows the tests down on a 2-core machine.
    "setLowPriority": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Syncthing:
    """One Syncthing process with its home under ``home``; ``start()`` returns once its REST API answers."""

    name: str
    home: Path
    gui_port: int = field(default_factory=free_port)
    sync_port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    proc: subprocess.Popen[bytes] | None = None
    device_id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gui_port}"

    def generate(self) -> None:
        assert SYNCTHING is not None
        subprocess.run([SYNCTHING, "generate", f"--home={self.home}", "--no-default-folder"], check=True,
                       capture_output=True, env=self._env(), timeout=30)
        config = self.home / "config.xml"
        tree = ET.parse(config)
        options = tree.getroot().find("options")
        assert options is not None
        for key, value in {**_OFFLINE_OPTIONS, "listenAddress": f"tcp://127.0.0.1:{self.sync_port}"}.items():
            el = options.find(key)
            if el is None:
                el = ET.SubElement(options, key)
            el.text = value
        tree.write(config)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ST")}
        env.update({"STMONITORED": "1", "STNOUPGRADE": "1", "HOME": str(self.home)})
        return env

    def start(self) -> None:
        assert SYNCTHING is not None and (self.proc is None or self.proc.poll() is not None)
        log = open(self.home / "syncthing.log", "ab")
        self.proc = subprocess.Popen(
            [SYNCTHING, "serve", "--no-browser", "--no-restart", "--no-default-folder", f"--home={self.home}",
             f"--gui-address=http://127.0.0.1:{self.gui_port}", f"--gui-apikey={self.api_key}"],
            env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"syncthing {self.name} exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.get("/rest/system/ping") == {"ping": "pong"}:
                    self.device_id = self.get("/rest/system/status")["myID"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"syncthing {self.name} did not answer within {START_TIMEOUT_SECONDS} s")

    def kill(self) -> None:
        """SIGKILL: Syncthing vanishes mid-request, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.post("/rest/system/shutdown")
            self.proc.wait(10)
        except (httpx.HTTPError, subprocess.TimeoutExpired):
            self.kill()

    def log_tail(self) -> str:
        try:
            return (self.home / "syncthing.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    # --- REST ----------------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, headers={"X-API-Key": self.api_key},
                          timeout=REST_TIMEOUT_SECONDS) as client:
            return client.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        r = self.request("GET", path, **kw)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, **kw: Any) -> None:
        self.request("POST", path, **kw).raise_for_status()

    def patch(self, path: str, body: dict[str, Any]) -> None:
        self.request("PATCH", path, json=body).raise_for_status()

    def db_status(self, folder: str = FOLDER_ID) -> dict[str, Any]:
        status: dict[str, Any] = self.get("/rest/db/status", params={"folder": folder})
        return status

    def scan(self, folder: str = FOLDER_ID) -> None:
        self.post("/rest/db/scan", params={"folder": folder})

    def latest_event_id(self, events: str) -> int:
        evs = self.get("/rest/events", params={"events": events, "since": 0, "limit": 1, "timeout": 0})
        return int(evs[-1]["id"]) if evs else 0

    def limit_receive_rate(self, kib_per_s: int) -> None:
        """Throttle what this instance pulls (0: unlimited). Loopback counts as LAN, which Syncthing
        does not limit unless told to."""
        self.patch("/rest/config/options", {"maxRecvKbps": kib_per_s, "limitBandwidthInLan": kib_per_s > 0})

    def add_peer(self, other: Syncthing) -> None:
        self.post("/rest/config/devices", json={
            "deviceID": other.device_id, "name": other.name, "addresses": [f"tcp://127.0.0.1:{other.sync_port}"],
        })

    def add_folder(self, path: Path, peers: list[Syncthing], folder: str = FOLDER_ID) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.post("/rest/config/folders", json={
            "id": folder, "label": folder, "path": str(path), "type": "sendreceive",
            "devices": [{"deviceID": self.device_id}, *({"deviceID": p.device_id} for p in peers)],
            # Changes on disk are picked up after 1 s instead of 10 s; tests also ask for scans explicitly.
            "fsWatcherEnabled": True, "fsWatcherDelayS": 1, "rescanIntervalS": 3600,
        })


@dataclass
class SyncthingPair:
    """Two connected instances sharing :data:`FOLDER_ID`: files are written on ``a`` and land on ``b``."""

    a: Syncthing
    b: Syncthing
    folder_a: Path
    folder_b: Path

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        """Until ``b`` has everything ``a`` has (both idle, same global sequence, nothing needed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sa, sb = self.a.db_status(), self.b.db_status()
            if (sa["state"] == sb["state"] == "idle" and sb["needTotalItems"] == 0 and sa["needTotalItems"] == 0
                    and sa["globalBytes"] == sb["globalBytes"] and sa["globalFiles"] == sb["globalFiles"]
                    and sb["localFiles"] == sa["localFiles"]):
                return
            time.sleep(0.1)
        raise AssertionError(f"not in sync after {timeout} s: a={self.a.db_status()} b={self.b.db_status()}")

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conns = self.b.get("/rest/system/connections")["connections"]
            if conns.get(self.a.device_id, {}).get("connected"):
                return
            time.sleep(0.1)
        raise AssertionError(f"b did not connect to a within {timeout} s")


def start_pair(base: Path) -> SyncthingPair:
    a = Syncthing("a", base / "st-a")
    b = Syncthing("b", base / "st-b")
    for st in (a, b):
        st.generate()
        st.start()
    a.add_peer(b)
    b.add_peer(a)
    pair = SyncthingPair(a, b, base / "folder-a", base / "folder-b")
    a.add_folder(pair.folder_a, [b])
    b.add_folder(pair.folder_b, [a])
    pair.wait_connected()
    return pair


@pytest.fixture(scope="module", name="syncthing_pair")
def syncthing_pair_fixture() -> Iterator[SyncthingPair]:
    """Started once per module (about 3 s): two instances, connected, sharing an empty folder."""
    if SYNCTHING is None:
        pytest.skip("syncthing is not installed")
    base = Path(tempfile.mkdtemp(prefix="ss-st-", dir="/tmp"))
    pair: SyncthingPair | None = None
    try:
        pair = start_pair(base)
        yield pair
    finally:
        if pair is not None:
            for st in (pair.a, pair.b):
                st.kill()
        shutil.rmtree(base, ignore_errors=True)


def write_files(root: Path, count: int, size: int, prefix: str = "f") -> dict[str, int]:
    """``count`` files of ``size`` random (incompressible, unique) bytes under ``root``; returns rel -> size."""
    out: dict[str, int] = {}
    for i in range(count):
        rel = f"{prefix}/{i % 4}/{prefix}{i}.bin"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(size))
        out[rel] = size
    return out


# --- a syncsnapd following a Syncthing folder ------------------------------------------------------------

def start_syncthing_daemon(base: Path, projects: list[dict[str, str]], *, watch: bool,
                           extra_daemon: str = "") -> Any:
    """A syncsnapd subprocess (see helpers.daemon.start_daemon) whose projects are given as TOML key/values,
    e.g. ``{"id": '"synced"', "syncthing": '{ url = "...", api_key = "...", folder = "..." }'}``."""

    from helpers.daemon import spawn_daemon, write_config

    base.mkdir(parents=True, exist_ok=True)
    cfg = write_config(base, {}, watch=watch, extra_daemon=extra_daemon)
    with open(cfg, "a") as f:
        for project in projects:
            f.write("[[projects]]\n" + "".join(f"{k} = {v}\n" for k, v in project.items()))
    return spawn_daemon(base, cfg, "-v")


def syncthing_table(st: Syncthing, *, folder: str = FOLDER_ID, api_key: str | None = None) -> str:
    return f'{{ url = "{st.url}", api_key = "{api_key or st.api_key}", folder = "{folder}" }}'


def folder_totals(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under ``root`` as a snapshot counts them (Syncthing's own files excluded)."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".stfolder", ".stversions")]
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not name.startswith((".syncthing.", "~syncthing~")) and not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                size += st.st_size
    return files, size
