"""`type: gemini`: the Gemini API over the pooled client (`proxy.http`), in its own wire format.

``POST {base_url}/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, the key in the ``x-goog-api-key`` header (never in a URL, so
it cannot reach an access log). The google-genai SDK speaks the same JSON; it is not used on the
hot path because it costs several times Turnout's whole CPU budget per request (measured in
benchmarks/gemini_sdk_vs_httpx.py, figures in docs/gemini.md). Translation is in
`translators.gemini`; this module does the I/O: image fetching, HTTP, SSE, errors.

proxy.yaml::

    backends:
      gemini:
        type: gemini
        api_key: ${GEMINI_API_KEY}
        base_url: https://generativelanguage.googleapis.com   # default; api_version is appended
        api_version: v1beta                                    # default
        images: {max_bytes: 20000000, timeout: 10, allow_private: false}
    models:
      flash:
        backend: gemini
        model: gemini-2.5-flash
        options: {include_thoughts: true}   # ask for thought summaries → reasoning_content
"""

from __future__ import annotations

import asyncio
import base64
from typing import AsyncIterator, Mapping
from urllib.parse import quote

import orjson

from proxy.backends import base
from proxy.call import Call
from proxy.http import Response
from proxy.config import Target
from proxy.config.providers import SPECS
from proxy.errors import TransportError, UpstreamError
from proxy.backends.images import ImageFetcher, ImagePolicy
from translators import embeddings as emb
from translators import gemini as tr


class Backend(base.HTTPBackend):
    type = "gemini"
    default_base_url = SPECS[type].base_url

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # the options were checked against providers.GeminiOptions when the config was loaded
        version = cfg.options.get("api_version", "v1beta")
        tail = self.base_url.rsplit("/", 1)[-1]
        self.prefix = "" if tail.startswith("v1") else f"/{version.strip('/')}"
        self.policy = ImagePolicy.from_options(cfg.options)
        self.images: ImageFetcher | None = None

    def auth_headers(self, key: str | None = None) -> dict[str, str]:
        return {"x-goog-api-key": key} if key else {}

    async def start(self) -> None:
        await super().start()

    async def aclose(self) -> None:
        await super().aclose()
        if self.images is not None:
            await self.images.aclose()

    def _path(self, model: str, method: str) -> str:
        if model.startswith("tunedModels/"):  # a tuned model has its own collection
            return f"{self.prefix}/tunedModels/{quote(model[12:], safe='.-_@')}:{method}"
        model = model[7:] if model.startswith("models/") else model
        return f"{self.prefix}/models/{quote(model, safe='.-_@')}:{method}"

    async def _request(self, target: Target, body: base.Json) -> bytes:
        """The Gemini request body as JSON bytes, with http(s) images fetched and inlined."""
        urls = tr.http_image_urls(body)
        images: dict[str, tuple[str, str]] = {}
        if urls:
            if self.images is None:
                self.images = ImageFetcher(self.policy)
            fetched = await asyncio.gather(*(self.images.fetch(u) for u in urls))
            images = {u: (mime, base64.b64encode(data).decode()) for u, (mime, data) in zip(urls, fetched)}
        options = {**self.cfg.options, **target.options}
        return orjson.dumps(tr.to_request(body, target.model, images, options))

    def _error(self, status: int, content: bytes, headers: Mapping[str, str] | None = None) -> UpstreamError:
        return self.fault_error(tr.error_from(status, content), headers)

    embed_batch = emb.BATCH["gemini"]

    def embed_request(self, target: Target, req: emb.EmbedRequest, inputs: list) -> tuple[str, base.Json]:
        return self._path(target.model, "batchEmbedContents"), emb.gemini_request(req, target.model, inputs)

    def embed_vectors(self, data: base.Json) -> tuple[list[list[float]], int | None]:
        return emb.gemini_vectors(data)

    def embed_error(self, target: Target, r: Response) -> UpstreamError:
        return self._error(r.status_code, r.content, r.headers)

    def _blocked(self, b: tr.Blocked) -> UpstreamError:
        return UpstreamError(b.message, status=400, type="invalid_request_error", code="content_filter",
                             param="messages", category="client", backend=self.name)

    async def complete(self, target: Target, body: base.Json, call: Call) -> base.Json:
        content = await self._request(target, body)
        r = await self.post(self._path(target.model, "generateContent"), content)
        if r.status_code >= 400:
            raise self._error(r.status_code, r.content, r.headers)
        data = self.json_of(r)
        try:
            out = tr.from_response(data, call.id, call.created, target.model)
        except tr.Blocked as b:
            raise self._blocked(b) from None
        except tr.NoCandidates as e:
            raise UpstreamError(f"Backend '{self.name}': {e}", status=502, code="upstream_empty_response",
                                retry=True, category="server", backend=self.name) from None
        call.upstream_model = out["model"]
        return out

    async def stream(self, target: Target, body: base.Json, call: Call) -> AsyncIterator[bytes]:
        content = await self._request(target, body)
        state = tr.StreamState(call.id, call.created, target.model)
        try:
            async with self.client.stream("POST", self._path(target.model, "streamGenerateContent") + "?alt=sse",
                                          content=content) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise self._error(r.status_code, r.content, r.headers)
                async for payload in base.sse_data(r):
                    try:
                        data = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        raise self._dropped("sent a stream event that is not JSON") from None
                    if isinstance(data, dict) and "error" in data and "candidates" not in data:
                        raise self._error(int((data["error"] or {}).get("code") or 500), payload)
                    try:
                        chunks = state.feed(data)
                    except tr.Blocked as b:
                        raise self._blocked(b) from None
                    call.upstream_model = state.model
                    if state.usage_meta is not None:
                        call.usage = state.usage
                    for c in chunks:
                        yield orjson.dumps(c)
        except TransportError as e:
            if state.first:
                raise self.transport_error(e) from None
            raise self._dropped(f"dropped the stream ({type(e).__name__})") from None
        if not state.complete:
            raise self._dropped("ended the stream before a finish reason")

    def _dropped(self, what: str) -> UpstreamError:
        return UpstreamError(f"Backend '{self.name}' {what}.", status=502, code="upstream_stream_dropped",
                             retry=True, category="network", backend=self.name)

    async def count_tokens(self, target: Target, body: base.Json, call: Call) -> int:
        """Gemini's own count (``:countTokens`` over the whole generateContent request)."""
        req = orjson.loads(await self._request(target, body))
        name = target.model if target.model.startswith(("models/", "tunedModels/")) else "models/" + target.model
        r = await self.post(self._path(target.model, "countTokens"),
                            orjson.dumps({"generateContentRequest": {"model": name, **req}}))
        if r.status_code >= 400:
            raise self._error(r.status_code, r.content, r.headers)
        return int(self.json_of(r).get("totalTokens") or 0)

    async def list_models(self) -> list[str]:
        try:
            r = await self.client.get(f"{self.prefix}/models")
        except TransportError as e:
            raise self.transport_error(e) from None
        if r.status_code >= 400:
            raise self._error(r.status_code, r.content, r.headers)
        return [m.get("name", "").removeprefix("models/") for m in orjson.loads(r.content).get("models", [])]

