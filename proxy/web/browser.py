"""Browsers get only what the operator allows (CSRF, DNS rebinding, CORS).

A web page can make a visitor's browser send requests to 127.0.0.1: a "simple" cross-origin POST
(``text/plain`` or form bodies, no preflight) runs before any CORS check, and a DNS-rebinding page
reaches Turnout under its own host name. With no keys configured (open mode) anything that reaches
Turnout can spend money, so there this guard refuses (403, OpenAI's error shape) a request whose
``Host`` is not a loopback name, `server.host` or in `server.allowed_hosts`, one whose ``Origin`` is not
in `server.cors_origins`, and (415) a POST with a body type browsers send without a preflight.
With keys, a browser cannot spend without the key, so only CORS applies. Browser clients that
should reach Turnout are listed in `server.cors_origins` (off by default): their preflight is
answered and their responses carry ``access-control-allow-origin``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from proxy.errors import ProxyError

Scope = dict[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
_ALLOW_HEADERS = b"authorization, content-type, x-api-key, x-request-id, anthropic-version, anthropic-beta, " \
                 b"x-turnout-target, x-turnout-task, x-turnout-tier, x-turnout-requirement"


def _host(value: str) -> str:
    """A Host header's name, without the port (IPv6 literals keep their brackets)."""
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class BrowserGuard:
    def __init__(self, app: ASGI, *, open_mode: bool, server_host: str, allowed_hosts: list[str],
                 cors_origins: list[str]) -> None:
        self.app = app
        self.open_mode = open_mode
        self.hosts = LOOPBACK | {h.lower() for h in allowed_hosts} | (
            {server_host.lower()} if server_host not in ("0.0.0.0", "::", "") else set())
        self.origins = frozenset(o.rstrip("/") for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        allowed_origin = origin is not None and origin.rstrip("/") in self.origins
        if scope["method"] == "OPTIONS" and allowed_origin and "access-control-request-method" in headers:
            return await send_preflight(send, origin)
        if self.open_mode:
            refused = self.refusal(scope, headers, origin, allowed_origin)
            if refused is not None:
                return await send_error(send, refused)
        if not allowed_origin:
            return await self.app(scope, receive, send)

        async def with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"access-control-allow-origin", origin.encode("latin-1")),
                                      (b"access-control-expose-headers", b"*"), (b"vary", b"origin")]
            await send(message)

        await self.app(scope, receive, with_cors)

    def refusal(self, scope: Scope, headers: dict[str, str], origin: str | None,
                allowed_origin: bool) -> ProxyError | None:
        if _host(headers.get("host", "").lower()) not in self.hosts:
            return ProxyError("This Host is not allowed: an open Turnout (no keys) answers only loopback names, "
                              "server.host and server.allowed_hosts.", status=403,
                              type="invalid_request_error", code="host_not_allowed")
        if origin is not None and not allowed_origin:
            return ProxyError("Cross-origin browser requests are refused (add the origin to server.cors_origins).",
                              status=403, type="invalid_request_error", code="origin_not_allowed")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] == "POST" and ctype in SIMPLE_TYPES:
            return ProxyError(f"Content-Type '{ctype}' is not accepted; send application/json.", status=415,
                              type="invalid_request_error", code="unsupported_media_type")
        return None


async def send_error(send: Any, e: ProxyError) -> None:
    body = e.json()
    await send({"type": "http.response.start", "status": e.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-should-retry", b"false")]})
    await send({"type": "http.response.body", "body": body})


async def send_preflight(send: Any, origin: str) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        (b"access-control-allow-headers", _ALLOW_HEADERS), (b"access-control-max-age", b"600"),
        (b"vary", b"origin")]})
    await send({"type": "http.response.body", "body": b""})
