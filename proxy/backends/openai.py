"""`type: openai`: any OpenAI-compatible upstream (OpenAI, vLLM, llama.cpp's server, Ollama's /v1).

Streams pass through as bytes: each upstream ``data:`` payload is handed on unparsed, except the
first (to adopt the upstream's id) and any that carries usage (to count it).
"""

from __future__ import annotations

from typing import AsyncIterator

import orjson

from proxy.backends import base
from proxy.call import Call
from proxy.http import Response
from proxy.config import Target
from proxy.config.providers import SPECS
from proxy.errors import TransportError, UpstreamError
from translators import embeddings as emb
from translators import openai as tr



class Backend(base.HTTPBackend):
    type = "openai"
    default_base_url = SPECS[type].base_url

    def auth_headers(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def _error(self, r: Response) -> UpstreamError:
        return self.fault_error(tr.error_from(r.status_code, r.content), r.headers)

    async def complete(self, target: Target, body: base.Json, call: Call) -> base.Json:
        req = tr.to_request(body, target.model, stream=False)
        r = await self.post("/chat/completions", orjson.dumps(req))
        if r.status_code >= 400:
            raise self._error(r)
        return self.json_of(r)

    async def stream(self, target: Target, body: base.Json, call: Call) -> AsyncIterator[bytes]:
        req = tr.to_request(body, target.model, stream=True)
        first = True
        try:
            async with self.client.stream("POST", "/chat/completions", content=orjson.dumps(req)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise self._error(r)
                async for payload in base.sse_data(r):
                    if payload.startswith(b"[DONE]"):
                        return
                    if payload.startswith(b'{"error"'):
                        raise self._stream_error(payload)
                    if first:
                        first = False
                        try:
                            head = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            head = None
                        if not isinstance(head, dict):
                            raise self.status_error(502, f"Backend '{self.name}' sent a stream chunk that is not "
                                                         "a JSON object.")
                        call.id = head.get("id") or call.id
                        call.upstream_model = head.get("model")
                    usage, usage_only = tr.chunk_usage(payload)
                    if usage is not None:
                        call.usage = usage
                        if usage_only:
                            continue
                    yield payload
        except TransportError as e:
            raise self.transport_error(e) from None

    embed_batch = emb.BATCH["openai"]
    embed_takes_tokens = True

    def embed_request(self, target: Target, req: emb.EmbedRequest, inputs: list) -> tuple[str, base.Json]:
        return "/embeddings", emb.openai_request(req, target.model, inputs)

    def embed_vectors(self, data: base.Json) -> tuple[list[list[float]], int | None]:
        return emb.openai_vectors(data)

    def embed_error(self, target: Target, r: Response) -> UpstreamError:
        return self._error(r)

    def _stream_error(self, payload: bytes) -> UpstreamError:
        fault = tr.error_from(500, payload)
        return self.upstream_error(fault.message, status=502, type=fault.type or "upstream_error", code=fault.code,
                                   retry=True, category="server")

    async def list_models(self) -> list[str]:
        try:
            r = await self.client.get("/models")
        except TransportError as e:
            raise self.transport_error(e) from None
        if r.status_code >= 400:
            raise self._error(r)
        return [m.get("id") for m in orjson.loads(r.content).get("data", [])]
