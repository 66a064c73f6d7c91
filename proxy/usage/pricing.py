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


# --- money as reports show it ------------------------------------------------------------------

MONEY_DIGITS = 10  # JSON amounts to 1e-10 USD: float noise (0.00007999999999999999) gone, nothing real lost


def money(x: float) -> float:
    return round(x, MONEY_DIGITS) + 0.0  # + 0.0: no "-0.0"


def round_money(d: Any) -> Any:
    """Every float under a key ending in ``_usd`` rounded with `money`, in place (nested dicts, lists)."""
    if isinstance(d, dict):
        for k, v in d.items():
            if isinstance(v, float) and k.endswith("_usd"):
                d[k] = money(v)
            elif isinstance(v, (dict, list)):
                round_money(v)
    elif isinstance(d, list):
        for v in d:
            round_money(v)
    return d


def usd(x: float) -> str:
    """Dollars to 4 decimals, or 3 significant digits when smaller than that; the sign before the $."""
    sign, x = ("-", -x) if x < 0 and money(x) != 0 else ("", abs(x))
    return sign + (f"${x:,.4f}" if x >= 0.001 or x == 0 else f"${x:.3g}")


def saving(savings: float, share: float) -> str:
    """'saved $X (Y %)', or 'cost $X more (+Y %)' when the config costs more than the baseline."""
    if money(savings) < 0:
        return f"cost {usd(-savings)} more (+{-100 * share:.1f} %)"
    return f"saved {usd(savings)} ({100 * share:.1f} %)"
