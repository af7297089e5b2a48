"""What a project's change source says about itself: the project's ``watch`` object in the API."""

from __future__ import annotations

from dataclasses import dataclass

from ..core import ServiceError

__all__ = ["WatchStatus"]


@dataclass
class WatchStatus:
    """What the project's change source reports about itself (shown in the project's ``watch``).

    ``mode`` and ``warning`` are set by the source; ``error`` is set by whoever supervises it (the last
    failure that stopped the source while it waits to be restarted, None while it runs).
    """

    mode: str = "starting"  # "inotify", "polling", "syncthing", "off", "stopped"
    warning: str | None = None
    error: ServiceError | None = None

    def to_json(self) -> dict[str, object]:
        error = None if self.error is None else {"code": self.error.code, "message": self.error.message}
        return {"mode": self.mode, "warning": self.warning, "error": error}
