"""Anthropic's Messages API as a second front door: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``, for Claude Code, the `anthropic` SDKs and agent frameworks.

A Messages body is checked as the API checks it, translated into Turnout's OpenAI chat body
(`translators.inbound.anthropic`) and sent down the same pipeline as ``/v1/chat/completions``:
routing, filters, fallback, quotas, budgets, ledger, metrics, ``x-turnout-*`` headers. `model`
names a route or target, or an alias (config `aliases`). Claude targets get the client's body as it
came (the anthropic backend's pass-through); the others answer in OpenAI's shape, turned back into a
Message or Anthropic's event sequence (`translators.inbound.anthropic_reply`). Every error on these
paths is Anthropic's ``{"type":"error","error":{"type","message"}}`` with its statuses.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.backends.base import Backend
from proxy.call import Attempt, Call
from proxy.config import Config, Target
from proxy.errors import AuthenticationError, InvalidRequest, ProxyError, UpstreamError
from proxy.server.pipeline import Completion, Pipeline, internal_error
from proxy.usage import ledger, tokens
from proxy.web.auth import Authenticator
from proxy.web.disconnect import unless_client_leaves
from proxy.web.responses import SSEResponse, read_json, request_id, should_retry
from translators.inbound import anthropic as inbound
from translators.inbound.anthropic_reply import MessageStream, error_body, error_status, message_id, to_message

log = logging.getLogger("turnout.anthropic_api")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def anthropic_error(e: ProxyError, headers: dict[str, str] | None = None, request_id: str | None = None) -> Response:
    """Any Turnout error as Anthropic's body and status (retry-after and routing headers kept)."""
    status, etype = error_status(e.status, e.code)
    message = e.message
    if isinstance(e, AuthenticationError):
        message = "x-api-key header is required" if e.code == "missing_api_key" else "invalid x-api-key"
    h = {**(headers or {}), **e.headers}
    hint = should_retry(e)  # the anthropic SDK obeys it too
    if hint:
        h["x-should-retry"] = hint
    if request_id:
        h["request-id"] = request_id
    return Response(orjson.dumps(error_body(etype, message, request_id)), status_code=status, headers=h,
                    media_type="application/json")


