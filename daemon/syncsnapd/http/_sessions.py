"""Dashboard logins: one-time login codes and browser sessions (:class:`SessionStore`). No Trio, no sockets.

- A **login code** is handed out over the Unix socket (``syncsnap open``), valid :data:`LOGIN_CODE_SECONDS`
  and usable once: redeeming it at ``GET /login?code=...`` creates a session.
- A **session** is the value of the ``syncsnap_session`` cookie, valid :data:`SESSION_SECONDS`.

Both are 256-bit random values from :mod:`secrets`, and both are kept only as their SHA-256 hashes: a
lookup hashes what the client sent and looks the hash up, so its time depends on nothing secret (the
client cannot steer the hash it makes), and the mirror file holds nothing a reader could log in with.

Sessions are mirrored (hash and expiry) in a 0600 JSON file next to the Unix socket (the runtime directory,
a tmpfs cleared at reboot), so a daemon that was killed and started again keeps its users logged in;
:meth:`SessionStore.close` (a clean stop) deletes it, which revokes them all. The file is written by
:meth:`SessionStore.write_mirror` (blocking: the caller runs it in a worker thread, with the bytes taken
by :meth:`SessionStore.mirror_bytes` on its own thread). Times come from an injected wall clock (the
expiry outlives the process), so expiry is tested without sleeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOGIN_CODE_SECONDS", "SESSION_COOKIE", "SESSION_SECONDS", "SessionStore"]

log = logging.getLogger("syncsnapd.http")

# The cookie's name (docs/api.md, "Dashboard and login").
SESSION_COOKIE = "syncsnap_session"
# A login code travels in a URL from the terminal to the browser within seconds; a minute covers a slow
# browser start while keeping a code seen in a process list or a shell history useless soon after.
LOGIN_CODE_SECONDS = 60.0
# A week: a dashboard left open keeps working across a working week without a new `syncsnap open`.
SESSION_SECONDS = 7 * 24 * 3600.0
# Bounds on memory (only the owner, over the Unix socket, can make codes, and sessions only from codes):
# beyond them the entries closest to expiry are dropped first.
MAX_LOGIN_CODES = 64
MAX_SESSIONS = 1024
# Random bytes per code and per session: 256 bits (43 URL-safe characters).
SECRET_BYTES = 32
# The mirror file is ours and small; anything larger is not one we wrote.
MAX_MIRROR_BYTES = 1024 * 1024


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def _bounded(table: dict[str, float], limit: int) -> None:
    # Drop the entries that expire soonest until there is room for one more.
    while len(table) >= limit:
        del table[min(table, key=table.__getitem__)]


class SessionStore:
    """Login codes and sessions, by hash, with their expiry (wall-clock seconds).

    Args:
        mirror: the sessions file (``None``: memory only).
        clock: the wall clock, ``time.time`` unless a test injects one.
        code_seconds, session_seconds: lifetimes (defaults :data:`LOGIN_CODE_SECONDS`,
            :data:`SESSION_SECONDS`).
    """

    def __init__(self, mirror: Path | None = None, *, clock: Callable[[], float] = time.time,
                 code_seconds: float = LOGIN_CODE_SECONDS, session_seconds: float = SESSION_SECONDS) -> None:
        self.mirror = mirror
        self.clock = clock
        self.code_seconds = code_seconds
        self.session_seconds = session_seconds
        self._codes: dict[str, float] = {}
        self._sessions: dict[str, float] = {}
        self._closed = False

    # --- codes -----------------------------------------------------------------------------------

    def new_login_code(self) -> str:
        """A fresh login code, valid :attr:`code_seconds` and usable once."""
        now = self.clock()
        self._expire(self._codes, now)
        _bounded(self._codes, MAX_LOGIN_CODES)
        code = secrets.token_urlsafe(SECRET_BYTES)
        self._codes[_hash(code)] = now + self.code_seconds
        return code

    def redeem(self, code: str) -> str | None:
        """Use ``code`` up: a new session's value when the code was valid, else ``None`` (unknown,
        expired or already used). The caller then saves the mirror."""
        now = self.clock()
        expiry = self._codes.pop(_hash(code), None)
        if expiry is None or expiry <= now:
            return None
        self._expire(self._sessions, now)
        _bounded(self._sessions, MAX_SESSIONS)
        session = secrets.token_urlsafe(SECRET_BYTES)
        self._sessions[_hash(session)] = now + self.session_seconds
        return session

    # --- sessions --------------------------------------------------------------------------------

    def is_valid(self, session: str) -> bool:
        """Whether ``session`` (a cookie's value) is a live session."""
        expiry = self._sessions.get(_hash(session))
        return expiry is not None and expiry > self.clock()

    def seconds_left(self, session: str) -> int:
        """Whole seconds until ``session`` expires (0 when it is not live): the cookie's ``Max-Age``."""
        expiry = self._sessions.get(_hash(session))
        return 0 if expiry is None else max(0, round(expiry - self.clock()))

    def end(self, session: str) -> bool:
        """End one session (logout); True if it was live. The caller then saves the mirror."""
        expiry = self._sessions.pop(_hash(session), None)
        return expiry is not None and expiry > self.clock()

    def revoke_all(self) -> int:
        """End every session and forget every code; returns how many live sessions ended."""
        now = self.clock()
        live = sum(1 for expiry in self._sessions.values() if expiry > now)
        self._sessions.clear()
        self._codes.clear()
        return live

    def __len__(self) -> int:
        now = self.clock()
        return sum(1 for expiry in self._sessions.values() if expiry > now)

    def _expire(self, table: dict[str, float], now: float) -> None:
        for key in [k for k, expiry in table.items() if expiry <= now]:
            del table[key]

    # --- the mirror file ---------------------------------------------------------------------------

    def mirror_bytes(self) -> bytes:
        """The mirror's content now: live sessions' hashes and expiry (take it on the thread that
        mutates the store, then write it with :meth:`write_mirror` anywhere)."""
        self._expire(self._sessions, self.clock())
        return (json.dumps({"version": 1, "sessions": self._sessions}, separators=(",", ":")) + "\n").encode()

    def write_mirror(self, data: bytes) -> None:
        """Replace the mirror file with ``data`` (0600, atomically). Nothing after :meth:`close`.

        A failure is logged, not raised: sessions then last only as long as this process.
        """
        if self.mirror is None or self._closed:
            return
        tmp = self.mirror.with_name(f".{self.mirror.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self.mirror)
        except OSError as exc:
            log.warning("cannot write the sessions file %s (%s): sessions will not survive a crash",
                        self.mirror, exc.strerror)
            try:
                tmp.unlink()
            except OSError:
                pass

    def load(self) -> int:
        """Read the mirror left by a daemon that did not stop cleanly; returns the live sessions loaded.

        A missing file loads nothing; one that is not ours (not a regular file, another owner, open to
        others) or not what we write is ignored, logged, and replaced at the next login.
        """
        if self.mirror is None:
            return 0
        try:
            fd = os.open(self.mirror, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("ignoring the sessions file %s: %s", self.mirror, exc.strerror)
            return 0
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                log.warning("ignoring the sessions file %s: not a private file of this user", self.mirror)
                return 0
            raw = os.read(fd, MAX_MIRROR_BYTES + 1)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
            entries = doc["sessions"] if doc.get("version") == 1 and len(raw) <= MAX_MIRROR_BYTES else None
            if not isinstance(entries, dict):
                raise ValueError("no sessions object")
            now = self.clock()
            loaded = {k: float(v) for k, v in entries.items()
                      if isinstance(k, str) and len(k) == 64 and isinstance(v, (int, float))
                      and not isinstance(v, bool) and now < v <= now + self.session_seconds}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring the sessions file %s: %s", self.mirror, exc)
            return 0
        for key in sorted(loaded, key=loaded.__getitem__)[-MAX_SESSIONS:]:
            self._sessions[key] = loaded[key]
        return len(self._sessions)

    def close(self) -> None:
        """A clean stop: delete the mirror (so a restart revokes every session) and write it no more."""
        self._closed = True
        if self.mirror is not None:
            try:
                self.mirror.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the sessions file %s: %s", self.mirror, exc.strerror)
