"""The record of one client request as it moves through Turnout.

Created by the app, filled in by routing, dispatch and the backend (usage, finish reason, the time
of the first token), read by the response headers, logs and, later, the ledger and metrics.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Key


SENT_SAMPLE = 8 * 1024  # stream payload bytes kept per request for the ledger's estimate (scaled by bytes sent):
# ~50 chunks; at 256 KB a 60 s stream kept ~130 KB, 1.3 GB for ten thousand open streams


def new_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


@dataclass(slots=True)
class Attempt:
    target: str
    outcome: str  # "ok", or why it failed or was skipped
    status: int | None = None
    seconds: float | None = None  # upstream time of a tried attempt (to the first chunk for streams)
    category: str | None = None  # UpstreamError.category of a failed attempt


@dataclass(slots=True)
class Call:
    request_model: str
    stream: bool = False
    include_usage: bool = False
    key: Key | None = None
    request_id: str = ""
    id: str = field(default_factory=new_id)
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    reason: str | None = None  # the rule (or "direct") that chose the chain
    chain: list[str] = field(default_factory=list)
    target: str | None = None  # the target that answered
    attempts: list[Attempt] = field(default_factory=list)
    first_token_at: float | None = None
    usage: dict[str, Any] | None = None
    upstream_model: str | None = None
    status: int = 200
    cost_usd: float | None = None
    discarded_cost_usd: float = 0.0  # answers paid for but escalated past (quality escalation)
    error: str | None = None  # the error code or type the client got
    features: Any = None  # proxy.routing.features.Features, once the body is read and checked
    finished: float | None = None  # perf_counter when the answer or error went out
    # what was sent, for the ledger's estimate when no usage came: the first SENT_SAMPLE bytes of
    # payloads (stream chunks, or a body without usage) and counts of everything; memory per stream
    # stays bounded however long the stream runs
    sent: list[bytes] | None = None
    sent_bytes: int = 0  # every payload byte sent
    sent_sampled: int = 0  # bytes kept in `sent`
    sent_count: int = 0  # payloads sent (stream chunks)
    hold: Any = None  # proxy.state.Hold: what the request reserved of quotas, budgets and rate limits

    # the client's own Messages body and anthropic-beta header (Anthropic's front door): Claude targets
    # get it as it came (native pass-through), every other target the OpenAI body translated from it
    anthropic_body: dict[str, Any] | None = None
    anthropic_beta: str | None = None
    anthropic_answer: tuple[str, dict[str, Any]] | None = None  # (target, its Message) from a pass-through

    # the response cache (proxy/cache/): hit | miss | bypass (None: no cache here), the age of a hit,
    # what a hit saved (the original answer's cost), and the entry a miss will be stored under
    cache: str | None = None
    cache_age: float | None = None
    saved_usd: float = 0.0
    cache_plan: Any = None
    consensus: str | None = None  # the x-turnout-consensus header: who agreed, who dissented

    def record_sent(self, payload: bytes) -> None:
        """Count a payload that went to the client; keep it only while the sample is not full."""
        if self.sent is None:
            self.sent = []
        self.sent_count += 1
        self.sent_bytes += len(payload)
        if self.sent_sampled < SENT_SAMPLE:
            self.sent.append(payload)
            self.sent_sampled += len(payload)

    @property
    def chunks(self) -> int:
        """Stream chunks sent to the client (a cut-short stream still counts them)."""
        return self.sent_count if self.stream else 0

    def walked(self) -> list[Attempt]:
        """The attempts in the order the chain was walked (routing records its skips before dispatch
        tries anything, so `attempts` alone is in the order of recording)."""
        order = {name: i for i, name in reversed(list(enumerate(self.chain)))}
        return sorted(self.attempts, key=lambda a: order.get(a.target, len(order)))  # stable: retries stay in order

    @property
    def fallbacks(self) -> list[Attempt]:
        """Targets that were tried or skipped before the one that answered, in chain order."""
        return [a for a in self.walked() if a.outcome != "ok"]

    def headers(self) -> dict[str, str]:
        """How the request was routed, for the client to read."""
        h = {"x-request-id": self.request_id}
        if self.target:
            h["x-turnout-model"] = self.target
        if self.route:
            h["x-turnout-route"] = self.route
        if self.reason:
            h["x-turnout-reason"] = self.reason
        fb = self.fallbacks
        if fb:
            h["x-turnout-fallbacks"] = ", ".join(f"{a.target}: {a.outcome}" for a in fb)
            escalated = [f"{a.target}: {a.outcome[11:]}" for a in fb if a.outcome.startswith("escalated: ")]
            if escalated:
                h["x-turnout-escalated"] = ", ".join(escalated)
        if self.cost_usd is not None:
            h["x-turnout-cost-usd"] = f"{self.cost_usd:.8f}"
        if self.cache is not None:
            h["x-turnout-cache"] = self.cache
            if self.cache_age is not None:
                h["age"] = str(int(self.cache_age))
        if self.consensus is not None:
            h["x-turnout-consensus"] = self.consensus
        return h
