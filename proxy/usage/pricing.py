"""Cost in USD from usage and a target's price (USD per 1M tokens)."""

from __future__ import annotations

from typing import Any

from proxy.config import Price


def cost(usage: dict[str, Any] | None, price: Price) -> float:
    """Cached prompt tokens are billed at the cached price when one is set, else as input."""
    if not usage:
        return 0.0
    prompt = usage.get("prompt_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    cached_price = price.input if price.cached is None else price.cached
    return ((prompt - cached) * price.input + cached * cached_price + completion * price.output) / 1e6


def of_call(call: Any, price: Price) -> float:
    """What a finished call cost: the answer kept, plus answers paid for and escalated past."""
    return cost(call.usage, price) + call.discarded_cost_usd


def estimate(prompt_tokens: int, completion_tokens: int, price: Price) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
