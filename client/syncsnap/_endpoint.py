"""How to reach the daemon: :class:`Endpoint`, a plain value (finding it is ``transport/_discovery.py``'s job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Endpoint:
    """How to reach the daemon.

    Attributes:
        transport: ``"unix"`` or ``"tcp"``.
        path: the socket path (Unix).
        host, port: the loopback address (TCP).
        token: the bearer token sent over TCP (None: none found).
        token_source: where the token was (or would have been) read, for error messages: the file and
            who named it (``/x/token (SYNCSNAP_TOKEN_FILE)``).
        token_problem: why no token was read from it (``does not exist``, ``is empty``, ...).
        token_fix: what to do when the daemon refuses the token, for the one who named the file.
        source: where this address came from, for error messages.
    """

    transport: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0
    token: str | None = None
    token_source: str = ""
    token_problem: str = ""
    token_fix: str = ""
    source: str = ""

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the daemon refuses anything but a loopback name over TCP."""
        if self.transport == "unix":
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def describe(self) -> str:
        """``/run/user/1000/syncsnap/syncsnapd.sock`` or ``http://127.0.0.1:8473``."""
        return self.path if self.transport == "unix" else f"http://{self.host_header}"
