"""proxy.yaml: load, interpolate ``${VAR}`` / ``${VAR:-default}``, validate, resolve.

Validation fails at start with a `ConfigError` naming the field (``backends.claude.type: …``), so
an operator never meets a typo at request time. A cloud backend whose key is missing is not an
error: it is kept, marked unavailable, and skipped by routing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BACKEND_TYPES = ("mock", "openai", "anthropic", "gemini", "ollama", "llamacpp")
KEYLESS_TYPES = ("mock", "ollama", "llamacpp")  # types that work without an api_key
VISION_BY_DEFAULT = ("anthropic", "gemini")
DEFAULT_MAX_BODY = 20 * 1024 * 1024

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """An invalid proxy.yaml; the message names the field."""


@dataclass
class Timeouts:
    """Seconds. `first_token` bounds the wait for a stream's first chunk (or a whole non-streamed
    answer's headers), `idle` the gap between chunks, `total` a whole non-streamed call."""

    connect: float = 5.0
    first_token: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass
class RetryPolicy:
    attempts: int = 1  # tries per target, the first included
    backoff: float = 0.25  # base seconds, doubled per retry, with jitter
    max_retry_after: float = 10.0  # honour an upstream retry-after up to this


@dataclass
class ProbePolicy:
    """The background health probe of one backend (`probe:` on a backend)."""

    interval: float = 30.0  # seconds between probes; 0 turns probing off
    method: str = "models"  # models: list the models (free) | chat: a one-token chat request
    timeout: float = 10.0  # seconds one probe may take
    down_after: int = 2  # consecutive failed probes that mark the backend down (and skip it in routing)
    model: str | None = None  # the target a chat probe uses (default: the backend's first)


@dataclass
class BackendConfig:
    name: str
    type: str
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    options: dict[str, Any] = field(default_factory=dict)  # type-specific settings
    probe: ProbePolicy = field(default_factory=ProbePolicy)
    unavailable: str | None = None  # why it cannot be used (e.g. a missing key), None when usable
    quota: Quota | None = None  # a daily allowance shared by all its targets


@dataclass
class Price:
    """USD per 1M tokens."""

    input: float = 0.0
    output: float = 0.0
    cached: float | None = None


@dataclass
class Target:
    """A model target: one backend's model with its price and abilities."""

    name: str
    backend: str
    model: str
    price: Price = field(default_factory=Price)
    context_window: int | None = None
    max_output_tokens: int | None = None
    vision: bool = False
    tools: bool = True
    json_schema: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds for one call to this target (to the first token for streams)
    quota: Quota | None = None  # a daily allowance of this target alone
    price_source: str | None = None  # "config", the built-in table's source and date, or None (costs 0)


TURNS = ("first", "followup")
REQUIREMENTS = ("quality", "speed", "budget")


