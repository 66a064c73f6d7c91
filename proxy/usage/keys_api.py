"""``/turnout/admin/keys``: proxy keys created, listed, revoked and rotated at run time (keys with role: admin).

- ``GET /turnout/admin/keys`` (``?all=1`` with revoked and expired ones): ``{"data": [{name, prefix, tier,
  rpm, budget_day, routes, expires, created, revoked, status}]}`` — never a secret or a hash.
- ``POST /turnout/admin/keys`` ``{name, tier?, role?, rpm?, budget_day?, routes?, expires?}`` → 201 with the
  record and ``key``, the secret, shown this once.
- ``DELETE /turnout/admin/keys/{name or prefix}`` revokes it (refused everywhere within a second).
- ``POST /turnout/admin/keys/{name or prefix}/rotate`` → a new secret with the same settings; the old
  one is revoked.

Without a ledger (``usage.ledger: off``) there is nowhere to keep keys: 404 ``keys_unavailable``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.errors import InvalidRequest, ProxyError
from proxy.usage.keystore import KeyStore, KeyStoreError
from proxy.web.auth import Authenticator, require_admin
from proxy.web.responses import json_response

FIELDS = {"name": str, "tier": str, "role": str, "rpm": int, "budget_day": (int, float), "routes": list, "expires": str}


class KeysUnavailable(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "keys_unavailable"


class KeyNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    for k, v in body.items():
        if k not in FIELDS:
            raise InvalidRequest(f"Unknown field '{k}' (expected: {', '.join(FIELDS)}).", param=k)
        if v is not None and (not isinstance(v, FIELDS[k]) or isinstance(v, bool)):
            raise InvalidRequest(f"Invalid type for '{k}'.", param=k, code="invalid_type")
    if not body.get("name"):
        raise InvalidRequest("Missing required parameter: 'name'.", param="name", code="missing_required_parameter")
    if body.get("routes") is not None and not all(isinstance(r, str) for r in body["routes"]):
        raise InvalidRequest("'routes' must be a list of names.", param="routes", code="invalid_type")
    return body


def routes(auth: Authenticator, store: KeyStore | None) -> list[Route]:
    def admin(request: Request, what: str) -> KeyStore:
        require_admin(auth, request.headers, what)
        if store is None:
            raise KeysUnavailable("Keys created at run time live in the ledger database; this config has none "
                                  "(usage.ledger is off).")
        return store

    async def list_keys(request: Request) -> Response:
        s = admin(request, "GET /turnout/admin/keys")
        return json_response({"object": "list", "data": [k.public() for k in s.list(all=bool(request.query_params.get("all")))]})

    async def create(request: Request) -> Response:
        s = admin(request, "POST /turnout/admin/keys")
        b = _body(await request.body())
        try:
            secret, k = s.create(b["name"], b.get("tier"), b.get("rpm"), b.get("budget_day"), b.get("routes"),
                                 b.get("expires"), b.get("role") or "user")
        except KeyStoreError as e:
            raise InvalidRequest(str(e), param=str(e).split(":")[0]) from None
        return json_response({**k.public(), "key": secret}, status=201)

    async def revoke(request: Request) -> Response:
        s = admin(request, "DELETE /turnout/admin/keys")
        try:
            k = s.revoke(request.path_params["ref"])
        except KeyStoreError as e:
            raise KeyNotFound(str(e)) from None
        return json_response({**k.public(), "deleted": True})

    async def rotate(request: Request) -> Response:
        s = admin(request, "POST /turnout/admin/keys/{name}/rotate")
        try:
            secret, k = s.rotate(request.path_params["ref"])
        except KeyStoreError as e:
            raise KeyNotFound(str(e)) from None
        return json_response({**k.public(), "key": secret})

    return [Route("/turnout/admin/keys", list_keys, methods=["GET"]),
            Route("/turnout/admin/keys", create, methods=["POST"]),
            Route("/turnout/admin/keys/{ref}", revoke, methods=["DELETE"]),
            Route("/turnout/admin/keys/{ref}/rotate", rotate, methods=["POST"])]
