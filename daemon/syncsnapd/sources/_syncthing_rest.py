"""Syncthing's REST API as we use it: timeouts, errors from its answers, backoff, and the async client.

Every request runs under its own cancel scope (the timeouts below); every failure becomes a
:class:`SyncthingError` with a code (``sync_auth``, ``sync_folder_unknown``, ``sync_unreachable``) and a
sentence naming the project's Syncthing URL, never the API key. :func:`folder_path` is the one call made
when a project configured without a ``path`` starts. The step 1 waiter and the change source built on
this client are in ``_syncthing``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import trio

from ..core import SyncsnapdError, SyncthingConfig

log = logging.getLogger("syncsnapd.syncthing")


class _RequestLinesAtDebug(logging.Filter):
    """httpx logs every request at INFO ("HTTP Request: GET .../rest/events ..."): with a long poll and
    a status check per run that is noise at the default level. Its INFO lines become DEBUG lines, shown
    only when debug logging is on (``syncsnapd -v``); its warnings and errors are left alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


# Installed once, where the daemon starts using httpx (only Syncthing's REST API does).
logging.getLogger("httpx").addFilter(_RequestLinesAtDebug())


# --- timeouts (seconds), each applied as a cancel scope around one request -------------------------------
# An ordinary REST call (status, config, ping) answers in milliseconds on loopback; ten seconds means the
# process is hung or swapping, which we treat like "not answering".
REQUEST_TIMEOUT_SECONDS = 10.0
# POST /rest/db/scan returns only when the scan is done (after a pull in progress, if any). Hashing a
# large first-time folder takes hours (1 TB at 200 MB/s is 1.4 h); liveness is checked meanwhile by the
# status polls, so this only bounds a scan that never ends.
SCAN_TIMEOUT_SECONDS = 6 * 3600.0
# Long poll: Syncthing holds /rest/events up to this long when nothing happens (its default is 60 s) ...
EVENTS_POLL_SECONDS = 60
# ... and we give it this much more before calling the request hung.
EVENTS_GRACE_SECONDS = 15.0

# How often step 1 asks /rest/db/status while waiting: fast enough for a smooth message, two cheap
# requests a second at most (in 1.19 the counts come from Syncthing's database metadata, not a walk).
STATUS_POLL_SECONDS = 0.5

# Retry policy when Syncthing does not answer: 1 s, doubling, at most 30 s, back to 1 s once it answers.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0

# Events that mean files on this disk changed (see the module docstring for the others).
CHANGE_EVENTS = frozenset({"LocalIndexUpdated", "ItemFinished"})
EVENT_MASK = "LocalIndexUpdated,ItemFinished,StateChanged"
SCAN_PROGRESS_MASK = "FolderScanProgress"
# Folder states from which Syncthing returns to "idle" by itself; changes seen meanwhile are held.
# ("error", "paused" and unknown states are not busy: holding changes there could hold them forever.)
BUSY_STATES = frozenset({"scan-waiting", "scanning", "sync-waiting", "sync-preparing", "syncing",
                         "clean-waiting", "cleaning"})


