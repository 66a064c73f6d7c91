"""The one upstream I/O boundary: every outbound HTTP call Turnout makes goes through this module —
backend chat requests, health probes, image fetches, llama.cpp supervision, doctor's Ollama
probes — and its failures are Turnout's own exceptions (`proxy.errors.TransportError`:
`ConnectError`, `ConnectTimeout` / `ReadTimeout` (both `UpstreamTimeout`), `ReadError`), never the
underlying library's.

Why not `httpx.AsyncClient` on the hot path: measured here against an instant local upstream, one
proxied request cost 0.68 ms of CPU inside httpx (URL parsing, request models, anyio locks and
cancel scopes), 0.47 ms through bare httpcore, and 0.24 ms through aiohttp's pooled client —
the whole budget for a proxied request is 0.75 ms. So the hot path uses aiohttp, behind the small
subset of httpx's API that backends use (`post`, `get`, `stream`, `status_code`, `headers`,
`content`, `aread`, `aiter_bytes`, `aiter_lines`, `json`), so backend code reads like ordinary
httpx code. `run_sync` serves the command line (doctor, check-config). Extend this facade rather
than reaching around it; the translation of failures happens once per call, not per chunk.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, TypeVar

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from proxy.config import Timeouts
from proxy.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout, TransportError, parse_retry_after

if TYPE_CHECKING:  # a type only: the backends package imports this module
    from proxy.backends.keyring import KeyRing

T = TypeVar("T")
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Timeout:
    """Seconds to connect, and to wait for each read (a non-streamed answer: for the whole body)."""

    connect: float
    read: float


def _timeout(t: Timeouts | Timeout | float | None, default: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
    if t is None:
        return default
    if isinstance(t, (int, float)):
        return aiohttp.ClientTimeout(total=None, connect=float(t), sock_read=float(t))
    if isinstance(t, Timeout):
        return aiohttp.ClientTimeout(total=None, sock_connect=t.connect, connect=t.connect, sock_read=t.read)
    return aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=max(t.first_token, t.idle))


def _translate(e: BaseException) -> TransportError:
    """aiohttp's failure as Turnout's own exception (no URL, no credentials)."""
    if isinstance(e, (aiohttp.ConnectionTimeoutError, aiohttp.SocketTimeoutError)) and "connect" in str(e).lower():
        return ConnectTimeout("connect timeout")
    if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return ReadTimeout("read timeout")
    if isinstance(e, aiohttp.ClientConnectorError):
        return ConnectError("connection refused or unreachable")
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return ReadError("upstream closed the connection")
    if isinstance(e, aiohttp.InvalidURL):
        return ConnectError("invalid URL")
    return TransportError(type(e).__name__)


class Response:
    """The parts of an upstream response backends read."""

    __slots__ = ("_r", "status_code", "headers", "content")

    def __init__(self, r: aiohttp.ClientResponse) -> None:
        self._r = r
        self.status_code: int = r.status
        self.headers: CIMultiDictProxy[str] = r.headers
        self.content: bytes = b""

    @property
    def is_redirect(self) -> bool:
        return self.status_code in REDIRECTS and "location" in self.headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.content)

    async def aread(self) -> bytes:
        try:
            self.content = await self._r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _translate(e) from None
        return self.content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._r.content.iter_any():
                yield data
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _translate(e) from None

    async def aiter_lines(self) -> AsyncIterator[bytes]:
        """Lines without their line ending (bytes: NDJSON and SSE parsers want bytes)."""
        try:
            async for line in self._r.content:
                yield line.rstrip(b"\r\n")
        except ValueError:
            raise ReadError("upstream line too long") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _translate(e) from None


class HTTPClient:
    """One connection pool to one upstream base URL, created once per backend."""

    def __init__(self, base_url: str = "", *, headers: dict[str, str] | None = None,
                 timeout: Timeouts | Timeout | float | None = None, max_connections: int = 1000,
                 keys: KeyRing | None = None, key_headers: Callable[[str], dict[str, str]] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # several API keys: one picked per request (its headers from `key_headers`), a 429 cools it down
        self.keys = keys if keys is not None and key_headers is not None else None
        self.key_headers = key_headers
        self.headers = dict(headers or {})
        self.timeout = _timeout(timeout or Timeouts(), aiohttp.ClientTimeout())
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        # created lazily inside the running loop (aiohttp binds a session to its loop)
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300,
                                             keepalive_timeout=30, enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers, timeout=self.timeout,
                                                  auto_decompress=True, skip_auto_headers=("User-Agent",),
                                                  json_serialize=lambda o: orjson.dumps(o).decode(),
                                                  trust_env=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    @asynccontextmanager
    async def stream(self, method: str, path: str, *, content: bytes | None = None, json: Any = None,
                     headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                     timeout: Any = None, server_hostname: str | None = None) -> AsyncIterator[Response]:
        """`server_hostname`: the TLS server name when the URL names an address (a pinned image fetch)."""
        if json is not None:
            content = orjson.dumps(json)
            headers = {"content-type": "application/json", **(headers or {})}
        key = None
        if self.keys is not None:
            key = self.keys.pick()
            headers = {**self.key_headers(key), **(headers or {})}  # type: ignore[misc]
        try:
            r = await self.session.request(method, self._url(path), data=content, headers=headers, params=params,
                                           timeout=_timeout(timeout, self.timeout), allow_redirects=False,
                                           **({"server_hostname": server_hostname} if server_hostname else {}))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _translate(e) from None
        if key is not None and r.status == 429:
            self.keys.cool(key, parse_retry_after(r.headers.get("retry-after")))  # type: ignore[union-attr]
        try:
            yield Response(r)
        finally:
            # a body read to the end returns its connection to the pool; a cut-short one is closed
            if r.content.is_eof():
                r.release()
            else:
                r.close()

    async def request(self, method: str, path: str, **kw: Any) -> Response:
        async with self.stream(method, path, **kw) as r:
            await r.aread()
            return r

    async def post(self, path: str, **kw: Any) -> Response:
        return await self.request("POST", path, **kw)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)


def run_sync(base_url: str, fn: Callable[[HTTPClient], Awaitable[T]], *, headers: dict[str, str] | None = None,
             timeout: Timeouts | Timeout | float | None = None) -> T:
    """`fn(client)` to completion from synchronous code (the command line), with a client of its own;
    from inside a running event loop it runs on a thread's own loop instead of blocking that one's."""

    async def main() -> T:
        client = HTTPClient(base_url, headers=headers, timeout=timeout)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()
