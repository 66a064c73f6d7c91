"""Proxy keys: who is calling. One place reads the credentials every endpoint accepts.

A key comes as ``Authorization: Bearer …`` (OpenAI's SDKs) or ``x-api-key`` (Anthropic's). With no
keys configured the proxy is open and every caller is anonymous (`None`).
"""

from __future__ import annotations

from typing import Mapping

from proxy.config import Key
from proxy.errors import AuthenticationError, ProxyError

ADMIN_TIER = "admin"  # the config has no other notion of an administrator yet (as /turnout/hardware)


class AdminRequired(ProxyError):
    status = 403
    type = "permission_error"
    code = "admin_key_required"


class Authenticator:
    def __init__(self, keys: list[Key]) -> None:
        self.keys: dict[str, Key] = {k.key: k for k in keys}

    @property
    def open(self) -> bool:
        """No keys configured: anyone may call."""
        return not self.keys

    @staticmethod
    def token(headers: Mapping[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")

    def authenticate(self, headers: Mapping[str, str]) -> Key | None:
        """The caller's key (None when the proxy is open); 401 when missing or wrong."""
        if not self.keys:
            return None
        token = self.token(headers)
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Provide your Turnout key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key")
        key = self.keys.get(token)
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        return key


def require_admin(auth: Authenticator, headers: Mapping[str, str], what: str) -> Key:
    """The caller's key if it has `tier: admin`; 401 without a valid key, 403 otherwise (an open
    proxy has no admin: these endpoints need a key)."""
    key = auth.authenticate(headers)
    if key is None or key.tier != ADMIN_TIER:
        none = not any(k.tier == ADMIN_TIER for k in auth.keys.values())
        raise AdminRequired(f"{what} needs a key with tier: admin" + (" (none is configured in proxy.yaml)" if none
                                                                       else "") + ".")
    return key
