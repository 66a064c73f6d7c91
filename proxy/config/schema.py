"""The typed shape of proxy.yaml: one strict msgspec Struct per section, with defaults and field docs.

Why msgspec: start-up = import the library + define these sections + convert the shipped proxy.yaml,
in a fresh interpreter (`benchmarks/config_startup.py`, 25 runs, a busy 2-CPU box at load 12):
msgspec 0.23: median 73 ms, best 30 ms; pydantic 2.14 on the same schema: median 451 ms, best 300 ms.
About 6x less, and no second validation library for one config file.

These Structs are both the schema (what `load.py` converts YAML into) and the resolved config every
consumer reads (`cfg.backends["x"].timeout.first_token`). Fields listed in a Struct's `derived` are
filled by the loader (a backend's `name` is its key in `backends:`), never read from the file. Every
other YAML key must be a field: the loader rejects anything else with its full path and a suggestion.
Input shorthands (`timeout: 30`, `routes.x: [a, b]`, `escalate: true`, `alert: '80%'`) are expanded
by `checks.py` before conversion (`loading.py` runs the steps), so the types here are the one canonical shape.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, field

DEFAULT_MAX_BODY = 20 * 1024 * 1024
DEFAULT_LEDGER = ".turnout/usage.sqlite"  # relative to the working directory, when the config names none
TURNS = ("first", "followup")
REQUIREMENTS = ("quality", "speed", "budget")
ON_EXCEEDED = ("reject", "free_only")

# A constraint's `description` is what an error says is expected ("expected an hour from 0 to 23")
NonNeg = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(ge=0.001)]  # a duration that must be more than nothing
Count = Annotated[int, Meta(ge=1)]
Text = Annotated[str, Meta(min_length=1)]
Hour = Annotated[int, Meta(ge=0, le=23, description="an hour from 0 to 23")]


class ConfigError(ValueError):
    """An invalid proxy.yaml; the message is ``path: what is wrong`` (``backends.claude.type: …``)."""


class ConfigUnreadable(ConfigError):
    """The config file cannot be read at all (``proxy.yaml: cannot read (No such file or directory)``)."""


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section: keyword construction, unknown fields rejected."""

    derived: ClassVar[frozenset[str]] = frozenset()  # fields the loader fills; never read from YAML
    extra: ClassVar[str | None] = None  # the field that collects keys not in the schema (else: rejected)


class Timeouts(Section):
    """Seconds. `first_token` bounds the wait for a stream's first chunk (or a whole non-streamed
    answer's headers), `idle` the gap between chunks, `total` a whole non-streamed call.
    `timeout: 30` on a backend means all of them (connect at most 5)."""

    connect: Positive = 5.0
    first_token: Positive = 60.0
    idle: Positive = 60.0
    total: Positive = 600.0


class RetryPolicy(Section):
    attempts: Count = 1  # tries per target, the first included
    backoff: NonNeg = 0.25  # base seconds, doubled per retry, with jitter
    max_retry_after: NonNeg = 10.0  # honour an upstream retry-after up to this


class ProbePolicy(Section):
    """The background health probe of one backend (`probe:` on a backend; `probe: false` = off)."""

    interval: NonNeg = 30.0  # seconds between probes; 0 turns probing off
    method: Literal["models", "chat"] = "models"  # models: list the models (free) | chat: one-token chat
    timeout: Positive = 10.0  # seconds one probe may take
    down_after: Count = 2  # consecutive failed probes that mark the backend down (and skip it in routing)
    model: Text | None = None  # the target a chat probe uses (default: the backend's first)


class Quota(Section):
    """A provider's daily allowance for one backend (all its targets) or one target (`quota:`).

    At `reserve` requests (or `reserve_tokens` tokens) left, routing skips it: the rest is kept
    back for what is already in flight and for other tools sharing the same account."""

    requests_per_day: Count | None = None
    tokens_per_day: Count | None = None
    reserve: Annotated[int, Meta(ge=0)] = 0
    reserve_tokens: Annotated[int, Meta(ge=0)] = 0
    reset_hour: Hour = 0  # local hour of the provider's daily reset ...
    timezone: Text = "UTC"  # ... in this IANA zone (Gemini's free tier: midnight America/Los_Angeles)


