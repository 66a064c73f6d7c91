"""OpenAI's front door: `/v1/chat/completions`, `/v1/models`, `/health`, `/ready`, `/turnout/route`.

A chat request is read and checked (OpenAI's wording), authenticated, and handed to the shared
`Pipeline`; the answer goes back as OpenAI would send it: JSON, or SSE chunks ending in
``data: [DONE]``. Every failure becomes OpenAI's error shape; nothing raw reaches the client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.backends.base import Backend
from proxy.call import Call
from proxy.config import Config, Key
from proxy.errors import ModelNotFound, ProxyError
from proxy.server import validate
from proxy.server.anthropic_api import anthropic_error
from translators.common import TranslationError
from translators.inbound import anthropic_models
from translators.inbound import chat as dialects
from proxy.web.auth import Authenticator
from proxy.routing.kinds import kind_of
from proxy.usage import ledger
from proxy.server.pipeline import Completion, Pipeline, internal_error
from proxy.web.disconnect import unless_client_leaves
from proxy.web.responses import SSEResponse, body_response, error_response, json_response, read_json, request_id

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIAPI:
    """The OpenAI-compatible endpoints over one pipeline."""

    def __init__(self, cfg: Config, pipeline: Pipeline, auth: Authenticator, backends: dict[str, Backend],
                 ready: Callable[[], tuple[bool, dict[str, str]]],
                 shared: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.auth = auth
        self.backends = backends
        self.readiness = ready
        self.shared = shared  # the shared state's condition (Redis): shown in /ready, degraded but still ready
        self.created = int(time.time())  # /v1/models: the same `created` on every call

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/turnout/route", self.route, methods=["POST"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        pipeline = self.pipeline
        call = pipeline.new_call(request_id(request, ""))
        try:
            call.key = self.auth.authenticate(request.headers)
            raw = await read_json(request, self.cfg.server.max_body_bytes)
            legacy = isinstance(raw, dict) and dialects.used_functions(raw)  # answer in the functions dialect
            body = validate.chat_request(raw)
            result = await unless_client_leaves(request, pipeline.run(call, body, request.headers))
            if isinstance(result, Completion):
                if call.usage is None:
                    ledger.record_answer(call, result.data)  # no usage from upstream: the ledger estimates
                await asyncio.sleep(0)  # a big answer's upstream parse and its encoding: separate turns of the loop
                out = orjson.dumps(dialects.legacy_answer(result.data) if legacy else result.data)
                pipeline.finish(call, 200)
                return body_response(out, call.headers())
            return SSEResponse(self.sse(pipeline.payloads(call, result), legacy, call.include_usage),
                               headers={**_SSE_HEADERS, **call.headers()})
        except ProxyError as e:
            pipeline.finish(call, e.status, e)
            return error_response(e, call.headers())
        except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log gets the type only
            err = internal_error(call, e)
            pipeline.finish(call, 500)
            return error_response(err, call.headers())

    @staticmethod
    async def sse(payloads: AsyncIterator[bytes], legacy: bool = False,
                  include_usage: bool = False) -> AsyncIterator[bytes]:
        """Frame payloads as SSE; a failure after the start ends with an error event, no [DONE].
        With ``include_usage`` every chunk but the usage chunk says ``"usage": null``, as OpenAI's do."""
        try:
            async for payload in payloads:
                if legacy:
                    payload = dialects.legacy_chunk(payload)
                if include_usage and b'"usage"' not in payload and payload.endswith(b"}"):
                    payload = payload[:-1] + b',"usage":null}'
                yield b"data: " + payload + b"\n\n"
            yield b"data: [DONE]\n\n"
        except ProxyError as e:
            yield b"data: " + e.json() + b"\n\n"
        finally:
            await payloads.aclose()  # type: ignore[attr-defined]

    async def route(self, request: Request) -> Response:
        """POST /turnout/route: the routing decision for a chat body, with no upstream call."""
        key = self.auth.authenticate(request.headers)
        body = validate.chat_request(await read_json(request, self.cfg.server.max_body_bytes))
        call = Call(request_model=body["model"], key=key)
        router = self.pipeline.router
        features = router.features(body, request.headers, key)
        await router.prepare(features)
        return json_response(router.explain(call, features))

    async def models(self, request: Request) -> Response:
        if request.headers.get("anthropic-version"):
            return self.anthropic_models(request)
        key = self.auth.authenticate(request.headers)
        return json_response({"object": "list", "data": self.model_list(key)})

    async def model(self, request: Request) -> Response:
        if request.headers.get("anthropic-version"):
            return self.anthropic_models(request, request.path_params["model"])
        key = self.auth.authenticate(request.headers)
        name = request.path_params["model"]
        for m in self.model_list(key):
            if m["id"] == name:
                return json_response(m)
        raise ModelNotFound(name)

    def anthropic_models(self, request: Request, name: str | None = None) -> Response:
        """The list (a page) or one model in Anthropic's Models API shape, errors in Anthropic's."""
        try:
            key = self.auth.authenticate(request.headers)
            allowed = self.pipeline.router.allowed
            routes = {n: r for n, r in self.cfg.routes.items() if allowed(key, True, n)}
            targets = {n: t for n, t in self.cfg.models.items() if allowed(key, False, n)}
            aliases = {a: n for a, n in self.cfg.aliases.items() if n in routes or n in targets}
            models = anthropic_models.entries(routes, targets, aliases,
                                              {n: kind_of(t) for n, t in targets.items()}, self.created)
            if name is None:
                try:
                    return json_response(anthropic_models.page(models, request.query_params))
                except TranslationError as e:
                    raise ProxyError(e.message, status=400, type="invalid_request_error", param=e.param) from None
            found = anthropic_models.find(models, name)
            if found is None:
                raise ProxyError(f"model: {name}", status=404, type="not_found_error", code="model_not_found")
            return json_response(found)
        except ProxyError as e:
            return anthropic_error(e)

    def model_list(self, key: Key | None = None) -> list[dict[str, Any]]:
        """The routes and targets `key` may name (its allow-lists, else its tier's), as OpenAI lists
        only the models a key can use; to that key the others do not exist (404, as in a chat call)."""
        created = self.created
        allowed = self.pipeline.router.allowed
        out = [{"id": name, "object": "model", "created": created, "owned_by": "turnout",
                "turnout": {"kind": "route", "chain": r.chain}}
               for name, r in self.cfg.routes.items() if allowed(key, True, name)]
        out += [{"id": name, "object": "model", "created": created, "owned_by": t.backend,
                 "turnout": {"kind": "target", "serves": kind_of(t), "backend": t.backend, "model": t.model,
                             "available": not (self.backends[t.backend].unavailable or t.unavailable),
                             **({"role": t.role, "auto": t.auto} if t.auto else {})}}
                for name, t in self.cfg.models.items() if allowed(key, False, name)]
        return out

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        ok, backends = self.readiness()
        if self.pipeline.drain.draining:
            return json_response({"status": "shutting_down", "backends": backends}, 503)
        out: dict[str, Any] = {"status": "ready" if ok else "unavailable", "backends": backends}
        if self.shared is not None:
            out["state"] = self.shared()
            if ok and out["state"]["status"] != "ok":
                out["status"] = "degraded"  # still serving: limits per replica (on_error: local) or 503s for them
        return json_response(out, 200 if ok else 503)
