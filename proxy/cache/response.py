"""The response cache: an answer already given is given again, at no cost and without a call.

Owns the cache policy of each route and rule (the top-level `cache:` with `routes.X.cache` and
`rules[].cache` over it), the canonical key of a request, the client's directives
(`cache-control: no-cache | no-store`, `metadata.turnout_cache: false`), and what may be stored:
complete answers only (finish ``stop`` / ``tool_calls`` / ``function_call``, ``length`` when the
policy says so), never errors, filtered or cut-off streams. Entries live in the `State` key-value
store with a TTL (proxy/state/: bounded LRU in process, shared by a fleet when the state is), so
nothing here knows where they are kept. The pipeline asks `lookup` after the gates and routing,
`store` after a non-streamed answer, and feeds a streamed answer's chunks to the `Plan` it got.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

from proxy.cache.replay import Accumulator
from proxy.call import Call
from proxy.config import CacheConfig, CacheOverride, Config, Rule
from proxy.state import State

Json = dict[str, Any]
PREFIX = "turnout:cache:v1:"
MAX_ENTRY = 4 * 2**20  # bytes of one streamed answer accumulated for storing; beyond, it is not stored
# every field of a chat body that changes the answer (stream, stream_options, metadata and user do not)
KEY_FIELDS = ("messages", "tools", "tool_choice", "functions", "function_call", "response_format", "temperature",
              "top_p", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
              "max_tokens", "max_completion_tokens", "stop", "seed", "n", "parallel_tool_calls", "reasoning_effort",
              "modalities", "audio", "prediction", "web_search_options", "verbosity")
DONE = frozenset({"stop", "tool_calls", "function_call"})


@dataclass(frozen=True)
class Policy:
    enabled: bool
    ttl: float
    scope: str
    length: bool


@dataclass
class Plan:
    """What a request that missed (or refreshes) will be stored under, and its stream so far."""

    key: str
    policy: Policy
    acc: Accumulator | None = field(default=None)

    def feed(self, payload: bytes) -> None:
        if self.acc is None:
            self.acc = Accumulator(MAX_ENTRY)
        self.acc.feed(payload)


def _merge(p: Policy, o: CacheOverride | None) -> Policy:
    if o is None:
        return p
    return Policy(o.enabled, o.ttl if o.ttl is not None else p.ttl, o.scope or p.scope,
                  o.length if o.length is not None else p.length)


def policy_of(cfg: Config, route: str | None, rule: Rule | None) -> Policy:
    """The cache policy of a request routed by `route` (None: a target named directly) and `rule`."""
    top = cfg.cache or CacheConfig(enabled=False)
    p = Policy(top.enabled, top.ttl, top.scope, top.length)
    if route:
        p = _merge(p, cfg.routes[route].cache)
    return _merge(p, rule.cache if rule is not None else None)


def explain(cfg: Config, route: str | None, rule: Rule | None, headers: Mapping[str, str], body: Json) -> Json:
    """Would the cache apply to this request, and how (for `turnout route` and /turnout/route)."""
    p = policy_of(cfg, route, rule)
    if not p.enabled:
        return {"applies": False, "reason": "no cache on this route" if cfg.cache is None else "turned off here"}
    said = directives(headers, body)
    how = "bypass (no-store)" if "no-store" in said else "refresh (no-cache)" if "no-cache" in said else "lookup"
    return {"applies": True, "action": how, "ttl": p.ttl, "scope": p.scope, "store_length": p.length}


def directives(headers: Mapping[str, str], body: Json) -> set[str]:
    """The client's cache directives: ``no-cache`` (don't serve, do store) and ``no-store`` (neither)."""
    out = {d.strip().lower().split("=")[0] for d in (headers.get("cache-control") or "").split(",")}
    if (body.get("metadata") or {}).get("turnout_cache") in (False, "false"):
        out.add("no-store")
    return out


def request_key(body: Json, call: Call, scope: str) -> str:
    """The canonical form of everything that changes the answer: the fields above, the route or
    target the client named (and a forced target), and, in scope ``key``, the proxy key's name."""
    canon = {k: body[k] for k in KEY_FIELDS if body.get(k) is not None}
    canon["model"] = body.get("model")
    if call.reason == "override" and call.chain:
        canon["forced"] = call.chain[0]
    if call.anthropic_body is not None:  # Anthropic's front door: its own fields (thinking, cache_control …) count
        own = {k: v for k, v in call.anthropic_body.items() if k not in ("stream", "metadata")}
        canon["anthropic"] = [own, call.anthropic_beta]
    if scope == "key":
        canon["key"] = call.key.name if call.key is not None else None
    digest = hashlib.sha256(orjson.dumps(canon, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return PREFIX + digest


class ResponseCache:
    def __init__(self, cfg: Config, state: State) -> None:
        self.cfg = cfg
        self.state = state
        self.default = policy_of(cfg, None, None)
        self.routes = {name: policy_of(cfg, name, None) for name in cfg.routes}

    @property
    def anywhere(self) -> bool:
        """Does any route, rule or the top level turn the cache on? (Else the pipeline skips it.)"""
        return self.default.enabled or any(r.cache is not None and r.cache.enabled for r in self.cfg.routes.values()) \
            or any(rule.cache is not None and rule.cache.enabled for r in self.cfg.routes.values() for rule in r.rules)

    def policy(self, route: str | None, rule: Rule | None) -> Policy:
        p = self.routes.get(route, self.default) if route else self.default
        return _merge(p, rule.cache if rule is not None else None)

    def lookup(self, call: Call, body: Json, headers: Mapping[str, str], rule: Rule | None) -> Json | None:
        """A stored answer for this request (the call then says hit, its age, what it saved), or None
        (the call then carries the `Plan` to store the answer under, unless the client said no-store)."""
        p = self.policy(call.route, rule)
        if not p.enabled:
            return None
        said = directives(headers, body)
        if "no-store" in said:
            call.cache = "bypass"
            return None
        key = request_key(body, call, p.scope)
        call.cache = "miss"
        if "no-cache" not in said:
            raw = self.state.get(key)
            if raw is not None:
                entry = orjson.loads(raw)
                data = entry["d"]
                data["id"], data["created"] = call.id, call.created
                call.cache, call.cache_age = "hit", max(0.0, self.state.clock.time() - entry["at"])
                call.target, call.upstream_model, call.usage = entry["t"], data.get("model"), data.get("usage")
                call.cost_usd, call.saved_usd = 0.0, entry["c"]
                call.attempts = []  # nothing was tried: no quota counts it, no fallback is reported
                return data
        call.cache_plan = Plan(key, p)
        return None

    def storable(self, data: Json, p: Policy) -> bool:
        choices = data.get("choices") or []
        return bool(choices) and all(c.get("finish_reason") in DONE or (p.length and c.get("finish_reason") == "length")
                                     for c in choices)

    def store(self, call: Call, data: Json | None = None) -> bool:
        """Keep a finished request's answer (`data`, or what its stream told) if it is complete."""
        plan: Plan | None = call.cache_plan
        if plan is None or call.status != 200 or call.error is not None or call.target is None:
            return False
        if call.anthropic_answer is not None:  # Claude's own Message (signatures, citations): not a chat answer to keep
            return False
        if data is None:
            data = plan.acc.completion(call.id, call.created, call.usage) if plan.acc is not None else None
        if data is None or not self.storable(data, plan.policy):
            return False
        entry = {"d": data, "t": call.target, "c": call.cost_usd or 0.0, "at": self.state.clock.time()}
        self.state.put(plan.key, orjson.dumps(entry), plan.policy.ttl)
        return True
