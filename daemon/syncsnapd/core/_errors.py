"""The one error base class of the daemon: every error a user can see has a ``code`` and a ``message``.

``code`` is a short stable identifier from docs/api.md (``folder_missing``, ``store_unreachable``,
``unknown_project``, ...): clients branch on it. ``message`` is one sentence a person can act on. Layers
raise these with the code that names what went wrong; only the API layer decides what an error means in
HTTP (one table in ``syncsnapd.api``), and only the supervision layer decides what it means for a
service (``syncsnapd.core._supervise`` reads ``code`` from any exception that has one).
"""

from __future__ import annotations

__all__ = ["ConfigError", "SyncsnapdError"]


class SyncsnapdError(Exception):
    """An error with a stable ``code`` and a human ``message``.

    Subclasses set a class-level default ``code``; an instance may carry a more precise one.
    """

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, str]:
        """The error object of the API and of progress events: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


class ConfigError(Exception):
    """A configuration problem; the message names the key or flag at fault."""
