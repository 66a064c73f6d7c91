"""Errors that become OpenAI-shaped responses.

Every failure a client can see is a `ProxyError`: it knows its HTTP status and renders as
``{"error": {"message", "type", "param", "code"}}``. Upstream failures are `UpstreamError`s that
also tell the dispatcher whether retrying the same target or falling back to the next one can help.
Messages never carry secrets or stack traces: they are written here or by a translator, never
copied from an exception's repr.

`TransportError` and its subclasses are what the one upstream I/O boundary (`proxy.http`) raises
when no HTTP answer came back (whatever library is underneath): a backend turns them into
`UpstreamError`s, a probe into a health result.
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    """An error with an HTTP status and OpenAI's error body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(ProxyError):
    """The client's request is wrong (400 unless said otherwise)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class RequestTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(ProxyError):
    """A backend failed. `retry` means the same target may succeed again (429, 5xx, timeouts,
    connection errors); `fallback` means another target may succeed (also true for an upstream
    auth or not-found problem, which is the operator's, not the client's)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        type: str = "upstream_error",
        code: str | None = None,
        param: str | None = None,
        retry: bool = False,
        fallback: bool | None = None,
        retry_after: float | None = None,
        category: str = "server",
        backend: str | None = None,
    ) -> None:
        super().__init__(message, status=status, type=type, param=param, code=code)
        self.retry = retry
        self.fallback = retry if fallback is None else fallback
        self.retry_after = retry_after
        self.category = category  # timeout | rate_limit | auth | server | network | client
        self.backend = backend
        self.detail = message  # the upstream's own words: for the operator (logs, provider tests), not the client
        if retry_after is not None:
            self.headers["retry-after"] = str(max(0, int(retry_after + 0.999)))


# --- the upstream I/O boundary's own exceptions (raised by proxy.http, never another library's) ---------


class TransportError(Exception):
    """No HTTP answer from an upstream. The message names no URL and no credential."""


class ConnectError(TransportError):
    """The connection could not be made: refused, unreachable, or the name did not resolve."""


class UpstreamTimeout(TransportError):
    """The upstream did not answer in time; `phase` says whether connecting or reading took too long."""

    phase = "read"


class ConnectTimeout(UpstreamTimeout):
    phase = "connect"


class ReadTimeout(UpstreamTimeout):
    phase = "read"


class ReadError(TransportError):
    """The connection broke or the body was malformed while it was read (closed early, a line too long)."""


def upstream_timeout(message: str, backend: str | None = None) -> UpstreamError:
    """A 504 from waiting too long on an upstream: retryable, and another target may answer."""
    return UpstreamError(message, status=504, type="timeout", code="upstream_timeout", retry=True,
                         category="timeout", backend=backend)


def upstream_status_error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    """Map an upstream HTTP status to what the client sees and what the dispatcher may do.

    429 stays 429 (retry-after kept); 5xx becomes 502; 401/403 are the operator's key problem, so
    the client sees 502 and the dispatcher tries the next target; other 4xx go back unchanged.
    """
    if status == 429:
        return UpstreamError(message, status=429, type=type or "rate_limit_error",
                             code=code or "rate_limit_exceeded", retry=True,
                             retry_after=retry_after, category="rate_limit")
    if status in (408, 504):
        return UpstreamError(message, status=504, type="timeout", code=code or "upstream_timeout",
                             retry=True, category="timeout")
    if status >= 500:
        return UpstreamError(message, status=502, type=type or "upstream_error",
                             code=code or f"upstream_{status}", retry=True,
                             retry_after=retry_after, category="server")
    if status in (401, 403):
        # the upstream's own words may quote part of the operator's key (OpenAI shows its first and
        # last characters): the client gets none of them
        e = UpstreamError(f"The upstream rejected Turnout's credentials (HTTP {status}).", status=502,
                          type="upstream_auth_error", code=f"upstream_{status}", fallback=True, category="auth")
        e.detail = message
        return e
    if status == 404:
        return UpstreamError(message, status=404, type=type or "invalid_request_error",
                             code=code or "model_not_found", param=param, fallback=True,
                             category="client")
    return UpstreamError(message, status=status, type=type or "invalid_request_error", code=code,
                         param=param, category="client")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a retry-after header (delta-seconds form; HTTP dates are rare upstream)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