@dataclass
class Range:
    """A numeric condition: every bound given must hold."""

    gte: float | None = None
    lte: float | None = None
    gt: float | None = None
    lt: float | None = None

    def __str__(self) -> str:
        parts = [f"{op}{v:g}" for op, v in ((">=", self.gte), ("<=", self.lte), (">", self.gt), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)

    def holds(self, v: float) -> bool:
        return ((self.gte is None or v >= self.gte) and (self.lte is None or v <= self.lte)
                and (self.gt is None or v > self.gt) and (self.lt is None or v < self.lt))


@dataclass(frozen=True)
class IntentCondition:
    """`when: {intent: {name, examples | file, threshold}}`: the prompt is like one of the examples."""

    name: str
    examples: tuple[str, ...]
    threshold: float = 0.6  # cosine similarity to the closest example


@dataclass(frozen=True)
class ClassifierCondition:
    """`when: {classifier: {model, label, threshold}}`: a trained router says `label` (proxy/semantic)."""

    model: str = "builtin"  # the shipped router (proxy/semantic/data/router.npz) or a path from `turnout train`
    label: str = "cloud"
    threshold: float | None = None  # probability; None: the one calibrated at training


@dataclass
class Conditions:
    """A rule's `when`: all given conditions must hold (an empty one always matches)."""

    has_images: bool | None = None
    has_tools: bool | None = None
    turn: str | None = None  # first (no assistant turn yet: planning) | followup (execution)
    complexity: Range | None = None
    prompt_tokens: Range | None = None
    task: frozenset[str] | None = None
    tier: frozenset[str] | None = None
    requirement: frozenset[str] | None = None
    intent: IntentCondition | None = None  # semantic conditions: computed only when a rule reaches them
    classifier: ClassifierCondition | None = None

    @property
    def semantic(self) -> bool:
        return self.intent is not None or self.classifier is not None


@dataclass
class Rule:
    name: str
    then: list[str]
    when: Conditions = field(default_factory=Conditions)
    escalate: int = 0  # quality escalation: at most this many moves to the next target


@dataclass
class Route:
    name: str
    chain: list[str]  # a plain route's fallback chain; for a rules route, every target it can use
    description: str = ""
    rules: list[Rule] = field(default_factory=list)
    timeout: float | None = None  # a deadline for the whole chain, seconds


@dataclass
class CircuitPolicy:
    failures: int = 5  # consecutive failures that open the circuit
    cooldown: float = 30.0  # seconds open before one half-open trial


@dataclass
class Routing:
    """Settings of the routing engine (`routing:` in proxy.yaml)."""

    complexity: dict[str, Any] = field(default_factory=dict)  # keyword lists and weights overrides
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)
    override_header: str = "x-turnout-target"
    override_metadata: str = "turnout_target"
    overrides: str = "keys"  # who may force a target: all | keys (those with allow_override) | none


@dataclass
class Key:
    key: str
    name: str
    tier: str | None = None
    allow_override: bool = False  # may force a target with the override header / metadata
    extra: dict[str, Any] = field(default_factory=dict)
    rate_limit: RateLimit | None = None  # requests / tokens per minute
    budget: Budget | None = None  # USD per day / month
    usage: str = "all"  # what /turnout/usage shows this key: all (every key's usage) | own


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = DEFAULT_MAX_BODY
    log_level: str = "info"
    log_format: str = "text"  # text | json (one JSON object per line)
    metrics_key_names: bool = False  # label request, token and cost metrics with the proxy key's name


@dataclass
class Config:
    server: ServerConfig
    backends: dict[str, BackendConfig]
    models: dict[str, Target]
    routes: dict[str, Route]
    keys: list[Key]
    routing: Routing = field(default_factory=Routing)
    path: str | None = None
    usage: UsageConfig = field(default_factory=lambda: UsageConfig())


# --- loading -------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    cfg = parse(raw, env)
    cfg.path = str(p)
    if not cfg.usage.ledger_set:
        cfg.usage.ledger = DEFAULT_LEDGER
    return cfg


