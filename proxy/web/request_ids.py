"""An ``x-request-id`` on every response, as OpenAI sends one: `/v1/models`, a 401, an unknown path.

Endpoints that record a request set their own (the client's safe id, or the one minted for the
ledger and logs); this ASGI middleware adds one only to responses that have none — the client's
safe id when given, else a fresh ``req_…``.
"""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable

_HEADER = b"x-request-id"


def _safe(value: bytes) -> bool:
    return 0 < len(value) <= 128 and all(c.isalnum() or c in "._:-" for c in value.decode("latin-1"))


class RequestIds:
    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True  # after the start, every message (a stream's chunks) goes straight on
                headers = list(message.get("headers") or ())
                if not any(k.lower() == _HEADER for k, _ in headers):  # minted only when missing
                    given = next((v for k, v in scope.get("headers") or () if k == _HEADER), b"")
                    rid = given if _safe(given) else b"req_" + os.urandom(12).hex().encode()
                    message = {**message, "headers": headers + [(_HEADER, rid)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