class SyncthingError(SyncsnapdError):
    """Syncthing could not be asked, or said no; ``code`` says which and the message says what to fix.

    Codes: ``sync_auth`` (API key refused), ``sync_folder_unknown`` (no such folder id),
    ``sync_unreachable`` (not answering, or not answering like Syncthing), ``sync_folder_error``
    (Syncthing reports a problem with the folder itself, e.g. its path is missing).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True)
class SyncthingChange:
    """What :func:`serve_syncthing_changes` sends: a settled batch of changes, or a full check."""

    events: int
    full_check: bool = False
    reason: str = ""


class Backoff:
    """Delays for retrying a peer that does not answer: 1, 2, 4, ... capped, reset after success."""

    def __init__(self, first: float = BACKOFF_FIRST_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> None:
        self.first = first
        self.cap = cap
        self._next = first
        self.failures = 0  # failed tries since the last success

    def next_delay(self) -> float:
        """Count a failed try and return how long to wait before the next one."""
        self.failures += 1
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first
        self.failures = 0

    def retry_message(self, problem: str, delay: float) -> str:
        """``problem`` with when we try again; later tries say how many failed, so a long outage is
        visible as such (and each try changes the text)."""
        if self.failures <= 1:
            return f"{problem}; retrying in {delay:g} s"
        return f"{problem}; retrying in {delay:g} s ({self.failures} tries so far)"


# --- errors from responses (pure) ------------------------------------------------------------------------

def _auth_error(cfg: SyncthingConfig, response: httpx.Response) -> SyncthingError:
    return SyncthingError(
        "sync_auth",
        f"Syncthing at {cfg.url} refused the API key (HTTP {response.status_code}); check api_key/api_key_file "
        "against the key in Syncthing's Actions > Settings > GUI")


def _unknown_folder_error(cfg: SyncthingConfig) -> SyncthingError:
    return SyncthingError(
        "sync_folder_unknown",
        f"Syncthing at {cfg.url} has no folder with id {cfg.folder!r}; check syncthing.folder (the folder ID "
        "shown in Syncthing's folder settings, not its label)")


def _unreachable(cfg: SyncthingConfig, reason: str) -> SyncthingError:
    return SyncthingError("sync_unreachable", f"Syncthing at {cfg.url} is not answering ({reason})")


def _transport_reason(exc: httpx.RequestError) -> str:
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return "its TLS certificate is not trusted"
        return "cannot connect"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "connection lost"
    return type(exc).__name__


def _check_response(cfg: SyncthingConfig, response: httpx.Response, *, folder_call: bool) -> None:
    """Raise the :class:`SyncthingError` a non-2xx answer stands for.

    Syncthing answers a wrong key with 403 "CSRF Error" (401 when GUI user/password auth is on), an unknown
    folder with 404 (500 from POST /rest/db/scan), both with "no such folder" in the text.
    """
    code = response.status_code
    if code < 300:
        return
    if code in (401, 403):
        raise _auth_error(cfg, response)
    text = response.text.strip()[:200]
    if folder_call and (code == 404 or "no such folder" in text.lower()):
        raise _unknown_folder_error(cfg)
    if folder_call and code == 500:
        raise SyncthingError("sync_folder_error", f"Syncthing reports a problem with folder {cfg.folder!r}: {text}")
    raise _unreachable(cfg, f"HTTP {code} from {response.request.url.path}: {text}")


def _json(cfg: SyncthingConfig, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _unreachable(cfg, f"{response.request.url.path} did not answer with JSON; is this Syncthing's "
                                "GUI address?") from None


def _headers(cfg: SyncthingConfig) -> dict[str, str]:
    return {"X-API-Key": cfg.api_key, "Accept": "application/json"}


def _folder_config_path(cfg: SyncthingConfig) -> str:
    return f"/rest/config/folders/{quote(cfg.folder, safe='')}"


# --- the async REST client -------------------------------------------------------------------------------

class SyncthingRest:
    """The calls we make, each with its own deadline (a cancel scope: httpx's own timeouts are off)."""

    def __init__(self, cfg: SyncthingConfig, client: httpx.AsyncClient) -> None:
        self.cfg = cfg
        self._client = client

    async def _call(self, method: str, path: str, *, params: dict[str, str | int] | None = None,
                    deadline: float, folder_call: bool = False) -> httpx.Response:
        response: httpx.Response | None = None
        with trio.move_on_after(deadline):
            try:
                response = await self._client.request(method, path, params=params)
            except httpx.RequestError as exc:  # connection refused or lost, bad HTTP, undecodable body
                raise _unreachable(self.cfg, _transport_reason(exc)) from exc
        if response is None:
            raise _unreachable(self.cfg, f"no answer to {path} within {deadline:g} s")
        _check_response(self.cfg, response, folder_call=folder_call)
        return response

    async def db_status(self) -> dict[str, Any]:
        r = await self._call("GET", "/rest/db/status", params={"folder": self.cfg.folder},
                             deadline=REQUEST_TIMEOUT_SECONDS, folder_call=True)
        data = _json(self.cfg, r)
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            raise _unreachable(self.cfg, "/rest/db/status has no folder state")
        return data

    async def scan(self) -> None:
        await self._call("POST", "/rest/db/scan", params={"folder": self.cfg.folder},
                         deadline=SCAN_TIMEOUT_SECONDS, folder_call=True)

    async def check_folder(self) -> None:
        await self._call("GET", _folder_config_path(self.cfg), deadline=REQUEST_TIMEOUT_SECONDS,
                         folder_call=True)

    async def folder_path(self) -> str:
        r = await self._call("GET", _folder_config_path(self.cfg), deadline=REQUEST_TIMEOUT_SECONDS,
                             folder_call=True)
        data = _json(self.cfg, r)
        path = data.get("path") if isinstance(data, dict) else None
        if not isinstance(path, str) or not path:
            raise _unreachable(self.cfg, f"its config of folder {self.cfg.folder!r} has no path")
        return path

    async def identity(self) -> tuple[str, str]:
        """Which Syncthing process answers: (device id, start time); changes when it restarts."""
        r = await self._call("GET", "/rest/system/status", deadline=REQUEST_TIMEOUT_SECONDS)
        data = _json(self.cfg, r)
        if not isinstance(data, dict):
            raise _unreachable(self.cfg, "/rest/system/status is not an object")
        return str(data.get("myID", "")), str(data.get("startTime", ""))

    async def events(self, mask: str, since: int, *, wait: int = EVENTS_POLL_SECONDS,
                     limit: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"events": mask, "since": since, "timeout": wait}
        if limit is not None:
            params["limit"] = limit
        r = await self._call("GET", "/rest/events", params=params, deadline=wait + EVENTS_GRACE_SECONDS)
        data = _json(self.cfg, r)
        if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), int)
                                                  for e in data):
            raise _unreachable(self.cfg, "/rest/events did not answer with a list of events")
        return data

    async def latest_event_id(self, mask: str) -> int:
        """The id of the newest event in the mask's subscription (0 if none yet), without waiting.

        The first call with a mask makes Syncthing create that subscription; it holds events from then on.
        """
        evs = await self.events(mask, 0, wait=0, limit=1)
        return int(evs[-1]["id"]) if evs else 0


