"""Reading proxy.yaml: the file, `${VAR}` / `${VAR:-default}` interpolation, and the steps of `parse`.

Interpolation: `${VAR}` takes the environment's value, `${VAR:-default}` the default when VAR is
unset or empty. A value that is nothing but one `${…}` takes YAML's reading of the result (a port
becomes an int, `true` a bool, empty nothing). A variable that is unset and has no default leaves
an empty string and is remembered by path: a cloud backend whose `api_key` came out empty that way
is not an error but kept, marked unavailable (``no API key (${GEMINI_API_KEY} is not set)``), and
skipped by routing, so one config serves machines with different keys.

`parse` = interpolate → `checks.expand` (shorthands) → `decode` (strict types, unknown keys) →
provider options against `providers.SPECS` → `checks.check` (cross-references) → resolution
(unavailable backends, default base URLs, built-in prices).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from proxy.config import checks, decode, prices
from proxy.config.providers import SPECS
from proxy.config.schema import DEFAULT_LEDGER, BackendConfig, Config, ConfigError, ConfigUnreadable

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file. With no `usage.ledger`, the ledger is
    $TURNOUT_LEDGER, else `DEFAULT_LEDGER` (relative to the working directory)."""
    env = os.environ if env is None else env
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigUnreadable(f"{p}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    cfg = parse(raw, env)
    cfg.path = str(p)
    if not cfg.usage.ledger_set:
        cfg.usage.ledger = env.get("TURNOUT_LEDGER") or DEFAULT_LEDGER
    return cfg


def parse(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """A config from plain data (what YAML gives); no ledger unless it names one."""
    env = os.environ if env is None else env
    missing: dict[str, list[str]] = {}
    data = checks.expand(interpolate(raw, env, "", missing))
    cfg: Config = decode.struct(data, Config, "")
    for name, b in cfg.backends.items():
        decode.struct(b.options, SPECS[b.type].options, f"backends.{name}")  # the type's own options
    checks.check(cfg)
    if missing.get("usage.ledger"):  # a fleet's ledger named by an unset variable must not quietly turn off
        var = missing["usage.ledger"][0]
        raise ConfigError(f"usage.ledger: ${{{var}}} is not set (write ${{{var}:-off}} to run without a ledger)")
    for name, b in cfg.backends.items():
        _resolve(b, missing)
    for name, t in cfg.models.items():
        if "price" in data["models"][name]:
            t.price_source = "config"
    prices.apply(cfg.models, cfg.backends)  # unpriced cloud targets take the built-in table's price
    cfg.usage.ledger_set = "ledger" in data.get("usage", {})
    return cfg


def _resolve(b: BackendConfig, missing: dict[str, list[str]]) -> None:
    """A backend's default base URL, and whether a missing key makes it unavailable."""
    spec = SPECS[b.type]
    if b.base_url is None and spec.base_url is not None:
        b.base_url = spec.base_url
    if b.api_key:
        return
    asked = missing.get(f"backends.{b.name}.api_key")
    if spec.key == "required":
        b.unavailable = f"no API key ({'${' + asked[0] + '} is not set' if asked else 'api_key is empty'})"
    elif spec.key == "optional" and asked:
        # an OpenAI-compatible local server needs no key, but a key that was asked for and is unset is missing
        b.unavailable = f"no API key (${{{asked[0]}}} is not set)"


def interpolate(node: Any, env: Mapping[str, str], path: str, missing: dict[str, list[str]]) -> Any:
    """`node` with every `${VAR}` / `${VAR:-default}` replaced; unset variables recorded by path."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
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
