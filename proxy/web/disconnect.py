"""Work on a client's behalf stops when the client leaves.

`unless_client_leaves(request, work)` runs `work` (routing and the upstream call, up to a non-streamed
answer or a stream's first chunk) while watching the connection: if the client disconnects first,
the work is cancelled at once — the upstream request with it — and `ClientLeft` (a 499, nginx's
"client closed request") is raised, so the ledger records what is known instead of billing a
finished answer nobody received. Call it after the body has been read: from then on the ASGI
`receive` only says `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, TypeVar

from starlette.requests import Request

from proxy.errors import ProxyError

T = TypeVar("T")


class ClientLeft(ProxyError):
    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientLeft()
