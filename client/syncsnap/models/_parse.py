"""Strict reading of the daemon's JSON: a missing or mistyped field raises :class:`~syncsnap.ProtocolError`.

Fields this client does not know are ignored, so a newer daemon still works.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .._errors import ProtocolError

T = TypeVar("T")


def required(obj: dict[str, Any], key: str, kind: type[T] | tuple[type, ...], what: str) -> T:
    try:
        value = obj[key]
    except KeyError:
        raise ProtocolError(f"The daemon sent {what} without {key!r}; is syncsnapd the same version "
                            f"as this client?") from None
    # bool is an int in Python; JSON numbers are never booleans.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise ProtocolError(f"The daemon sent {what} with a {type(value).__name__} for {key!r}; "
                            f"is syncsnapd the same version as this client?")
    return value  # type: ignore[return-value]


def optional(obj: dict[str, Any], key: str, kind: type[T] | tuple[type, ...], what: str) -> T | None:
    if obj.get(key) is None:
        return None
    return required(obj, key, kind, what)


def number(obj: dict[str, Any], key: str, what: str) -> float:
    return float(required(obj, key, (int, float), what))


def as_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"The daemon sent {what} that is not a JSON object.")
    return value


def parse_list(obj: Any, key: str, item: Any, what: str) -> list[Any]:
    """``{"key": [..]}`` -> ``[item.from_json(..), ...]``."""
    d = as_object(obj, what)
    return [item.from_json(x) for x in required(d, key, list, what)]
