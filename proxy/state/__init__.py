"""Everything Turnout counts or remembers across requests, behind one interface.

Owns: windowed counters (per day from a reset hour in an IANA zone, per month, a sliding minute)
with atomic multi-counter check-and-reserve, settle and refund; circuit-breaker records per
backend; a key-value store with expiry. `proxy.usage.quota` (quotas, budgets, rate limits) and
`proxy.routing.circuit` keep their rules and read and write only through `State`.

Exports: `State` (the protocol), `MemoryState` (the in-process implementation, the default),
`Clock` / `SystemClock` / `ManualClock` (injectable time: replays and tests set it by hand), and the records the protocol
speaks in: `Window`, `Amount`, `Limit`, `Ask`, `Hold`, `Refused`, `Usage`, `Breaker`.

The shared implementation, `proxy.state.redis.RedisState` (``state.redis`` in proxy.yaml, for
replicas), implements `State` the same way: each method is one atomic step, so `admit` maps onto
one Lua script and one round trip.
"""

from proxy.state.base import (Amount, Ask, Breaker, Clock, Hold, Limit, ManualClock, Refused, State, SystemClock, Usage,
                              Window, day_bounds, month_bounds)
from proxy.state.memory import MemoryState

__all__ = ["Amount", "Ask", "Breaker", "Clock", "Hold", "Limit", "ManualClock", "MemoryState", "Refused", "State", "SystemClock",
           "Usage", "Window", "day_bounds", "month_bounds"]
