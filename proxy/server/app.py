"""The HTTP surface: request → route → dispatch → respond.

`POST /v1/chat/completions` reads and checks the body, authenticates the proxy key, asks the
router for a chain, dispatches along it and answers as OpenAI would: JSON, or SSE chunks ending in
``data: [DONE]``. Every failure becomes OpenAI's error shape; nothing raw reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from proxy.usage import pricing

from proxy.server import validate
from proxy.backends import Backend, create
from proxy.routing.dispatch import Dispatcher
from proxy.call import Call
from proxy.config import Config, Key
from proxy.errors import AuthenticationError, InvalidRequest, ModelNotFound, ProxyError, RequestTooLarge
from proxy.routing.router import Router
from proxy.observability.health import Health
from proxy.observability.logs import request_line
from proxy.observability.metrics import Metrics
from proxy.observability.api import ObservabilityAPI
from proxy.observability.stats import Stats
from proxy.usage.api import routes as usage_routes
from proxy.local.api import routes as hardware_routes
from proxy.local.autoconfig import resolve_auto
from translators.common import usage_chunk

log = logging.getLogger("turnout")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def error_response(e: ProxyError, headers: dict[str, str] | None = None) -> Response:
    return Response(e.json(), status_code=e.status, headers={**(headers or {}), **e.headers},
                    media_type="application/json")


class Observer(Protocol):
    """Something that watches every request (the ledger, metrics): `started` when a chat request
    arrives, `finished` once its answer or error has gone out. Both run on the request path, so
    they must be cheap: anything slow is queued and done elsewhere."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def started(self, call: Call) -> None: ...

    def finished(self, call: Call) -> None: ...