class BackendConfig(Section):
    """One upstream (`backends.<name>`). Keys other than the fields below are the type's own
    options (see `proxy/config/providers.py`), collected into `options`."""

    derived: ClassVar[frozenset[str]] = frozenset({"name", "options", "unavailable"})
    extra: ClassVar[str | None] = "options"
    name: str
    type: str  # one of providers.SPECS
    base_url: Text | None = None  # default: the type's (providers.SPECS[type].base_url)
    api_key: str | None = None
    api_keys: list[str] = []  # several keys used in rotation, each cooled down on its own 429s (api_key = the first)
    headers: dict[str, str] = {}  # sent with every upstream request
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    probe: ProbePolicy = field(default_factory=ProbePolicy)
    # upstream connections open at once (one per open stream): more wait for a free one
    max_connections: Count = 1000
    quota: Quota | None = None  # a daily allowance shared by all its targets
    options: dict[str, Any] = {}  # type-specific settings
    unavailable: str | None = None  # why it cannot be used (e.g. a missing key), None when usable


class Price(msgspec.Struct, forbid_unknown_fields=True):
    """USD per 1M tokens."""

    derived: ClassVar[frozenset[str]] = frozenset()
    input: NonNeg = 0.0
    output: NonNeg = 0.0
    cached: NonNeg | None = None


class Target(Section):
    """A model target (`models.<name>`): one backend's model with its price and abilities."""

    derived: ClassVar[frozenset[str]] = frozenset({"name", "price_source", "auto", "unavailable"})
    name: str
    backend: str
    model: Text  # default: the target's name
    price: Price = field(default_factory=Price)
    context_window: Count | None = None
    max_output_tokens: Count | None = None
    vision: bool = False  # default: the backend type's (Claude and Gemini read images)
    tools: bool = True
    json_schema: bool = True
    logprobs: bool = False  # answers with token log probabilities (default: the backend type's)
    kind: Literal["chat", "embedding"] | None = None  # what it serves; default: inferred from the model name
    options: dict[str, Any] = {}  # per-target provider options (they override the backend's)
    timeout: Positive | None = None  # seconds for one call to this target (to the first token for streams)
    quota: Quota | None = None  # a daily allowance of this target alone
    price_source: str | None = None  # "config", the built-in table's source and date, or None (costs 0)
    role: Literal["planning", "execution", "vision"] | None = None  # what `model: auto` chooses a model for
    auto: str | None = None  # `model: auto` once resolved at start: why this model (proxy/local/autoconfig.py)
    unavailable: str | None = None  # why routing skips this target (`model: auto` found nothing that fits)


class Range(Section):
    """A numeric condition: every bound given must hold (`complexity: 0.6` means gte 0.6)."""

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


class IntentCondition(Section):
    """`when: {intent: {name, examples | file, threshold}}`: the prompt is like one of the examples
    (proxy/semantic; `file` has one example per line and is read into `examples` at load)."""

    name: Text = "intent"
    examples: list[Text] = []
    file: str | None = None
    threshold: Annotated[float, Meta(ge=-1, le=1, description="a cosine similarity, at most 1")] = 0.6


class ClassifierCondition(Section):
    """`when: {classifier: {model, label, threshold}}`: a trained router says `label` (proxy/semantic)."""

    model: Text = "builtin"  # the shipped router (proxy/semantic/data/router.npz) or a file from `turnout train`
    label: Text = "cloud"
    threshold: Annotated[float, Meta(ge=0, le=1, description="a probability from 0 to 1")] | None = None
    # None: the threshold calibrated at training


