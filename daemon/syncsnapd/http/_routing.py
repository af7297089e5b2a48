"""Routing: :class:`Router` maps ``(method, path)`` to a handler, with 404 and 405 (+ ``Allow``), and
:func:`router_app` makes a router the app :func:`~syncsnapd.http.serve_http` serves. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._messages import App, Handler, HTTPError, Request, Response, StreamResponse, UpgradeResponse

__all__ = ["Router", "router_app"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_TAIL = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\.\.\.\}\Z")


@dataclass
class _Route:
    # segments: literal strings, or None for a parameter; names: the parameter names in order.
    segments: tuple[str | None, ...]
    names: tuple[str, ...]
    methods: dict[str, Handler]
    # The name of a trailing ``{name...}`` parameter (the rest of the path), or None.
    tail: str | None = None

    def match(self, parts: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        names = iter(self.names)
        if self.tail is not None:
            rest = parts[len(self.segments):]
            if not rest or not all(rest):
                return None
            params[self.tail] = "/".join(rest)
            parts = parts[: len(self.segments)]
        for literal, part in zip(self.segments, parts, strict=True):
            if literal is None:
                if not part:
                    return None
                params[next(names)] = part
            elif literal != part:
                return None
        return params


class Router:
    """Maps ``(method, path)`` to a handler.

    Patterns are paths whose segments are literals or ``{name}`` parameters::

        router.add("GET", "/api/v1/projects/{id}/progress", handler)

    A parameter matches one non-empty path segment. :meth:`resolve` works on :attr:`Request.path`, which
    is already percent-decoded and can hold no encoded ``/`` (see :func:`parse_request`), so a parameter
    value never contains ``/``. The last segment may be ``{name...}``: it matches the rest of the path,
    one or more non-empty segments, joined by ``/`` (never a dot segment: those requests get 400). Literal
    routes win over parameter routes, and those over trailing ones; otherwise the first pattern added
    wins. Every ``GET`` route answers ``HEAD`` too, with the same handler (the connection sends the head
    only: same status, headers and ``Content-Length``, no body; a stream's head and no events), unless it
    is added with ``head=False`` (``GET /login``: a link preview must not use a login code up).
    """

    def __init__(self) -> None:
        self._static: dict[str, dict[str, Handler]] = {}
        self._dynamic: dict[int, list[_Route]] = {}
        self._tails: list[_Route] = []

    def add(self, method: str, pattern: str, handler: Handler, *, head: bool = True) -> None:
        """Register ``handler`` for ``method`` (upper case) on ``pattern``; a ``GET`` handler answers
        ``HEAD`` too unless ``head`` is False or ``HEAD`` is added with a handler of its own.

        Raises:
            ValueError: a malformed pattern, or the same method and pattern added twice.
        """
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        method = method.upper()
        parts = pattern.split("/")
        tail = _TAIL.match(parts[-1])
        if tail is not None:
            parts.pop()
        segments: list[str | None] = []
        names: list[str] = []
        for part in parts:
            param = _PARAM.match(part)
            if param is not None:
                if param.group(1) in names:
                    raise ValueError(f"duplicate parameter {param.group(1)!r} in {pattern!r}")
                segments.append(None)
                names.append(param.group(1))
            elif "{" in part or "}" in part:
                raise ValueError(f"malformed parameter in route pattern {pattern!r}")
            else:
                segments.append(part)
        if tail is not None:
            if tail.group(1) in names:
                raise ValueError(f"duplicate parameter {tail.group(1)!r} in {pattern!r}")
            for route in self._tails:
                if route.segments == tuple(segments) and route.names == tuple(names):
                    methods = route.methods
                    break
            else:
                route = _Route(tuple(segments), tuple(names), {}, tail.group(1))
                self._tails.append(route)
                methods = route.methods
        elif not names:
            methods = self._static.setdefault(pattern, {})
        else:
            routes = self._dynamic.setdefault(len(segments), [])
            for route in routes:
                if route.segments == tuple(segments) and route.names == tuple(names):
                    methods = route.methods
                    break
            else:
                route = _Route(tuple(segments), tuple(names), {})
                routes.append(route)
                methods = route.methods
        if method in methods and not (method == "HEAD" and methods["HEAD"] is methods.get("GET")):
            raise ValueError(f"{method} {pattern} is already routed")
        methods[method] = handler
        if method == "GET" and head:
            methods.setdefault("HEAD", handler)  # the connection leaves the body out

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """Find the handler for ``method`` on the decoded ``path``, with its path parameters.

        Raises:
            HTTPError: 404 ``not_found`` when no pattern matches the path; 405 ``method_not_allowed`` with
                an ``Allow`` header (sorted) when some do, but none for this method.
        """
        allowed: set[str] = set()
        methods = self._static.get(path)
        if methods is not None:
            handler = methods.get(method)
            if handler is not None:
                return handler, {}
            allowed.update(methods)
        routes = self._dynamic.get(path.count("/") + 1)
        if routes:
            parts = path.split("/")
            for route in routes:
                params = route.match(parts)
                if params is None:
                    continue
                handler = route.methods.get(method)
                if handler is not None:
                    return handler, params
                allowed.update(route.methods)
        if not allowed and self._tails:
            parts = path.split("/")
            for route in self._tails:
                params = route.match(parts)
                if params is None:
                    continue
                handler = route.methods.get(method)
                if handler is not None:
                    return handler, params
                allowed.update(route.methods)
        if not allowed:
            raise HTTPError(404, "not_found", f"No such endpoint: {path}")
        allow = ", ".join(sorted(allowed))
        raise HTTPError(
            405, "method_not_allowed", f"{method} is not allowed here; use {allow}.", (("Allow", allow),)
        )


def router_app(router: Router) -> App:
    """An app for :func:`~syncsnapd.http.serve_http` that dispatches through ``router``.

    :class:`HTTPError` from the router (404, 405) or from a handler becomes the JSON error response.
    """
    resolve = router.resolve

    async def app(request: Request) -> Response | StreamResponse | UpgradeResponse:
        handler, params = resolve(request.method, request.path)
        return await handler(request, params)

    return app
