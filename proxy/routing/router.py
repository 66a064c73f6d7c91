"""Route: what the client's `model` names → an ordered chain of model targets, filtered.

A route is a plain fallback chain, or rules (first match wins; the rule's name is the reason
reported); a balanced group in a chain is put in this request's order (`proxy.routing.balance`).
A model target named directly is a chain of one; an allowed override header or
metadata field forces one target. Filters then skip, with a recorded reason, each target that
cannot serve this request now: the wrong kind (chat vs embedding, `proxy.routing.kinds`), backend
unavailable (no key), circuit open, a missing ability
(vision, tools, JSON schema), a context window too small, and the filters the assembly adds (health,
quotas, budgets). If nothing is left, the client gets one error naming every target and why.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from proxy.cache import response as cache
from proxy.usage import pricing
from proxy.backends.base import Backend
from proxy.call import Attempt, Call
from proxy.routing.balance import Balancer
from proxy.routing.circuit import Circuit
from proxy.routing.complexity import ComplexityScorer
from proxy.config import ConfigError, Conditions, Config, Key, Rule, Target
from proxy.errors import InvalidRequest, ModelNotFound, ProxyError
from proxy.routing.features import Features
from proxy.routing.kinds import kind_of
from proxy.routing.semantic import Semantic

Filter = Callable[[Target, Features], "str | None"]
EXPECTED_OUTPUT_TOKENS = 256  # for cost estimates when the request sets no max_tokens


class NoTargetAvailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "no_available_target"


class OverrideNotAllowed(ProxyError):
    status = 403
    type = "permission_error"
    code = "override_not_allowed"


def matches(c: Conditions, f: Features, semantic: Callable[[Conditions, Features], bool] | None = None) -> bool:
    """All of a rule's conditions hold (cheapest first; costly features are computed only if asked)."""
    return not (
        (c.has_images is not None and f.has_images != c.has_images)
        or (c.has_tools is not None and f.has_tools != c.has_tools)
        or (c.turn is not None and f.turn != c.turn)
        or (c.task is not None and f.task not in c.task)
        or (c.tier is not None and f.tier not in c.tier)
        or (c.requirement is not None and f.requirement not in c.requirement)
        or (c.complexity is not None and not c.complexity.holds(f.complexity.value))
        or (c.prompt_tokens is not None and not c.prompt_tokens.holds(f.prompt_tokens))
        or (c.semantic and semantic is not None and not semantic(c, f))
    )