class Conditions(Section):
    """A rule's `when`: all given conditions must hold (an empty one always matches)."""

    has_images: bool | None = None
    has_tools: bool | None = None
    turn: Literal["first", "followup"] | None = None  # first (no assistant turn yet: planning) | followup
    complexity: Range | None = None
    prompt_tokens: Range | None = None
    task: frozenset[Text] | None = None  # a name or a list of names
    tier: frozenset[Text] | None = None
    requirement: frozenset[Literal["quality", "speed", "budget"]] | None = None
    intent: IntentCondition | None = None  # semantic conditions: computed only when a rule reaches them
    classifier: ClassifierCondition | None = None

    @property
    def semantic(self) -> bool:
        return self.intent is not None or self.classifier is not None


class Group(Section):
    """A balanced chain element (`{group: [a, b], strategy: weighted, weights: {a: 3, b: 1}}` in a
    chain or a rule's `then`): equivalent targets put in order per request by `strategy`
    (proxy/routing/balance.py); the ones not chosen first stay behind it as fallbacks, in that order."""

    targets: list[Text] = field(name="group")
    strategy: Literal["weighted", "least_inflight", "latency"] = "weighted"
    weights: dict[str, Annotated[float, Meta(gt=0, description="a weight more than 0")]] = {}  # default 1 each
class CacheConfig(Section):
    """`cache:` at the top level: the response cache (proxy/cache/), on for every route unless turned off
    (`enabled: false`, or `cache: false` on a route or rule). Seeds' `enable_caching: true, cache_ttl: 3600`
    is `cache: {ttl: 3600}`."""

    enabled: bool = True
    ttl: Positive = 3600.0  # seconds an answer is served from the cache
    max_mb: Positive = 256.0  # the in-process store's bound (least recently used answers leave first)
    scope: Literal["key", "global"] = "key"  # key: one proxy key's answers never serve another | global
    length: bool = False  # also keep answers cut at max_tokens (finish_reason "length")


class CacheOverride(Section):
    """`cache:` on a route or a rule: what differs from the top level (`cache: false` = off there,
    `cache: true` or a mapping = on there even without a top-level `cache:`)."""

    enabled: bool = True
    ttl: Positive | None = None
    scope: Literal["key", "global"] | None = None
    length: bool | None = None


class Consensus(Section):
    """`consensus:` on a route or rule: ask several targets at once and answer with what most agree on
    (proxy/routing/consensus.py). Seeds' `consensus_models: 3, consensus_threshold: 0.66` is
    `consensus: {targets: [a, b, c], agree: 0.66}`."""

    targets: Annotated[list[Text], Meta(min_length=2)]
    agree: Annotated[float, Meta(gt=0, le=1, description="a share of the targets, above 0 and at most 1")] = 0.66
    on_disagreement: Literal["first", "judge", "error"] = "first"
    judge: Text | None = None  # the target that picks among the answers when on_disagreement is judge
    timeout: Positive | None = None  # seconds each member may take (default: its target's own)
    similarity: Annotated[float, Meta(ge=0, le=1)] = 0.8  # prose answers this similar count as the same
    semantic: Annotated[float, Meta(ge=-1, le=1, description="a cosine similarity, at most 1")] | None = None
    # also the same when the local embedding engine (turnout[semantic]) puts them at least this close


class Rule(Section):
    name: Text  # default: rule<i>
    then: list[str]  # the chain of targets this rule sends to (a group's targets written out in place)
    groups: list[Group] = []  # the balanced groups within `then` (written inline: `{group: [...]}`)
    when: Conditions = field(default_factory=Conditions)
    escalate: Annotated[int, Meta(ge=0)] = 0  # quality escalation: at most this many moves (true = 1)
    cache: CacheOverride | None = None  # the response cache here (over the route's and the top level's)
    consensus: Consensus | None = None  # ask several targets and answer with the majority


