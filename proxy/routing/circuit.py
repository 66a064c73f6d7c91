"""Circuit breakers, one per backend: stop sending to a backend that keeps failing.

Closed: traffic flows. After `failures` consecutive failures (server errors, timeouts, network
and auth failures; not rate limits or the client's own 4xx) the circuit opens for `cooldown`
seconds: routing skips the backend. Then one half-open trial request is let through: success
closes the circuit, failure opens it again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from proxy.config import CircuitPolicy

log = logging.getLogger("turnout.circuit")
COUNTED = frozenset({"server", "timeout", "network", "auth"})


@dataclass
class Circuit:
    name: str
    policy: CircuitPolicy
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False  # a half-open trial is in flight
    # called with (circuit, "open" | "closed") when it opens or closes (metrics, health)
    listeners: list[Callable[["Circuit", str], None]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic  # seconds; tests step a fake one instead of sleeping

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.policy.cooldown:
            return "half_open"
        return "open"

    def blocked(self) -> str | None:
        """Why routing should skip this backend now, or None."""
        state = self.state
        if state == "open":
            left = self.policy.cooldown - (self.clock() - (self.opened_at or 0))
            return f"circuit open after {self.failures} failures (trial in {left:.0f}s)"
        if state == "half_open" and self.trial:
            return "circuit half-open, trial request in flight"
        return None

    def begin(self) -> bool:
        """Claim the right to send one request; False when the circuit says no."""
        if self.blocked():
            return False
        if self.state == "half_open":
            self.trial = True
        return True

    def release(self) -> None:
        """The claimed call never reached the backend (the request could not be translated)."""
        self.trial = False

    def record(self, ok: bool, category: str | None = None) -> None:
        was_trial, self.trial = self.trial, False
        if ok:
            if self.opened_at is not None:
                log.warning("circuit %s closed: backend answered again", self.name)
                self.failures, self.opened_at = 0, None
                for f in self.listeners:
                    f(self, "closed")
            self.failures, self.opened_at = 0, None
            return
        if category not in COUNTED:
            return
        self.failures += 1
        if was_trial or (self.opened_at is None and self.failures >= self.policy.failures):
            log.warning("circuit %s opened after %d consecutive failures (%s); skipping it for %gs",
                        self.name, self.failures, category, self.policy.cooldown)
            self.opened_at = self.clock()
            for f in self.listeners:
                f(self, "open")