class Turnout:
    """The running gateway: config, one backend object (and pool) per backend, the router, and the
    observers told about every request."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        resolve_auto(cfg)  # `model: auto` targets get the best installed model for their role, or a skip reason
        self.backends: dict[str, Backend] = {name: create(b) for name, b in cfg.backends.items()}
        self.router = Router(cfg, self.backends)
        self.dispatcher = Dispatcher(self.router)
        self.keys: dict[str, Key] = {k.key: k for k in cfg.keys}
        self.observers: list[Observer] = []
        # checks run after the body is read and before routing (rate limits, budgets): raise a ProxyError
        self.gates: list[Callable[[Call], None]] = []
        # Prometheus metrics (+ the dashboard's recent stats) and provider health: proxy/observability/metrics.py, proxy/observability/health.py
        self.metrics = Metrics(cfg, self.router.circuits)
        self.metrics.stats = Stats(list(cfg.models), share_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.provider_health = Health(self, self.metrics)
        self.observers += [self.metrics, self.provider_health]
        from proxy.usage.ledger import install_usage

        self.usage = install_usage(self)  # the ledger observer, quota / budget filters, rate-limit / budget gates

    async def start(self) -> None:
        for b in self.backends.values():
            await b.start()
        for o in self.observers:
            await o.start()

    async def aclose(self) -> None:
        for o in reversed(self.observers):
            await o.aclose()
        for b in self.backends.values():
            await b.aclose()

    # --- request ---------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> Key | None:
        if not self.keys:
            return None
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Provide your Turnout key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key")
        key = self.keys.get(token)
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        return key

    async def read_json(self, request: Request) -> Any:
        limit = self.cfg.server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        if declared and declared.isdigit():
            body = await request.body()
        else:
            parts, size = [], 0
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
                parts.append(part)
            body = b"".join(parts)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest(
                "We could not parse the JSON body of your request. The API expects a JSON payload; "
                "check that the body is valid JSON and that the content type is application/json.",
                code="invalid_json") from None

    # --- endpoints -------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        rid = request.headers.get("x-request-id", "")
        call = Call(request_model="", request_id=rid if _SAFE_ID.fullmatch(rid) else "")
        if not call.request_id:
            call.request_id = "req_" + call.id[9:]
        for o in self.observers:
            o.started(call)
        try:
            call.key = self.authenticate(request)
            body = validate.chat_request(await self.read_json(request))
            call.request_model = body["model"]
            call.stream = bool(body.get("stream"))
            call.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            features = call.features = self.router.features(body, request.headers, call.key)
            for gate in self.gates:
                gate(call)
            chain, rule = self.router.plan(call, features)
            deadline = self.cfg.routes[call.route].timeout if call.route else None
            if not call.stream:
                data = await self.dispatcher.complete(chain, body, call, escalate=rule.escalate if rule else 0,
                                                      deadline=deadline)
                call.cost_usd = pricing.cost(call.usage, self.cfg.models[call.target].price) + call.discarded_cost_usd
                out = orjson.dumps(data)
                if call.usage is None:
                    call.sent = [out]  # no usage from upstream: the ledger estimates from the answer
                self.finish(call, 200)
                return Response(out, media_type="application/json", headers=call.headers())
            first, rest = await self.dispatcher.open_stream(chain, body, call, deadline=deadline)
            return StreamingResponse(self.sse(call, first, rest), media_type="text/event-stream",
                                     headers={**_SSE_HEADERS, **call.headers()})
        except ProxyError as e:
            self.finish(call, e.status, e)
            return error_response(e, call.headers())
        except Exception as e:  # noqa: BLE001 - the client gets a clean 500, the log gets the type only
            log.error("%s: internal error %s", call.request_id, type(e).__name__)
            log.debug("internal error", exc_info=True)
            self.finish(call, 500)
            return error_response(ProxyError(f"Internal error in Turnout (request {call.request_id})."),
                                  call.headers())

    async def sse(self, call: Call, first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Frame payloads as SSE; a failure after the start ends with an error event, no [DONE]."""
        status, error = 200, None
        try:
            yield b"data: " + first + b"\n\n"
            call.sent = sent = [first]  # kept for the ledger's token estimate if the stream is cut short
            async for payload in rest:
                sent.append(payload)
                yield b"data: " + payload + b"\n\n"
            if call.include_usage and call.usage is not None:
                model = call.upstream_model or self.cfg.models[call.target].model
                yield b"data: " + orjson.dumps(usage_chunk(call.id, call.created, model, call.usage)) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except ProxyError as e:
            status, error = e.status, e
            yield b"data: " + e.json() + b"\n\n"
        except (GeneratorExit, asyncio.CancelledError):
            status = 499  # the client went away mid-stream (nginx's "client closed request")
            call.error = "client_disconnected"
            raise
        except Exception as e:  # noqa: BLE001
            status = 500
            log.error("%s: internal error in stream %s", call.request_id, type(e).__name__)
            log.debug("internal error", exc_info=True)
            yield b"data: " + ProxyError(f"Internal error in Turnout (request {call.request_id}).").json() + b"\n\n"
        finally:
            await rest.aclose()
            if call.usage is not None:
                call.cost_usd = pricing.cost(call.usage, self.cfg.models[call.target].price)
            self.finish(call, status, error)

    async def route(self, request: Request) -> Response:
        """POST /turnout/route: the routing decision for a chat body, with no upstream call."""
        key = self.authenticate(request)
        body = validate.chat_request(await self.read_json(request))
        call = Call(request_model=body["model"], key=key)
        return json_response(self.router.explain(call, self.router.features(body, request.headers, key)))

    async def models(self, request: Request) -> Response:
        self.authenticate(request)
        return json_response({"object": "list", "data": self.model_list()})

    async def model(self, request: Request) -> Response:
        self.authenticate(request)
        name = request.path_params["model"]
        for m in self.model_list():
            if m["id"] == name:
                return json_response(m)
        raise ModelNotFound(name)

    def model_list(self) -> list[dict[str, Any]]:
        created = int(time.time())
        out = [{"id": name, "object": "model", "created": created, "owned_by": "turnout",
                "turnout": {"kind": "route", "chain": r.chain}} for name, r in self.cfg.routes.items()]
        out += [{"id": name, "object": "model", "created": created, "owned_by": t.backend,
                 "turnout": {"kind": "target", "backend": t.backend, "model": t.model,
                             "available": not (self.backends[t.backend].unavailable or t.unavailable),
                             **({"role": t.role, "auto": t.auto} if t.auto else {})}}
                for name, t in self.cfg.models.items()]
        return out

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        usable = [n for n, b in self.backends.items() if not b.unavailable]
        body = {"status": "ready" if usable else "unavailable", "backends": {
            n: ("usable" if not b.unavailable else b.unavailable) for n, b in self.backends.items()}}
        return json_response(body, 200 if usable else 503)

    # --- the end of a request ------------------------------------------------------------------

    def finish(self, call: Call, status: int, error: ProxyError | None = None) -> None:
        """Record the outcome on the call, log it, tell the observers."""
        call.status = status
        call.finished = time.perf_counter()
        if error is not None:
            call.error = error.code or error.type
        for o in self.observers:
            o.finished(call)
        request_line(call)  # the access log line: proxy/observability/logs.py


def build_app(cfg: Config) -> Starlette:
    turnout = Turnout(cfg)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await turnout.start()
        try:
            yield
        finally:
            await turnout.aclose()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(ProxyError(f"{request.method} {request.url.path}: {exc.detail}",
                                         status=exc.status_code, type="invalid_request_error", code=code))

    async def on_proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return error_response(exc)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", turnout.chat_completions, methods=["POST"]),
            Route("/chat/completions", turnout.chat_completions, methods=["POST"]),
            Route("/v1/models", turnout.models, methods=["GET"]),
            Route("/v1/models/{model:path}", turnout.model, methods=["GET"]),
            Route("/health", turnout.health, methods=["GET"]),
            Route("/ready", turnout.ready, methods=["GET"]),
            Route("/turnout/route", turnout.route, methods=["POST"]),
            *usage_routes(turnout),
            *hardware_routes(turnout),
            *ObservabilityAPI(turnout).routes(),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: on_http_error, ProxyError: on_proxy_error},
    )
    app.state.turnout = turnout
    return app


def create_app() -> Starlette:
    """The app factory each `turnout serve --workers N` worker calls: the config named by
    $TURNOUT_CONFIG, logging as the config says."""
    from proxy import config as config_mod
    from proxy.observability.logs import setup

    cfg = config_mod.load(os.environ.get("TURNOUT_CONFIG") or "proxy.yaml")
    setup(cfg.server.log_level, cfg.server.log_format)
    return build_app(cfg)
