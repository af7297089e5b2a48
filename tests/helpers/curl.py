"""curl as a real client of a running daemon: an SSE stream read in a background thread."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from helpers.daemon import DaemonProcess

TERMINAL = {"completed", "failed", "cancelled"}


class SseReader:
    """`curl -N` on a stream; parses events in a background thread."""

    def __init__(self, d: DaemonProcess, path: str, *extra: str) -> None:
        self.proc = subprocess.Popen(["curl", "-sS", "-N", "--unix-socket", d.socket, *extra,
                                      f"http://localhost{path}"], stdout=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        ev: dict[str, str] = {}
        for line in self.proc.stdout:
            self.raw.append(line)
            line = line.rstrip("\n")
            if not line:
                if ev.get("event") == "progress":
                    data = json.loads(ev["data"])
                    # A never-run project's idle state (event_id 0) has no `id:` line (docs/api.md).
                    assert int(ev["id"]) == data["event_id"] if "id" in ev else data["event_id"] == 0
                    self.events.append(data)
                ev = {}
            elif not line.startswith(":") and ":" in line:
                k, _, v = line.partition(":")
                ev[k] = v[1:] if v.startswith(" ") else v

    def wait_for(self, pred: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            while seen < len(self.events):
                seen += 1
                if pred(self.events[seen - 1]):
                    return self.events[seen - 1]
            if self.proc.poll() is not None and seen == len(self.events):
                break
            time.sleep(0.01)
        raise AssertionError(f"no matching event; got {self.events[-5:]}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes
    curl_exit: int


def fetch(d: DaemonProcess, url: str, *args: str) -> Reply:
    """One request with curl over the Unix socket: status, headers, body exactly as received."""
    proc = subprocess.run(["curl", "-sS", "-D", "/dev/stderr", "--unix-socket", d.socket, *args,
                           f"http://localhost{url}"], capture_output=True, timeout=60)
    headers: dict[str, str] = {}
    status = 0
    for line in proc.stderr.decode("latin-1").splitlines():
        if line.startswith("HTTP/"):
            status = int(line.split()[1])
        elif ":" in line and not line.startswith("curl:"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, proc.stdout, proc.returncode)


def error_code(reply: Reply) -> str:
    """The ``error.code`` of a JSON error answer."""
    return str(json.loads(reply.body)["error"]["code"])


def q(path: str | bytes) -> str:
    """A path as the query's ``path`` value: its bytes, percent-encoded."""
    return quote(os.fsencode(path), safe="")


def snapshot_now(d: DaemonProcess, project: str) -> str:
    """Take a snapshot of ``project`` through the API, wait for its end on the progress stream; its id."""
    stream = SseReader(d, f"/api/v1/projects/{project}/progress/stream")
    try:
        started = json.loads(d.curl("-X", "POST", f"http://localhost/api/v1/projects/{project}/snapshots").stdout)
        final = stream.wait_for(lambda e: e["run"] == started["run"] and e["state"] in TERMINAL)
    finally:
        stream.close()
    assert final["state"] == "completed", final
    return str(final["snapshot"]["id"])
