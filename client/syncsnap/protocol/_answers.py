"""The daemon's HTTP answers, sans-I/O: :class:`Response` and the exception an error answer becomes.

Every exception's message is a sentence that says what to do (docs/client.md, "Errors").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .._endpoint import Endpoint
from .._errors import DaemonError, NotFound, ProtocolError, SyncsnapError, Unauthorized


@dataclass(frozen=True)
class Response:
    """A whole answer: status, headers (lower-case names, as h11 gives them) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ProtocolError(f"The daemon answered {self.status} with a body that is not JSON ({exc}); "
                                "is it syncsnapd?") from None


def _daemon_error(status: int, body: bytes) -> tuple[str, str]:
    try:
        err = json.loads(body)["error"]
        return str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        return "", body.decode("utf-8", "replace").strip()[:200]


# What to do about the daemon's refusals of operations (docs/api.md, "Operations"), by error code.
HINTS = {
    "snapshot_unknown": "`syncsnap snapshots PROJECT` lists a project's snapshots.",
    "target_not_empty": "`--overwrite` restores over what is there.",
    "busy": "one check or prune runs at a time; try again when it has ended.",
    "store_error": "`syncsnap check` says what is damaged.",
}


def _sentence(text: str) -> str:
    """The daemon's message, ending with a full stop."""
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def error_for_response(endpoint: Endpoint, method: str, target: str, status: int, body: bytes) -> SyncsnapError:
    """The exception for an error answer (status >= 400), with a message that says what to do."""
    code, message = _daemon_error(status, body)
    where = f"syncsnapd at {endpoint.describe()}"
    if status == 401:
        if endpoint.token is None:
            problem = endpoint.token_problem or "holds no token"
        else:
            problem = "holds a token the daemon does not accept"
        fix = endpoint.token_fix or ("Point SYNCSNAP_TOKEN_FILE at the daemon's token file (its `token_file` "
                                     "setting), or use the Unix socket.")
        return Unauthorized(f"{where} refused the request ({code or 'unauthorized'}): the token file "
                            f"{endpoint.token_source} {problem}. {fix}", status=status, code=code)
    if status == 403:
        if code == "forbidden_host":
            hint = "use 127.0.0.1, [::1] or localhost as the host in SYNCSNAP_URL"
        else:
            hint = "run the client as the user who runs the daemon"
        return Unauthorized(f"{where} refused the request: {message or 'forbidden'} ({hint}).",
                            status=status, code=code)
    hint = HINTS.get(code, "")
    if status == 404:
        if message.startswith("No project named"):
            hint = "`syncsnap projects` lists the configured projects."
        elif message.startswith("No run "):
            hint = "`syncsnap runs PROJECT` lists a project's runs."
        text = _sentence(message) + (f" ({hint})" if hint else "") if message else \
            f"{where} has no {target} (an older version?)."
        return NotFound(text, status=status, code=code)
    if status in (400, 409, 422, 500) and message and code not in ("bad_request", "internal_error", ""):
        # The daemon refused what was asked (a target that is not empty, a check already running, ...):
        # its own sentence says why.
        return DaemonError(f"syncsnapd refused the request: {_sentence(message)}" + (f" ({hint})" if hint else ""),
                           status=status, code=code)
    if status == 503:
        return DaemonError(f"{where} is unavailable right now: {message or 'service unavailable'} "
                           "(too many connections, or it is shutting down); try again in a moment.",
                           status=status, code=code)
    return DaemonError(f"{where} answered {method} {target} with {status} {code}: {message}".rstrip(": ")
                       + ("" if status < 500 else "; see the daemon's log."), status=status, code=code)