class Route(Section):
    """`routes.<name>`: a fallback chain (`routes.x: [a, b]` is short for `chain: [a, b]`) or rules."""

    derived: ClassVar[frozenset[str]] = frozenset({"name"})
    name: str
    chain: list[str] = []  # a plain route's fallback chain; for a rules route, every target it can use
    groups: list[Group] = []  # the balanced groups within a plain route's chain (written inline: `{group: [...]}`)
    description: str = ""
    rules: list[Rule] = []
    timeout: Positive | None = None  # a deadline for the whole chain, seconds
    cache: CacheOverride | None = None  # the response cache on this route (over the top level's)
    consensus: Consensus | None = None  # for every request of the route (a rule's own wins)


class CircuitPolicy(Section):
    failures: Count = 5  # consecutive failures that open the circuit
    cooldown: NonNeg = 30.0  # seconds open before one half-open trial


class Complexity(Section):
    """`routing.complexity`: keyword lists (a list replaces the default one) and weight overrides."""

    keywords: dict[str, list[str]] = {}
    weights: dict[str, Annotated[float, Meta(ge=-1)]] = {}
    base: float | None = None


class Overrides(Section):
    """`routing.overrides`: who may force a target, and how."""

    header: Text = "x-turnout-target"
    metadata: Text = "turnout_target"
    allow: Literal["all", "keys", "none"] = "keys"  # all | keys (those with allow_override) | none


class Routing(Section):
    """Settings of the routing engine (`routing:` in proxy.yaml)."""

    complexity_settings: Complexity = field(default_factory=Complexity, name="complexity")
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)
    override_policy: Overrides = field(default_factory=Overrides, name="overrides")

    @property
    def complexity(self) -> dict[str, Any]:
        """The complexity scorer's overrides as a mapping (only what the config gives)."""
        c = self.complexity_settings
        out: dict[str, Any] = {k: v for k, v in (("keywords", c.keywords), ("weights", c.weights)) if v}
        if c.base is not None:
            out["base"] = c.base
        return out

    @property
    def override_header(self) -> str:
        return self.override_policy.header

    @property
    def override_metadata(self) -> str:
        return self.override_policy.metadata

    @property
    def overrides(self) -> str:
        return self.override_policy.allow


class RateLimit(Section):
    """Per proxy key, over a sliding minute (`rate_limit:` on a key)."""

    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None


class Budget(Section):
    """USD per day and per month (`budget:` on a key, or `usage.budget` for everything)."""

    daily: NonNeg | None = None
    monthly: NonNeg | None = None
    alert: Annotated[float, Meta(ge=0, le=1, description="a share from 0 to 1 (or '80%')")] = 0.8  # log once (and show in metrics) at this share ('80%')
    on_exceeded: Literal["reject", "free_only"] = "reject"  # reject: 429 budget_exceeded | free_only: free targets


class Access(Section):
    """What a key, or every key of a tier (`tiers.<name>`), may name as `model`: routes and targets
    (None: any). A route allowed brings its own chain; a target must be allowed to be named directly
    or forced with the override header."""

    routes: frozenset[Text] | None = None
    targets: frozenset[Text] | None = None


class Key(Section):
    """A proxy key (`keys[i]`): who may call, with what limits."""

    key: str
    name: Text  # default: key<i>
    tier: str | None = None
    # admin: provider tests, every key's usage, the ledger export; user: its own usage only
    role: Literal["admin", "user"] = "user"
    routes: frozenset[Text] | None = None  # allow-lists (None: the tier's, else any): see Access
    targets: frozenset[Text] | None = None
    allow_override: bool = False  # may force a target with the override header / metadata
    rate_limit: RateLimit | None = None  # requests / tokens per minute
    budget: Budget | None = None  # USD per day / month
    usage: Literal["all", "own"] = "all"  # what /turnout/usage shows this key: every key's usage | its own


