"""The embedding engine: text → unit vectors, in-process on CPU, nothing downloaded.

Static token embeddings distilled from all-MiniLM-L6-v2 (see distil.py) and that model's own
WordPiece tokenizer, both shipped in data/: a text's embedding is the mean of its tokens' rows,
less the direction all such means share, normalised. About 1 ms for a 500-token prompt, so it can
sit in front of every request; the figures and the comparison with running the transformer are in
docs/semantic.md.

Input is bounded: a text longer than `max_chars` is cut to its head (three quarters) and tail
(the ask is often at the end), then the same way to `max_tokens` tokens, so a huge prompt costs no more than
a long one. `embed` is synchronous and thread-safe;
`aembed` runs it off the event loop in one worker thread, coalescing concurrent callers into one
batch. `embed(texts) -> np.ndarray` is the API the semantic cache and /v1/embeddings will use.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tokenizers

DATA = Path(__file__).parent / "data"
SPECIAL = (0, 100, 101, 102)  # [PAD] [UNK] [CLS] [SEP]
ENGINE_ID = "minilm-l6-static-v1"  # stored in trained classifiers: vectors from another engine don't mix


class Engine:
    id = ENGINE_ID

    def __init__(self, data: Path = DATA, max_tokens: int = 512, max_chars: int = 4096) -> None:
        self.tokenizer = tokenizers.Tokenizer.from_file(str(data / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = max_tokens
        with np.load(data / "static.npz") as z:
            self.rows, self.scale = z["q"], z["scale"].copy()  # int8 rows, one float scale per row
            # the direction every mean of static rows shares, removed so cosine similarity discriminates
            self.center = z["center"] if "center" in z.files else np.zeros(self.rows.shape[1], np.float32)
        self.scale[list(SPECIAL)] = 0.0
        self.dim = self.rows.shape[1]
        self.max_chars = max_chars
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="turnout-embed")
        self._pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._running = False

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (a text with no known token gets a zero row)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([self.bound(t) for t in texts], add_special_tokens=False)
        for row, enc in enumerate(encodings):
            ids = np.asarray(enc.ids, np.int64)
            if len(ids) > self.max_tokens:  # head and tail, like the characters
                ids = np.r_[ids[: self.max_tokens * 3 // 4], ids[-(self.max_tokens // 4):]]
            ids = ids[self.scale[ids] > 0]  # special and unknown tokens carry no meaning
            if len(ids):
                out[row] = (self.scale[ids] @ self.rows[ids]) / len(ids) - self.center
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def bound(self, text: str) -> str:
        m = self.max_chars
        return text if len(text) <= m else text[: m * 3 // 4] + "\n" + text[-(m // 4):]

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    async def aembed(self, texts: list[str]) -> np.ndarray:
        """`embed` in the worker thread; callers arriving while a batch runs share the next one."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if not self._running:  # a task of its own: a caller that goes away doesn't strand the others
            self._running = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                flat = [t for texts, _ in batch for t in texts]
                try:
                    vectors = await loop.run_in_executor(self._pool, self.embed, flat)
                except Exception as e:  # hand the failure to every caller of this batch
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(e)
                    continue
                at = 0
                for texts, f in batch:
                    if not f.done():
                        f.set_result(vectors[at: at + len(texts)])
                    at += len(texts)
        finally:
            self._running = False


_shared: Engine | None = None


def shared() -> Engine:
    """The process's one engine, loaded on first use (under a second; 12 MB of int8 rows)."""
    global _shared
    if _shared is None:
        _shared = Engine()
    return _shared
