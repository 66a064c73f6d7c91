"""Issue 12, "everything a user touches tells the truth": what a new user met on the shipped configs
(proxy.yaml, proxy/demo.yaml), each pinned by a test that failed before its fix."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest
import yaml

from proxy.cli import DEMO_CONFIG
from proxy.cli import main as cli_main
from proxy.config import load, parse
from proxy.routing.quality import weakness
from proxy.server.assembly import build_app
from proxy.usage import tokens
from tests.conftest import ServerThread, free_port, post
from tests.test_simulate import cli

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "proxy.yaml"
KEYS = ("GEMINI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "TURNOUT_CONFIG", "TURNOUT_LEDGER")
COMPLEX = "Make it feel more magical but less scary"  # demo: complex -> flaky (fails) -> cloud
SIMPLE = "Make it brighter"  # demo: simple -> local


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ask(base: str, model: str, text: str) -> httpx.Response:
    return post(base, {"model": model, "messages": [{"role": "user", "content": text}]})


@pytest.fixture
def demo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory where `turnout demo` ran: its default ledger holds 2 complex asks (each failed on
    flaky-cloud, then answered by cloud-smart) and 1 simple one; no proxy.yaml, no keys set."""
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    s = ServerThread(build_app(load(DEMO_CONFIG))).start()
    try:
        for text in (COMPLEX, COMPLEX, SIMPLE):
            assert ask(s.url, "auto", text).status_code == 200
    finally:
        s.stop()  # flushes the ledger
    assert (tmp_path / ".turnout" / "usage.sqlite").exists()
    return tmp_path


# --- turnout simulate on the shipped configs ---------------------------------------------------

MIX = {"model": "auto", "requests_per_day": 20, "days": 2, "tasks": [
    {"name": "chat", "share": 0.6, "prompt_tokens": 400, "completion_tokens": 150, "complexity": 0.2},
    {"name": "hard", "share": 0.4, "prompt_tokens": 2000, "completion_tokens": 800, "complexity": 0.7}]}
CLOUD_BACKENDS = {"gemini", "claude", "openai"}


@pytest.mark.parametrize("config", [SHIPPED, DEMO_CONFIG], ids=["proxy.yaml", "demo.yaml"])
def test_simulate_a_mix_on_the_shipped_configs(config: Path, demo_dir: Path) -> None:
    (demo_dir / "traffic.yaml").write_text(yaml.safe_dump(MIX))
    res = json.loads(cli("simulate", str(config), "--mix", "traffic.yaml", "--json"))
    assert res["totals"]["calls"] == 40
    text = cli("simulate", str(config), "--mix", "traffic.yaml")
    assert "Simulation of" in text and "per task:" in text
    if config == SHIPPED:  # no keys set: the cloud backends are skipped, so nothing is priced there
        assert not {t["backend"] for t in res["targets"]} & CLOUD_BACKENDS
        assert set(res["skipped_backends"]) >= {"gemini", "claude"}
        assert "skipped backend gemini: no API key" in text


@pytest.mark.parametrize("config", [SHIPPED, DEMO_CONFIG], ids=["proxy.yaml", "demo.yaml"])
def test_simulate_a_replay_on_the_shipped_configs(config: Path, demo_dir: Path) -> None:
    ledger = str(demo_dir / ".turnout" / "usage.sqlite")
    res = json.loads(cli("simulate", str(config), "--ledger", ledger, "--json"))
    assert res["totals"]["calls"] + sum(res["unserved"].values()) == 3
    assert res["totals"]["calls"] >= 1
    if config == SHIPPED:
        assert not {t["backend"] for t in res["targets"]} & CLOUD_BACKENDS
    assert "Simulation of" in cli("simulate", str(config), "--ledger", ledger)


# --- turnout usage -----------------------------------------------------------------------------


def test_usage_after_demo_reads_the_ledger_alone(demo_dir: Path) -> None:
    assert not (demo_dir / "proxy.yaml").exists()
    plain = json.loads(cli("usage", "--json"))  # the default ledger of the directory
    given = json.loads(cli("usage", "--json", "--ledger", str(demo_dir / ".turnout" / "usage.sqlite")))
    assert plain["totals"]["requests"] == given["totals"]["requests"] == 3
    assert "cloud-smart" in cli("usage")


def test_failed_attempts_count_as_calls_of_their_target(demo_dir: Path) -> None:
    d = json.loads(cli("usage", "--config", str(DEMO_CONFIG), "--json"))
    targets = {t["name"]: t for b in d["backends"] for t in b["targets"]}
    assert targets["flaky-cloud"]["calls"] == 2 and targets["flaky-cloud"]["failed_attempts"] == 2
    assert targets["flaky-cloud"]["calls_today"] == 2 and targets["flaky-cloud"]["calls_total"] == 2
    assert targets["cloud-smart"]["calls"] == 2 and targets["local-small"]["calls"] == 1
    assert d["totals"]["requests"] == 3 and d["totals"]["calls"] == 5
    assert abs(sum(t["share"] for t in targets.values()) - 1) < 1e-4
    row = next(ln for ln in cli("usage", "--config", str(DEMO_CONFIG)).splitlines() if ln.startswith("  flaky-cloud"))
    assert row.split()[1] == "2"


