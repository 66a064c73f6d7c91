"""`type: anthropic`: Claude through the Messages API (``POST /v1/messages``).

Talks Anthropic's wire format over the shared pooled client (`proxy.http`) rather than through the
`anthropic` SDK: the SDK builds pydantic models for every response and every stream event, which
costs several times Turnout's per-request CPU budget (figures and the decision in
docs/anthropic.md, benchmark in benchmarks/anthropic_sdk_vs_httpx.py). The SDK remains the
yardstick: tests/test_anthropic_emulator.py drives the emulator with it to prove the emulator
faithful, and the backend is tested against that emulator.

Configuration (proxy.yaml)::

    backends:
      claude:
        type: anthropic
        api_key: ${ANTHROPIC_API_KEY}
        base_url: https://api.anthropic.com   # default; ".../v1" works too
        max_tokens: 8192                      # optional default when the client sends none
        thinking: {budget_tokens: 4096}       # optional: extended thinking for every request
        cache_control: {type: ephemeral}      # optional: automatic prompt caching
    models:
      sonnet: {backend: claude, model: claude-sonnet-4-5, max_output_tokens: 64000}

A target's `options` (max_tokens, thinking) override the backend's. Requests carry ``x-api-key``,
``anthropic-version: 2023-06-01`` and ``content-type: application/json``; the key is never
logged nor put in an error message.

Native pass-through: a request that came in through Turnout's own ``/v1/messages`` carries the
client's Messages body on the call (`Call.anthropic_body`). It is sent as it came — thinking blocks
and their signatures, cache_control, documents, citations, server tools — with only `model` set to
the target's (and `max_tokens` capped at its max_output_tokens), with the client's
``anthropic-beta``. The answer still becomes an OpenAI completion or chunks for the pipeline (usage,
quality checks, the ledger); the Message itself is kept on the call (`Call.anthropic_answer`), and a
stream yields the upstream's own SSE events (``event: …`` frames) for the front door to pass on.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import orjson

from proxy.backends import base
from proxy.call import Call
from proxy.http import Response
from proxy.config import Target
from proxy.config.providers import SPECS
from proxy.errors import TransportError, UpstreamError
from translators import anthropic as tr

# "`temperature` is deprecated for this model." / "temperature: Extra inputs are not permitted"
_SAMPLING_REJECTED = re.compile(rb"`?(temperature|top_p|top_k)`? is (deprecated|not supported)|"
                                rb"(temperature|top_p|top_k): Extra inputs")
log = logging.getLogger("turnout.anthropic")


class Backend(base.HTTPBackend):
    type = "anthropic"
    default_base_url = SPECS[type].base_url

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        prefix = "" if self.base_url.endswith("/v1") else "/v1"
        self.messages_path = prefix + "/messages"
        self.models_path = prefix + "/models"
        self.options = {k: v for k, v in cfg.options.items() if k in ("max_tokens", "thinking", "sampling", "cache_control")}
        self.no_sampling: set[str] = set()  # models learned to reject temperature / top_p

    def auth_headers(self, key: str | None = None) -> dict[str, str]:
        # an operator may pin another version in `headers`; 2023-06-01 keeps temperature and top_p,
        # which 2026-10-21 rejects
        configured = {k.lower(): v for k, v in self.cfg.headers.items()}
        h = {"anthropic-version": configured.get("anthropic-version", tr.API_VERSION)}
        if key:
            h["x-api-key"] = key
        return h

    def _request(self, target: Target, body: base.Json, stream: bool, call: Call) -> tuple[bytes, bool]:
        """(Messages body, whether it carries temperature or top_p)."""
        if call.anthropic_body is not None:
            return self._native_request(target, call.anthropic_body, stream)
        options = {**self.options, **target.options} if target.options else self.options
        req = tr.to_request(body, target.model, stream=stream, max_output_tokens=target.max_output_tokens,
                            options=options, sampling=False if target.model in self.no_sampling else None)
        return orjson.dumps(req), "temperature" in req or "top_p" in req

    def _native_request(self, target: Target, raw: base.Json, stream: bool) -> tuple[bytes, bool]:
        """The client's own Messages body for this target (pass-through)."""
        req = {**raw, "model": target.model}
        if target.max_output_tokens and req.get("max_tokens", 0) > target.max_output_tokens:
            req["max_tokens"] = target.max_output_tokens
        if stream:
            req["stream"] = True
        else:
            req.pop("stream", None)
        if target.model in self.no_sampling:
            for k in ("temperature", "top_p", "top_k"):
                req.pop(k, None)
        return orjson.dumps(req), "temperature" in req or "top_p" in req

    def _headers(self, call: Call) -> dict[str, str] | None:
        return {"anthropic-beta": call.anthropic_beta} if call.anthropic_body is not None and call.anthropic_beta \
            else None

    def _rejects_sampling(self, target: Target, r: Response, sampled: bool) -> bool:
        """A 400 saying the model takes no temperature / top_p: remember it, so the caller can
        send the request again without them (and later requests leave them out from the start)."""
        if not sampled or r.status_code != 400 or not _SAMPLING_REJECTED.search(r.content):
            return False
        log.info("%s: model %s rejects temperature/top_p; leaving them out from now on", self.name, target.model)
        self.no_sampling.add(target.model)
        return True

    def _error(self, r: Response) -> UpstreamError:
        fault = tr.error_from(r.status_code, r.content)
        return self._status_error(fault.status, fault.message, r.headers, fault.type, fault.code)

    def _status_error(self, status: int, message: str, headers: Mapping[str, str] | None, type_: str | None,
                      code: str | None) -> UpstreamError:
        if status == 402:  # billing: the operator's account, like a bad key; another target may work
            return self.upstream_error(f"Upstream refused Turnout's account: {message}", status=502,
                                       type="upstream_error", code="upstream_billing_error", fallback=True,
                                       category="auth")
        return self.status_error(status, message, headers, type=type_, code=code)

    async def complete(self, target: Target, body: base.Json, call: Call) -> base.Json:
        for _ in range(2):
            content, sampled = self._request(target, body, False, call)
            r = await self.post(self.messages_path, content, self._headers(call))
            if not self._rejects_sampling(target, r, sampled):
                break
        if r.status_code >= 400:
            raise self._error(r)
        data = self.json_of(r)
        if data.get("type") == "error":  # some gateways answer 200 with an error body
            status, message, etype = tr.error_fields(data)
            raise self._status_error(status, message, None, *tr.openai_error_kind(status, etype))
        out = tr.from_response(data, call.id, call.created, tr.response_tool(body), tr.local_stops(body))
        call.upstream_model = data.get("model")
        if call.anthropic_body is not None:
            call.anthropic_answer = (target.name, data)
        return out

    async def stream(self, target: Target, body: base.Json, call: Call) -> AsyncIterator[bytes]:
        state = tr.StreamState(call.id, call.created, target.model, tr.response_tool(body), tr.local_stops(body))
        native = call.anthropic_body is not None
        held: list[bytes] = []  # native events held until one carries content (an early error can still fall back)
        try:
            async with self._open_stream(target, body, call) as r:
                async for payload in base.sse_data(r):
                    data = orjson.loads(payload)
                    etype = data.get("type")
                    if etype == "message_start":
                        state.feed(etype, data)
                        call.upstream_model = state.model
                        if native:
                            held.append(b"event: message_start\ndata: " + payload + b"\n\n")
                        continue
                    chunks = state.feed(etype, data)
                    if native:
                        held.append(b"event: " + str(etype).encode() + b"\ndata: " + payload + b"\n\n")
                        if chunks or state.done:
                            yield b"".join(held)
                            held.clear()
                    else:
                        for c in chunks:
                            yield orjson.dumps(c)
                    if state.done:
                        call.usage = state.usage
                        return
        except tr.StreamError as e:
            call.usage = state.usage
            raise self._stream_error(e) from None
        except TransportError as e:
            raise self.transport_error(e) from None
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Backend '{self.name}' sent a stream event that is not JSON.", status=502,
                                code="upstream_bad_stream", retry=True, backend=self.name) from None
        call.usage = state.usage
        if state.stop_reason is not None:
            if held:
                yield b"".join(held)
            return  # message_delta (the finish) arrived; only message_stop is missing
        raise UpstreamError(f"Backend '{self.name}' ended the stream before message_stop.", status=502,
                            code="upstream_stream_dropped", retry=True, category="network", backend=self.name)

    @asynccontextmanager
    async def _open_stream(self, target: Target, body: base.Json, call: Call) -> AsyncIterator[Any]:
        """The upstream stream response, its status checked (and sent once more without
        temperature / top_p if the model rejects them)."""
        for _ in range(2):
            content, sampled = self._request(target, body, True, call)
            async with self.client.stream("POST", self.messages_path, content=content,
                                          headers=self._headers(call)) as r:
                if r.status_code < 400:
                    yield r
                    return
                await r.aread()
                if not self._rejects_sampling(target, r, sampled):
                    raise self._error(r)

    def _stream_error(self, e: tr.StreamError) -> UpstreamError:
        type_, code = tr.openai_error_kind(e.status, e.type)
        return self._status_error(e.status, e.message, None, type_, code)

    async def count_tokens(self, target: Target, body: base.Json, call: Call) -> int:
        """Claude's own count of the input tokens (``POST /v1/messages/count_tokens``): of the
        client's Messages body when it came through the Anthropic front door, else of the translation."""
        raw = call.anthropic_body if call.anthropic_body is not None else \
            tr.to_request(body, target.model, stream=False, options=self.options)
        req = {k: v for k, v in raw.items() if k not in ("max_tokens", "stream", "temperature", "top_p", "top_k",
                                                         "stop_sequences", "metadata", "service_tier")}
        req["model"] = target.model
        r = await self.post(self.messages_path + "/count_tokens", orjson.dumps(req), self._headers(call))
        if r.status_code >= 400:
            raise self._error(r)
        return int(self.json_of(r).get("input_tokens") or 0)

    async def list_models(self) -> list[str]:
        try:
            r = await self.client.get(self.models_path, params={"limit": "1000"})
        except TransportError as e:
            raise self.transport_error(e) from None
        if r.status_code >= 400:
            raise self._error(r)
        return [m.get("id") for m in orjson.loads(r.content).get("data", [])]
