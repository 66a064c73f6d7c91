"""The rest of OpenAI's API in front of the chat pipeline: ``/v1/responses`` (with stored responses),
``/v1/completions`` and ``/v1/embeddings``.

Each front door reads its own request shape, turns it into an OpenAI chat body with the pure
translators in `translators.inbound` (or, for embeddings, `translators.embeddings`), runs it through
the same routing, fallback, ledger and metrics as chat, and answers in its own shape, with the
``x-turnout-*`` headers and OpenAI's error body. What is specific to each lives here; what every
front door shares (auth, routing, dispatch, the end of a request) is the chat pipeline's.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.call import Call
from proxy.config import Config
from proxy.errors import InvalidRequest, ProxyError
from proxy.server import validate
from proxy.server.pipeline import Completion, Pipeline, Stream, internal_error
from proxy.usage import tokens
from proxy.usage.ledger import Ledger
from proxy.usage.stored import ResponseStore
from proxy.web.auth import Authenticator
from proxy.web.disconnect import unless_client_leaves
from proxy.web.responses import SSEResponse, error_response, read_json, request_id
from translators import embeddings as emb
from translators.common import Json, TranslationError
from translators.inbound import completions as cp
from translators.inbound import responses as rs

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


class OpenAIAPIs:
    """The three front doors over the shared pipeline; `store` is None when the ledger (and so
    storage) is off."""

    def __init__(self, cfg: Config, pipeline: Pipeline, auth: Authenticator, ledger: Ledger | None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.auth = auth
        r = cfg.responses
        self.store = ResponseStore(ledger, ttl=r.ttl_days * 86400) if ledger is not None and r.store else None

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
        call = self.pipeline.new_call(request_id(request, ""))
        try:
            call.key = self.auth.authenticate(request.headers)
            return await handle(call)
        except TranslationError as e:
            err: ProxyError = _invalid(e)
        except ProxyError as e:
            err = e
        except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log the type only
            err = internal_error(call, e)
        self.pipeline.finish(call, err.status, err)
        return error_response(err, call.headers())

    async def _body(self, request: Request) -> Json:
        return _require_model(await read_json(request, self.cfg.server.max_body_bytes))

    async def _complete(self, call: Call, chat: Json, request: Request) -> Json:
        result = await unless_client_leaves(request, self.pipeline.run(call, validate.chat_request(chat),
                                                                       request.headers))
        assert isinstance(result, Completion)
        return result.data

    async def _stream(self, call: Call, chat: Json, request: Request) -> AsyncIterator[bytes]:
        result = await unless_client_leaves(request, self.pipeline.run(call, validate.chat_request(chat),
                                                                       request.headers))
        assert isinstance(result, Stream)
        return self.pipeline.payloads(call, result)

    def _owner(self, call: Call) -> str:
        return call.key.name if call.key is not None else ""

    def _storage(self, what: str) -> ResponseStore:
        if self.store is None:
            why = ("responses.store is false in the config" if not self.cfg.responses.store else
                   "it lives in the usage ledger: set usage.ledger in the config")
            raise InvalidRequest(f"{what} needs stored responses, and storage is off on this Turnout ({why}).",
                                 param="store", code="storage_disabled")
        return self.store

    # --- /v1/responses -------------------------------------------------------------------------

    async def responses(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            body = await self._body(request)
            if body.get("store") is True:  # asked for explicitly: say it cannot be done, not store: false
                self._storage("store: true")
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
                out = rs.from_chat(await self._complete(call, chat, request), req, rid, call.created)
                if store:
                    await self.store.put(rid, self._owner(call), out,  # type: ignore[union-attr]
                                         chat["messages"][instructions:] + rs.output_messages(out["output"]))
                self.pipeline.finish(call, 200)
                return _json(out, call)
            payloads = await self._stream(call, chat, request)
            translator = rs.StreamTranslator(req, rid, call.created, self.cfg.models[call.target].model)

            async def events() -> AsyncIterator[bytes]:
                try:
                    for e in translator.start():
                        yield rs.sse(e)
                    async for payload in payloads:
                        for e in translator.feed(payload):
                            yield rs.sse(e)
                    translator.usage = translator.usage or call.usage
                    for e in translator.finish():
                        yield rs.sse(e)
                    if store:
                        r = translator.response
                        await self.store.put(rid, self._owner(call), r,  # type: ignore[union-attr]
                                             chat["messages"][instructions:] + rs.output_messages(r["output"]))
                except ProxyError as e:
                    for ev in translator.fail(e.message):
                        yield rs.sse(ev)
                finally:
                    await payloads.aclose()  # type: ignore[attr-defined]

            return SSEResponse(events(), headers={**_SSE_HEADERS, **call.headers()})

        return await self._run(request, handle)

    async def get_response(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            rid = request.path_params["id"]
            found = await self._storage("GET /v1/responses/{id}").get(rid, self._owner(call))
            if found is None:
                raise InvalidRequest(f"No response found with id '{rid}'.", param="response_id", status=404,
                                     code="not_found")
            self.pipeline.finish(call, 200)
            return _json(found[0], call)

        return await self._run(request, handle)

    async def delete_response(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            rid = request.path_params["id"]
            if not await self._storage("DELETE /v1/responses/{id}").delete(rid, self._owner(call)):
                raise InvalidRequest(f"No response found with id '{rid}'.", param="response_id", status=404,
                                     code="not_found")
            self.pipeline.finish(call, 200)
            return _json({"id": rid, "object": "response", "deleted": True}, call)

        return await self._run(request, handle)

    # --- /v1/completions -----------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            body = await self._body(request)
            chats = cp.to_chats(body)
            cid = "cmpl-" + call.id[9:]
            if not body.get("stream"):
                done, total, cost = [], None, 0.0
                for chat in chats:  # one pipeline run per prompt, one ledger row for the request
                    done.append(await self._complete(call, chat, request))
                    total, cost = cp.add_usage(total, call.usage), cost + (call.cost_usd or 0.0)
                call.usage, call.cost_usd = total, cost
                out = cp.from_chats(done, cid, call.created)
                self.pipeline.finish(call, 200)
                return _json(out, call)
            if len(chats) > 1:
                raise InvalidRequest("Streaming several prompts at once is not supported by Turnout: send one prompt "
                                     "per request.", param="prompt", code="unsupported_value")
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            payloads = await self._stream(call, chats[0], request)
            model = call.upstream_model or self.cfg.models[call.target].model

            async def events() -> AsyncIterator[bytes]:
                try:
                    async for payload in payloads:
                        out, usage = cp.chunk_to_text(payload, cid, call.created, model=model)
                        if out is not None:
                            if include_usage:
                                out["usage"] = None  # as OpenAI: null on every chunk but the last
                            yield b"data: " + orjson.dumps(out) + b"\n\n"
                        elif usage and include_usage:
                            yield b"data: " + orjson.dumps(cp.usage_chunk(cid, call.created, model, usage)) + b"\n\n"
                    yield b"data: [DONE]\n\n"
                except ProxyError as e:
                    yield b"data: " + e.json() + b"\n\n"
                finally:
                    await payloads.aclose()  # type: ignore[attr-defined]

            return SSEResponse(events(), headers={**_SSE_HEADERS, **call.headers()})

        return await self._run(request, handle)

    # --- /v1/embeddings ------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        async def handle(call: Call) -> Response:
            body = await self._body(request)
            req = emb.parse(body)
            vectors = await self.pipeline.embed(call, req, body, request.headers, decode=tokens.decode)
            target = self.cfg.models[call.target]  # type: ignore[index]
            out = emb.response(vectors, target.model, (call.usage or {}).get("prompt_tokens", 0), req)
            self.pipeline.finish(call, 200)
            return _json(out, call)

        return await self._run(request, handle)