class ServerConfig(Section):
    host: Text = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 4000
    max_body_bytes: Count = DEFAULT_MAX_BODY
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line
    metrics_key_names: bool = False  # label request, token and cost metrics with the proxy key's name
    read_timeout: Annotated[float, Meta(gt=0)] = 30.0  # seconds a request's headers and body may take to arrive
    metrics_require_key: bool = False  # with keys: /metrics only for admin keys (Prometheus: authorization)
    drain_seconds: Annotated[float, Meta(ge=0)] = 30.0  # on SIGTERM, streams in flight get this long to finish
    allow_open: bool = False  # with no keys, listen beyond loopback anyway (anyone who reaches it may spend)
    allowed_hosts: list[Text] = []  # Host names an open Turnout answers besides loopback and `host`
    cors_origins: list[Text] = []  # browser origins allowed to call (preflight answered); none by default


class UsageConfig(Section):
    """`usage:` in proxy.yaml: where the ledger lives and what spending is allowed."""

    derived: ClassVar[frozenset[str]] = frozenset({"ledger_set"})
    ledger: Text | None = None  # SQLite file or postgresql:// URL; None: no ledger (counters in memory only); off: none
    ledger_set: bool = False  # the config named a ledger (or turned it off)
    flush_interval: Annotated[float, Meta(ge=0.01)] = 1.0  # seconds between batched writes (at most 1)
    batch_size: Count = 500  # rows that trigger a write before the interval is up
    features: bool = True  # record each request's routing features (for `turnout simulate` replays)
    timezone: Text = "UTC"  # the day and month of budgets and usage reports ...
    reset_hour: Hour = 0  # ... start at this local hour
    baseline: Text | None = None  # the all-cloud model savings are measured against (target or known model)
    budget: Budget | None = None  # the overall budget
    retention_days: Count | None = None  # delete ledger rows older than this (None: keep them all)


class ResponsesConfig(Section):
    """`responses:` — stored Responses (`/v1/responses` with `store`, `previous_response_id`, GET and
    DELETE by id), kept in the usage ledger's database (proxy/usage/stored.py)."""

    store: bool = True  # keep responses when the ledger is on; false: never (an explicit store: true is a 400)
    ttl_days: Annotated[float, Meta(gt=0, description="a number of days above 0")] = 30.0  # then they expire


class RedisConfig(Section):
    """`state.redis`: counters, circuit breakers and the key-value store shared by every replica
    (proxy/state/redis.py). `on_error`: what a replica does while Redis cannot be reached — `local`
    carries on with its own counters (limits then hold per replica), `reject` refuses the requests
    that need a shared limit (503). `timeout`: seconds any one Redis call may take."""

    url: Text = "redis://127.0.0.1:6379/0"
    prefix: str = "turnout:"  # every key starts with this (several gateways may share one Redis)
    on_error: Literal["local", "reject"] = "local"
    timeout: Annotated[float, Meta(ge=0.001, le=10)] = 0.05


class StateConfig(Section):
    """`state:`: where counters, breakers and cached values live. None: in this process (MemoryState)."""

    redis: RedisConfig | None = None


class Config(Section):
    """The whole config: what `load()` and `parse()` return."""

    derived: ClassVar[frozenset[str]] = frozenset({"path"})
    server: ServerConfig = field(default_factory=ServerConfig)
    backends: dict[str, BackendConfig] = {}
    models: dict[str, Target] = {}
    routes: dict[str, Route] = {}
    keys: list[Key] = []
    tiers: dict[str, Access] = {}  # per-tier defaults of keys' allow-lists
    routing: Routing = field(default_factory=Routing)
    usage: UsageConfig = field(default_factory=UsageConfig)
    cache: CacheConfig | None = None  # the response cache (None: off unless a route or rule turns it on)
    state: StateConfig = field(default_factory=StateConfig)
    aliases: dict[str, str] = {}  # other names clients send for routes or targets (claude-sonnet-4-5: auto)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    path: str | None = None  # the file it was read from
