"""The minimal ASGI app that hypercorn serves as the baseline: the same JSON body as the daemon's
``GET /api/v1/projects/bench/progress``, behind the same bearer-token check.

Configured by environment: ``BENCH_BODY_FILE`` (the body, fetched once from the daemon) and
``BENCH_TOKEN``. Run with ``hypercorn --worker-class trio bench._hypercorn_app:app``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

with open(os.environ["BENCH_BODY_FILE"], "rb") as _f:
    BODY = _f.read()
_AUTH = f"Bearer {os.environ.get('BENCH_TOKEN', '')}".encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()),
            (b"cache-control", b"no-store")]
_UNAUTHORIZED = b'{"error": {"code": "unauthorized", "message": "Missing or wrong bearer token."}}'


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    auth = dict(scope["headers"]).get(b"authorization", b"")
    if not hmac.compare_digest(auth, _AUTH):
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(_UNAUTHORIZED)).encode())]})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})
