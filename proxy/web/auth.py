"""Proxy keys: who is calling. One place reads the credentials every endpoint accepts.

A key comes as ``Authorization: Bearer …`` (OpenAI's SDKs) or ``x-api-key`` (Anthropic's). Keys are
those of proxy.yaml and, with a ledger, those created at run time (`proxy.usage.keystore`, looked up
by hash with a one-second cache). With no key in proxy.yaml the proxy is open: a caller with no key
(or an unknown one) is anonymous (`None`), one presenting a stored key is that key. `admitted` is
told of each stored key a request authenticates with (the usage accounts give it its rate limit and
budget).
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

from proxy.config import Key
from proxy.errors import AuthenticationError, ProxyError



class AdminRequired(ProxyError):
    status = 403
    type = "permission_error"
    code = "admin_key_required"


class Store(Protocol):
    def lookup(self, secret: str) -> Key | None: ...


class Authenticator:
    def __init__(self, keys: list[Key], store: Store | None = None,
                 admitted: Callable[[Key], None] = lambda k: None) -> None:
        self.keys: dict[str, Key] = {k.key: k for k in keys}
        self.store = store
        self.admitted = admitted

    @property
    def open(self) -> bool:
        """No keys in proxy.yaml: anyone may call."""
        return not self.keys

    @staticmethod
    def token(headers: Mapping[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")

    def authenticate(self, headers: Mapping[str, str]) -> Key | None:
        """The caller's key (None when the proxy is open); 401 when missing or wrong."""
        if self.open:
            return self._stored(self.token(headers)) if self.store is not None else None
        token = self.token(headers)
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Provide your Turnout key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key")
        key = self.keys.get(token)
        if key is None and self.store is not None:
            key = self._stored(token)
        if key is None:
            raise AuthenticationError("Incorrect API key provided.")
        return key

    def _stored(self, token: str) -> Key | None:
        key = self.store.lookup(token) if token and self.store is not None else None
        if key is not None:
            self.admitted(key)
        return key


def require_admin(auth: Authenticator, headers: Mapping[str, str], what: str) -> Key:
    """The caller's key if it has `role: admin`; 401 without a valid key, 403 otherwise (an open
    proxy has no admin: these endpoints need a key)."""
    key = auth.authenticate(headers)
    if key is None or key.role != "admin":
        none = not any(k.role == "admin" for k in auth.keys.values())
        raise AdminRequired(f"{what} needs a key with role: admin" + (" (none is configured in proxy.yaml)" if none
                                                                       else "") + ".")
    return key
