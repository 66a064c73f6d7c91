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

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from proxy.call import Attempt, Call
from proxy.errors import AuthenticationError, InvalidRequest, ProxyError, UpstreamError
from proxy.usage import pricing, tokens
from translators.inbound import anthropic as inbound
from translators.inbound.anthropic_reply import MessageStream, error_body, error_status, message_id, to_message

if TYPE_CHECKING:
    from proxy.server.app import Turnout

log = logging.getLogger("turnout.anthropic_api")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def anthropic_error(e: ProxyError, headers: dict[str, str] | None = None, request_id: str | None = None) -> Response:
    """Any Turnout error as Anthropic's body and status (retry-after and routing headers kept)."""
    status, etype = error_status(e.status, e.code)
    message = e.message
    if isinstance(e, AuthenticationError):
        message = "x-api-key header is required" if e.code == "missing_api_key" else "invalid x-api-key"
    h = {**(headers or {}), **e.headers}
    if request_id:
        h["request-id"] = request_id
    return Response(orjson.dumps(error_body(etype, message, request_id)), status_code=status, headers=h,
                    media_type="application/json")


class AnthropicAPI:
    """The endpoints, on top of the running `Turnout` (its keys, body reader, pipeline, observers)."""

    def __init__(self, turnout: "Turnout") -> None:
        self.t = turnout

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"])]

    def _model(self, name: str) -> str:
        """A route or target name for the client's `model`: itself, or the alias it names."""
        cfg = self.t.cfg
        if name in cfg.routes or name in cfg.models:
            return name
        aliases = getattr(cfg, "aliases", None) or {}
        if name in aliases:
            return aliases[name]
        raise ProxyError(f"model: {name}", status=404, type="not_found_error", code="model_not_found", param="model")

    async def _read(self, request: Request, call: Call, *,
                    count_tokens: bool = False) -> tuple[dict, dict, str | None]:
        """(the client's Messages body, the OpenAI chat body it becomes, why only Claude can take it
        when it uses server tools or documents by URL)."""
        call.key = self.t.authenticate(request)
        raw = await self.t.read_json(request)
        try:
            raw = inbound.validate(raw, count_tokens=count_tokens)
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

    def _call(self, request: Request) -> Call:
        rid = request.headers.get("x-request-id", "")
        call = Call(request_model="", request_id=rid if _SAFE_ID.fullmatch(rid) else "")
        if not call.request_id:
            call.request_id = "req_" + call.id[9:]
        return call

    async def _run(self, call: Call, body: dict[str, Any], headers: Any, claude_only: str | None) -> Any:
        """The chat pipeline: features, gates, the chain, dispatch (a completion, or a stream's first
        payload and the rest)."""
        call.include_usage = False
        features = call.features = self.t.router.features(body, headers, call.key)
        for gate in self.t.gates:
            gate(call)
        chain, rule = self.t.router.plan(call, features)
        if claude_only:
            chain = self._claude_targets(call, chain, claude_only)
        deadline = self.t.cfg.routes[call.route].timeout if call.route else None
        if not call.stream:
            return await self.t.dispatcher.complete(chain, body, call, escalate=rule.escalate if rule else 0,
                                                    deadline=deadline)
        return await self.t.dispatcher.open_stream(chain, body, call, deadline=deadline)

    def _claude_targets(self, call: Call, chain: list[Any], why: str) -> list[Any]:
        """Only the chain's Claude targets, for a request that only Claude can take; the others are
        recorded as skipped (a 400 with the reason when none is left)."""
        kept = []
        for t in chain:
            if self.t.backends[t.backend].type == "anthropic":
                kept.append(t)
            else:
                call.attempts.append(Attempt(t.name, "skipped: the request uses what only Claude takes"))
        if not kept:
            raise InvalidRequest(why)
        return kept

    async def messages(self, request: Request) -> Response:
        call = self._call(request)
        for o in self.t.observers:
            o.started(call)
        try:
            raw, body, claude_only = await self._read(request, call)
            call.stream = bool(raw.get("stream"))
            result = await self._run(call, body, request.headers, claude_only)
            if not call.stream:
                return self._message(call, result)
            first, rest = result
            return StreamingResponse(self._events(call, first, rest), media_type="text/event-stream",
                                     headers={**_SSE_HEADERS, **call.headers(), "request-id": call.request_id})
        except ProxyError as e:
            self.t.finish(call, e.status, e)
            return anthropic_error(e, call.headers(), call.request_id)
        except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log gets the type only
            log.error("%s: internal error %s", call.request_id, type(e).__name__)
            log.debug("internal error", exc_info=True)
            self.t.finish(call, 500)
            return anthropic_error(ProxyError(f"Internal error in Turnout (request {call.request_id})."),
                                   call.headers(), call.request_id)

    def _message(self, call: Call, completion: dict[str, Any]) -> Response:
        native = call.anthropic_answer
        if native is not None and native[0] == call.target:
            msg = native[1]  # Claude's own Message, as it came
        else:
            u = completion.get("usage")
            msg = to_message(completion, id=message_id(call.id), input_estimate=0 if u else call.features.prompt_tokens)
        call.cost_usd = pricing.cost(call.usage, self.t.cfg.models[call.target].price) + call.discarded_cost_usd
        if call.usage is None:
            call.sent = [orjson.dumps(completion)]  # no usage from upstream: the ledger estimates from the answer
        self.t.finish(call, 200)
        return Response(orjson.dumps(msg), media_type="application/json",
                        headers={**call.headers(), "request-id": call.request_id})

    async def _events(self, call: Call, first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Anthropic's event sequence for Turnout's stream: the upstream's own events from a Claude
        pass-through, else the chat chunks translated; a failure after the start is an ``error`` event."""
        out = MessageStream(id=message_id(call.id), input_estimate=call.features.prompt_tokens)
        status, error, native = 200, None, first.startswith(b"event: ")
        call.sent = sent = []
        try:
            sent.append(first)
            yield first if native else out.feed(first)
            async for p in rest:
                sent.append(p)
                yield p if native else out.feed(p)
            if not native:
                yield out.finish(call.usage)
        except ProxyError as e:
            status, error = e.status, e
            yield out.error(error_status(e.status, e.code)[1], e.message)
        except (GeneratorExit, asyncio.CancelledError):
            status = 499
            call.error = "client_disconnected"
            raise
        except Exception as e:  # noqa: BLE001
            status = 500
            log.error("%s: internal error in stream %s", call.request_id, type(e).__name__)
            log.debug("internal error", exc_info=True)
            yield out.error("api_error", f"Internal error in Turnout (request {call.request_id}).")
        finally:
            await rest.aclose()
            if call.usage is not None:
                call.cost_usd = pricing.cost(call.usage, self.t.cfg.models[call.target].price)
            self.t.finish(call, status, error)

    async def count_tokens(self, request: Request) -> Response:
        """The input tokens of a Messages body: Claude's own count when the model resolves to a
        Claude target, else Turnout's tokenizer estimate (header ``x-turnout-token-count: estimate``)."""
        call = self._call(request)
        try:
            raw, body, _ = await self._read(request, call, count_tokens=True)
            features = self.t.router.features(body, request.headers, call.key)
            try:
                chain, _ = self.t.router.plan(call, features)
            except ProxyError:
                chain = []  # nothing can answer now (circuits, quotas): counting needs no answer
            for target in chain[:1]:
                backend = self.t.backends[target.backend]
                if hasattr(backend, "count_tokens"):
                    try:
                        return _count(await backend.count_tokens(target, raw, call.anthropic_beta), "provider", call)
                    except UpstreamError as e:
                        log.info("%s: %s could not count tokens (%s); estimating", call.request_id, target.name,
                                 e.code or e.type)
            return _count(tokens.count_messages(body["messages"], body.get("tools")), "estimate", call)
        except ProxyError as e:
            return anthropic_error(e, {"x-request-id": call.request_id}, call.request_id)


def _count(n: int, how: str, call: Call) -> Response:
    return Response(orjson.dumps({"input_tokens": n}), media_type="application/json",
                    headers={"x-request-id": call.request_id, "request-id": call.request_id,
                             "x-turnout-token-count": how, **({"x-turnout-model": call.chain[0]} if call.chain else {})})

