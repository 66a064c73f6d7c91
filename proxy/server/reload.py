"""Config reload without a restart: SIGHUP or ``POST /turnout/admin/reload`` (admin keys only).

`Reloader.reload()` reads the config file again, and on any `ConfigError` keeps the running
gateway and reports the error (the HTTP answer is a 400 with it). Otherwise it builds a new gateway
with `assembly.build(cfg, previous=…)`, which hands on what must survive: the same `State` (circuit
records, counters), each backend whose config is unchanged (the same object, so the same
connection pool), the metrics (counters keep counting; labels follow the new config), the
ledger and its recorder when the ledger file is the same, and the quota, budget and rate-limit
counters (in the state, by name; those of keys created at run time: `carry_over`). It starts the new gateway, swaps it in
for new requests, and closes the old one's own parts once the requests it is serving are done
(at most `DRAIN_SECONDS`): a request finishes on the config it started with.

The Starlette app routes through `Switch`, one route that dispatches every request to the
current gateway's routes and counts the requests in flight on each gateway. Changes to
`server:` (host, port, body limit, logging, metric labels) need a restart; the rest applies.
`turnout_config_reloads_total{result}` counts reloads: ok, invalid (the file was rejected),
error (building or starting the new gateway failed; the old one keeps serving).

Who may reload over HTTP: a key with ``role: admin``; with no admin key only SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

from proxy.config import Config, ConfigError, load
from proxy.errors import InvalidRequest
from proxy.usage.quota import Accounts
from proxy.web.auth import require_admin
from proxy.web.responses import json_response

log = logging.getLogger("turnout.reload")
DRAIN_SECONDS = 600.0  # the longest an old gateway waits for its requests before closing anyway

def carry_over(new: Accounts, old: Accounts) -> None:
    """Quota and budget counters live in the shared `State` (the same on a reload), so they carry over
    by name; what the config does not know does not: the rate limits and budgets of keys created at
    run time (proxy.usage.keystore), taken over here as they were."""
    configured = {k.name for k in new.cfg.keys}
    for name, rate in old.rates.items():
        if name not in configured and name not in new.rates:
            new.rates[name] = rate
    for name, b in old.key_budgets.items():
        if name not in configured and name not in new.key_budgets:
            new.key_budgets[name] = b
            new.budgets.append(b)


class Switch(BaseRoute):
    """The app's one route: every request goes to the current gateway's routes (its own Router)."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.router = Router(routes=routes)
        self.inflight: dict[int, int] = {}  # id(router) → requests in flight through it
        self.idle: dict[int, asyncio.Event] = {}

    def swap(self, routes: list[BaseRoute]) -> Router:
        """Send new requests to `routes`; returns the previous Router (for `drained`)."""
        old, self.router = self.router, Router(routes=routes)
        return old

    async def drained(self, router: Router, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait until no request is in flight through `router` (False if `timeout` passed first)."""
        if not self.inflight.get(id(router)):
            return True
        event = self.idle.setdefault(id(router), asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.FULL, {}) if scope["type"] in ("http", "websocket") else (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        router = self.router  # read once: this request stays on the gateway it started on
        key = id(router)
        self.inflight[key] = self.inflight.get(key, 0) + 1
        try:
            await router(scope, receive, send)
        finally:
            self.inflight[key] -= 1
            if not self.inflight[key]:
                del self.inflight[key]
                event = self.idle.pop(key, None)
                if event is not None:
                    event.set()


class Reloader:
    """Owns the current gateway of one app; `reload()` replaces it (one reload at a time)."""

    def __init__(self, gateway: Any, switch: Switch, build: Callable[..., Any], path: str | None,
                 on_swap: Callable[[Any], None] = lambda g: None) -> None:
        self.gateway = gateway
        self.switch = switch
        self.build = build  # assembly.build(cfg, previous=gateway)
        self.path = path
        self.on_swap = on_swap
        self.lock = asyncio.Lock()
        self.closing: set[asyncio.Task[None]] = set()

    def count(self, result: str) -> None:
        self.gateway.metrics.config_reloaded(result)

    async def reload(self) -> Config:
        """Apply the config file again; raises ConfigError (the old config keeps serving)."""
        if self.path is None:
            raise ConfigError("config: this gateway was not started from a file, nothing to reload")
        async with self.lock:
            old = self.gateway
            try:
                cfg = await asyncio.to_thread(load, self.path)
            except ConfigError:
                self.count("invalid")
                raise
            try:
                new = self.build(cfg, previous=old)
                await new.start()
            except ConfigError:
                self.count("invalid")
                raise
            except Exception:
                self.count("error")
                log.exception("reload: building the new gateway failed; the old config keeps serving")
                raise
            previous = self.switch.swap(new.routes)
            self.gateway = new
            self.on_swap(new)
            self.count("ok")
            log.info("config reloaded from %s (%d routes, %d targets)", self.path, len(cfg.routes), len(cfg.models))
            task = asyncio.create_task(self._retire(old, previous))
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)
            return cfg

    async def _retire(self, old: Any, router: Router) -> None:
        if not await self.switch.drained(router):
            log.warning("reload: requests on the old config still running after %.0fs; closing it", DRAIN_SECONDS)
        await old.aclose()

    async def aclose(self) -> None:
        """At shutdown: let retiring gateways finish closing."""
        for task in list(self.closing):
            await task

    def on_sighup(self) -> None:
        async def run() -> None:
            try:
                await self.reload()
            except ConfigError as e:
                log.error("reload (SIGHUP) rejected, the old config keeps serving: %s", e)
            except Exception:  # noqa: BLE001 - logged in reload(); the server keeps serving
                pass
        task = asyncio.create_task(run())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def install_sighup(self) -> bool:
        """Reload on SIGHUP (only possible in the main thread of a Unix process)."""
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_sighup)
            return True
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            return False

    def remove_sighup(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass

    def routes(self) -> list[BaseRoute]:
        async def reload(request: Request) -> Response:
            require_admin(self.gateway.auth, request.headers, "POST /turnout/admin/reload (else: SIGHUP)")
            try:
                cfg = await self.reload()
            except ConfigError as e:
                raise InvalidRequest(f"The config was not reloaded: {e}", code="invalid_config") from None
            return json_response({"reloaded": True, "path": self.path, "routes": list(cfg.routes),
                                  "models": list(cfg.models), "backends": list(cfg.backends)})

        return [Route("/turnout/admin/reload", reload, methods=["POST"])]
