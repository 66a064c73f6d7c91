"""Circuit breakers, one per backend: stop sending to a backend that keeps failing.

Closed: traffic flows. After `failures` consecutive failures (server errors, timeouts, network
and auth failures; not rate limits or the client's own 4xx) the circuit opens for `cooldown`
seconds: routing skips the backend. Then one half-open trial request is let through: success
closes the circuit, failure opens it again.

The rules live here; the record (failures, when it opened, a trial in flight) lives in the
`proxy.state` store, so that a shared store gives every replica the same breakers.
"""

from __future__ import annotations

import logging
from typing import Callable

from proxy.config import CircuitPolicy
from proxy.state import MemoryState, State

log = logging.getLogger("turnout.circuit")
COUNTED = frozenset({"server", "timeout", "network", "auth"})


class Circuit:
    def __init__(self, name: str, policy: CircuitPolicy, state: State | None = None) -> None:
        self.name, self.policy = name, policy
        self.store: State = state if state is not None else MemoryState()
        # called with (circuit, "open" | "closed") when it opens or closes (metrics, health)
        self.listeners: list[Callable[[Circuit, str], None]] = []

    @property
    def failures(self) -> int:
        return self.store.breaker(self.name).failures

    @property
    def trial(self) -> bool:
        """A half-open trial request is in flight."""
        return self.store.breaker(self.name).trial

    @property
    def opened(self) -> bool:
        """Open or half-open: it opened and no success has closed it since."""
        return self.store.breaker(self.name).opened_ago is not None

    @property
    def state(self) -> str:
        ago = self.store.breaker(self.name).opened_ago
        if ago is None:
            return "closed"
        return "half_open" if ago >= self.policy.cooldown else "open"

    def blocked(self) -> str | None:
        """Why routing should skip this backend now, or None."""
        b = self.store.breaker(self.name)
        if b.opened_ago is None:
            return None
        if b.opened_ago < self.policy.cooldown:
            return f"circuit open after {b.failures} failures (trial in {self.policy.cooldown - b.opened_ago:.0f}s)"
        if b.trial:
            return "circuit half-open, trial request in flight"
        return None

    def begin(self) -> bool:
        """Claim the right to send one request; False when the circuit says no."""
        return self.store.breaker_begin(self.name, self.policy.cooldown)

    def release(self) -> None:
        """The claimed call never reached the backend (the request could not be translated)."""
        self.store.breaker_release(self.name)

    def expire(self) -> None:
        """End the cool-down now (the backend answered a probe): the next request is the trial."""
        self.store.breaker_expire(self.name, self.policy.cooldown)

    def record(self, ok: bool, category: str | None = None) -> None:
        if ok:
            if self.store.breaker_success(self.name).opened_ago is not None:
                log.warning("circuit %s closed: backend answered again", self.name)
                for f in self.listeners:
                    f(self, "closed")
            return
        if category not in COUNTED:
            self.store.breaker_release(self.name)
            return
        b, opened = self.store.breaker_failure(self.name, self.policy.failures)
        if opened:
            log.warning("circuit %s opened after %d consecutive failures (%s); skipping it for %gs",
                        self.name, b.failures, category, self.policy.cooldown)
            for f in self.listeners:
                f(self, "open")
