"""The exceptions of the client library. Every message is a sentence that says what to do."""

from __future__ import annotations


class SyncsnapError(Exception):
    """Base class of every error the client raises.

    ``status`` and ``code`` carry the daemon's HTTP status and error code when the daemon answered.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.message


class DaemonNotRunning(SyncsnapError):
    """Nothing answers at the daemon's address (no socket, connection refused)."""


class ConnectionLost(SyncsnapError):
    """The connection broke, or the daemon stopped answering, in the middle of a request."""


class Unauthorized(SyncsnapError):
    """The daemon refused us: wrong or missing token (401), wrong user or ``Host`` (403)."""


class NotFound(SyncsnapError):
    """Unknown project (or path): the daemon answered 404."""


class DaemonError(SyncsnapError):
    """Any other error answer of the daemon (503 unavailable, 500 internal error, ...)."""


class ProtocolError(SyncsnapError):
    """The daemon answered something this client does not understand (bad HTTP, JSON or event)."""


class RunLost(SyncsnapError):
    """A followed run's outcome cannot be known any more (the daemon restarted, or it ended unseen)."""
