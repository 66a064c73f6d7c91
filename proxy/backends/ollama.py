"""`type: ollama`: Ollama's native API (``POST /api/chat``, NDJSON streaming) over the shared pool.

Native rather than Ollama's /v1 so that images, options, keep_alive, thinking, tool calls and
load errors are all handled (the mapping is in `translators.ollama` and docs/ollama.md).

Timeouts (``timeout:`` on the backend) are kept apart, because a local model takes seconds to
load and a loading model must not be mistaken for a dead one:

- ``connect``: opening the TCP connection (Ollama not running fails fast);
- ``first_token``: from sending a streamed request to its first NDJSON line; Ollama sends its
  headers only with that line, so this covers the model's load and the prompt's evaluation;
- ``idle``: every later gap between reads of the stream;
- ``total``: a whole non-streamed answer (Ollama sends nothing until it is complete).

Each read of a stream is bounded by one ``asyncio.timeout`` (no task per chunk; about 4 µs each);
the pooled client (`proxy.http.HTTPClient`, aiohttp) keeps max(first_token, idle) as its socket
read bound, a backstop only.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, AsyncIterator

import orjson

from proxy.backends import base
from proxy.call import Call
from proxy.http import Response
from proxy.config import Target
from proxy.config.providers import SPECS
from proxy.errors import TransportError, UpstreamError, upstream_timeout
from proxy.backends.images import ImageFetcher, ImagePolicy
from translators import embeddings as emb
from translators import ollama as tr
from translators.common import TranslationError, image_urls



def _http_image_urls(messages: list[base.Json]) -> list[str]:
    urls: list[str] = []
    for m in messages:
        if m.get("role") == "user" and isinstance(m.get("content"), list):
            for u in image_urls(m["content"]):
                if u.startswith(("http://", "https://")) and u not in urls:
                    urls.append(u)
    return urls


class Backend(base.HTTPBackend):
    type = "ollama"
    default_base_url = SPECS[type].base_url

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.images: ImageFetcher | None = None

    async def start(self) -> None:
        await super().start()  # the pooled client; its socket read bound is max(first_token, idle)
        self.images = ImageFetcher(ImagePolicy.from_options(self.cfg.options))

    async def aclose(self) -> None:
        await super().aclose()
        if self.images is not None:
            await self.images.aclose()

    def auth_headers(self, key: str | None = None) -> dict[str, str]:
        # Ollama itself takes no key; one set in the config goes along for an authenticating proxy
        return {"authorization": f"Bearer {key}"} if key else {}

    # --- request ---------------------------------------------------------------------------------

    async def _fetch_images(self, body: base.Json) -> dict[str, str] | None:
        urls = _http_image_urls(body["messages"])
        if not urls:
            return None
        assert self.images is not None
        results = await asyncio.gather(*(self.images.fetch(u) for u in urls))
        fetched = {}
        for url, (media_type, data) in zip(urls, results):
            if not media_type.startswith("image/"):
                raise TranslationError(f"The URL did not return an image (content type {media_type}).",
                                       param="messages", code="invalid_image_url")
            fetched[url] = base64.b64encode(data).decode()
        return fetched

    async def _request(self, target: Target, body: base.Json, stream: bool) -> bytes:
        fetched = await self._fetch_images(body)
        req = tr.to_request(body, target.model, stream=stream, target_options=target.options,
                            backend_options=self.cfg.options, fetched=fetched)
        return orjson.dumps(req)

    # --- errors ----------------------------------------------------------------------------------

    def _error(self, target: Target, r: Response) -> UpstreamError:
        fault = tr.error_from(r.status_code, r.content)
        if fault.code == "model_not_found":
            return self.upstream_error(
                f"Model '{target.model}' is not installed on Ollama backend '{self.name}'. "
                f"Run `ollama pull {target.model}` on the Ollama host. (Ollama said: {fault.message})",
                status=404, type="invalid_request_error", code="model_not_found", param="model",
                fallback=True, category="client")
        return self.status_error(r.status_code, f"Ollama: {fault.message}", r.headers)

    embed_batch = emb.BATCH["ollama"]

    def embed_request(self, target: Target, req: emb.EmbedRequest, inputs: list) -> tuple[str, base.Json]:
        return "/api/embed", emb.ollama_request(req, target.model, inputs)

    def embed_vectors(self, data: base.Json) -> tuple[list[list[float]], int | None]:
        return emb.ollama_vectors(data)

    def embed_error(self, target: Target, r: Response) -> UpstreamError:
        return self._error(target, r)

    def transport_error(self, e: Exception) -> UpstreamError:
        err = super().transport_error(e)
        if err.code == "upstream_unreachable":
            err.message = err.message.rstrip(".") + "; is Ollama running (`ollama serve`)?"
        return err

    def _stream_error(self, message: str) -> UpstreamError:
        return self.upstream_error(f"Ollama error on backend '{self.name}': {message}", status=502,
                                   code="upstream_stream_error", retry=True, category="server")

    def _dropped(self, why: str) -> UpstreamError:
        return UpstreamError(f"Backend '{self.name}' dropped the stream ({why}).", status=502,
                             code="upstream_stream_dropped", retry=True, category="network", backend=self.name)

    def _timeout(self, first: bool) -> UpstreamError:
        t = self.cfg.timeout
        msg = (f"Backend '{self.name}' sent no first token within {t.first_token:g}s (timeout.first_token; "
               f"a model that is still loading needs more)." if first else
               f"Backend '{self.name}' stalled: nothing for {t.idle:g}s mid-stream (timeout.idle).")
        return upstream_timeout(msg, self.name)

    # --- calls -----------------------------------------------------------------------------------

    async def complete(self, target: Target, body: base.Json, call: Call) -> base.Json:
        content = await self._request(target, body, stream=False)
        r = await self.post("/api/chat", content)
        if r.status_code >= 400:
            raise self._error(target, r)
        data = self.json_of(r)
        if "error" in data:
            raise self._stream_error(str(data["error"]))
        call.upstream_model = target.model
        return tr.from_response(data, call.id, call.created, target.model)

    async def stream(self, target: Target, body: base.Json, call: Call) -> AsyncIterator[bytes]:
        content = await self._request(target, body, stream=True)
        t = self.cfg.timeout
        deadline = asyncio.get_running_loop().time() + t.first_token
        first = True  # until the first chunk, reads are bounded by the first-token deadline
        st = tr.StreamState(call.id, call.created, target.model)
        call.upstream_model = target.model
        opened = self.client.stream("POST", "/api/chat", content=content)
        entered = False
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    r = await opened.__aenter__()
                    entered = True
                    if r.status_code >= 400:
                        await r.aread()
                        raise self._error(target, r)
            except TimeoutError:
                raise self._timeout(True) from None
            lines = r.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout_at(deadline) if first else asyncio.timeout(t.idle):
                        line = await lines.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._timeout(first) from None
                if not line:
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise self._dropped("a line that is not JSON") from None
                if "error" in obj:
                    raise self._stream_error(str(obj["error"]))
                for chunk in st.feed(obj):
                    first = False
                    yield chunk
                if st.finished:
                    call.usage = st.usage
                    return
            raise self._dropped("it ended before its final line")
        except TransportError as e:
            if first:
                raise self.transport_error(e) from None
            raise self._dropped(type(e).__name__) from None
        finally:
            if entered:
                await opened.__aexit__(None, None, None)

    # --- discovery -------------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        try:
            r = await self.client.get("/api/tags", timeout=self.cfg.timeout.connect)
        except TransportError as e:
            raise self.transport_error(e) from None
        if r.status_code >= 400:
            raise self.status_error(r.status_code, f"Ollama /api/tags failed: {tr.error_from(r.status_code, r.content).message}")
        return [m.get("model") or m.get("name") for m in orjson.loads(r.content).get("models", [])]