class Router:
    def __init__(self, cfg: Config, backends: dict[str, Backend], circuits: dict[str, Circuit] | None = None,
                 filters: Sequence[Filter] = (), balancer: Balancer | None = None) -> None:
        self.cfg = cfg
        self.balancer = balancer or Balancer()  # orders balanced groups per request; the dispatcher feeds it
        self.backends = backends
        self.scorer = ComplexityScorer(cfg.routing.complexity)
        # shared with health and metrics when serving; fresh (all closed) for a dry run
        self.circuits = circuits if circuits is not None else {n: Circuit(n, cfg.routing.circuit) for n in backends}
        # the built-in filters, then those of other concerns (health, quotas, budgets) in the given order
        self.filters: tuple[Filter, ...] = (self._kind, self._unavailable, self._circuit, self._abilities, self._context,
                                            *filters)
        try:
            self.semantic = Semantic(cfg)
        except ValueError as e:  # a trained router that doesn't fit its rule: as bad as a bad config
            raise ConfigError(str(e)) from None

    async def prepare(self, f: Features) -> None:
        """Compute off the event loop what this request's route will ask for (the prompt's embedding)."""
        await self.semantic.prepare(f.body.get("model"), f)

    def features(self, body: dict[str, Any], headers: Mapping[str, str], key: Key | None) -> Features:
        return Features(body, headers, key, self.scorer, open_proxy=not self.cfg.keys)

    # --- choosing the chain ------------------------------------------------------------------------

    def _override(self, f: Features) -> str | None:
        forced = f.headers.get(self.cfg.routing.override_header) or f.metadata.get(self.cfg.routing.override_metadata)
        if not forced:
            return None
        allow = self.cfg.routing.overrides
        if allow == "none" or (allow == "keys" and self.cfg.keys and not (f.key and f.key.allow_override)):
            raise OverrideNotAllowed("This key may not force a target (set allow_override on the key).")
        if forced not in self.cfg.models:
            raise InvalidRequest(f"Cannot force unknown target '{forced}'.", param=self.cfg.routing.override_header,
                                 code="model_not_found", status=404)
        return str(forced)

    def allowed(self, key: Key | None, routes: bool, name: str) -> bool:
        """Whether the key may name this route (or target): its own allow-list, else its tier's, else yes."""
        if key is None:
            return True
        tier = self.cfg.tiers.get(key.tier) if key.tier else None
        allow = key.routes if routes else key.targets
        if allow is None and tier is not None:
            allow = tier.routes if routes else tier.targets
        return allow is None or name in allow

    def choose(self, call: Call, f: Features) -> tuple[list[str], Rule | None]:
        """The unfiltered chain and the rule that chose it; sets route and reason on `call`. A route
        or target the key may not use is, to that key, a model that does not exist (404)."""
        forced = self._override(f)
        if forced:
            if not self.allowed(f.key, False, forced):
                raise ModelNotFound(forced)
            call.reason = "override"
            return [forced], None
        if call.request_model in self.cfg.models:
            if not self.allowed(f.key, False, call.request_model):
                raise ModelNotFound(call.request_model)
            call.reason = "direct"
            return [call.request_model], None
        route = self.cfg.routes.get(call.request_model)
        if route is None or not self.allowed(f.key, True, route.name):
            raise ModelNotFound(call.request_model)
        call.route = route.name
        if not route.rules:
            call.reason = "chain"
            return self.balancer.arrange(list(route.chain), route.groups), None
        semantic = lambda c, f: self.semantic.holds(route.name, c, f)  # noqa: E731
        for rule in route.rules:
            if matches(rule.when, f, semantic):
                call.reason = rule.name
                return self.balancer.arrange(list(rule.then), rule.groups), rule
        raise NoTargetAvailable(f"No rule of route '{route.name}' matches this request (add a rule without "
                                "`when` as the last one).", param="model")

    def plan(self, call: Call, f: Features) -> tuple[list[Target], Rule | None]:
        """The chain to try, after filters; skipped targets are recorded on `call`."""
        names, rule = self.choose(call, f)
        call.chain = names
        chain: list[Target] = []
        for name in names:
            target = self.cfg.models[name]
            why = self.skip_reason(target, f)
            if why:
                call.attempts.append(Attempt(name, f"skipped: {why}"))
            else:
                chain.append(target)
        if not chain:
            detail = "; ".join(f"{a.target} ({a.outcome})" for a in call.attempts)
            if all(self._kind(self.cfg.models[n], f) or self._abilities(self.cfg.models[n], f) for n in names):
                # no target could ever serve this request: the client's to fix, not a transient outage
                if f.logprobs and not any(self.cfg.models[n].logprobs for n in names):
                    raise InvalidRequest(f"'logprobs' is not supported by '{call.request_model}': {detail}.",
                                         param="logprobs", code="unsupported_parameter")
                raise InvalidRequest(f"'{call.request_model}' cannot serve this request: {detail}.", param="model",
                                     code="unsupported_capability")
            raise NoTargetAvailable(f"No target can serve '{call.request_model}': {detail}.", param="model")
        return chain, rule

    # --- filters -----------------------------------------------------------------------------------

    def skip_reason(self, target: Target, f: Features) -> str | None:
        for check in self.filters:
            why = check(target, f)
            if why:
                return why
        return None

    def _kind(self, t: Target, f: Features) -> str | None:
        kind = kind_of(t)
        if kind == f.kind:
            return None
        return "an embedding model (not for chat)" if kind == "embedding" else "not an embedding model"

    def _unavailable(self, t: Target, f: Features) -> str | None:
        return self.backends[t.backend].unavailable or t.unavailable  # no key; `model: auto` found nothing

    def _circuit(self, t: Target, f: Features) -> str | None:
        return self.circuits[t.backend].blocked()

    def _abilities(self, t: Target, f: Features) -> str | None:
        if not t.vision and f.has_images:
            return "no vision (the request has images)"
        if not t.tools and f.has_tools:
            return "no tool calling (the request has tools)"
        if not t.json_schema and f.json_schema:
            return "no JSON schema output"
        if not t.logprobs and f.logprobs:
            return "no logprobs (the request asks for them)"
        return None

    def _context(self, t: Target, f: Features) -> str | None:
        if t.context_window is None or f.prompt_tokens_at_most + (f.max_tokens or 0) <= t.context_window:
            return None
        need = f.prompt_tokens + (f.max_tokens or 0)
        if need > t.context_window:
            return f"context window {t.context_window} < {need} tokens needed"
        return None

    # --- explanation -------------------------------------------------------------------------------

    def explain(self, call: Call, f: Features) -> dict[str, Any]:
        """What routing would do for this request, with no upstream call (the dry run)."""
        names, rule = self.choose(call, f)
        out_tokens = f.max_tokens or EXPECTED_OUTPUT_TOKENS
        chain = []
        for name in names:
            t = self.cfg.models[name]
            why = self.skip_reason(t, f)
            chain.append({"target": name, "backend": t.backend, "model": t.model,
                          "status": "skipped" if why else "candidate", "reason": why,
                          "estimated_cost_usd": round(pricing.estimate(f.prompt_tokens, out_tokens, t.price), 8)})
        first = next((c for c in chain if c["status"] == "candidate"), None)
        consensus = rule.consensus if rule is not None and rule.consensus else \
            (self.cfg.routes[call.route].consensus if call.route else None)
        agreeing = None
        if consensus is not None:  # every member is asked (and paid for); a judge only on a split
            each = {t: round(pricing.estimate(f.prompt_tokens, out_tokens, self.cfg.models[t].price), 8)
                    for t in consensus.targets}
            agreeing = {"targets": consensus.targets, "agree": consensus.agree,
                        "on_disagreement": consensus.on_disagreement, "judge": consensus.judge,
                        "calls": len(consensus.targets), "estimated_cost_usd": round(sum(each.values()), 8),
                        "estimated_cost_per_target_usd": each}
        return {
            "model": call.request_model, "route": call.route, "rule": call.reason,
            "escalate": rule.escalate if rule else 0, "features": f.as_dict(), "chain": chain,
            "target": first["target"] if first else None,
            "estimated_cost_usd": first["estimated_cost_usd"] if first else None,
            "estimate_assumes_output_tokens": out_tokens,
            "cache": cache.explain(self.cfg, call.route, rule, f.headers, f.body),
            "consensus": agreeing,
        }
