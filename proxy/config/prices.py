"""The built-in price table: USD per 1M tokens of the main public OpenAI, Claude and Gemini models.

Part of the config because it is one of its defaults: a target in proxy.yaml that gives no
`price:` takes its model's price from here at load (a configured price always wins, and a
configured price of 0 stays 0). Targets of local backends (`providers.is_local`: mock, ollama,
llamacpp, or any backend on a loopback or private address) cost nothing unless priced in the config.

Every entry names where its price was read and when. `cached` is the price of a prompt token read
from the provider's cache (OpenAI cached input, Anthropic cache hits, Gemini context caching). The
table prices the standard tier: Gemini's long-prompt tier (over 200k tokens on the Pro models),
Anthropic's cache writes, batch discounts and regional uplifts are not modelled — give a `price:`
for a target that needs them. Model names match exactly or by prefix, so a dated snapshot
(``claude-sonnet-4-5-20250929``, ``gpt-4o-2024-08-06``) takes its family's price.
"""

from __future__ import annotations

from typing import NamedTuple

from proxy.config.providers import is_local
from proxy.config.schema import BackendConfig, Price, Target

OPENAI = "https://platform.openai.com/docs/pricing"
ANTHROPIC = "https://docs.anthropic.com/en/docs/about-claude/pricing"
GEMINI = "https://ai.google.dev/gemini-api/docs/pricing"


class Entry(NamedTuple):
    input: float
    output: float
    cached: float | None
    source: str
    date: str  # when the price was read from the source


TABLE: dict[str, Entry] = {
    # --- OpenAI: standard tier, cached = cached input ---
    "gpt-5": Entry(1.25, 10.00, 0.125, OPENAI, "2025-08-07"),
    "gpt-5-mini": Entry(0.25, 2.00, 0.025, OPENAI, "2025-08-07"),
    "gpt-5-nano": Entry(0.05, 0.40, 0.005, OPENAI, "2025-08-07"),
    "gpt-4.1": Entry(2.00, 8.00, 0.50, OPENAI, "2025-04-14"),
    "gpt-4.1-mini": Entry(0.40, 1.60, 0.10, OPENAI, "2025-04-14"),
    "gpt-4.1-nano": Entry(0.10, 0.40, 0.025, OPENAI, "2025-04-14"),
    "gpt-4o": Entry(2.50, 10.00, 1.25, OPENAI, "2025-04-14"),
    "gpt-4o-mini": Entry(0.15, 0.60, 0.075, OPENAI, "2025-04-14"),
    "o3": Entry(2.00, 8.00, 0.50, OPENAI, "2025-06-10"),
    "o4-mini": Entry(1.10, 4.40, 0.275, OPENAI, "2025-04-16"),
    "o3-mini": Entry(1.10, 4.40, 0.55, OPENAI, "2025-01-31"),
    # --- Anthropic: cached = cache read (0.1x input); cache writes (1.25x) are billed as input ---
    "claude-opus-4-5": Entry(5.00, 25.00, 0.50, ANTHROPIC, "2025-11-24"),
    "claude-opus-4-1": Entry(15.00, 75.00, 1.50, ANTHROPIC, "2025-08-05"),
    "claude-opus-4": Entry(15.00, 75.00, 1.50, ANTHROPIC, "2025-05-22"),
    "claude-sonnet-4-5": Entry(3.00, 15.00, 0.30, ANTHROPIC, "2025-09-29"),
    "claude-sonnet-4": Entry(3.00, 15.00, 0.30, ANTHROPIC, "2025-05-22"),
    "claude-3-7-sonnet": Entry(3.00, 15.00, 0.30, ANTHROPIC, "2025-02-24"),
    "claude-haiku-4-5": Entry(1.00, 5.00, 0.10, ANTHROPIC, "2025-10-15"),
    "claude-3-5-haiku": Entry(0.80, 4.00, 0.08, ANTHROPIC, "2024-11-04"),
    "claude-3-haiku": Entry(0.25, 1.25, 0.03, ANTHROPIC, "2024-03-13"),
    # --- Gemini API, paid tier, prompts up to 200k tokens; cached = context caching ---
    "gemini-3-pro-preview": Entry(2.00, 12.00, 0.20, GEMINI, "2025-11-18"),
    "gemini-3-flash-preview": Entry(0.50, 3.00, 0.05, GEMINI, "2025-12-17"),
    "gemini-2.5-pro": Entry(1.25, 10.00, 0.31, GEMINI, "2025-06-17"),
    "gemini-2.5-flash": Entry(0.30, 2.50, 0.075, GEMINI, "2025-06-17"),
    "gemini-2.5-flash-lite": Entry(0.10, 0.40, 0.025, GEMINI, "2025-07-22"),
    "gemini-2.0-flash": Entry(0.10, 0.40, 0.025, GEMINI, "2025-02-25"),
    "gemini-2.0-flash-lite": Entry(0.075, 0.30, None, GEMINI, "2025-02-25"),
}


def lookup(model: str) -> tuple[Price, str] | None:
    """The built-in price of a model name (exact, else the longest family prefix) and its source."""
    name = model.lower().removeprefix("models/").rsplit("/", 1)[-1]
    if name.endswith("-latest"):
        name = name[:-7]
    entry = TABLE.get(name)
    if entry is None:
        best = ""
        for family in TABLE:
            if name.startswith(family + "-") and len(family) > len(best):
                best = family
        if not best:
            return None
        entry = TABLE[best]
    return Price(entry.input, entry.output, entry.cached), f"built-in: {entry.source} ({entry.date})"


def examples() -> list[str]:
    return ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash"]


def apply(models: dict[str, Target], backends: dict[str, BackendConfig]) -> None:
    """Give each unpriced cloud target the built-in price of its model, if the table knows it."""
    for t in models.values():
        if t.price_source is not None or is_local(backends[t.backend]):
            continue
        found = lookup(t.model)
        if found is not None:
            t.price, t.price_source = found


def free(t: Target) -> bool:
    p = t.price
    return not p.input and not p.output and not p.cached
