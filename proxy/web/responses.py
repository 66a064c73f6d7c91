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
from typing import Any, AsyncIterator, Mapping

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.errors import InvalidRequest, ProxyError, RequestTooLarge, UpstreamError

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_DEPTH = 64  # JSON nesting allowed in a request body (objects and arrays); deeper is a 400


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
    return parse_json(await read_body(request, limit))


def parse_json(body: bytes) -> Any:
    """A JSON body, or OpenAI's 400 (malformed, or nested deeper than `MAX_DEPTH`)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The API expects a JSON payload; "
            "check that the body is valid JSON and that the content type is application/json.",
            code="invalid_json") from None
    check_depth(data, body)
    return data


def check_depth(data: Any, raw: bytes) -> None:
    """Reject JSON nested deeper than `MAX_DEPTH` with a 400, before anything recurses over it.

    Translators, the JSON encoder (254 levels) and the schema walkers recurse, so depth is bounded
    at the door. Counting brackets in the raw bytes (C speed) settles almost every body; only a
    body with more brackets than the limit is walked, with an explicit stack (no recursion).
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"The request body is nested too deeply: at most {MAX_DEPTH} levels of "
                                 "objects and arrays are allowed.", code="nesting_too_deep")
        children = v.values() if isinstance(v, dict) else v
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


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
