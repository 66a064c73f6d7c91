"""Observability endpoints: metrics, providers and their health, stats, the dashboard.

- ``GET /metrics``: Prometheus exposition (open, like most exporters: no secrets in it).
- ``GET /turnout/providers``: every backend, its models, health and whether a key is set (never
  the key), and the system's health. ``POST /turnout/providers/{name}/test``: one real minimal
  chat request to that backend (optional body ``{"model": target}``), with timing and result.
- ``GET /turnout/stats?minutes=60``: recent traffic in time buckets for the dashboard.
- ``GET /turnout/dashboard``: the static dashboard page (package data, no CDN).
The ``/turnout/...`` JSON endpoints need a proxy key when keys are configured.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.backends.base import Backend
from proxy.call import Call
from proxy.config import Config
from proxy.errors import InvalidRequest, ProxyError, UpstreamError
from proxy.observability.health import Health
from proxy.observability.metrics import CONTENT_TYPE, Metrics
from proxy.usage import pricing
from proxy.web.auth import Authenticator
from proxy.web.responses import json_response, parse_json, read_body, request_id

DASHBOARD = Path(__file__).with_name("dashboard")
_ASSETS = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8"}
# things that look like credentials, masked in error messages shown by the test endpoint
_SECRETS = re.compile(r"(sk-[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{20,}|[A-Za-z0-9_\-]{32,})")
SOURCE_PREFIXES = ("turnout_quota_", "turnout_budget_")  # gauge sources the dashboard shows


def public_url(url: str | None) -> str | None:
    """A base URL without user info, query or fragment (where a key could hide)."""
    if not url:
        return None
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def redact(message: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            message = message.replace(s, "***")
    return _SECRETS.sub("***", message)


PROBE_BODY_LIMIT = 64 * 1024  # a provider test's body names a model, nothing more


class ObservabilityAPI:
    def __init__(self, cfg: Config, auth: Authenticator, backends: dict[str, Backend], metrics: Metrics,
                 health: Health, record: Callable[[Call], None] | None = None) -> None:
        self.record = record  # the ledger's: a provider test is a real, paid call, so it is a ledger row
        self.cfg = cfg
        self.auth = auth
        self.backends = backends
        self.metrics_ = metrics
        self.health = health

    def routes(self) -> list[Route]:
        return [
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/turnout/providers", self.providers, methods=["GET"]),
            Route("/turnout/providers/{name}/test", self.test, methods=["POST"]),
            Route("/turnout/stats", self.stats, methods=["GET"]),
            Route("/turnout/dashboard", self.dashboard, methods=["GET"]),
            Route("/turnout/dashboard/{file}", self.asset, methods=["GET"]),
        ]

    # --- metrics -----------------------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        if self.cfg.server.metrics_require_key:
            key = self.auth.authenticate(request.headers)
            if key is not None and key.role != "admin":
                raise ProxyError("Only admin keys may read /metrics.", status=403, type="permission_error",
                                 code="admin_only")
        return Response(self.metrics_.exposition(), media_type=CONTENT_TYPE)

    # --- providers ---------------------------------------------------------------------------------

    def provider(self, name: str) -> dict[str, Any]:
        b = self.backends[name]
        models = [{"name": m.name, "model": m.model, "price": {"input": m.price.input, "output": m.price.output},
                   "vision": m.vision, "tools": m.tools, "context_window": m.context_window,
                   "locality": "local" if self.metrics_.local.get(m.name) else "cloud"}
                  for m in self.cfg.models.values() if m.backend == name]
        return {"name": name, "type": b.cfg.type, "base_url": public_url(getattr(b, "base_url", None) or b.cfg.base_url),
                "key_set": bool(b.cfg.api_key), "available": not b.unavailable, "unavailable_reason": b.unavailable,
                "models": models, "health": self.health.describe(name)}

    async def providers(self, request: Request) -> Response:
        self.auth.authenticate(request.headers)
        state, reason = self.health.system()
        out = {"status": state, "reason": reason, "checked_at": time.time(),
               "providers": [self.provider(n) for n in self.backends]}
        if self.health.shared is not None:
            out["state"] = self.health.shared()  # the shared state (Redis): ok, or degraded and why
        return json_response(out)

    async def test(self, request: Request) -> Response:
        key = self.auth.authenticate(request.headers)
        if key is not None and key.role != "admin":  # a provider test is a real, paid upstream call
            raise ProxyError("Only admin keys may test providers (keys[].role: admin).", status=403,
                             type="permission_error", code="admin_only")
        health = self.health
        name = request.path_params["name"]
        if name not in self.backends:
            raise ProxyError(f"No backend named '{name}' (defined: {', '.join(self.backends)}).", status=404,
                             type="invalid_request_error", code="backend_not_found")
        body = await read_body(request, PROBE_BODY_LIMIT)  # the size is checked before the body is read
        model = None
        if body.strip():
            data = parse_json(body)
            model = data.get("model") if isinstance(data, dict) else None
        target = health.probe_target(name, model)
        if target is None:
            raise InvalidRequest(f"'{model}' is not a model target of backend '{name}'." if model else
                                 f"No model target uses backend '{name}'.", param="model", code="model_not_found")
        backend = self.backends[name]
        out: dict[str, Any] = {"backend": name, "target": target.name, "model": target.model}
        if backend.unavailable:
            return json_response({**out, "ok": False, "error": {"category": "unavailable",
                                                                "message": backend.unavailable}})
        t0 = time.perf_counter()
        timeout = max(backend.cfg.probe.timeout, 30.0)  # a slow local model may need a while
        try:
            answer, call = await health.chat(name, target, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            err: dict[str, Any] = {"category": "timeout", "status": 504, "message": f"no answer in {timeout:g}s"}
        except UpstreamError as e:
            err = {"category": e.category, "status": e.status, "code": e.code,
                   "message": redact(e.detail, backend.cfg.api_keys or [backend.cfg.api_key or ""])}
        except Exception as e:  # noqa: BLE001 - the operator sees the type, never a raw repr
            err = {"category": "network", "message": type(e).__name__}
        else:
            seconds = time.perf_counter() - t0
            health.record_probe(name, "ok", None, 200, seconds, chat=True)
            if self.record is not None:
                call.key, call.target, call.reason = key, target.name, "provider_test"
                call.request_id = request_id(request, "req_" + call.id[9:])
                call.status, call.finished = 200, time.perf_counter()
                call.cost_usd = pricing.cost(call.usage, target.price)
                self.record(call)
            choice = (answer.get("choices") or [{}])[0]
            text = ((choice.get("message") or {}).get("content") or "")[:200]
            return json_response({**out, "ok": True, "latency_ms": round(seconds * 1000, 1), "status": 200,
                                  "reply": text, "finish_reason": choice.get("finish_reason"), "usage": call.usage,
                                  "cost_usd": round(pricing.cost(call.usage, target.price), 8),
                                  "health": health.describe(name)["state"]})
        seconds = time.perf_counter() - t0
        result = "rate_limited" if err["category"] == "rate_limit" else "failed"
        health.record_probe(name, result, err["category"], err.get("status"), seconds, chat=True)
        return json_response({**out, "ok": False, "latency_ms": round(seconds * 1000, 1), "error": err,
                              "health": health.describe(name)["state"]})

    # --- stats and the dashboard -------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        self.auth.authenticate(request.headers)
        health, metrics = self.health, self.metrics_
        try:
            minutes = float(request.query_params.get("minutes", "60"))
        except ValueError:
            raise InvalidRequest("minutes: expected a number", param="minutes") from None
        snap = metrics.stats.snapshot(max(1.0, min(minutes, 24 * 60)))
        snap["locality_of"] = {n: "local" if local else "cloud" for n, local in metrics.local.items()}
        state, reason = health.system()
        snap["health"] = {"status": state, "reason": reason, "backends": [
            {"name": n, "type": h.type, "state": health.assess(n), "reason": h.reason,
             "success_rate": h.success_rate(), "latency_ms": h.latency_ms(), "last_probe": h.last_probe}
            for n, h in health.backends.items()]}
        if health.shared is not None:
            snap["health"]["state"] = health.shared()
        snap["gauges"] = metrics.source_rows(SOURCE_PREFIXES)
        return json_response(snap)

    async def dashboard(self, request: Request) -> Response:
        return self._file("index.html")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in _ASSETS:
            raise ProxyError(f"GET {request.url.path}: Not Found", status=404, type="invalid_request_error",
                             code="not_found")
        return self._file(name)

    def _file(self, name: str) -> Response:
        return Response((DASHBOARD / name).read_bytes(), media_type=_ASSETS[name],
                        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"})
