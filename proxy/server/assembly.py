"""The one assembly point: a config in, a running gateway out, every part wired here in the open.

`build` makes, in order: the ``model: auto`` targets' choices (proxy/local/autoconfig.py); one backend (and pool) per configured backend; a circuit breaker each;
the metrics (with the dashboard's stats) and the provider health, which both listen to the
breakers; the usage accounts and ledger; the router with its filters (built-in, then health,
quotas and budgets); the dispatcher; the gates that run before routing (rate limits, budgets);
the observers told of every request (metrics, health, ledger); the pipeline over all of that; and
the HTTP routes of each API. No part appends itself to another: what listens to what is read here.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.backends import Backend, create
from proxy.cache import ResponseCache
from proxy.config import Config, load
from proxy.errors import ProxyError
from proxy.local import api as hardware_api
from proxy.local.autoconfig import resolve_auto
from proxy.observability.api import ObservabilityAPI
from proxy.observability.health import Health
from proxy.observability.logs import setup as setup_logs
from proxy.observability.metrics import Metrics, register_usage_sources
from proxy.observability.stats import Stats
from proxy.routing.circuit import Circuit
from proxy.routing.consensus import ConsensusRunner
from proxy.routing.dispatch import Dispatcher
from proxy.routing.router import Router
from proxy.server.anthropic_api import AnthropicAPI, anthropic_error
from proxy.server.app import OpenAIAPI
from proxy.server.openai_apis import OpenAIAPIs
from proxy.server.protocol import BoundedReadProtocol
from proxy.web.browser import BrowserGuard
from proxy.server.pipeline import Observer, Pipeline
from proxy.state import Clock, MemoryState, State
from proxy.usage import api as usage_api
from proxy.usage import tokens
from proxy.usage.ledger import Usage, build_usage
from proxy.web.auth import Authenticator
from proxy.web.request_ids import RequestIds
from proxy.web.responses import error_response


@dataclass
class Gateway:
    """The running gateway's parts, for the lifespan, the routes and tests to reach."""

    cfg: Config
    backends: dict[str, Backend]
    router: Router
    dispatcher: Dispatcher
    pipeline: Pipeline
    auth: Authenticator
    metrics: Metrics
    health: Health
    usage: Usage
    observers: tuple[Observer, ...]
    routes: list[Route]
    state: State

    async def start(self) -> None:
        tokens.preload()  # in a thread, off the request path: the first routing decision needs no 0.2 s load
        for b in self.backends.values():
            await b.start()
        for o in self.observers:
            await o.start()

    async def aclose(self) -> None:
        for o in reversed(self.observers):
            await o.aclose()
        for b in self.backends.values():
            await b.aclose()


def build(cfg: Config, clock: Clock | None = None) -> Gateway:
    """`clock`: the time every counter and breaker reads (tests move a manual one instead of sleeping)."""
    resolve_auto(cfg)  # `model: auto` targets: the best installed model for their role, or why they are skipped
    backends = {name: create(b) for name, b in cfg.backends.items()}
    kv_max = int((cfg.cache.max_mb if cfg.cache else 256) * 2**20)  # the response cache's bound in memory
    state: State = MemoryState(clock, kv_max_bytes=kv_max)  # counters, circuit records, key-value store: proxy/state/
    circuits = {name: Circuit(name, cfg.routing.circuit, state) for name in backends}
    stats = Stats(list(cfg.models), share_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    metrics = Metrics(cfg, circuits, stats)
    health = Health(cfg.models, backends, circuits, metrics)
    for circuit in circuits.values():
        circuit.listeners += [metrics.circuit_changed, health.circuit_changed]
    usage = build_usage(cfg, state)
    register_usage_sources(metrics, usage)  # quotas and budgets as gauges
    router = Router(cfg, backends, circuits, filters=[health.filter, *usage.accounts.filters()])
    dispatcher = Dispatcher(router, admit=usage.accounts.try_gate())  # quotas admitted per try
    observers: tuple[Observer, ...] = (metrics, health, usage.recorder)
    cache = ResponseCache(cfg, state)  # answers kept in the state's key-value store: proxy/cache/
    pipeline = Pipeline(cfg, router, dispatcher, gates=usage.accounts.gates(), observers=observers,
                        cache=cache if cache.anywhere else None, consensus=ConsensusRunner(cfg, router, dispatcher))
    auth = Authenticator(cfg.keys)
    gateway = Gateway(cfg, backends, router, dispatcher, pipeline, auth, metrics, health, usage, observers, [], state)
    gateway.routes = [
        *OpenAIAPI(cfg, pipeline, auth, backends, health.ready).routes(),  # ready: a key, not down, answering probes
        *AnthropicAPI(cfg, pipeline, auth, backends).routes(),
        *OpenAIAPIs(cfg, pipeline, auth, usage.ledger).routes(),
        *usage_api.routes(cfg, auth, usage),
        *ObservabilityAPI(cfg, auth, backends, metrics, health, record=usage.recorder.finished).routes(),
        *hardware_api.routes(cfg, auth),
    ]
    return gateway


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    err = ProxyError(f"{request.method} {request.url.path}: {exc.detail}", status=exc.status_code,
                     type="invalid_request_error", code=code)
    if request.url.path.startswith("/v1/messages"):
        return anthropic_error(err)  # Anthropic's front door answers in Anthropic's shape
    return error_response(err)


async def _on_proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return error_response(exc)


def build_app(cfg: Config, clock: Clock | None = None) -> Starlette:
    gateway = build(cfg, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        gateway.pipeline.drain.install()  # SIGTERM drains first (proxy/server/shutdown.py)
        try:
            yield
        finally:
            await gateway.aclose()

    s = cfg.server
    guard = Middleware(BrowserGuard, open_mode=not cfg.keys, server_host=s.host, allowed_hosts=s.allowed_hosts,
                       cors_origins=s.cors_origins)  # CSRF, DNS rebinding, CORS: proxy/web/browser.py
    app = Starlette(routes=gateway.routes, lifespan=lifespan, middleware=[guard, Middleware(RequestIds)],
                    exception_handlers={HTTPException: _on_http_error, ProxyError: _on_proxy_error})
    app.state.turnout = gateway
    return app


def create_app() -> Starlette:
    """The app factory each `turnout serve --workers N` worker calls: the config named by
    $TURNOUT_CONFIG, logging as the config says."""
    cfg = load(os.environ.get("TURNOUT_CONFIG") or "proxy.yaml")
    setup_logs(cfg.server.log_level, cfg.server.log_format)
    BoundedReadProtocol.read_timeout = cfg.server.read_timeout  # this worker's connections
    return build_app(cfg)
