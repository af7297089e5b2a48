"""Which projects are paused, kept in ``state_dir/paused.json`` so that a pause survives a restart.

The file is small and rewritten whole on every pause and resume: written to a temporary name, fsynced,
renamed over the old one, and the directory fsynced, so a crash leaves the old file or the new one,
never a mix. A file that cannot be read or is damaged never stops the daemon: it is logged and ignored
(every project starts unpaused), and the next pause or resume writes a good one.

Format (version 1)::

    {"version": 1, "projects": {"<project id>": {"paused_at": "2026-12-01T14:03:00.000Z"}}}

Blocking file I/O: call from a worker thread (or at start-up, before the loop serves anyone).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("syncsnapd.scheduler")

PAUSED_FILE_NAME = "paused.json"
VERSION = 1


def load_paused(path: Path) -> dict[str, str]:
    """The paused projects recorded in ``path`` (project id -> when it was paused); empty when the file
    is missing, and empty (logged) when it cannot be read or is damaged."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("cannot read %s (%s); every project starts unpaused", path, exc.strerror or exc)
        return {}
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("projects"),
                                                                                          dict):
            raise ValueError("not a version 1 object with 'projects'")
        out: dict[str, str] = {}
        for pid, info in data["projects"].items():
            when = info.get("paused_at") if isinstance(info, dict) else None
            out[str(pid)] = when if isinstance(when, str) else ""
        return out
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        log.error("%s is damaged (%s); ignored: every project starts unpaused, and the next pause or resume "
                  "writes it again", path, exc)
        return {}


def save_paused(path: Path, paused: dict[str, str]) -> None:
    """Write ``paused`` (project id -> when) to ``path`` atomically and durably.

    Raises:
        OSError: the file could not be written (the old one is left as it was).
    """
    data = {"version": VERSION, "projects": {pid: {"paused_at": when} for pid, when in sorted(paused.items())}}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(data, indent=1).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
