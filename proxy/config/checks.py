"""What a schema cannot say: input shorthands before conversion, cross-references after.

`expand()` turns the short forms people write into the schema's one shape, at the same paths:
`timeout: 30` (every timeout), `probe: false` (no probing), `routes.x: [a, b]` (a chain),
`escalate: true` (1), `turn: follow-up`, `complexity: 0.6` (gte), `task: code` (a list of one),
budget `alert: '80%'`, `ledger: off`, and the defaults that depend on other keys (a target's
`model` is its name, its `vision` its backend type's; a rule's and a key's name their position).

`check()` then verifies what spans sections: routes, rules and aliases name defined targets, a probe's model
belongs to its backend, names do not collide, quotas and budgets are coherent, time zones exist,
the savings baseline is priced. Every error is a `ConfigError` reading ``path: message``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proxy.config import prices
from proxy.config.providers import SPECS
from proxy.config.schema import Budget, Conditions, Config, ConfigError, Consensus, Group, Quota, Range, Timeouts

Raw = dict[str, Any]


def _mapping(v: Any, where: str) -> Raw:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__}")
    return v


# --- before conversion: shorthands and dependent defaults ----------------------------------------


def expand(data: Any) -> Raw:
    """A copy of the interpolated YAML with every shorthand written out (paths unchanged)."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    data = {str(k): v for k, v in data.items() if v is not None}  # `server:` with nothing under it
    backends = {str(k): dict(_mapping(v, f"backends.{k}"))
                for k, v in _mapping(data.get("backends", {}), "backends").items()}
    for name, b in backends.items():
        _backend(name, b)
    data["backends"] = backends
    if "models" in data:
        data["models"] = {str(k): _target(str(k), dict(_mapping(v, f"models.{k}")), backends)
                          for k, v in _mapping(data["models"], "models").items()}
    if "routes" in data:
        data["routes"] = {str(k): _route(f"routes.{k}", v) for k, v in _mapping(data["routes"], "routes").items()}
    if "keys" in data:
        data["keys"] = _keys(data["keys"])
    if isinstance(data.get("server"), dict) and isinstance(data["server"].get("log_level"), str):
        data["server"] = {**data["server"], "log_level": data["server"]["log_level"].lower()}
    routing = data.get("routing")
    if isinstance(routing, dict) and isinstance(routing.get("overrides"), dict):
        o = routing["overrides"]
        if isinstance(o.get("header"), str):
            data["routing"] = {**routing, "overrides": {**o, "header": o["header"].lower()}}
    if data.get("cache") is True:
        data["cache"] = {}
    elif data.get("cache") is False:
        data["cache"] = {"enabled": False}
    if isinstance(data.get("usage"), dict):
        u = dict(data["usage"])
        if "ledger" in u and (u["ledger"] is False or (isinstance(u["ledger"], str)
                                                       and u["ledger"].lower() in ("off", "none", ""))):
            u["ledger"] = None
        if isinstance(u.get("budget"), dict):
            u["budget"] = _budget(u["budget"])
        data["usage"] = u
    return data


def _backend(name: str, b: Raw) -> None:
    where = f"backends.{name}"
    types = ", ".join(SPECS)
    if "type" not in b:
        raise ConfigError(f"{where}.type: required (one of: {types})")
    if b["type"] not in SPECS:
        raise ConfigError(f"{where}.type: unknown backend type {b['type']!r} (expected one of: {types})")
    t = b.get("timeout")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if t < 0.001:
            raise ConfigError(f"{where}.timeout: must be at least 0.001, got {t!r}")
        b["timeout"] = {"connect": min(Timeouts().connect, t), "first_token": t, "idle": t, "total": t}
    if b.get("probe") is False:
        b["probe"] = {"interval": 0}
    if b.get("api_key") is not None:
        b["api_key"] = str(b["api_key"])
    if "api_keys" in b:
        keys = b["api_keys"]
        if not isinstance(keys, list):
            raise ConfigError(f"{where}.api_keys: expected a list of keys")
        if b.get("api_key"):
            raise ConfigError(f"{where}.api_keys: give api_key (one key) or api_keys (several), not both")
        b["api_keys"] = [str(k) for k in keys if k not in (None, "")]  # an unset ${VAR} drops out
        if b["api_keys"]:
            b["api_key"] = b["api_keys"][0]


