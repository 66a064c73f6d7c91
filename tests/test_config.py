"""The typed, strict config: unknown keys rejected with a path and a suggestion, one error format,
the shorthands, interpolation, provider specs and the one rule for "local", and the CLI's words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy import __version__
from proxy.config import ConfigError, load, parse, providers
from proxy.observability.metrics import is_local as metrics_local

ROOT = Path(__file__).resolve().parents[1]
MOCK = {"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}}


def error(raw: dict, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        parse(raw, env or {})
    return str(e.value)


@pytest.mark.parametrize("patch, message", [
    ({"keys": [{"key": "k", "budget_usd_per_day": 3}]}, "keys[0].budget_usd_per_day: unknown field; did you mean budget?"),
    ({"servr": {}}, "servr: unknown field; did you mean server?"),
    ({"server": {"prot": 1}}, "server.prot: unknown field; did you mean port?"),
    ({"backends": {"m": {"type": "mock", "retry": {"atempts": 2}}}}, "backends.m.retry.atempts: unknown field; did you mean attempts?"),
    ({"backends": {"m": {"type": "mock", "latncy": 1}}}, "backends.m.latncy: unknown field; did you mean latency?"),
    ({"backends": {"g": {"type": "gemini", "api_key": "k", "images": {"max_byte": 1}}}},
     "backends.g.images.max_byte: unknown field; did you mean max_bytes?"),
    ({"backends": {"c": {"type": "anthropic", "api_key": "k", "thinking": {"budget_token": 2000}}}},
     "backends.c.thinking.budget_token: unknown field; did you mean budget_tokens?"),
    ({"backends": {"o": {"type": "openai", "api_key": "k", "max_tokens": 5}}}, "backends.o.max_tokens: unknown field"),
    ({"models": {"t": {"backend": "m", "prise": {"input": 1}}}}, "models.t.prise: unknown field; did you mean price?"),
    ({"models": {"t": {"backend": "m", "name": "x"}}}, "models.t.name: unknown field"),  # derived, not an input
    ({"routes": {"r": {"rules": [{"then": ["t"], "when": {"has_image": True}}]}}},
     "routes.r.rules[0].when.has_image: unknown field; did you mean has_images?"),
    ({"routing": {"overrides": {"allow": "some"}}}, "routing.overrides.allow: expected all, keys or none, got 'some'"),
    ({"server": {"port": "http"}}, "server.port: expected an integer, got 'http'"),
    ({"backends": {"m": {"type": "mock", "retry": {"attempts": 0}}}}, "backends.m.retry.attempts: must be at least 1, got 0"),
    ({"usage": {"budget": {"daily": 1, "alert": "180%"}}}, "usage.budget.alert: expected a share from 0 to 1 (or '80%'), got 1.8"),
    ({"routes": {"r": {"rules": [{"then": ["t"], "when": {"requirement": "fast"}}]}}},
     "routes.r.rules[0].when.requirement[0]: expected quality, speed or budget, got 'fast'"),
    ({"routes": {"r": ["t", "nope"]}}, "routes.r.chain[1]: unknown model target 'nope'"),
    ({"backends": {"m": {"type": "mock", "probe": {"model": "t2"}}}}, "backends.m.probe.model: 't2' is not a model"),
    ({"backends": {"m": {"type": "mokc"}}}, "backends.m.type: unknown backend type 'mokc'"),
])
def test_every_error_names_its_path(patch, message):
    raw = {k: {**MOCK.get(k, {}), **v} if isinstance(v, dict) else v for k, v in patch.items()}  # one level deep
    assert error({**MOCK, **raw}).startswith(message)


def test_shorthands_mean_their_long_forms():
    cfg = parse({**MOCK, "backends": {"m": {"type": "mock", "timeout": 30, "probe": False}},
                 "models": {"t": {"backend": "m"}, "u": {"backend": "m", "model": "other"}},
                 "routes": {"chain": ["t", "u"],
                            "rules": {"rules": [{"when": {"turn": "follow-up", "complexity": 0.6, "task": "code"},
                                                 "then": ["u"], "escalate": True}, {"then": ["t"]}]}},
                 "keys": [{"key": "sk-1", "budget": {"daily": 2, "alert": "50%"}}],
                 "usage": {"ledger": "off"}}, {})
    t = cfg.backends["m"].timeout
    assert (t.connect, t.first_token, t.idle, t.total) == (5.0, 30.0, 30.0, 30.0)
    assert cfg.backends["m"].probe.interval == 0 and cfg.backends["m"].options == {}
    assert cfg.models["t"].model == "t" and cfg.models["u"].model == "other"
    assert cfg.routes["chain"].chain == ["t", "u"] and not cfg.routes["chain"].rules
    r = cfg.routes["rules"]
    assert r.chain == ["u", "t"] and [x.name for x in r.rules] == ["rule0", "rule1"]
    w = r.rules[0].when
    assert (w.turn, w.complexity.gte, w.task, r.rules[0].escalate) == ("followup", 0.6, frozenset({"code"}), 1)
    assert cfg.keys[0].name == "key0" and cfg.keys[0].budget.alert == 0.5
    assert cfg.usage.ledger is None and cfg.usage.ledger_set


def test_interpolation_coerces_whole_values_and_a_missing_key_makes_a_backend_unavailable():
    raw = {"server": {"port": "${PORT}", "host": "${HOST:-0.0.0.0}"},
           "backends": {"g": {"type": "gemini", "api_key": "${GEMINI_KEY}"},
                        "o": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "${VLLM_KEY}"},
                        "free": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
                        "c": {"type": "anthropic", "api_key": "pre-${C_KEY}"}},
           "models": {"f": {"backend": "g"}}}
    cfg = parse(raw, {"PORT": "4100", "C_KEY": "abc"})
    assert cfg.server.port == 4100 and cfg.server.host == "0.0.0.0"
    assert cfg.backends["g"].unavailable == "no API key (${GEMINI_KEY} is not set)"
    assert cfg.backends["o"].unavailable == "no API key (${VLLM_KEY} is not set)"
    assert cfg.backends["free"].unavailable is None and cfg.backends["c"].api_key == "pre-abc"
    assert cfg.backends["g"].base_url == providers.SPECS["gemini"].base_url
    assert cfg.models["f"].vision is True  # the gemini spec's default


def test_the_ledger_defaults_to_turnout_ledger_for_every_config(tmp_path):
    path = tmp_path / "any.yaml"
    path.write_text(yaml.safe_dump(MOCK))
    assert load(path, {"TURNOUT_LEDGER": str(tmp_path / "l.db")}).usage.ledger == str(tmp_path / "l.db")
    assert load(path, {}).usage.ledger == ".turnout/usage.sqlite"
    path.write_text(yaml.safe_dump({**MOCK, "usage": {"ledger": "off"}}))
    assert load(path, {"TURNOUT_LEDGER": "x.db"}).usage.ledger is None


def test_one_rule_for_local():
    for url, local in (("http://172.20.1.5:8000/v1", True), ("http://10.1.2.3", True), ("http://192.168.1.9", True),
                       ("http://[::1]:8080", True), ("http://[fd00::5]/v1", True), ("http://169.254.1.1", True),
                       ("http://localhost:11434", True), ("http://172.32.0.1", False), ("https://api.openai.com/v1", False),
                       ("http://8.8.8.8", False)):
        assert providers.local_host(url) is local, url
    cfg = parse({"backends": {"v": {"type": "openai", "base_url": "http://172.20.1.5:8000/v1"},
                              "o": {"type": "ollama", "base_url": "http://gpu-box.example:11434"},
                              "c": {"type": "openai", "api_key": "k"}},
                 "models": {"v": {"backend": "v", "model": "gpt-4o"}, "o": {"backend": "o"},
                            "c": {"backend": "c", "model": "gpt-4o"}}}, {})
    # 172.16/12 is private: no built-in price, and local in the metrics as in pricing
    assert cfg.models["v"].price_source is None and metrics_local(cfg.backends["v"], cfg.models["v"])
    assert metrics_local(cfg.backends["o"], cfg.models["o"])
    assert cfg.models["c"].price_source.startswith("built-in") and not metrics_local(cfg.backends["c"], cfg.models["c"])


def test_every_shipped_config_loads():
    for path in (ROOT / "proxy.yaml", ROOT / "proxy" / "demo.yaml", ROOT / "proxy" / "demo-local.yaml"):
        cfg = load(path, {})
        assert cfg.backends and cfg.models, path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_cli_version_and_a_missing_file(tmp_path):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"turnout {__version__}"
    r = cli("check-config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "No such file or directory" in r.stderr
    assert "invalid config" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MOCK, "keys": [{"key": "k", "budget_usd_per_day": 3}]}))
    r = cli("check-config", str(bad))
    assert r.returncode == 2
    assert "invalid config: keys[0].budget_usd_per_day: unknown field; did you mean budget?" in r.stderr
