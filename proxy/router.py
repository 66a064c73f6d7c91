"""Route: what the client's `model` names → an ordered chain of model targets, filtered.

A route's list is its fallback chain; a target named directly is a chain of one. Targets whose
backend cannot take requests (no key, …) are skipped with the reason recorded on the `Call`; if
none is left the client gets one error naming every target and why.
"""

from __future__ import annotations

from proxy.backends.base import Backend
from proxy.call import Attempt, Call
from proxy.config import Config, Target
from proxy.errors import ModelNotFound, ProxyError


class NoTargetAvailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "no_available_target"


class Router:
    def __init__(self, cfg: Config, backends: dict[str, Backend]) -> None:
        self.cfg = cfg
        self.backends = backends

    def plan(self, call: Call) -> list[Target]:
        """The chain to try for this call, after filters; skipped targets are recorded on `call`."""
        found = self.cfg.chain_for(call.request_model)
        if found is None:
            raise ModelNotFound(call.request_model)
        call.route, names = found
        call.reason = "route" if call.route else "direct"
        call.chain = names
        chain: list[Target] = []
        for name in names:
            target = self.cfg.models[name]
            why = self.backends[target.backend].unavailable
            if why:
                call.attempts.append(Attempt(name, f"skipped: {why}"))
                continue
            chain.append(target)
        if not chain:
            detail = "; ".join(f"{a.target} ({a.outcome})" for a in call.attempts)
            raise NoTargetAvailable(f"No target can serve '{call.request_model}': {detail}.", param="model")
        return chain
