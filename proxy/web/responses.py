"""Reading request bodies and writing JSON and error responses, shared by every endpoint.

Bodies are read with the configured size limit (declared or streamed) and parsed with orjson;
a malformed body is OpenAI's 400 ``invalid_json``, one nested deeper than `MAX_DEPTH` a 400
``nesting_too_deep`` (translators, schema walkers and the JSON encoder recurse; the bound is here, at
the door, so none of them can hit Python's recursion limit). Request ids are the client's when safe, else
minted, so every log line and response can be matched. `SSEResponse` streams server-sent events.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator, Iterator, Mapping

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.errors import InvalidRequest, ProxyError, RequestTooLarge, UpstreamError

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_DEPTH = 64  # JSON nesting allowed in a request body (objects and arrays); deeper is a 400
BIG_BODY = 1 << 20  # bodies past this size are parsed in their own turn of the event loop
WALK_SLICE = 20_000  # values the depth check visits per turn of the event loop


def request_id(request: Request, fallback: str) -> str:
    """The client's `x-request-id` when it is safe to echo and log, else `fallback`."""
    rid = request.headers.get("x-request-id", "")
    return rid if _SAFE_ID.fullmatch(rid) else fallback


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def should_retry(e: ProxyError) -> str | None:
    """`x-should-retry` for an error answer (both official SDKs obey it before their own status
    rules): "false" when another try cannot help — Turnout already walked the whole chain (its
    502 / 503 / 504) or the request itself is wrong (4xx) — so clients do not multiply the load on
    failing upstreams; "true" for a 429 that says when to come back; else no opinion."""
    if e.status == 429:
        return "true" if "retry-after" in e.headers else None
    if isinstance(e, UpstreamError) and e.status in (502, 503, 504) or 400 <= e.status < 500 and e.status not in (408, 409):
        return "false"
    return None


def error_response(e: ProxyError, headers: dict[str, str] | None = None) -> Response:
    hint = should_retry(e)
    extra = {"x-should-retry": hint} if hint else {}
    return Response(e.json(), status_code=e.status, headers={**(headers or {}), **e.headers, **extra},
                    media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past `limit` bytes (declared or counted while streaming)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    parts, size = [], 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
            parts.append(part)
    except ClientDisconnect:  # gone before the body was whole (or cut off by the read deadline)
        raise ProxyError("The client closed the connection before sending the whole body.", status=499,
                         type="invalid_request_error", code="client_disconnected") from None
    return b"".join(parts)


async def read_json(request: Request, limit: int) -> Any:
    """A body read, parsed and depth-checked without one long stall of the event loop: orjson holds
    the GIL (a thread would not help), so a big body's read, parse and depth check each get their own
    turn of the loop, and the depth check yields every `WALK_SLICE` containers (a 20 MB body of empty
    arrays is millions of them). What remains on the loop is one orjson pass over the body."""
    body = await read_body(request, limit)
    big = len(body) > BIG_BODY
    if big:
        await asyncio.sleep(0)
    data = _loads(body)
    if big:
        await asyncio.sleep(0)
    for _ in _walk(data, body):
        await asyncio.sleep(0)
    return data


def parse_json(body: bytes) -> Any:
    """A JSON body, or OpenAI's 400 (malformed, or nested deeper than `MAX_DEPTH`)."""
    data = _loads(body)
    for _ in _walk(data, body):
        pass
    return data


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The API expects a JSON payload; "
            "check that the body is valid JSON and that the content type is application/json.",
            code="invalid_json") from None


def check_depth(data: Any) -> None:
    """Reject JSON nested deeper than `MAX_DEPTH` with a 400, before anything recurses over it.

    Translators, the JSON encoder (254 levels) and the schema walkers recurse, so depth is bounded
    at the door. The walk uses an explicit stack (no recursion) and costs one step per container,
    not per byte: a 15 MB prompt in one string is a handful of steps."""
    for _ in _walk(data):
        pass


def _walk(data: Any, raw: bytes | None = None) -> Iterator[None]:
    """The depth check, yielding every `WALK_SLICE` values so an async caller can let the loop run
    (values, not containers: a 20 MB array of numbers is ten million of them). Past the first slice,
    counting the brackets in `raw` (C speed) settles a body with few containers without walking on."""
    if not isinstance(data, (dict, list)):
        return
    stack: list[Iterator[Any]] = [iter(data.values() if isinstance(data, dict) else data)]
    steps = 0
    while stack:
        for v in stack[-1]:
            steps += 1
            if steps % WALK_SLICE == 0:
                yield
                if steps == WALK_SLICE and raw is not None and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
                    return
            if isinstance(v, (dict, list)):
                if len(stack) >= MAX_DEPTH:
                    raise InvalidRequest(f"The request body is nested too deeply: at most {MAX_DEPTH} levels "
                                         "of objects and arrays are allowed.", code="nesting_too_deep")
                stack.append(iter(v.values() if isinstance(v, dict) else v))
                break
        else:
            stack.pop()


class SSEResponse(Response):
    """A ``text/event-stream`` response of ready-framed chunks, each sent as it comes.

    What Starlette's StreamingResponse does, with less work per stream and per chunk (it runs an
    anyio task group per response: two tasks, cancel scopes, a task repr formatted when it ends):
    the chunks are sent from the request's own task while one small task waits for the client's
    disconnect and, if it comes first, cancels the stream. The chunk iterator is then closed (for
    Turnout's pipeline that records the 499 and closes the upstream).
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:
                state["gone"] = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        chunks = self.chunks
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # the client left: that cancellation was ours, not the server's
        finally:
            state["done"] = True
            watcher.cancel()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # a no-op for an iterator that ran to its end


class _Slices(SSEResponse):
    media_type = "application/json"


def body_response(body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON body as it is; a big one (a 20 MB answer) is sent in `BIG_BODY` slices with its
    Content-Length, so no single write copies all of it on the event loop and the socket's flow control
    paces it."""
    if len(body) <= BIG_BODY:
        return Response(body, headers=headers, media_type="application/json")

    async def slices() -> AsyncIterator[bytes]:
        for i in range(0, len(body), BIG_BODY):
            yield body[i:i + BIG_BODY]

    return _Slices(slices(), headers={**(headers or {}), "content-length": str(len(body))})
