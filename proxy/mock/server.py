"""The mock as an OpenAI-compatible HTTP upstream (``turnout mock-upstream``).

The same deterministic replies as the built-in `mock` backend, served over real HTTP so that the
`openai` backend, the tests and the benchmark meet a real socket: faults become real statuses,
a dropped stream is a real connection cut mid-body, a hang is a real silent socket.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from proxy.mock import engine as mock

from proxy.server import validate
from proxy.call import new_id
from proxy.errors import ProxyError
from translators import embeddings as emb
from translators.common import TranslationError, usage_chunk


def _error(status: int, message: str, type_: str, code: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}),
                    status_code=status, media_type="application/json", headers=headers)


def build_mock_upstream(options: dict[str, Any] | None = None, api_key: str | None = None) -> Starlette:
    """An app answering /v1/chat/completions, /v1/embeddings and /v1/models like an OpenAI-compatible server.

    `app.state.requests` keeps every request body received, for tests to assert on.
    """
    base = mock.Script.from_options(options or {})
    received: list[dict[str, Any]] = []

    async def chat(request: Request) -> Response:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        try:
            body = validate.chat_request(orjson.loads(await request.body()))
            s = base.with_directives(body)
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        except ProxyError as e:
            return Response(e.json(), status_code=e.status, media_type="application/json")
        received.append(body)
        if s.hang:
            await asyncio.sleep(3600)
        if s.latency:
            await asyncio.sleep(s.latency)
        if s.status:
            headers = {"retry-after": str(int(s.retry_after))} if s.retry_after is not None else None
            type_ = "rate_limit_error" if s.status == 429 else "server_error" if s.status >= 500 else "invalid_request_error"
            return _error(s.status, s.message, type_, headers=headers)
        model = body["model"]
        rs = mock.replies(body, model, s)
        cid, created = new_id(), int(time.time())
        if not body.get("stream"):
            return Response(orjson.dumps(mock.build_completion(body, model, cid, created, rs)),
                            media_type="application/json")
        chunks = mock.build_chunks(model, cid, created, rs)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            for i, c in enumerate(chunks):
                if s.drop is not None and i >= s.drop:
                    raise ConnectionResetError("mock drop")  # uvicorn aborts the connection mid-body
                if s.chunk_delay and i:
                    await asyncio.sleep(s.chunk_delay)
                yield b"data: " + orjson.dumps(c) + b"\n\n"
            if include_usage:
                yield b"data: " + orjson.dumps(usage_chunk(cid, created, model, mock.usage_of(body, rs))) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        """OpenAI's /v1/embeddings with the engine's deterministic vectors (float or base64)."""
        try:
            req = emb.parse(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, TranslationError) as e:
            return _error(400, str(e) or "We could not parse the JSON body of your request.", "invalid_request_error")
        texts = [" ".join(map(str, t)) for t in req.inputs] if req.tokens else list(req.inputs)
        received.append({"path": "/v1/embeddings", **orjson.loads(await request.body())})
        vectors = [mock.embedding(t, req.dimensions) for t in texts]
        tokens = sum(mock.count_tokens(t) for t in texts)
        return Response(orjson.dumps(emb.response(vectors, "mock-embedding", tokens, req)), media_type="application/json")

    async def models(request: Request) -> Response:
        return Response(orjson.dumps({"object": "list", "data": [
            {"id": "mock", "object": "model", "created": 0, "owned_by": "turnout-mock"}]}),
            media_type="application/json")

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])
    app.state.requests = received
    return app
