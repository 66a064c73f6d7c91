"""What every backend provides, and the pieces they share.

A backend owns one connection pool, created once in `start()`, and answers for its targets:
`complete()` returns an OpenAI ``chat.completion`` dict with its usage; `stream()` yields the JSON payloads of
OpenAI ``chat.completion.chunk``s as bytes (what follows ``data: ``), records usage on the `Call`
instead of yielding a usage chunk, and raises `UpstreamError` for any failure. `embed()` returns
one vector per input (an HTTP backend only says how a batch is asked and read: `embed_batch`,
`embed_request`, `embed_vectors`; batching, errors and usage are done once here). The app frames the
payloads as SSE and emits the usage chunk, so that behaviour lives once for every provider.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, ClassVar, Mapping

import orjson

from proxy.backends.keyring import KeyRing
from proxy.call import Call
from proxy.http import HTTPClient, Response, Timeout
from proxy.config import BackendConfig, Target
from proxy.errors import TransportError, UpstreamError, UpstreamTimeout, parse_retry_after, upstream_status_error, upstream_timeout
from proxy.usage import tokens
from translators import embeddings as emb
from translators.common import Fault

Json = dict[str, Any]
_FRAGMENT = 8  # an upstream quoting this many consecutive characters of a key quotes the key
BIG_ANSWER = 1 << 20  # upstream bodies past this size are parsed in a turn of the event loop of their own


def redact(text: str, secret: str | None) -> str:
    """`text` without `secret` or any run of `_FRAGMENT`+ of its characters (upstreams quote keys
    whole or in part, e.g. OpenAI's "sk-proj-…abcd"): the one mask every upstream message that may
    reach a client or a log goes through, streamed or not."""
    if not secret or not text:
        return text
    text = text.replace(secret, "***")
    if len(secret) >= _FRAGMENT:
        for i in range(len(secret) - _FRAGMENT + 1):
            piece = secret[i:i + _FRAGMENT]
            if piece in text:
                text = text.replace(piece, "***")
    return text


class Backend:
    """Base class: subclasses set `type` and implement `complete` and `stream`."""

    type: ClassVar[str] = ""

    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name

    @property
    def unavailable(self) -> str | None:
        """Why this backend cannot take requests, or None when it can."""
        return self.cfg.unavailable

    async def start(self) -> None:
        """Create pooled clients; called once when the server starts."""

    async def aclose(self) -> None:
        """Close pooled clients."""

    async def complete(self, target: Target, body: Json, call: Call) -> Json:
        """The answer, a ``chat.completion`` carrying its own ``usage`` (the caller records it)."""
        raise NotImplementedError

    def stream(self, target: Target, body: Json, call: Call) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        """Models the upstream says it serves (for discovery and health probes)."""
        return []

    async def count_tokens(self, target: Target, body: Json, call: Call) -> int | None:
        """The provider's own count of a chat body's input tokens, or None where it has none."""
        return None

    async def embed(self, target: Target, req: emb.EmbedRequest, call: Call,
                    decode: Callable[[list[int]], str] | None = None) -> list[list[float]]:
        """One vector per input; records the input's token count as `call.usage`. ``decode`` turns
        token arrays into text for upstreams that take only text."""
        raise UpstreamError(f"Backend '{self.name}' ({self.type}) does not serve embeddings.", status=400,
                            type="invalid_request_error", code="unsupported_capability", param="model",
                            fallback=True, category="client", backend=self.name)

    @staticmethod
    def embed_usage(call: Call, tokens: int) -> None:
        call.usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}

    def describe(self) -> str:
        """One line for the start-up banner."""
        where = self.cfg.base_url or "built in"
        return f"{self.name} ({self.type}, {where})"


class HTTPBackend(Backend):
    """A backend that talks HTTP through one pooled client (`proxy.http.HTTPClient`: httpx's API,
    Turnout's own transport exceptions, aiohttp's lower CPU cost underneath)."""

    default_base_url: ClassVar[str] = ""

    def __init__(self, cfg: BackendConfig) -> None:
        super().__init__(cfg)
        self.base_url = (cfg.base_url or self.default_base_url).rstrip("/")
        self.client: HTTPClient | None = None
        self.keys = KeyRing(cfg.api_keys) if len(cfg.api_keys) > 1 else None  # `api_keys`: rotated per request

    def auth_headers(self, key: str | None = None) -> dict[str, str]:
        """The headers that carry `key` (default: the configured api_key) and go with every request."""
        return {}

    def redact(self, text: str) -> str:
        """`text` without any of this backend's keys (`redact`)."""
        for key in self.cfg.api_keys or [self.cfg.api_key]:
            text = redact(text, key)
        return text

    def describe(self) -> str:
        return f"{self.name} ({self.type}, {self.base_url})"

    async def start(self) -> None:
        # every upstream body Turnout sends is JSON
        headers = {"content-type": "application/json", **self.cfg.headers, **self.auth_headers(self.cfg.api_key)}
        self.client = HTTPClient(self.base_url, headers=headers, timeout=self.cfg.timeout,
                                 max_connections=self.cfg.max_connections, keys=self.keys, key_headers=self.auth_headers)
        t = self.cfg.timeout
        # per socket read; the wait for the headers (`first_token`) and the whole call (`total`) are in post()
        self.complete_timeout = Timeout(connect=t.connect, read=t.total)

    async def post(self, path: str, content: bytes, headers: dict[str, str] | None = None) -> Response:
        """POST a body for a non-streamed answer: its response headers within `timeout.first_token`
        (as a stream's first chunk), all of it within `timeout.total`; a timeout or connection
        failure is an UpstreamError."""
        t = self.cfg.timeout
        opened = self.client.stream("POST", path, content=content, headers=headers, timeout=self.complete_timeout)
        try:
            async with asyncio.timeout(t.total):
                try:
                    async with asyncio.timeout(t.first_token):
                        r = await opened.__aenter__()
                except TimeoutError:
                    raise upstream_timeout(f"Backend '{self.name}' sent no response headers within "
                                           f"{t.first_token:g}s (timeout.first_token).", self.name) from None
                try:
                    await r.aread()
                finally:
                    await opened.__aexit__(None, None, None)
                if len(r.content) > BIG_ANSWER:
                    await asyncio.sleep(0)  # joining a big answer and parsing it: separate turns of the loop
                return r
        except TimeoutError:
            raise upstream_timeout(f"Backend '{self.name}' did not finish within {t.total:g}s (timeout.total).",
                                   self.name) from None
        except TransportError as e:
            raise self.transport_error(e) from None

    # embeddings: a subclass that serves them sets `embed_batch` and says how a batch is asked and read
    embed_batch: ClassVar[int] = 0
    embed_takes_tokens: ClassVar[bool] = False  # token arrays go upstream as they are

    def embed_request(self, target: Target, req: emb.EmbedRequest, inputs: list[Any]) -> tuple[str, Json]:
        raise NotImplementedError

    def embed_vectors(self, data: Json) -> tuple[list[list[float]], int | None]:
        raise NotImplementedError

    def embed_error(self, target: Target, r: Response) -> UpstreamError:
        return self.status_error(r.status_code, f"Backend '{self.name}' returned HTTP {r.status_code}.", r.headers)

    async def embed(self, target: Target, req: emb.EmbedRequest, call: Call,
                    decode: Callable[[list[int]], str] | None = None) -> list[list[float]]:
        if not self.embed_batch:
            return await super().embed(target, req, call, decode)
        try:
            inputs: list[Any] = req.inputs if self.embed_takes_tokens else req.texts(decode)
        except ValueError as e:
            raise UpstreamError(str(e), status=400, type="invalid_request_error", code="unsupported_value",
                                param="input", fallback=True, category="client", backend=self.name) from None
        vectors: list[list[float]] = []
        counted: int | None = 0
        for batch in emb.batches(inputs, self.embed_batch):
            path, body = self.embed_request(target, req, batch)
            r = await self.post(path, orjson.dumps(body))
            if r.status_code >= 400:
                raise self.embed_error(target, r)
            got, n = self.embed_vectors(self.json_of(r))
            if len(got) != len(batch):
                raise self.status_error(502, f"Backend '{self.name}' sent {len(got)} embeddings for {len(batch)} inputs.")
            vectors += got
            counted = None if n is None or counted is None else counted + n
        if counted is None:  # the upstream gave no count (Gemini): count the input
            counted = sum(tokens.count(t) if isinstance(t, str) else len(t) for t in inputs)
        self.embed_usage(call, counted)
        return vectors

    def json_of(self, r: Response) -> Json:
        """The JSON of a successful upstream answer; anything else is the upstream's fault (502)."""
        try:
            data = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise self.status_error(502, f"Backend '{self.name}' sent a response that is not a JSON object.")
        return data

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def transport_error(self, e: Exception) -> UpstreamError:
        """A timeout or connection failure, worded without URLs or credentials."""
        if isinstance(e, (UpstreamTimeout, asyncio.TimeoutError)):
            kind = e.phase if isinstance(e, UpstreamTimeout) else "read"
            return upstream_timeout(f"Backend '{self.name}' timed out ({kind}).", self.name)
        return UpstreamError(f"Backend '{self.name}' is unreachable ({type(e).__name__}).", status=502,
                             type="upstream_error", code="upstream_unreachable", retry=True,
                             category="network", backend=self.name)

    def upstream_error(self, message: str, **kw: Any) -> UpstreamError:
        """An UpstreamError carrying the upstream's own words, with Turnout's key masked (`redact`)."""
        return UpstreamError(self.redact(message), backend=self.name, **kw)

    def fault_error(self, fault: Fault, headers: Mapping[str, str] | None = None) -> UpstreamError:
        """The UpstreamError for a fault a provider translator read from an error body."""
        e = self.status_error(fault.status, fault.message, headers, type=fault.type, code=fault.code,
                              param=fault.param)
        if e.retry_after is None and fault.retry_after is not None and e.status == 429:
            e.retry_after = fault.retry_after
            e.headers["retry-after"] = str(max(0, int(fault.retry_after + 0.999)))
        return e

    def status_error(self, status: int, message: str, headers: Mapping[str, str] | None = None, *,
                     type: str | None = None, code: str | None = None, param: str | None = None) -> UpstreamError:
        message = self.redact(message)
        e = upstream_status_error(status, message, type=type, code=code, param=param,
                                  retry_after=parse_retry_after(headers.get("retry-after") if headers else None))
        e.backend = self.name
        if e.type == "upstream_auth_error":
            e.message = f"Backend '{self.name}': {e.message}"
        return e


async def sse_data(response: Any) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of an SSE body, without copying more than each line.

    Comments, ``event:`` and ``id:`` lines are skipped (an OpenAI-compatible stream carries
    everything in data); a payload split over several data lines is joined as the spec says.
    Lines end in LF, CRLF or a bare CR (the spec allows all three), also when a CRLF is split
    between two reads; a chunk without CR costs one scan for it.
    """
    buf = b""
    pending: list[bytes] = []
    skip_lf = False  # the last read ended in CR: an LF starting the next one belongs to it
    async for raw in response.aiter_bytes():
        if skip_lf and raw[:1] == b"\n":
            raw = raw[1:]
        skip_lf = False
        if b"\r" in raw:
            skip_lf = raw.endswith(b"\r")
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = buf + raw if buf else raw
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:
                if pending:
                    yield pending[0] if len(pending) == 1 else b"\n".join(pending)
                    pending = []
                continue
            if line.startswith(b"data:"):
                pending.append(line[6:] if line[5:6] == b" " else line[5:])
        buf = buf[start:]
    if pending:
        yield b"\n".join(pending)
