"""proxy.yaml, typed and strict: `load(path)` / `parse(data)` give a `Config` or raise `ConfigError`.

Owns: `schema` (the typed sections, their defaults and field docs: what every consumer reads),
`loading` (the file, `${VAR}` / `${VAR:-default}` interpolation, the steps of parsing), `decode`
(strict conversion: every unknown key rejected with its path and a suggestion), `checks`
(shorthands before conversion, cross-references after), `providers` (one `ProviderSpec` per backend
type and the one rule for "local"), `prices` (the built-in price table unpriced targets take).

Every error is one `ConfigError` reading ``path: message`` (``keys[0].budget_usd_per_day: unknown
field; did you mean budget?``), raised at start so an operator never meets a typo at request time.
A cloud backend whose key is unset is not an error: it is kept, marked unavailable, and skipped.
"""

from proxy.config.loading import load, parse
from proxy.config.schema import (
    DEFAULT_LEDGER,
    DEFAULT_MAX_BODY,
    ON_EXCEEDED,
    REQUIREMENTS,
    TURNS,
    BackendConfig,
    Budget,
    CircuitPolicy,
    ClassifierCondition,
    Complexity,
    Conditions,
    Config,
    ConfigError,
    ConfigUnreadable,
    Group,
    CacheConfig,
    CacheOverride,
    Consensus,
    IntentCondition,
    Key,
    Overrides,
    Price,
    ProbePolicy,
    Quota,
    Range,
    RateLimit,
    RetryPolicy,
    Route,
    Routing,
    Rule,
    ServerConfig,
    Target,
    Timeouts,
    UsageConfig,
)

__all__ = [
    "DEFAULT_LEDGER", "DEFAULT_MAX_BODY", "ON_EXCEEDED", "REQUIREMENTS", "TURNS", "BackendConfig", "Budget",
    "CacheConfig", "CacheOverride", "CircuitPolicy", "Consensus", "ClassifierCondition", "Complexity", "Conditions", "Config", "ConfigError", "ConfigUnreadable", "Group", "IntentCondition", "Key", "Overrides", "Price",
    "ProbePolicy", "Quota", "Range", "RateLimit", "RetryPolicy", "Route", "Routing", "Rule", "ServerConfig",
    "Target", "Timeouts", "UsageConfig", "load", "parse",
]
