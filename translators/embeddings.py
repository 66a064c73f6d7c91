"""Embeddings between OpenAI's ``/v1/embeddings`` and each provider: pure translation, plain dicts.

One module for all providers because the mapping is small and shared (read the request once, split
into batches, rebuild OpenAI's answer); each provider only says how a batch is asked and read.

| OpenAI request            | OpenAI-compatible          | Gemini (``batchEmbedContents``)               | Ollama (``/api/embed``) |
|---------------------------|----------------------------|-----------------------------------------------|-------------------------|
| input: string / strings   | input (unchanged)          | one request per text: ``content.parts[0].text`` | input: [texts]        |
| input: token arrays       | input (unchanged)          | decoded to text first (the caller's tokenizer) | decoded to text first |
| dimensions                | dimensions                 | ``outputDimensionality``                      | dimensions              |
| encoding_format           | always ``float`` upstream; base64 built here (float32 little-endian, as OpenAI) |          |                         |
| batch limit per call      | 2048 inputs                | 100 requests                                  | 512 inputs              |

Gemini's single ``embedContent`` (one text, ``{"embedding": {"values"}}``) is read as well.
With ``dimensions`` asked, vectors are cut to that length (a provider that ignores it) and
L2-normalised (Gemini's truncated vectors are not), as OpenAI's text-embedding-3 models shorten theirs.
Usage: the upstream's token counts where given (OpenAI ``usage``, Ollama ``prompt_eval_count``);
Gemini gives none, so the caller counts the input's tokens.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from translators.common import Json, TranslationError

MAX_INPUTS = 2048  # OpenAI's own limit per request
BATCH = {"openai": 2048, "gemini": 100, "ollama": 512}


@dataclass
class EmbedRequest:
    """An OpenAI embeddings request, checked: texts or token arrays, in order."""

    inputs: list[str] | list[list[int]]
    tokens: bool  # inputs are token arrays
    dimensions: int | None
    encoding_format: str
    user: str | None = None

    def texts(self, decode: Callable[[list[int]], str] | None = None) -> list[str]:
        """The inputs as text; token arrays need the caller's tokenizer (``decode``)."""
        if not self.tokens:
            return list(self.inputs)  # type: ignore[arg-type]
        if decode is None:
            raise TranslationError("Token-array input is not supported by this target: send text.",
                                   param="input", code="unsupported_value")
        return [decode(t) for t in self.inputs]  # type: ignore[arg-type]


def parse(body: Json) -> EmbedRequest:
    """Read and check an OpenAI embeddings body; bad input is the client's 400 as OpenAI words it."""
    x = body.get("input")
    if x is None:
        raise TranslationError("Missing required parameter: 'input'.", param="input",
                               code="missing_required_parameter")
    tokens = False
    if isinstance(x, str):
        inputs: list[Any] = [x]
    elif isinstance(x, list) and x and all(isinstance(i, str) for i in x):
        inputs = list(x)
    elif isinstance(x, list) and x and all(isinstance(i, int) and not isinstance(i, bool) for i in x):
        inputs, tokens = [list(x)], True
    elif isinstance(x, list) and x and all(isinstance(i, list) and i and all(isinstance(t, int) for t in i) for i in x):
        inputs, tokens = [list(i) for i in x], True
    else:
        raise TranslationError("'input' must be a string, an array of strings, an array of tokens or an array "
                               "of token arrays, and not empty.", param="input", code="invalid_value")
    if not tokens and any(s == "" for s in inputs):
        raise TranslationError("'input' cannot contain an empty string.", param="input", code="invalid_value")
    if len(inputs) > MAX_INPUTS:
        raise TranslationError(f"'input' has {len(inputs)} items; at most {MAX_INPUTS} are allowed.",
                               param="input", code="invalid_value")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise TranslationError(f"Invalid encoding_format {fmt!r}: expected 'float' or 'base64'.",
                               param="encoding_format", code="invalid_value")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise TranslationError("'dimensions' must be a positive integer.", param="dimensions", code="invalid_value")
    return EmbedRequest(inputs, tokens, dims, fmt, body.get("user"))


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# --- per provider ----------------------------------------------------------------------------------


def openai_request(req: EmbedRequest, model: str, inputs: list[Any]) -> Json:
    out: Json = {"model": model, "input": inputs, "encoding_format": "float"}
    if req.dimensions is not None:
        out["dimensions"] = req.dimensions
    if req.user:
        out["user"] = req.user
    return out


def openai_vectors(data: Json) -> tuple[list[list[float]], int | None]:
    rows = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
    vectors = [r["embedding"] if isinstance(r["embedding"], list) else decode_base64(r["embedding"]) for r in rows]
    return vectors, (data.get("usage") or {}).get("prompt_tokens")


def gemini_request(req: EmbedRequest, model: str, texts: list[str]) -> Json:
    """A ``batchEmbedContents`` body (what google-genai's ``embed_content`` sends)."""
    name = model if model.startswith("models/") else f"models/{model}"
    out = []
    for t in texts:
        r: Json = {"model": name, "content": {"parts": [{"text": t}]}}
        if req.dimensions is not None:
            r["outputDimensionality"] = req.dimensions
        out.append(r)
    return {"requests": out}


def gemini_vectors(data: Json) -> tuple[list[list[float]], int | None]:
    """Vectors of a ``batchEmbedContents`` (``embeddings``) or ``embedContent`` (``embedding``) answer."""
    if "embedding" in data:
        return [list(data["embedding"].get("values") or [])], None
    return [list(e.get("values") or []) for e in data.get("embeddings") or []], None


def ollama_request(req: EmbedRequest, model: str, texts: list[str]) -> Json:
    out: Json = {"model": model, "input": texts}
    if req.dimensions is not None:
        out["dimensions"] = req.dimensions
    return out


def ollama_vectors(data: Json) -> tuple[list[list[float]], int | None]:
    return [list(v) for v in data.get("embeddings") or []], data.get("prompt_eval_count")


# --- the OpenAI answer -----------------------------------------------------------------------------


def fit(vector: list[float], dimensions: int | None) -> list[float]:
    """With ``dimensions`` asked: the vector cut to that length and of unit length, as OpenAI's
    shortened vectors are (Gemini truncates without normalising; some providers ignore it)."""
    if dimensions is None:
        return vector
    v = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in v))
    return v if norm == 0 or abs(norm - 1.0) < 1e-6 else [x / norm for x in v]


def encode_base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the float32 little-endian bytes of the vector."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def decode_base64(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def response(vectors: list[list[float]], model: str, prompt_tokens: int, req: EmbedRequest) -> Json:
    """OpenAI's ``CreateEmbeddingResponse``."""
    data = []
    for i, v in enumerate(vectors):
        v = fit(v, req.dimensions)
        data.append({"object": "embedding", "index": i,
                     "embedding": encode_base64(v) if req.encoding_format == "base64" else v})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