class AnthropicAPI:
    """The endpoints over the shared pipeline."""

    def __init__(self, cfg: Config, pipeline: Pipeline, auth: Authenticator, backends: dict[str, Backend]) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.auth = auth
        self.backends = backends

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"])]

    def _model(self, name: str) -> str:
        """A route or target name for the client's `model`: itself, or the alias it names."""
        if name in self.cfg.routes or name in self.cfg.models:
            return name
        if name in self.cfg.aliases:
            return self.cfg.aliases[name]
        raise ProxyError(f"model: {name}", status=404, type="not_found_error", code="model_not_found", param="model")

    async def _read(self, request: Request, call: Call, *,
                    count_tokens: bool = False) -> tuple[dict, dict, str | None]:
        """(the client's Messages body, the OpenAI chat body it becomes, why only Claude can take it
        when it uses server tools or documents by URL)."""
        call.key = self.auth.authenticate(request.headers)
        raw = await read_json(request, self.cfg.server.max_body_bytes)
        try:
            raw = inbound.validate(raw, count_tokens=count_tokens, beta=bool(request.headers.get("anthropic-beta")))
        except inbound.AnthropicInvalid as e:
            raise InvalidRequest(e.message) from None
        call.request_model = raw["model"]
        claude_only = None
        try:
            body = inbound.to_openai(raw)
        except inbound.AnthropicInvalid as e:  # server tools, documents by URL: Claude targets only
            body, claude_only = inbound.to_openai(inbound.without_claude_only(raw)), e.message
        body["model"] = call.request_model = self._model(raw["model"])
        call.anthropic_body = raw
        call.anthropic_beta = request.headers.get("anthropic-beta")
        return raw, body, claude_only

    def _claude_targets(self, why: str) -> Any:
        """A chain restriction for a request only Claude can take: the others are recorded as
        skipped (a 400 with the reason when none is left)."""

        def restrict(call: Call, chain: list[Target]) -> list[Target]:
            kept = []
            for t in chain:
                if self.backends[t.backend].type == "anthropic":
                    kept.append(t)
                else:
                    call.attempts.append(Attempt(t.name, "skipped: the request uses what only Claude takes"))
            if not kept:
                raise InvalidRequest(why)
            return kept

        return restrict

    async def messages(self, request: Request) -> Response:
        pipeline = self.pipeline
        call = pipeline.new_call(request_id(request, ""), api="anthropic")
        headers = {}
        try:
            raw, body, claude_only = await self._read(request, call)
            result = await unless_client_leaves(request, pipeline.run(
                call, body, request.headers, restrict=self._claude_targets(claude_only) if claude_only else None))
            headers = {**call.headers(), "request-id": call.request_id}
            if isinstance(result, Completion):
                msg = self._message(call, result.data)
                pipeline.finish(call, 200)
                return Response(orjson.dumps(msg), media_type="application/json", headers=headers)
            return SSEResponse(self._events(call, pipeline.payloads(call, result)),
                               headers={**_SSE_HEADERS, **headers})
        except ProxyError as e:
            pipeline.finish(call, e.status, e)
            return anthropic_error(e, call.headers(), call.request_id)
        except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log gets the type only
            err = internal_error(call, e)
            pipeline.finish(call, 500)
            return anthropic_error(err, call.headers(), call.request_id)

    @staticmethod
    def _message(call: Call, completion: dict[str, Any]) -> dict[str, Any]:
        """Claude's own Message from a pass-through, else the completion translated."""
        if call.usage is None:
            ledger.record_answer(call, completion)  # no usage from upstream: the ledger estimates from the answer
        native = call.anthropic_answer
        if native is not None and native[0] == call.target:
            return native[1]
        estimate = 0 if completion.get("usage") else call.features.prompt_tokens
        return to_message(completion, id=message_id(call.id), input_estimate=estimate,
                          stop_sequences=(call.anthropic_body or {}).get("stop_sequences"))

    @staticmethod
    async def _events(call: Call, payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Anthropic's event sequence for the pipeline's stream: the upstream's own events from a
        Claude pass-through (``event: …`` frames), else the chat chunks translated; a failure after
        the start is an ``error`` event."""
        out = MessageStream(id=message_id(call.id), input_estimate=call.features.prompt_tokens,
                            stop_sequences=(call.anthropic_body or {}).get("stop_sequences"))
        native: bool | None = None
        try:
            async for p in payloads:
                if native is None:
                    native = p.startswith(b"event: ")
                if native:
                    if p.startswith(b"event: "):
                        yield p
                else:
                    yield out.feed(p)
            if not native:
                yield out.finish(call.usage)
        except ProxyError as e:
            yield out.error(error_status(e.status, e.code)[1], e.message)
        except Exception as e:  # noqa: BLE001 - a bug in the translation: the client gets an error event
            yield out.error("api_error", internal_error(call, e, " in stream").message)
        finally:
            await payloads.aclose()  # type: ignore[attr-defined]

    async def count_tokens(self, request: Request) -> Response:
        """The input tokens of a Messages body: the provider's own count when the model's first
        usable target has one (Claude, Gemini), else Turnout's tokenizer estimate
        (``x-turnout-token-count: estimate``)."""
        call = Call(request_model="", request_id=request_id(request, ""))
        call.request_id = call.request_id or "req_" + call.id[9:]
        try:
            _, body, _ = await self._read(request, call, count_tokens=True)
            router = self.pipeline.router
            try:
                features = router.features(body, request.headers, call.key)
                await router.prepare(features)
                chain, _ = router.plan(call, features)
            except ProxyError:
                chain = []  # nothing can answer now (circuits, quotas): counting needs no answer
            for target in chain[:1]:
                try:
                    n = await self.backends[target.backend].count_tokens(target, body, call)
                except UpstreamError as e:
                    log.info("%s: %s could not count tokens (%s); estimating", call.request_id, target.name,
                             e.code or e.type)
                    n = None
                if n is not None:
                    return _count(n, "provider", call)
            return _count(tokens.count_messages(body["messages"], body.get("tools")), "estimate", call)
        except ProxyError as e:
            return anthropic_error(e, {"x-request-id": call.request_id}, call.request_id)


def _count(n: int, how: str, call: Call) -> Response:
    return Response(orjson.dumps({"input_tokens": n}), media_type="application/json",
                    headers={"x-request-id": call.request_id, "request-id": call.request_id,
                             "x-turnout-token-count": how, **({"x-turnout-model": call.chain[0]} if call.chain else {})})