def _target(name: str, t: Raw, backends: dict[str, Raw]) -> Raw:
    where = f"models.{name}"
    if "backend" not in t:
        raise ConfigError(f"{where}.backend: required (one of: {', '.join(backends)})")
    if t["backend"] not in backends:
        raise ConfigError(f"{where}.backend: unknown backend {t['backend']!r} (defined: {', '.join(backends)})")
    if "model" not in t:
        t["model"] = name
    spec = SPECS[backends[t["backend"]]["type"]]
    # every current Claude and Gemini model reads images; elsewhere it varies, so it must be declared
    t.setdefault("vision", spec.vision)
    t.setdefault("logprobs", spec.logprobs)
    if len(spec.kinds) == 1:  # a type that serves one kind (semantic: embeddings) makes it the default
        t.setdefault("kind", spec.kinds[0])
        if t["kind"] != spec.kinds[0]:
            raise ConfigError(f"{where}.kind: a {spec.type} backend serves {spec.kinds[0]} only, got {t['kind']!r}")
    return t


GROUP_KEYS = ("group", "strategy", "weights")
STRATEGIES = ("weighted", "least_inflight", "latency")


def _groups(where: str, chain: Any) -> tuple[Any, list[Raw]]:
    """A chain with each inline `{group: [...]}` written out in place, and the groups (checked later)."""
    if not isinstance(chain, list):
        return chain, []
    flat: list[Any] = []
    groups: list[Raw] = []
    for i, el in enumerate(chain):
        if not isinstance(el, dict):
            flat.append(el)
            continue
        w = f"{where}[{i}]"
        unknown = [str(k) for k in el if k not in GROUP_KEYS]
        if unknown:
            raise ConfigError(f"{w}.{unknown[0]}: unknown field (a chain element is a target name or "
                              f"{{group: [targets], strategy, weights}})")
        targets = el.get("group")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"{w}.group: expected a non-empty list of model targets")
        strategy = el.get("strategy", "weighted")
        if strategy not in STRATEGIES:
            raise ConfigError(f"{w}.strategy: expected {', '.join(STRATEGIES)}, got {strategy!r}")
        weights = el.get("weights", {})
        if not isinstance(weights, dict):
            raise ConfigError(f"{w}.weights: expected a mapping of target to weight")
        for t, x in weights.items():
            if isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0:
                raise ConfigError(f"{w}.weights.{t}: expected a weight more than 0, got {x!r}")
        groups.append(dict(el))
        flat.extend(targets)
    return flat, groups


def _route(where: str, v: Any) -> Any:
    if isinstance(v, list):
        v = {"chain": v}
    d = dict(_mapping(v, where))
    if ("chain" in d) == ("rules" in d):
        raise ConfigError(f"{where}: give either chain (a list of targets) or rules")
    if "groups" in d:
        raise ConfigError(f"{where}.groups: write a group inline in the chain ({{group: [a, b]}})")
    if "chain" in d:
        d["chain"], groups = _groups(f"{where}.chain", d["chain"])
        if groups:
            d["groups"] = groups
    _cache_shorthand(d, where)
    if "rules" in d:
        rules = d["rules"]
        if not isinstance(rules, list) or not rules:
            raise ConfigError(f"{where}.rules: expected a non-empty list of rules")
        d["rules"] = [_rule(f"{where}.rules[{i}]", i, r) for i, r in enumerate(rules)]
    return d


def _rule(where: str, i: int, v: Any) -> Raw:
    r = dict(_mapping(v, where))
    r.setdefault("name", f"rule{i}")
    if "then" not in r:
        raise ConfigError(f"{where}.then: required (the chain of targets this rule sends to)")
    if "groups" in r:
        raise ConfigError(f"{where}.groups: write a group inline in then ({{group: [a, b]}})")
    r["then"], groups = _groups(f"{where}.then", r["then"])
    if groups:
        r["groups"] = groups
    if isinstance(r.get("escalate"), bool):
        r["escalate"] = int(r["escalate"])
    _cache_shorthand(r, where)
    if r.get("when") is None:
        r.pop("when", None)
        return r
    w = dict(_mapping(r["when"], f"{where}.when"))
    if isinstance(w.get("turn"), str):
        w["turn"] = w["turn"].replace("-", "").replace("_", "")
    for k in ("complexity", "prompt_tokens"):
        if isinstance(w.get(k), (int, float)) and not isinstance(w[k], bool):
            w[k] = {"gte": w[k]}
    for k in ("task", "tier", "requirement"):
        if isinstance(w.get(k), str):
            w[k] = [w[k]]
    r["when"] = w
    return r


def _cache_shorthand(d: Raw, where: str) -> None:
    """`cache: false` / `cache: true` on a route or rule: off / on there."""
    if isinstance(d.get("cache"), bool):
        d["cache"] = {"enabled": d["cache"]}


