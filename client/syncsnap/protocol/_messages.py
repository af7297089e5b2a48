"""What the follower reads and sends, sans-I/O: where its streams and polls go, and what their messages mean.

Both transports carry the same things, turned here into one vocabulary of *items*: a :class:`Progress`,
a :class:`Gap` (the daemon could not resume from our last event id), :class:`TooSlow` (the daemon is
about to drop this reader) and, on the WebSocket only, a :class:`Reply` to one of our commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from .._errors import DaemonError, NotFound, ProtocolError, SyncsnapError
from ..models import Progress, Project, parse_list
from ._sse import SseComment, SseEvent

API = "/api/v1"
WS_TARGET = f"{API}/ws"
# The daemon's close code for a WebSocket reader too slow to keep up (policy violation).
CLOSE_POLICY = 1008
Transport = Literal["sse", "ws"]
TRANSPORTS: tuple[Transport, ...] = ("sse", "ws")


class Gap:
    """The daemon could not resume from our last event id (SSE ``event: gap``, WebSocket ``type: gap``)."""


class TooSlow:
    """The daemon is about to drop this reader for falling behind: resuming at once loses nothing."""


@dataclass(frozen=True)
class Reply:
    """A WebSocket answer to one of our commands (``type`` ``reply`` or ``error``)."""

    msg: dict[str, Any]

    @property
    def id(self) -> Any:
        return self.msg.get("id")


Item = Progress | Gap | TooSlow | Reply


@dataclass(frozen=True)
class FollowTargets:
    """Where a follower of ``project`` (None: every project) and maybe one ``run`` of ``kind`` reads.

    ``stream`` is the SSE stream; ``poll`` the JSON endpoint polled while streams fail, whose answer
    :meth:`parse_poll` reads.
    """

    project: str | None
    run: str | None
    kind: str

    @property
    def stream(self) -> str:
        if self.project is None:
            return f"{API}/events"
        return f"{API}/projects/{quote(self.project, safe='')}/progress/stream"

    @property
    def follows_operation(self) -> bool:
        """An operation run (restore, check, prune): its events do not replace its project's state."""
        return self.run is not None and self.kind != "snapshot"

    @property
    def poll(self) -> str:
        if self.run is not None and self.follows_operation:
            # An operation's events do not replace its project's state: its own endpoint has them.
            return f"{API}/operations/{quote(self.run, safe='')}"
        if self.project is None:
            return f"{API}/projects"
        return f"{API}/projects/{quote(self.project, safe='')}/progress"

    def parse_poll(self, doc: Any) -> list[Progress]:
        """The progress objects of an answer from :attr:`poll`."""
        if self.project is None and not self.follows_operation:
            return [p.progress for p in parse_list(doc, "projects", Project, "a project list")]
        return [Progress.from_json(doc)]


def parse_progress(data: str) -> Progress:
    """An SSE ``progress`` event's data."""
    try:
        return Progress.from_json(json.loads(data))
    except ValueError as exc:
        raise ProtocolError(f"The daemon sent a progress event that is not JSON ({exc}).") from None


def sse_items(events: list[SseEvent | SseComment]) -> list[Item]:
    """What parsed SSE events and comments mean to a follower (keep-alives and unknown events: nothing)."""
    items: list[Item] = []
    for item in events:
        if isinstance(item, SseComment):
            if item.text.startswith("too slow"):
                items.append(TooSlow())
        elif item.event == "gap":
            items.append(Gap())
        elif item.event == "progress":
            items.append(parse_progress(item.data))
    return items


def ws_items(messages: list[dict[str, Any]]) -> list[Item]:
    """What WebSocket messages mean to a follower (unknown types: nothing)."""
    items: list[Item] = []
    for msg in messages:
        kind = msg.get("type")
        if kind == "progress":
            if not isinstance(msg.get("progress"), dict):
                raise ProtocolError("The daemon sent a progress message without a progress object; is "
                                    "syncsnapd the same version as this client?")
            items.append(Progress.from_json(msg["progress"]))
        elif kind == "gap":
            items.append(Gap())
        elif kind == "error" and isinstance(msg.get("error"), dict) and msg["error"].get("code") == "too_slow":
            items.append(TooSlow())
        elif kind in ("reply", "error"):
            items.append(Reply(msg))
    return items


def subscribe_command(project: str | None, last_event_id: int | None) -> dict[str, Any]:
    """The WebSocket ``subscribe`` of a follower of ``project`` (None: every project), resuming after an id."""
    sub: dict[str, Any] = {"op": "subscribe", "projects": "*" if project is None else [project]}
    if last_event_id is not None:
        sub["last_event_id"] = last_event_id
    return sub


def ws_error(endpoint_desc: str, msg: dict[str, Any]) -> SyncsnapError:
    """The exception for the daemon's ``error`` answer to a WebSocket command."""
    err = msg.get("error")
    if not isinstance(err, dict):
        err = {}
    code = str(err.get("code", ""))
    message = str(err.get("message", "")) or "no reason given"
    if code == "not_found":
        if message.startswith("No project named"):
            message += " (`syncsnap projects` lists the configured projects.)"
        return NotFound(message, code=code)
    return DaemonError(f"syncsnapd at {endpoint_desc} refused {msg.get('op')!r} on the WebSocket ({code}): "
                       f"{message}", code=code)


def ws_end_reason(close_code: int | None) -> str:
    """Why a WebSocket stream ended, for the log."""
    if close_code == CLOSE_POLICY:
        return "the daemon dropped this slow reader"
    return "the daemon closed the WebSocket" + (f" (code {close_code})" if close_code not in (None, 1006) else "")
