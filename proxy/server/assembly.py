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
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

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
from proxy.server.reload import Reloader, Switch, carry_over
from proxy.state import Clock, MemoryState, State
from proxy.state.redis import RedisState
from proxy.usage import api as usage_api
from proxy.usage import keys_api, tokens
from proxy.usage.keystore import KeyStore
from proxy.usage.ledger import Recorder, Usage, build_usage
from proxy.usage.quota import Accounts
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
    # a reload's hand-over (proxy/server/reload.py): parts started by the previous gateway, and parts
    # this one handed on to the next (ids): neither started twice nor closed while still in use
    inherited: set[int] = field(default_factory=set)
    handed_on: set[int] = field(default_factory=set)

    async def start(self) -> None:
        tokens.preload()  # in a thread, off the request path: the first routing decision needs no 0.2 s load
        for b in self.backends.values():
            if id(b) not in self.inherited:
                await b.start()
        for o in self.observers:
            if id(o) not in self.inherited:
                await o.start()

    async def aclose(self) -> None:
        for o in reversed(self.observers):
            if id(o) not in self.handed_on:
                await o.aclose()
        for b in self.backends.values():
            if id(b) not in self.handed_on:
                await b.aclose()
        if self.auth.store is not None:
            self.auth.store.close()
        if isinstance(self.state, RedisState) and id(self.state) not in self.handed_on:
            self.state.close()  # its connections and reconnect probe


def build_state(cfg: Config, clock: Clock | None = None, kv_max_bytes: int = 256 * 2**20) -> State:
    """In this process (`MemoryState`, its key-value store bounded in memory), or shared by every
    replica in Redis (`state.redis`)."""
    r = cfg.state.redis
    if r is None:
        return MemoryState(clock, kv_max_bytes=kv_max_bytes)
    return RedisState(r.url, r.prefix, r.on_error, r.timeout, clock)