def test_negative_savings_read_as_costing_more(demo_dir: Path) -> None:
    raw = cli("usage", "--config", str(DEMO_CONFIG), "--json", "--baseline", "gpt-4o-mini")
    d = json.loads(raw)
    s = d["totals"]["savings_usd"]
    assert s < 0 and s == round(s, 10)
    assert not re.search(r"\d\.\d{11,}|\d{11,}e-", raw), "money in JSON carries float noise"
    text = cli("usage", "--config", str(DEMO_CONFIG), "--baseline", "gpt-4o-mini")
    assert "$-" not in text and "saved" not in text
    assert re.search(r"cost \$[0-9.]+ more \(\+\d+\.\d %\)", text), text
    sim = cli("simulate", str(DEMO_CONFIG), "--baseline", "gpt-4o-mini")
    assert "$-" not in sim and re.search(r"cost \$[0-9.e-]+ more \(\+", sim), sim


# --- health, readiness, check-config -----------------------------------------------------------


def test_a_backend_with_no_success_is_not_healthy(turnout) -> None:
    base = turnout({"backends": {"limited": {"type": "mock", "fail": {"status": 429}, "probe": {"interval": 0}}},
                    "models": {"m": {"backend": "limited"}}})
    for _ in range(2):  # rate limits: they do not count towards the circuit, but nothing succeeded
        assert ask(base, "m", "hi").status_code == 429
    p = httpx.get(base + "/turnout/providers").json()["providers"][0]["health"]
    assert p["success_rate"] == 0 and p["state"] == "degraded", p
    tile = httpx.get(base + "/turnout/stats").json()["health"]["backends"][0]  # the dashboard's tile
    assert tile["state"] == "degraded"


def test_ready_reflects_a_local_backend_that_refuses_connections(turnout) -> None:
    base = turnout({"backends": {"local": {"type": "ollama", "base_url": f"http://127.0.0.1:{free_port()}",
                                           "timeout": {"connect": 0.5}, "probe": {"interval": 0.2, "timeout": 1}}},
                    "models": {"m": {"backend": "local", "model": "llama3.2:3b"}}})
    wait_for(lambda: httpx.get(base + "/ready").status_code == 503, "/ready to say not ready", timeout=5)
    body = httpx.get(base + "/ready").json()
    assert body["status"] == "unavailable" and body["backends"]["local"] != "usable", body


def test_check_config_gives_one_status_per_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "backends": {"local": {"type": "ollama", "base_url": f"http://127.0.0.1:{free_port()}"}},
        "models": {"m": {"backend": "local", "model": "llama3.2:3b"}}}))
    cli_main(["check-config", str(path)])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("local (ollama"))
    assert "usable" not in line and "NOT REACHABLE" in line, line
    assert "local: not reachable at" in out


# --- routing headers, tokenizer, quality ---------------------------------------------------------


def test_fallbacks_are_listed_in_chain_order(turnout) -> None:
    base = turnout({"backends": {"down": {"type": "mock", "fail": {"status": 503}},
                                 "keyless": {"type": "openai", "api_key": "${NOPE_KEY}"},
                                 "up": {"type": "mock"}},
                    "models": {"a": {"backend": "down"}, "b": {"backend": "keyless", "model": "x"},
                               "c": {"backend": "up"}},
                    "routes": {"r": ["a", "b", "c"]}}, env={})
    r = ask(base, "r", "hi")
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "c"
    fb = r.headers["x-turnout-fallbacks"]
    assert fb.startswith("a: 502") and fb.index("a: ") < fb.index("b: skipped"), fb


def test_the_tokenizer_loads_at_start_not_on_the_first_request(serve) -> None:
    tokens.encoding.cache_clear()
    serve(build_app(parse({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}})))
    wait_for(lambda: tokens.encoding.cache_info().currsize == 1, "the tokenizer to load with no request")


@pytest.mark.parametrize("text", ["I'm sorry, I can't help with that.", "I apologize, but I cannot assist.",
                                  "I\u2019m sorry, but I can\u2019t do that.", "Unfortunately, I am unable to help.",
                                  "Sorry, I won't write that."])
def test_common_refusals_are_weak(text: str) -> None:
    assert weakness({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}, {}) == "refused"


@pytest.mark.parametrize("text", ["Sorry for the wait: here it is.", "I cannot wait to show you!",
                                  "I canoe on weekends.", "Sure, here it is."])
def test_answers_are_not_refusals(text: str) -> None:
    assert weakness({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}, {}) is None


def test_a_refusal_escalates_to_the_next_target(turnout) -> None:
    base = turnout({"backends": {"shy": {"type": "mock", "reply": "I apologize, but I cannot assist."},
                                 "ok": {"type": "mock"}},
                    "models": {"a": {"backend": "shy"}, "b": {"backend": "ok"}},
                    "routes": {"r": {"rules": [{"name": "all", "then": ["a", "b"], "escalate": 1}]}}})
    r = ask(base, "r", "hi")
    assert r.headers["x-turnout-model"] == "b" and r.headers["x-turnout-escalated"] == "a: refused"
