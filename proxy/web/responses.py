"""Reading request bodies and writing JSON and error responses, shared by every endpoint.

Bodies are read with the configured size limit (declared or streamed) and parsed with orjson;
a malformed body is OpenAI's 400 ``invalid_json``. Request ids are the client's when safe, else
minted, so every log line and response can be matched.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import InvalidRequest, ProxyError, RequestTooLarge

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(request: Request, fallback: str) -> str:
    """The client's `x-request-id` when it is safe to echo and log, else `fallback`."""
    rid = request.headers.get("x-request-id", "")
    return rid if _SAFE_ID.fullmatch(rid) else fallback


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def error_response(e: ProxyError, headers: dict[str, str] | None = None) -> Response:
    return Response(e.json(), status_code=e.status, headers={**(headers or {}), **e.headers},
                    media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past `limit` bytes (declared or counted while streaming)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        return await request.body()
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        parts.append(part)
    return b"".join(parts)


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The API expects a JSON payload; "
            "check that the body is valid JSON and that the content type is application/json.",
            code="invalid_json") from None