def build(cfg: Config, clock: Clock | None = None, previous: Gateway | None = None) -> Gateway:
    """`clock`: the time every counter and breaker reads (tests move a manual one instead of sleeping).
    `previous`: the running gateway a reload replaces; what survives is taken from it (`_hand_over`)."""
    resolve_auto(cfg)  # `model: auto` targets: the best installed model for their role, or why they are skipped
    old = previous.backends if previous is not None else {}
    # an unchanged backend is the same object on a reload: its pool and health go on
    backends = {name: old[name] if name in old and old[name].cfg == b else create(b) for name, b in cfg.backends.items()}
    kv_max = int((cfg.cache.max_mb if cfg.cache else 256) * 2**20)  # the response cache's bound in memory
    # counters, circuit records, key-value store (proxy/state/): a reload keeps the running one
    state = previous.state if previous is not None else build_state(cfg, clock, kv_max)
    circuits = {name: Circuit(name, cfg.routing.circuit, state) for name in backends}
    shared = state.describe if isinstance(state, RedisState) else None  # Redis reachable or not
    if previous is None:
        stats = Stats(list(cfg.models), share_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        metrics = Metrics(cfg, circuits, stats, shared)
        if isinstance(state, RedisState):
            state.listeners.append(metrics.state_error)  # turnout_state_errors_total
    else:
        metrics = previous.metrics  # counters keep counting across reloads
        metrics.rebind(cfg, circuits)
    health = Health(cfg.models, backends, circuits, metrics, shared)
    for circuit in circuits.values():
        circuit.listeners += [metrics.circuit_changed, health.circuit_changed]
    usage = build_usage(cfg, state) if previous is None else _carried_usage(cfg, previous)
    register_usage_sources(metrics, usage)  # quotas and budgets as gauges
    router = Router(cfg, backends, circuits, filters=[health.filter, *usage.accounts.filters()])
    dispatcher = Dispatcher(router, admit=usage.accounts.try_gate())  # quotas admitted per try
    observers: tuple[Observer, ...] = (metrics, health, usage.recorder)
    # keys created at run time live in the ledger database (`turnout keys`, /turnout/admin/keys)
    store = KeyStore(os.path.expanduser(cfg.usage.ledger), frozenset(k.name for k in cfg.keys)) \
        if cfg.usage.ledger else None
    cache = ResponseCache(cfg, state)  # answers kept in the state's key-value store: proxy/cache/
    pipeline = Pipeline(cfg, router, dispatcher, gates=usage.accounts.gates(stored_keys=store is not None),
                        observers=observers, cache=cache if cache.anywhere else None,
                        consensus=ConsensusRunner(cfg, router, dispatcher))
    if previous is not None:
        pipeline.drain = previous.pipeline.drain  # the SIGTERM drain installed at start covers every config
    auth = Authenticator(cfg.keys, store, admitted=usage.accounts.adopt)
    gateway = Gateway(cfg, backends, router, dispatcher, pipeline, auth, metrics, health, usage, observers, [], state)
    if previous is not None:
        _hand_over(previous, gateway)
    gateway.routes = [
        # ready: a key, not down, answering probes; and whether the shared state is reachable
        *OpenAIAPI(cfg, pipeline, auth, backends, health.ready, shared).routes(),
        *AnthropicAPI(cfg, pipeline, auth, backends).routes(),
        *OpenAIAPIs(cfg, pipeline, auth, usage.ledger).routes(),
        *usage_api.routes(cfg, auth, usage),
        *ObservabilityAPI(cfg, auth, backends, metrics, health, record=usage.recorder.finished).routes(),
        *hardware_api.routes(cfg, auth),
        *keys_api.routes(auth, store),
    ]
    return gateway


def _carried_usage(cfg: Config, previous: Gateway) -> Usage:
    """A reload's usage: counters carried over where their settings are unchanged; the same ledger
    and recorder (its queue and writer) when the ledger file is the same."""
    if cfg.usage.ledger != previous.cfg.usage.ledger:
        usage = build_usage(cfg, previous.state)
        carry_over(usage.accounts, previous.usage.accounts)
        return usage
    accounts = Accounts(cfg, previous.state)
    carry_over(accounts, previous.usage.accounts)
    recorder: Recorder = previous.usage.recorder
    recorder.models, recorder.accounts = cfg.models, accounts
    return Usage(accounts, recorder, previous.usage.ledger)


def _hand_over(previous: Gateway, new: Gateway) -> None:
    """Mark what `new` took from `previous`: started already, and not to be closed by `previous`."""
    kept: list[Any] = [b for name, b in new.backends.items() if previous.backends.get(name) is b]
    kept += [o for o in new.observers if any(o is p for p in previous.observers)]
    new.inherited = {id(x) for x in [*kept, new.state]}
    previous.handed_on = set(new.inherited)


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
    switch = Switch(gateway.routes)  # every request goes to the current gateway (a reload swaps it)
    reloader = Reloader(gateway, switch, lambda c, previous: build(c, clock, previous), cfg.path,
                        on_swap=lambda g: setattr(app.state, "turnout", g))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        gateway.pipeline.drain.install()  # SIGTERM drains first (proxy/server/shutdown.py)
        hup = reloader.install_sighup()
        try:
            yield
        finally:
            if hup:
                reloader.remove_sighup()
            await reloader.aclose()
            await reloader.gateway.aclose()

    s = cfg.server
    guard = Middleware(BrowserGuard, open_mode=not cfg.keys, server_host=s.host, allowed_hosts=s.allowed_hosts,
                       cors_origins=s.cors_origins)  # CSRF, DNS rebinding, CORS: proxy/web/browser.py
    app = Starlette(routes=[*reloader.routes(), switch], lifespan=lifespan, middleware=[guard, Middleware(RequestIds)],
                    exception_handlers={HTTPException: _on_http_error, ProxyError: _on_proxy_error})
    app.state.turnout = gateway
    app.state.reloader = reloader
    return app


def create_app() -> Starlette:
    """The app factory each `turnout serve --workers N` worker calls: the config named by
    $TURNOUT_CONFIG, logging as the config says."""
    cfg = load(os.environ.get("TURNOUT_CONFIG") or "proxy.yaml")
    setup_logs(cfg.server.log_level, cfg.server.log_format)
    BoundedReadProtocol.read_timeout = cfg.server.read_timeout  # this worker's connections
    return build_app(cfg)