def _keys(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigError("keys: expected a list of {key, name}")
    out: list[Any] = []
    for i, k in enumerate(v):
        d = dict(_mapping(k, f"keys[{i}]"))
        if not d.get("key"):
            # an unset ${VAR} must not silently leave the proxy open
            raise ConfigError(f"keys[{i}].key: empty (is the variable it names set?)")
        d["key"] = str(d["key"])
        d.setdefault("name", f"key{i}")
        if isinstance(d.get("routes"), str):
            d["routes"] = [d["routes"]]
        if isinstance(d.get("budget"), dict):
            d["budget"] = _budget(d["budget"], f"keys[{i}].budget")
        out.append(d)
    return out


def _budget(b: Raw, where: str = "usage.budget") -> Raw:
    a = b.get("alert")
    if isinstance(a, str) and a.strip().endswith("%"):
        try:
            return {**b, "alert": float(a.strip()[:-1]) / 100}
        except ValueError:
            raise ConfigError(f"{where}.alert: expected a share like 0.8 or '80%', got {a!r}") from None
    return b


# --- after conversion: what spans fields and sections --------------------------------------------


def check(cfg: Config) -> None:
    """Cross-references and coherence; raises ConfigError at the first problem."""
    if not cfg.backends:
        raise ConfigError("backends: at least one backend is required")
    r = cfg.state.redis
    if r is not None and not r.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"state.redis.url: expected a redis://, rediss:// or unix:// URL, got {r.url.split('@')[-1]!r}")
    for name, b in cfg.backends.items():
        where = f"backends.{name}"
        if b.base_url is not None:
            b.base_url = b.base_url.rstrip("/")
            if not b.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.base_url: expected an http:// or https:// URL, got {b.base_url!r}")
        if b.quota is not None:
            _quota(b.quota, f"{where}.quota")
        if b.probe.model is not None and getattr(cfg.models.get(b.probe.model), "backend", None) != name:
            raise ConfigError(f"{where}.probe.model: {b.probe.model!r} is not a model target of this backend")
    for name, t in cfg.models.items():
        if t.quota is not None:
            _quota(t.quota, f"models.{name}.quota")
        if t.model == "auto":  # chosen at start among the installed models (proxy/local/autoconfig.py)
            if t.role is None:
                raise ConfigError(f"models.{name}.role: required with model: auto (planning, execution or vision)")
            btype = cfg.backends[t.backend].type
            if btype != "ollama":
                raise ConfigError(f"models.{name}.model: auto needs an ollama backend ({t.backend} is {btype})")
    for name, r in cfg.routes.items():
        where = f"routes.{name}"
        if name in cfg.models:
            raise ConfigError(f"{where}: a model target has the same name")
        _consensus(r.consensus, f"{where}.consensus", cfg)
        if not r.rules:
            _chain(r.chain, f"{where}.chain", cfg)
            _balanced(r.chain, r.groups, f"{where}.chain")
            continue
        seen: set[str] = set()
        for i, rule in enumerate(r.rules):
            w = f"{where}.rules[{i}]"
            if rule.name in seen:
                raise ConfigError(f"{w}.name: duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            _chain(rule.then, f"{w}.then", cfg)
            _balanced(rule.then, rule.groups, f"{w}.then")
            for k in ("complexity", "prompt_tokens"):
                rng: Range | None = getattr(rule.when, k)
                if rng is not None and all(x is None for x in (rng.gte, rng.lte, rng.gt, rng.lt)):
                    raise ConfigError(f"{w}.when.{k}: give at least one of gte, lte, gt, lt")
            for k in ("task", "tier", "requirement"):
                if getattr(rule.when, k) == frozenset():
                    raise ConfigError(f"{w}.when.{k}: expected a name or a list of names")
            _semantic(rule.when, f"{w}.when")
            _consensus(rule.consensus, f"{w}.consensus", cfg)
            r.chain += [t for t in rule.then if t not in r.chain]
    for name, to in cfg.aliases.items():
        if name in cfg.models or name in cfg.routes:
            raise ConfigError(f"aliases.{name}: a route or model target has the same name")
        if to not in cfg.models and to not in cfg.routes:
            raise ConfigError(f"aliases.{name}: {to!r} is not a route or model target")
    for where, access in [*((f"keys[{i}]", k) for i, k in enumerate(cfg.keys)),
                          *((f"tiers.{t}", a) for t, a in cfg.tiers.items())]:
        for name in sorted(access.routes or ()):
            if name not in cfg.routes:
                raise ConfigError(f"{where}.routes: {name!r} is not a route")
        for name in sorted(access.targets or ()):
            if name not in cfg.models:
                raise ConfigError(f"{where}.targets: {name!r} is not a model target")
    for i, k in enumerate(cfg.keys):
        if k.rate_limit is not None and k.rate_limit.requests_per_minute is None \
                and k.rate_limit.tokens_per_minute is None:
            raise ConfigError(f"keys[{i}].rate_limit: give requests_per_minute and/or tokens_per_minute")
        if k.budget is not None:
            _budget_given(k.budget, f"keys[{i}].budget")
    u = cfg.usage
    if u.flush_interval > 1:
        raise ConfigError(f"usage.flush_interval: at most 1 second (the most a crash may lose), got {u.flush_interval:g}")
    tz(u.timezone, "usage.timezone")
    if u.ledger and u.ledger.lower().startswith(("postgresql://", "postgres://")) \
            and importlib.util.find_spec("psycopg") is None:
        raise ConfigError("usage.ledger: a PostgreSQL ledger needs psycopg (pip install 'turnout[fleet]')")
    if u.budget is not None:
        _budget_given(u.budget, "usage.budget")
    if u.baseline is not None and u.baseline not in cfg.models and prices.lookup(u.baseline) is None:
        raise ConfigError(f"usage.baseline: {u.baseline!r} is neither a model target nor a model in the "
                          f"built-in price table (e.g. {', '.join(prices.examples())})")


def _semantic(c: Conditions, where: str) -> None:
    """An intent has examples or a file of them (read here); a classifier's model file exists."""
    if c.intent is not None:
        i, w = c.intent, f"{where}.intent"
        if bool(i.examples) == (i.file is not None):
            raise ConfigError(f"{w}: give examples (a list of prompts) or file (one example per line), not both")
        if i.file is not None:
            try:
                lines = Path(i.file).read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ConfigError(f"{w}.file: cannot read {i.file!r} ({e.strerror})") from None
            i.examples = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
            if not i.examples:
                raise ConfigError(f"{w}.file: {i.file!r} has no examples")
    m = c.classifier.model if c.classifier is not None else "builtin"
    if m != "builtin" and not Path(m).is_file():
        raise ConfigError(f"{where}.classifier.model: no file {m!r} "
                          "(train one with `turnout train routes.jsonl -o FILE`)")


def _consensus(c: Consensus | None, where: str, cfg: Config) -> None:
    if c is None:
        return
    _chain(c.targets, f"{where}.targets", cfg)
    if c.on_disagreement == "judge" and c.judge is None:
        raise ConfigError(f"{where}.judge: required with on_disagreement: judge (the target that picks)")
    if c.judge is not None:
        _chain([c.judge], f"{where}.judge", cfg)


def _chain(chain: list[str], where: str, cfg: Config) -> None:
    if not chain:
        raise ConfigError(f"{where}: expected a non-empty list of model targets")
    for i, t in enumerate(chain):
        if t not in cfg.models:
            raise ConfigError(f"{where}[{i}]: unknown model target {t!r} (defined: {', '.join(cfg.models) or 'none'})")


def _balanced(chain: list[str], groups: list[Group], where: str) -> None:
    """A group's targets are distinct, in no other place of the chain, and its weights name them."""
    for g in groups:
        at = chain.index(g.targets[0])
        w = f"{where}[{at}]"
        if len(set(g.targets)) != len(g.targets):
            raise ConfigError(f"{w}.group: a target is listed twice")
        for t in g.targets:
            if chain.count(t) > 1:
                raise ConfigError(f"{w}.group: {t!r} is also elsewhere in the chain")
        for t in g.weights:
            if t not in g.targets:
                raise ConfigError(f"{w}.weights.{t}: not a target of this group ({', '.join(g.targets)})")
        if g.weights and g.strategy != "weighted":
            raise ConfigError(f"{w}.weights: only the weighted strategy uses weights (this one is {g.strategy})")


def tz(name: str, where: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown time zone {name!r} (an IANA name, e.g. UTC or America/Los_Angeles)") from None


def _quota(q: Quota, where: str) -> None:
    if q.requests_per_day is None and q.tokens_per_day is None:
        raise ConfigError(f"{where}: give requests_per_day and/or tokens_per_day")
    if q.reserve and q.requests_per_day is None:
        raise ConfigError(f"{where}.reserve: a reserve of requests needs requests_per_day")
    if q.reserve_tokens and q.tokens_per_day is None:
        raise ConfigError(f"{where}.reserve_tokens: a reserve of tokens needs tokens_per_day")
    if q.requests_per_day is not None and q.reserve >= q.requests_per_day:
        raise ConfigError(f"{where}.reserve: must be less than requests_per_day ({q.requests_per_day})")
    if q.tokens_per_day is not None and q.reserve_tokens >= q.tokens_per_day:
        raise ConfigError(f"{where}.reserve_tokens: must be less than tokens_per_day ({q.tokens_per_day})")
    tz(q.timezone, f"{where}.timezone")


def _budget_given(b: Budget, where: str) -> None:
    if b.daily is None and b.monthly is None:
        raise ConfigError(f"{where}: give daily and/or monthly (USD)")
