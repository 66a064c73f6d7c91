"""Work on a client's behalf stops when the client leaves.

`StreamResponse` is the streaming response every front door uses: the moment the client leaves, the
stream's task is cancelled and its body iterator closed, so the pipeline's `finally` closes the
upstream connection and records the 499. Starlette's own `StreamingResponse` relies on anyio's cancel
scope, which skips a task whose next read has already arrived: behind a fast upstream that is every
time, so the upstream was drained to its end for a client long gone (uvicorn's `send` to a closed
connection returns quietly), and a cancellation that did land in `send` left the generator open.

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
from typing import Any, Awaitable, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse

from proxy.errors import ProxyError

T = TypeVar("T")


class ClientLeft(ProxyError):
    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


async def _disconnected(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
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


class StreamResponse(StreamingResponse):
    """A streaming response that stops the moment the client leaves (see the module's docstring)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({stream, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watch):
                task.cancel()  # asyncio's own cancel lands at the task's next step, ready read or not
            await asyncio.gather(stream, watch, return_exceptions=True)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # a generator left at its `yield` runs its `finally` now
        if not stream.cancelled() and stream.exception() is not None and not isinstance(stream.exception(), OSError):
            raise stream.exception()  # type: ignore[misc]
        if self.background is not None and not stream.cancelled():
            await self.background()
