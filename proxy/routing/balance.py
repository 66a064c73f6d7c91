"""Balancing: the order, per request, of a chain element that is a group of equivalent targets.

A group (`{group: [a, b], strategy: …}` in a chain or a rule's `then`) is written out in place in the
chain; `arrange()` reorders each group's slice for one request, so the target chosen first is tried
first and the others stay behind it as fallbacks, in the strategy's order. Strategies:

- `weighted`: a weighted random order (each draw without replacement, by `weights`, default 1 each);
  over many requests the first place goes to each target in proportion to its weight.
- `least_inflight`: fewest calls in flight now through this gateway first (ties in random order).
- `latency`: lowest recent latency first, an exponentially weighted moving average (EWMA) of each
  attempt's time (to the first chunk for streams); a failed attempt counts as its time plus
  `FAILURE_PENALTY`; a target not yet measured counts as 0, so it is tried and measured.

The dispatcher reports each attempt through `track()`: that is the in-flight count and the latency.
In-flight counts an attempt until its answer (a stream until its first chunk). Both are per process.
"""

from __future__ import annotations

import random
import time
from typing import Awaitable, Sequence, TypeVar

from proxy.config import Group

T = TypeVar("T")
ALPHA = 0.3  # weight of the newest sample in the latency EWMA
FAILURE_PENALTY = 5.0  # seconds added to a failed attempt's time in the EWMA


class Balancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.inflight: dict[str, int] = {}
        self.latency: dict[str, float] = {}  # EWMA seconds per target

    def arrange(self, names: list[str], groups: Sequence[Group]) -> list[str]:
        """`names` (a chain with every group written out) with each group's slice in this request's order."""
        for g in groups:
            at = names.index(g.targets[0])
            names[at:at + len(g.targets)] = self.order(g)
        return names

    def order(self, g: Group) -> list[str]:
        if g.strategy == "least_inflight":
            return sorted(g.targets, key=lambda t: (self.inflight.get(t, 0), self.rng.random()))
        if g.strategy == "latency":
            return sorted(g.targets, key=lambda t: (self.latency.get(t, 0.0), self.rng.random()))
        # weighted random order without replacement (Efraimidis–Spirakis: sort by u ** (1 / w), largest first)
        return sorted(g.targets, key=lambda t: self.rng.random() ** (1.0 / g.weights.get(t, 1.0)), reverse=True)

    async def track(self, target: str, attempt: Awaitable[T]) -> T:
        """Await one attempt at `target`, counting it in flight meanwhile and recording its latency."""
        self.inflight[target] = self.inflight.get(target, 0) + 1
        t0 = time.perf_counter()
        try:
            result = await attempt
        except Exception:
            self._measured(target, time.perf_counter() - t0 + FAILURE_PENALTY)
            raise
        else:
            self._measured(target, time.perf_counter() - t0)
            return result
        finally:  # a cancelled attempt (the client left) is no measure of the target
            self.inflight[target] -= 1

    def _measured(self, target: str, seconds: float) -> None:
        prev = self.latency.get(target)
        self.latency[target] = seconds if prev is None else prev + ALPHA * (seconds - prev)