def parse(raw: Any, env: dict[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    missing: dict[str, list[str]] = {}
    data = _interpolate(raw, env, "", missing)
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    _only(data, "config", {"server", "backends", "models", "routes", "keys", "routing", "usage"})

    server = _server(_mapping(data.get("server") or {}, "server"))
    backends = {
        name: _backend(str(name), _mapping(b, f"backends.{name}"), missing)
        for name, b in _mapping(data.get("backends") or {}, "backends").items()
    }
    if not backends:
        raise ConfigError("backends: at least one backend is required")
    models = {
        str(name): _target(str(name), _mapping(m, f"models.{name}"), backends)
        for name, m in _mapping(data.get("models") or {}, "models").items()
    }
    for bname, b in backends.items():
        if b.probe.model is not None and getattr(models.get(b.probe.model), "backend", None) != bname:
            raise ConfigError(f"backends.{bname}.probe.model: {b.probe.model!r} is not a model target of this backend")
    routes = {
        str(name): _route(str(name), r, models)
        for name, r in _mapping(data.get("routes") or {}, "routes").items()
    }
    for name in routes:
        if name in models:
            raise ConfigError(f"routes.{name}: a model target has the same name")
    keys = _keys(data.get("keys") or [])
    routing = _routing(_mapping(data.get("routing") or {}, "routing"))
    from proxy.usage import prices

    prices.apply(models, backends)  # unpriced cloud targets take the built-in table's price
    usage = _usage(_mapping(data.get("usage") or {}, "usage"), models)
    return Config(server=server, backends=backends, models=models, routes=routes, keys=keys, routing=routing,
                  usage=usage)


def _interpolate(node: Any, env: dict[str, str], path: str, missing: dict[str, list[str]]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def sub(m: re.Match[str]) -> str:
            value = env.get(m.group(1))
            if value:
                return value
            if m.group(2) is not None:
                return m.group(2)
            missing.setdefault(path, []).append(m.group(1))
            return ""

        out = _ENV.sub(sub, node)
        return _coerce_scalar(out) if _ENV.fullmatch(node) else out
    return node


def _coerce_scalar(s: str) -> Any:
    """A value that was only `${VAR}` takes YAML's reading of the result (a port becomes an int)."""
    if s == "":
        return None
    try:
        v = yaml.safe_load(s)
    except yaml.YAMLError:
        return s
    return v if isinstance(v, (int, float, bool)) else s


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__}")
    return v


def _only(d: dict[str, Any], where: str, allowed: set[str]) -> None:
    extra = sorted(set(map(str, d)) - allowed)
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: unknown field (expected one of: {', '.join(sorted(allowed))})")


def _num(v: Any, where: str, *, minimum: float = 0, integer: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: expected a non-empty string, got {v!r}")
    return v


def _server(d: dict[str, Any]) -> ServerConfig:
    _only(d, "server", {"host", "port", "max_body_bytes", "log_level", "log_format", "metrics_key_names"})
    s = ServerConfig()
    if "host" in d:
        s.host = _str(d["host"], "server.host")
    if "port" in d:
        s.port = _num(d["port"], "server.port", minimum=0, integer=True)
    if "max_body_bytes" in d:
        s.max_body_bytes = _num(d["max_body_bytes"], "server.max_body_bytes", minimum=1, integer=True)
    if "log_level" in d:
        s.log_level = _str(d["log_level"], "server.log_level").lower()
        if s.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"server.log_level: expected debug, info, warning or error, got {s.log_level!r}")
    if "log_format" in d:
        if d["log_format"] not in ("text", "json"):
            raise ConfigError(f"server.log_format: expected text or json, got {d['log_format']!r}")
        s.log_format = d["log_format"]
    if "metrics_key_names" in d:
        s.metrics_key_names = _bool(d["metrics_key_names"], "server.metrics_key_names")
    return s


def _timeouts(v: Any, where: str) -> Timeouts:
    t = Timeouts()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = _num(v, where, minimum=0.001)
        return Timeouts(connect=min(t.connect, secs), first_token=secs, idle=secs, total=secs)
    d = _mapping(v, where)
    _only(d, where, {"connect", "first_token", "idle", "total"})
    for k in ("connect", "first_token", "idle", "total"):
        if k in d:
            setattr(t, k, float(_num(d[k], f"{where}.{k}", minimum=0.001)))
    return t


def _retry(v: Any, where: str) -> RetryPolicy:
    d = _mapping(v, where)
    _only(d, where, {"attempts", "backoff", "max_retry_after"})
    r = RetryPolicy()
    if "attempts" in d:
        r.attempts = _num(d["attempts"], f"{where}.attempts", minimum=1, integer=True)
    if "backoff" in d:
        r.backoff = float(_num(d["backoff"], f"{where}.backoff"))
    if "max_retry_after" in d:
        r.max_retry_after = float(_num(d["max_retry_after"], f"{where}.max_retry_after"))
    return r


def _probe(v: Any, where: str) -> ProbePolicy:
    p = ProbePolicy()
    if v is False:
        p.interval = 0.0
        return p
    d = _mapping(v, where)
    _only(d, where, {"interval", "method", "timeout", "down_after", "model"})
    if "interval" in d:
        p.interval = float(_num(d["interval"], f"{where}.interval"))
    if "method" in d:
        if d["method"] not in ("models", "chat"):
            raise ConfigError(f"{where}.method: expected models or chat, got {d['method']!r}")
        p.method = d["method"]
    if "timeout" in d:
        p.timeout = float(_num(d["timeout"], f"{where}.timeout", minimum=0.001))
    if "down_after" in d:
        p.down_after = _num(d["down_after"], f"{where}.down_after", minimum=1, integer=True)
    if d.get("model") is not None:
        p.model = _str(d["model"], f"{where}.model")
    return p


def _backend(name: str, d: dict[str, Any], missing: dict[str, list[str]]) -> BackendConfig:
    where = f"backends.{name}"
    if "type" not in d:
        raise ConfigError(f"{where}.type: required (one of: {', '.join(BACKEND_TYPES)})")
    btype = d["type"]
    if btype not in BACKEND_TYPES:
        raise ConfigError(f"{where}.type: unknown backend type {btype!r} (expected one of: {', '.join(BACKEND_TYPES)})")
    b = BackendConfig(name=name, type=btype)
    if d.get("base_url") is not None:
        b.base_url = _str(d["base_url"], f"{where}.base_url").rstrip("/")
        if not b.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: expected an http:// or https:// URL, got {b.base_url!r}")
    if d.get("api_key") is not None:
        b.api_key = str(d["api_key"])
    if "headers" in d:
        b.headers = {str(k): str(v) for k, v in _mapping(d["headers"], f"{where}.headers").items()}
    if "timeout" in d:
        b.timeout = _timeouts(d["timeout"], f"{where}.timeout")
    if "retry" in d:
        b.retry = _retry(d["retry"], f"{where}.retry")
    if "probe" in d:
        b.probe = _probe(d["probe"], f"{where}.probe")
    b.options = {k: v for k, v in d.items()
                 if k not in ("type", "base_url", "api_key", "headers", "timeout", "retry", "probe")}
    if not b.api_key and btype not in KEYLESS_TYPES and btype != "openai":
        vars_ = missing.get(f"{where}.api_key")
        b.unavailable = f"no API key ({'${' + vars_[0] + '} is not set' if vars_ else 'api_key is empty'})"
    elif not b.api_key and btype == "openai" and f"{where}.api_key" in missing:
        # an OpenAI-compatible local server needs no key, but a key that was asked for and is unset is missing
        b.unavailable = f"no API key (${{{missing[f'{where}.api_key'][0]}}} is not set)"
    if btype == "openai" and not b.base_url:
        b.base_url = "https://api.openai.com/v1"
    if "quota" in b.options:
        b.quota = _quota(b.options.pop("quota"), f"{where}.quota")
    return b


def _target(name: str, d: dict[str, Any], backends: dict[str, BackendConfig]) -> Target:
    where = f"models.{name}"
    allowed = {"backend", "model", "price", "context_window", "max_output_tokens", "vision", "tools",
               "json_schema", "options", "timeout", "quota"}
    _only(d, where, allowed)
    if "backend" not in d:
        raise ConfigError(f"{where}.backend: required (one of: {', '.join(backends)})")
    backend = d["backend"]
    if backend not in backends:
        raise ConfigError(f"{where}.backend: unknown backend {backend!r} (defined: {', '.join(backends)})")
    t = Target(name=name, backend=backend, model=_str(d.get("model", name), f"{where}.model"))
    # every current Claude and Gemini model reads images; elsewhere it varies, so it must be declared
    t.vision = backends[backend].type in VISION_BY_DEFAULT
    if "price" in d:
        p = _mapping(d["price"], f"{where}.price")
        _only(p, f"{where}.price", {"input", "output", "cached"})
        t.price = Price(
            input=float(_num(p.get("input", 0), f"{where}.price.input")),
            output=float(_num(p.get("output", 0), f"{where}.price.output")),
            cached=None if p.get("cached") is None else float(_num(p["cached"], f"{where}.price.cached")),
        )
        t.price_source = "config"
    if d.get("quota") is not None:
        t.quota = _quota(d["quota"], f"{where}.quota")
    for k in ("context_window", "max_output_tokens"):
        if d.get(k) is not None:
            setattr(t, k, _num(d[k], f"{where}.{k}", minimum=1, integer=True))
    for k in ("vision", "tools", "json_schema"):
        if k in d:
            setattr(t, k, _bool(d[k], f"{where}.{k}"))
    if "options" in d:
        t.options = dict(_mapping(d["options"], f"{where}.options"))
    if d.get("timeout") is not None:
        t.timeout = float(_num(d["timeout"], f"{where}.timeout", minimum=0.001))
    return t


def _chain(v: Any, where: str, models: dict[str, Target]) -> list[str]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: expected a non-empty list of model targets")
    for i, t in enumerate(v):
        if t not in models:
            raise ConfigError(f"{where}[{i}]: unknown model target {t!r} (defined: {', '.join(models) or 'none'})")
    return [str(t) for t in v]


def _range(v: Any, where: str) -> Range:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return Range(gte=float(v))
    d = _mapping(v, where)
    _only(d, where, {"gte", "lte", "gt", "lt"})
    if not d:
        raise ConfigError(f"{where}: give at least one of gte, lte, gt, lt")
    return Range(**{k: float(_num(x, f"{where}.{k}", minimum=float("-inf"))) for k, x in d.items()})


def _names(v: Any, where: str, allowed: tuple[str, ...] | None = None) -> frozenset[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{where}: expected a name or a list of names")
    if allowed:
        for x in items:
            if x not in allowed:
                raise ConfigError(f"{where}: unknown value {x!r} (expected one of: {', '.join(allowed)})")
    return frozenset(items)


def _conditions(v: Any, where: str) -> Conditions:
    d = _mapping(v, where)
    _only(d, where, {"has_images", "has_tools", "turn", "complexity", "prompt_tokens", "task", "tier",
                     "requirement", "intent", "classifier"})
    c = Conditions()
    for k in ("has_images", "has_tools"):
        if k in d:
            setattr(c, k, _bool(d[k], f"{where}.{k}"))
    if "turn" in d:
        turn = str(d["turn"]).replace("-", "").replace("_", "")
        if turn not in TURNS:
            raise ConfigError(f"{where}.turn: expected first or followup, got {d['turn']!r}")
        c.turn = turn
    for k in ("complexity", "prompt_tokens"):
        if k in d:
            setattr(c, k, _range(d[k], f"{where}.{k}"))
    for k in ("task", "tier"):
        if k in d:
            setattr(c, k, _names(d[k], f"{where}.{k}"))
    if "requirement" in d:
        c.requirement = _names(d["requirement"], f"{where}.requirement", REQUIREMENTS)
    if "intent" in d:
        c.intent = _intent(d["intent"], f"{where}.intent")
    if "classifier" in d:
        c.classifier = _classifier(d["classifier"], f"{where}.classifier")
    return c


def _intent(v: Any, where: str) -> IntentCondition:
    d = _mapping(v, where)
    _only(d, where, {"name", "examples", "file", "threshold"})
    if ("examples" in d) == ("file" in d):
        raise ConfigError(f"{where}: give examples (a list of prompts) or file (one example per line), not both")
    if "file" in d:
        try:
            lines = Path(str(d["file"])).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"{where}.file: cannot read {d['file']!r} ({e.strerror})") from None
        examples = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
    else:
        examples = d["examples"]
    if not isinstance(examples, list) or not examples or not all(isinstance(x, str) and x for x in examples):
        raise ConfigError(f"{where}: expected at least one example prompt")
    threshold = float(_num(d.get("threshold", 0.6), f"{where}.threshold"))
    if threshold > 1:
        raise ConfigError(f"{where}.threshold: a cosine similarity, at most 1")
    return IntentCondition(str(d.get("name") or "intent"), tuple(examples), threshold)


def _classifier(v: Any, where: str) -> ClassifierCondition:
    d = _mapping(v, where)
    _only(d, where, {"model", "label", "threshold"})
    model = str(d.get("model", "builtin"))
    if model != "builtin" and not Path(model).is_file():
        raise ConfigError(f"{where}.model: no file {model!r} (train one with `turnout train routes.jsonl -o FILE`)")
    threshold = None if d.get("threshold") is None else float(_num(d["threshold"], f"{where}.threshold"))
    if threshold is not None and threshold > 1:
        raise ConfigError(f"{where}.threshold: a probability, at most 1")
    return ClassifierCondition(model, str(d.get("label", "cloud")), threshold)


def _route(name: str, v: Any, models: dict[str, Target]) -> Route:
    where = f"routes.{name}"
    if isinstance(v, list):
        return Route(name=name, chain=_chain(v, where, models))
    d = _mapping(v, where)
    _only(d, where, {"chain", "rules", "description", "timeout"})
    r = Route(name=name, chain=[], description=str(d.get("description", "")))
    if d.get("timeout") is not None:
        r.timeout = float(_num(d["timeout"], f"{where}.timeout", minimum=0.001))
    if ("chain" in d) == ("rules" in d):
        raise ConfigError(f"{where}: give either chain (a list of targets) or rules")
    if "chain" in d:
        r.chain = _chain(d["chain"], f"{where}.chain", models)
        return r
    rules = d["rules"]
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{where}.rules: expected a non-empty list of rules")
    seen: set[str] = set()
    for i, raw in enumerate(rules):
        w = f"{where}.rules[{i}]"
        rd = _mapping(raw, w)
        _only(rd, w, {"name", "when", "then", "escalate"})
        rule_name = _str(rd.get("name", f"rule{i}"), f"{w}.name")
        if rule_name in seen:
            raise ConfigError(f"{w}.name: duplicate rule name {rule_name!r}")
        seen.add(rule_name)
        if "then" not in rd:
            raise ConfigError(f"{w}.then: required (the chain of targets this rule sends to)")
        rule = Rule(name=rule_name, then=_chain(rd["then"], f"{w}.then", models),
                    when=_conditions(rd.get("when") or {}, f"{w}.when"))
        if "escalate" in rd:
            esc = rd["escalate"]
            rule.escalate = (1 if esc else 0) if isinstance(esc, bool) else _num(esc, f"{w}.escalate", integer=True)
        r.rules.append(rule)
        r.chain += [t for t in rule.then if t not in r.chain]
    return r


def _routing(d: dict[str, Any]) -> Routing:
    _only(d, "routing", {"complexity", "circuit", "overrides"})
    r = Routing()
    if "complexity" in d:
        c = _mapping(d["complexity"], "routing.complexity")
        _only(c, "routing.complexity", {"keywords", "weights", "base"})
        for k, v in _mapping(c.get("keywords") or {}, "routing.complexity.keywords").items():
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"routing.complexity.keywords.{k}: expected a list of words or phrases")
        for k, v in _mapping(c.get("weights") or {}, "routing.complexity.weights").items():
            _num(v, f"routing.complexity.weights.{k}", minimum=-1)
        r.complexity = c
    if "circuit" in d:
        c = _mapping(d["circuit"], "routing.circuit")
        _only(c, "routing.circuit", {"failures", "cooldown"})
        if "failures" in c:
            r.circuit.failures = _num(c["failures"], "routing.circuit.failures", minimum=1, integer=True)
        if "cooldown" in c:
            r.circuit.cooldown = float(_num(c["cooldown"], "routing.circuit.cooldown"))
    if "overrides" in d:
        o = _mapping(d["overrides"], "routing.overrides")
        _only(o, "routing.overrides", {"header", "metadata", "allow"})
        if "header" in o:
            r.override_header = _str(o["header"], "routing.overrides.header").lower()
        if "metadata" in o:
            r.override_metadata = _str(o["metadata"], "routing.overrides.metadata")
        if "allow" in o:
            if o["allow"] not in ("all", "keys", "none"):
                raise ConfigError(f"routing.overrides.allow: expected all, keys or none, got {o['allow']!r}")
            r.overrides = o["allow"]
    return r


def _keys(v: Any) -> list[Key]:
    if not isinstance(v, list):
        raise ConfigError("keys: expected a list of {key, name}")
    keys: list[Key] = []
    for i, k in enumerate(v):
        d = _mapping(k, f"keys[{i}]")
        if not d.get("key"):
            # an unset ${VAR} must not silently leave the proxy open
            raise ConfigError(f"keys[{i}].key: empty (is the variable it names set?)")
        name = _str(d.get("name", f"key{i}"), f"keys[{i}].name")
        allow = _bool(d["allow_override"], f"keys[{i}].allow_override") if "allow_override" in d else False
        keys.append(Key(key=str(d["key"]), name=name, tier=d.get("tier"), allow_override=allow,
                        extra={x: y for x, y in d.items()
                               if x not in ("key", "name", "tier", "allow_override", "rate_limit", "budget",
                                            "usage")},
                        rate_limit=None if d.get("rate_limit") is None else _rate_limit(d["rate_limit"],
                                                                                        f"keys[{i}].rate_limit"),
                        budget=None if d.get("budget") is None else _budget(d["budget"], f"keys[{i}].budget"),
                        usage=_usage_scope(d.get("usage", "all"), f"keys[{i}].usage")))
    return keys


# --- usage: ledger, quotas, rate limits, budgets (issue 7) ---------------------------------------

DEFAULT_LEDGER = ".turnout/usage.sqlite"  # relative to the working directory, when the config file names none
ON_EXCEEDED = ("reject", "free_only")


@dataclass
class Quota:
    """A provider's daily allowance for one backend (all its targets) or one target (`quota:`).

    At `reserve` requests (or `reserve_tokens` tokens) left, routing skips it: the rest is kept
    back for what is already in flight and for other tools sharing the same account."""

    requests_per_day: int | None = None
    tokens_per_day: int | None = None
    reserve: int = 0
    reserve_tokens: int = 0
    reset_hour: int = 0  # local hour of the provider's daily reset ...
    timezone: str = "UTC"  # ... in this IANA zone (Gemini's free tier: midnight America/Los_Angeles)


@dataclass
class RateLimit:
    """Per proxy key, over a sliding minute (`rate_limit:` on a key)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass
class Budget:
    """USD per day and per month (`budget:` on a key, or `usage.budget` for everything)."""

    daily: float | None = None
    monthly: float | None = None
    alert: float = 0.8  # log once (and show in metrics) at this share of a budget
    on_exceeded: str = "reject"  # reject: 429 budget_exceeded | free_only: only targets that cost nothing


@dataclass
class UsageConfig:
    """`usage:` in proxy.yaml: where the ledger lives and what spending is allowed."""

    ledger: str | None = None  # SQLite file; None: no ledger (counters in memory only)
    ledger_set: bool = False  # the config named a ledger (or turned it off)
    flush_interval: float = 1.0  # seconds between batched writes: the most a hard crash can lose
    batch_size: int = 500  # rows that trigger a write before the interval is up
    features: bool = True  # record each request's routing features (for `turnout simulate` replays)
    timezone: str = "UTC"  # the day and month of budgets and usage reports ...
    reset_hour: int = 0  # ... start at this local hour
    baseline: str | None = None  # the all-cloud model savings are measured against (target or known model)
    budget: Budget | None = None  # the overall budget
    retention_days: int | None = None  # delete ledger rows older than this (None: keep them all)


def _tz(v: Any, where: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = _str(v, where)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown time zone {name!r} (an IANA name, e.g. UTC or America/Los_Angeles)") from None
    return name


def _hour(v: Any, where: str) -> int:
    h = _num(v, where, integer=True)
    if h > 23:
        raise ConfigError(f"{where}: expected an hour from 0 to 23, got {v!r}")
    return h


def _quota(v: Any, where: str) -> Quota:
    d = _mapping(v, where)
    _only(d, where, {"requests_per_day", "tokens_per_day", "reserve", "reserve_tokens", "reset_hour", "timezone"})
    q = Quota()
    for k in ("requests_per_day", "tokens_per_day"):
        if d.get(k) is not None:
            setattr(q, k, _num(d[k], f"{where}.{k}", minimum=1, integer=True))
    if q.requests_per_day is None and q.tokens_per_day is None:
        raise ConfigError(f"{where}: give requests_per_day and/or tokens_per_day")
    for k in ("reserve", "reserve_tokens"):
        if d.get(k) is not None:
            setattr(q, k, _num(d[k], f"{where}.{k}", integer=True))
    if q.reserve and q.requests_per_day is None:
        raise ConfigError(f"{where}.reserve: a reserve of requests needs requests_per_day")
    if q.reserve_tokens and q.tokens_per_day is None:
        raise ConfigError(f"{where}.reserve_tokens: a reserve of tokens needs tokens_per_day")
    if q.requests_per_day is not None and q.reserve >= q.requests_per_day:
        raise ConfigError(f"{where}.reserve: must be less than requests_per_day ({q.requests_per_day})")
    if q.tokens_per_day is not None and q.reserve_tokens >= q.tokens_per_day:
        raise ConfigError(f"{where}.reserve_tokens: must be less than tokens_per_day ({q.tokens_per_day})")
    if "reset_hour" in d:
        q.reset_hour = _hour(d["reset_hour"], f"{where}.reset_hour")
    if "timezone" in d:
        q.timezone = _tz(d["timezone"], f"{where}.timezone")
    return q


def _rate_limit(v: Any, where: str) -> RateLimit:
    d = _mapping(v, where)
    _only(d, where, {"requests_per_minute", "tokens_per_minute"})
    r = RateLimit()
    for k in ("requests_per_minute", "tokens_per_minute"):
        if d.get(k) is not None:
            setattr(r, k, _num(d[k], f"{where}.{k}", minimum=1, integer=True))
    if r.requests_per_minute is None and r.tokens_per_minute is None:
        raise ConfigError(f"{where}: give requests_per_minute and/or tokens_per_minute")
    return r


def _budget(v: Any, where: str) -> Budget:
    d = _mapping(v, where)
    _only(d, where, {"daily", "monthly", "alert", "on_exceeded"})
    b = Budget()
    for k in ("daily", "monthly"):
        if d.get(k) is not None:
            setattr(b, k, float(_num(d[k], f"{where}.{k}")))
    if b.daily is None and b.monthly is None:
        raise ConfigError(f"{where}: give daily and/or monthly (USD)")
    if "alert" in d:
        a = d["alert"]
        if isinstance(a, str) and a.strip().endswith("%"):
            try:
                a = float(a.strip()[:-1]) / 100
            except ValueError:
                raise ConfigError(f"{where}.alert: expected a share like 0.8 or '80%', got {d['alert']!r}") from None
        b.alert = float(_num(a, f"{where}.alert"))
        if b.alert > 1:
            raise ConfigError(f"{where}.alert: expected a share from 0 to 1 (or '80%'), got {d['alert']!r}")
    if "on_exceeded" in d:
        if d["on_exceeded"] not in ON_EXCEEDED:
            raise ConfigError(f"{where}.on_exceeded: expected reject or free_only, got {d['on_exceeded']!r}")
        b.on_exceeded = d["on_exceeded"]
    return b


def _usage_scope(v: Any, where: str) -> str:
    if v not in ("all", "own"):
        raise ConfigError(f"{where}: expected all (every key's usage) or own, got {v!r}")
    return str(v)


def _usage(d: dict[str, Any], models: dict[str, Target]) -> UsageConfig:
    _only(d, "usage", {"ledger", "flush_interval", "batch_size", "features", "timezone", "reset_hour", "baseline",
                       "budget", "retention_days"})
    u = UsageConfig()
    if "ledger" in d:
        u.ledger_set = True
        v = d["ledger"]
        if v is None or v is False or (isinstance(v, str) and v.lower() in ("off", "none", "")):
            u.ledger = None
        else:
            u.ledger = _str(v, "usage.ledger")
    if "flush_interval" in d:
        u.flush_interval = float(_num(d["flush_interval"], "usage.flush_interval", minimum=0.01))
        if u.flush_interval > 1:
            raise ConfigError(f"usage.flush_interval: at most 1 second (the most a crash may lose), got {d['flush_interval']!r}")
    if "batch_size" in d:
        u.batch_size = _num(d["batch_size"], "usage.batch_size", minimum=1, integer=True)
    if "features" in d:
        u.features = _bool(d["features"], "usage.features")
    if "timezone" in d:
        u.timezone = _tz(d["timezone"], "usage.timezone")
    if "reset_hour" in d:
        u.reset_hour = _hour(d["reset_hour"], "usage.reset_hour")
    if d.get("baseline") is not None:
        from proxy.usage import prices

        u.baseline = _str(d["baseline"], "usage.baseline")
        if u.baseline not in models and prices.lookup(u.baseline) is None:
            raise ConfigError(f"usage.baseline: {u.baseline!r} is neither a model target nor a model in the "
                              f"built-in price table (e.g. {', '.join(prices.examples())})")
    if d.get("budget") is not None:
        u.budget = _budget(d["budget"], "usage.budget")
    if d.get("retention_days") is not None:
        u.retention_days = _num(d["retention_days"], "usage.retention_days", minimum=1, integer=True)
    return u
