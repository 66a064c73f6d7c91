"""`type: mock`: the built-in deterministic fake (see `proxy.mock.engine`), in process, no network.

Its faults take the same path as a real upstream's: an `UpstreamError` before the first chunk, or
a dropped stream after some chunks, so demos and tests exercise fallback exactly as production does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import AsyncIterator

import orjson

from proxy.mock import engine as mock
from proxy.backends import base
from proxy.call import Call
from proxy.config import Target
from translators import embeddings as emb
from proxy.errors import UpstreamError, upstream_status_error, upstream_timeout


class Backend(base.Backend):
    type = "mock"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.script = mock.Script.from_options(cfg.options)
        self.failures_left = self.script.times

    def _script(self, body: base.Json) -> mock.Script:
        s = self.script.with_directives(body)
        if s is self.script and s.times is not None:
            # backend-level faults limited to the first N requests
            if self.failures_left:
                self.failures_left -= 1
            else:
                s = dataclasses.replace(s, status=None, drop=None, hang=False, times=None)
        return s

    async def _before_first_byte(self, s: mock.Script) -> None:
        if s.hang:
            await asyncio.sleep(self.cfg.timeout.first_token)
            raise upstream_timeout(f"Backend '{self.name}' timed out (read).", self.name)
        if s.latency:
            await asyncio.sleep(s.latency)
        if s.status:
            e = upstream_status_error(s.status, s.message, retry_after=s.retry_after)
            e.backend = self.name
            raise e

    async def complete(self, target: Target, body: base.Json, call: Call) -> base.Json:
        s = self._script(body)
        await self._before_first_byte(s)
        return mock.build_completion(body, target.model, call.id, call.created, mock.replies(body, target.model, s))

    async def stream(self, target: Target, body: base.Json, call: Call) -> AsyncIterator[bytes]:
        s = self._script(body)
        await self._before_first_byte(s)
        rs = mock.replies(body, target.model, s)
        chunks = mock.build_chunks(target.model, call.id, call.created, rs)
        for i, c in enumerate(chunks):
            if s.drop is not None and i >= s.drop:
                raise UpstreamError(f"Backend '{self.name}' dropped the stream.", status=502,
                                    code="upstream_stream_dropped", retry=True, category="network",
                                    backend=self.name)
            if s.chunk_delay and i:
                await asyncio.sleep(s.chunk_delay)
            yield orjson.dumps(c)
        call.usage = mock.usage_of(body, rs)

    async def embed(self, target: Target, req: emb.EmbedRequest, call: Call, decode=None) -> list[list[float]]:
        """The engine's deterministic vectors; token arrays are decoded as for any text-only provider."""
        s = self._script({"messages": [{"role": "user", "content": t} for t in req.inputs if isinstance(t, str)]})
        await self._before_first_byte(s)
        try:
            texts = req.texts(decode)
        except ValueError as e:
            raise UpstreamError(str(e), status=400, type="invalid_request_error", code="unsupported_value",
                                param="input", fallback=True, category="client", backend=self.name) from None
        self.embed_usage(call, sum(mock.count_tokens(t) for t in texts))
        return [mock.embedding(t, req.dimensions) for t in texts]

    async def list_models(self) -> list[str]:
        return ["mock"]
