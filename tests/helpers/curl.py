"""curl as a real client of a running daemon: an SSE stream read in a background thread."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

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
