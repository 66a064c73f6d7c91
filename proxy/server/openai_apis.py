"""The rest of OpenAI's API in front of the chat pipeline: ``/v1/responses`` (with stored responses),
``/v1/completions`` and ``/v1/embeddings``.

Each front door reads its own request shape, turns it into an OpenAI chat body with the pure
translators in `translators.inbound` (or, for embeddings, `translators.embeddings`), runs it through
the same routing, fallback, ledger and metrics as chat, and answers in its own shape, with the
``x-turnout-*`` headers and OpenAI's error body. What is specific to each lives here; what every
front door shares (auth, routing, dispatch, the end of a request) is the chat pipeline's.
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

from proxy.call import Call
from proxy.server import validate
from proxy.errors import InvalidRequest, ProxyError
from proxy.usage import pricing, tokens
from proxy.usage.stored import ResponseStore
from translators import embeddings as emb
from translators.common import Json, TranslationError
from translators.inbound import completions as cp
from translators.inbound import responses as rs

if TYPE_CHECKING:
    from proxy.server.app import Turnout

log = logging.getLogger("turnout")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _json(data: Any, call: Call, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=call.headers())


def _invalid(e: TranslationError) -> InvalidRequest:
    return InvalidRequest(e.message, param=e.param, code=e.code)


def _require_model(body: Any) -> Json:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    return body


class Pipeline:
    """The chat pipeline as the front doors use it: a chat body in, a completion or a stream of
    chat-chunk payloads out, through routing, dispatch and the observers."""

    def __init__(self, turnout: Turnout) -> None:
        self.t = turnout
        self.cfg, self.router, self.dispatcher, self.gates = turnout.cfg, turnout.router, turnout.dispatcher, turnout.gates
        self.read_json, self.authenticate, self.finish = turnout.read_json, turnout.authenticate, turnout.finish

    def begin(self, request: Request) -> Call:
        rid = request.headers.get("x-request-id", "")
        call = Call(request_model="", request_id=rid if _SAFE_ID.fullmatch(rid) else "")
        call.request_id = call.request_id or "req_" + call.id[9:]
        for o in self.t.observers:
            o.started(call)
        return call

    def _plan(self, call: Call, chat: Json, headers: Any) -> tuple[list[Any], Any, float | None]:
        chat = validate.chat_request(chat)
        call.request_model = chat["model"]
        call.stream = bool(chat.get("stream"))
        features = call.features = self.router.features(chat, headers, call.key)
        for gate in self.gates:
            gate(call)
        chain, rule = self.router.plan(call, features)
        return chain, rule, self.cfg.routes[call.route].timeout if call.route else None

    async def complete(self, call: Call, chat: Json, headers: Any) -> Json:
        chain, rule, deadline = self._plan(call, chat, headers)
        data = await self.dispatcher.complete(chain, chat, call, escalate=rule.escalate if rule else 0,
                                              deadline=deadline)
        call.cost_usd = (call.cost_usd or 0.0) + pricing.cost(call.usage, self.cfg.models[call.target].price) \
            + call.discarded_cost_usd
        return data

    async def stream(self, call: Call, chat: Json, headers: Any) -> tuple[bytes, AsyncIterator[bytes]]:
        chain, _, deadline = self._plan(call, chat, headers)
        return await self.dispatcher.open_stream(chain, chat, call, deadline=deadline)

    def end_stream(self, call: Call, status: int, error: ProxyError | None) -> None:
        if call.usage is not None and call.target:
            call.cost_usd = pricing.cost(call.usage, self.cfg.models[call.target].price)
        self.finish(call, status, error)


class OpenAIAPIs:
    """The three front doors; `store` is None when the ledger (and so storage) is off."""

    def __init__(self, turnout: Turnout) -> None:
        self.t = Pipeline(turnout)
        ledger = turnout.usage.ledger
        self.store = ResponseStore(ledger) if ledger is not None else None

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/responses/{id}", self.get_response, methods=["GET"]),
            Route("/v1/responses/{id}", self.delete_response, methods=["DELETE"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    # --- shared: one request through the pipeline ----------------------------------------------

    async def _run(self, request: Request, handle: Any) -> Response:
        """Begin a call, run `handle(call)`, and turn any failure into OpenAI's error shape."""
        call = self.t.begin(request)
        try:
            call.key = self.t.authenticate(request)
            return await handle(call)
        except TranslationError as e:
            err: ProxyError = _invalid(e)
        except ProxyError as e:
            err = e
        except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log the type only
            log.error("%s: internal error %s", call.request_id, type(e).__name__)
            log.debug("internal error", exc_info=True)
            err = ProxyError(f"Internal error in Turnout (request {call.request_id}).")
        self.t.finish(call, err.status, err)
        return Response(err.json(), status_code=err.status, media_type="application/json",
                        headers={**call.headers(), **err.headers})

    def _owner(self, call: Call) -> str:
        return call.key.name if call.key is not None else ""

    def _storage(self, what: str) -> ResponseStore:
        if self.store is None:
            raise InvalidRequest(f"{what} needs stored responses, and storage is off on this Turnout (it lives in "
                                 "the usage ledger: set usage.ledger in the config).", param="store",
                                 code="storage_disabled")
        return self.store

    # --- /v1/responses -------------------------------------------------------------------------

    async def responses(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            body = _require_model(await self.t.read_json(request))
            history: list[Json] = []
            prev = body.get("previous_response_id")
            if prev:
                found = await self._storage("previous_response_id").get(str(prev), self._owner(call))
                if found is None:
                    raise InvalidRequest(f"Previous response with id '{prev}' not found.",
                                         param="previous_response_id", code="previous_response_not_found",
                                         status=400)
                history = found[1]
            chat = rs.to_chat(body, history)
            store = body.get("store", True) is not False and self.store is not None
            rid = rs.new_id("resp")
            req = {**body, "store": store}
            instructions = 1 if body.get("instructions") else 0
            if not body.get("stream"):
                completion = await self.t.complete(call, chat, request.headers)
                out = rs.from_chat(completion, req, rid, call.created)
                if store:
                    await self.store.put(rid, self._owner(call), out,  # type: ignore[union-attr]
                                         chat["messages"][instructions:] + rs.output_messages(out["output"]))
                self.t.finish(call, 200)
                return _json(out, call)
            first, rest = await self.t.stream(call, chat, request.headers)
            translator = rs.StreamTranslator(req, rid, call.created, self.t.cfg.models[call.target].model)

            async def events() -> AsyncIterator[bytes]:
                status, error = 200, None
                try:
                    for e in translator.start():
                        yield rs.sse(e)
                    call.sent = sent = [first]
                    for e in translator.feed(first):
                        yield rs.sse(e)
                    async for payload in rest:
                        sent.append(payload)
                        for e in translator.feed(payload):
                            yield rs.sse(e)
                    translator.usage = call.usage
                    for e in translator.finish():
                        yield rs.sse(e)
                    if store:
                        r = translator.response
                        await self.store.put(rid, self._owner(call), r,  # type: ignore[union-attr]
                                             chat["messages"][instructions:] + rs.output_messages(r["output"]))
                except ProxyError as e:
                    status, error = e.status, e
                    for ev in translator.fail(e.message):
                        yield rs.sse(ev)
                except (GeneratorExit, asyncio.CancelledError):
                    status, call.error = 499, "client_disconnected"
                    raise
                finally:
                    await rest.aclose()
                    self.t.end_stream(call, status, error)

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={**_SSE_HEADERS, **call.headers()})

        return await self._run(request, handle)

    async def get_response(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            rid = request.path_params["id"]
            found = await self._storage("GET /v1/responses/{id}").get(rid, self._owner(call))
            if found is None:
                raise InvalidRequest(f"No response found with id '{rid}'.", param="response_id", status=404,
                                     code="not_found")
            self.t.finish(call, 200)
            return _json(found[0], call)

        return await self._run(request, handle)

    async def delete_response(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            rid = request.path_params["id"]
            if not await self._storage("DELETE /v1/responses/{id}").delete(rid, self._owner(call)):
                raise InvalidRequest(f"No response found with id '{rid}'.", param="response_id", status=404,
                                     code="not_found")
            self.t.finish(call, 200)
            return _json({"id": rid, "object": "response", "deleted": True}, call)

        return await self._run(request, handle)

    # --- /v1/completions -----------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            body = _require_model(await self.t.read_json(request))
            chats = cp.to_chats(body)
            cid = "cmpl-" + call.id[9:]
            if not body.get("stream"):
                done, total = [], None
                for chat in chats:
                    done.append(await self.t.complete(call, chat, request.headers))
                    total = cp._add_usage(total, call.usage)
                call.usage = total
                out = cp.from_chats(done, cid, call.created)
                self.t.finish(call, 200)
                return _json(out, call)
            if len(chats) > 1:
                raise InvalidRequest("Streaming several prompts at once is not supported by Turnout: send one prompt "
                                     "per request.", param="prompt", code="unsupported_value")
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            first, rest = await self.t.stream(call, chats[0], request.headers)
            model = call.upstream_model or self.t.cfg.models[call.target].model

            async def events() -> AsyncIterator[bytes]:
                status, error = 200, None
                try:
                    call.sent = sent = []
                    async for payload in _chain(first, rest):
                        sent.append(payload)
                        out, _ = cp.chunk_to_text(payload, cid, call.created, model=model)
                        if out is not None:
                            if include_usage:
                                out["usage"] = None
                            yield b"data: " + orjson.dumps(out) + b"\n\n"
                    if include_usage and call.usage is not None:
                        yield b"data: " + orjson.dumps(cp.usage_chunk(cid, call.created, model, call.usage)) + b"\n\n"
                    yield b"data: [DONE]\n\n"
                except ProxyError as e:
                    status, error = e.status, e
                    yield b"data: " + e.json() + b"\n\n"
                except (GeneratorExit, asyncio.CancelledError):
                    status, call.error = 499, "client_disconnected"
                    raise
                finally:
                    await rest.aclose()
                    self.t.end_stream(call, status, error)

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={**_SSE_HEADERS, **call.headers()})

        return await self._run(request, handle)

    # --- /v1/embeddings ------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            body = _require_model(await self.t.read_json(request))
            req = emb.parse(body)
            call.request_model = body["model"]
            text = " ".join(req.inputs) if not req.tokens else ""  # type: ignore[arg-type]
            probe = {"model": body["model"], "messages": [{"role": "user", "content": text}],
                     "metadata": body.get("metadata") or {}}
            features = call.features = self.t.router.features(probe, request.headers, call.key)
            features.kind = "embedding"
            for gate in self.t.gates:
                gate(call)
            chain, _ = self.t.router.plan(call, features)
            vectors = await self.t.dispatcher.embed(chain, req, call, decode=tokens.decode)
            target = self.t.cfg.models[call.target]  # type: ignore[index]
            call.cost_usd = pricing.cost(call.usage, target.price)
            out = emb.response(vectors, target.model, (call.usage or {}).get("prompt_tokens", 0), req)
            self.t.finish(call, 200)
            return _json(out, call)

        return await self._run(request, handle)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for p in rest:
        yield p