@asynccontextmanager
async def open_rest(cfg: SyncthingConfig) -> AsyncIterator[SyncthingRest]:
    # timeout=None: deadlines are cancel scopes in SyncthingRest._call. trust_env=False: no proxies for loopback.
    async with httpx.AsyncClient(base_url=cfg.url, headers=_headers(cfg), timeout=None,
                                 trust_env=False) as client:
        yield SyncthingRest(cfg, client)


async def folder_path(cfg: SyncthingConfig) -> Path:
    """The folder's path as Syncthing has it configured (``GET /rest/config/folders/{id}``).

    Called when a project configured without a ``path`` starts (loading the configuration does no
    network I/O); one request, bounded by :data:`REQUEST_TIMEOUT_SECONDS`, not retried here.

    Raises:
        SyncthingError: ``sync_auth``, ``sync_folder_unknown`` or ``sync_unreachable``.
    """
    async with open_rest(cfg) as rest:
        path = await rest.folder_path()
    return _expand_home(path)


def _expand_home(path: str) -> Path:
    # Syncthing keeps "~/..." as typed in its GUI; it runs as the same user, so our ~ is its ~.
    return Path(path).expanduser()


def reraise_cancelled(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise a nursery's all-``Cancelled`` group as one plain ``Cancelled``, so the scheduler (which
    catches ``trio.Cancelled`` to publish the run's ``cancelled`` event) sees what it expects."""
    cancelled, rest = group.split(trio.Cancelled)
    if rest is not None or cancelled is None:
        raise group
    first: BaseException = cancelled
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    raise first from None
