"""Several API keys of one backend (`api_keys: [...]`), used in rotation, each cooled down on its own 429s.

`pick()` takes the next key in turn that is not cooling down; when every key is, the one whose
cool-down ends first (the upstream then answers for itself, as it would with one key). `cool()`
benches a key that got a 429 for the upstream's retry-after, else `DEFAULT_COOLDOWN` seconds.
The HTTP client (`proxy.http.HTTPClient`) picks a key per request and reports its 429s here, so
no provider module knows about rotation: each only says which headers carry a key.
"""

from __future__ import annotations

import time
from typing import Callable

DEFAULT_COOLDOWN = 5.0  # seconds a key rests after a 429 that gave no retry-after
MAX_COOLDOWN = 3600.0


class KeyRing:
    def __init__(self, keys: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = list(keys)
        self.clock = clock
        self.turn = 0
        self.cooling: dict[str, float] = {}  # key → monotonic time its cool-down ends

    def pick(self) -> str:
        now = self.clock()
        n = len(self.keys)
        for i in range(n):
            key = self.keys[(self.turn + i) % n]
            if self.cooling.get(key, 0.0) <= now:
                self.turn = (self.turn + i + 1) % n
                return key
        return min(self.keys, key=lambda k: self.cooling[k])

    def cool(self, key: str, retry_after: float | None) -> None:
        seconds = DEFAULT_COOLDOWN if retry_after is None else min(retry_after, MAX_COOLDOWN)
        self.cooling[key] = max(self.cooling.get(key, 0.0), self.clock() + seconds)

    def available(self) -> int:
        """Keys not cooling down now (for metrics and the status page)."""
        now = self.clock()
        return sum(1 for k in self.keys if self.cooling.get(k, 0.0) <= now)
