"""`type: semantic`: the local embedding engine of the semantic extra, serving ``/v1/embeddings``.

    backends:
      vectors: {type: semantic}            # no key, no URL, no process: in-process on CPU
    models:
      minilm: {backend: vectors, model: minilm-l6-static-v1}   # kind: embedding (the type serves nothing else)

The same engine that routes by meaning (`proxy.semantic.engine`: static token embeddings distilled
from all-MiniLM-L6-v2, 384 dimensions, unit length), run off the event loop in its worker thread
with concurrent requests coalesced into one batch. It is bounded like routing is: an input longer
than `max_tokens` WordPiece tokens (default 512) is embedded by its head and tail, so the vector of a
long document describes its ends. `dimensions` up to 384 cut and renormalise the vector (as for every
backend); more is the client's 400. Token arrays (tiktoken ids from OpenAI clients) are decoded to
text first. Usage counts the input's tokens with the engine's own tokenizer.

Without the extra (`pip install 'turnout[semantic]'`) the backend is unavailable and says so: routing
skips it with that reason, as for a missing key.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from proxy.backends import base
from proxy.call import Call
from proxy.config import BackendConfig, Target
from proxy.config.providers import SemanticOptions
from proxy.errors import UpstreamError
from translators import embeddings as emb

try:
    from proxy.semantic import engine as sem
except ImportError as e:  # the extra (numpy, tokenizers) is not installed
    sem = None  # type: ignore[assignment]
    MISSING = f"the semantic extra is not installed (pip install 'turnout[semantic]'): {e}"
else:
    MISSING = ""


class Backend(base.Backend):
    type = "semantic"

    def __init__(self, cfg: BackendConfig) -> None:
        super().__init__(cfg)
        self.max_tokens = SemanticOptions(**cfg.options).max_tokens
        self.engine = None

    @property
    def unavailable(self) -> str | None:
        return self.cfg.unavailable or MISSING or None

    async def start(self) -> None:
        if sem is None:
            return
        shared = sem.shared()  # the routing engine's tables, loaded once per process
        self.engine = shared if shared.max_tokens == self.max_tokens else sem.Engine(max_tokens=self.max_tokens)

    def describe(self) -> str:
        return f"{self.name} ({self.type}, {sem.ENGINE_ID if sem else 'not installed'}, in process)"

    def _client_error(self, message: str, param: str) -> UpstreamError:
        return UpstreamError(message, status=400, type="invalid_request_error", code="invalid_value",
                             param=param, fallback=True, category="client", backend=self.name)

    async def embed(self, target: Target, req: emb.EmbedRequest, call: Call,
                    decode: Callable[[list[int]], str] | None = None) -> list[list[float]]:
        if self.engine is None:
            raise UpstreamError(f"Backend '{self.name}': {MISSING or 'not started'}.", status=503,
                                type="service_unavailable", code="backend_unavailable", fallback=True,
                                category="server", backend=self.name)
        if req.dimensions is not None and req.dimensions > self.engine.dim:
            raise self._client_error(f"This model's vectors have {self.engine.dim} dimensions; 'dimensions' "
                                     f"must be at most that, got {req.dimensions}.", "dimensions")
        try:
            texts = req.texts(decode)
        except ValueError as e:
            raise self._client_error(str(e), "input") from None
        vectors = await self.engine.aembed(texts)
        self.embed_usage(call, await asyncio.get_running_loop().run_in_executor(None, self._count, texts))
        return vectors.tolist()

    def _count(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self.engine.tokenizer.encode_batch(texts, add_special_tokens=False))

    async def list_models(self) -> list[str]:
        return [sem.ENGINE_ID] if sem else []
