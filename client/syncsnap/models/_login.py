"""The dashboard's login (docs/api.md, "Dashboard and login"): a one-time login code and its URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._parse import as_object, required


@dataclass(frozen=True)
class LoginCode:
    """A one-time login code (``POST /api/v1/login-codes``): open ``url`` in a browser within
    ``expires_in_seconds``; it works once."""

    code: str
    url: str
    expires_in_seconds: int

    @classmethod
    def from_json(cls, obj: Any) -> LoginCode:
        w = "a login code"
        d = as_object(obj, w)
        return cls(code=required(d, "code", str, w), url=required(d, "url", str, w),
                   expires_in_seconds=required(d, "expires_in_seconds", int, w))
