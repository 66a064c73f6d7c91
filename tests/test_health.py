"""Issue 8: provider health. Probes and real traffic move each backend between healthy, degraded
and down; a down backend leaves routing and comes back when its probes succeed; the providers
endpoints list everything (never a key) and test one backend with a real request."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx
import pytest

from proxy.config import ConfigError, parse
from proxy.mock.server import build_mock_upstream
from tests.conftest import ServerThread, free_port, post
from tests.test_metrics import scrape, value


def providers(base: str, **kw: Any) -> dict[str, Any]:
    r = httpx.get(base + "/turnout/providers", timeout=10, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def health_of(base: str, name: str) -> dict[str, Any]:
    return next(p for p in providers(base)["providers"] if p["name"] == name)["health"]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


CLIENT = httpx.Client(timeout=30)  # one pool: a new client per request costs ~50 ms


def ask(base: str, model: str, text: str = "hello", **kw: Any) -> httpx.Response:
    return CLIENT.post(base + "/v1/chat/completions",
                       json={"model": model, "messages": [{"role": "user", "content": text}], **kw})


def test_probes_take_a_dead_backend_out_of_rotation_and_bring_it_back(turnout, caplog):
    port = free_port()
    upstream = ServerThread(build_mock_upstream({}), port).start()
    base = turnout({
        "backends": {
            "remote": {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "timeout": {"connect": 0.5},
                       "probe": {"interval": 0.1, "down_after": 2, "timeout": 1}},
            "local": {"type": "mock", "probe": {"interval": 0}},
        },
        "models": {"remote-t": {"backend": "remote", "model": "m", "price": {"input": 1, "output": 1}},
                   "local-t": {"backend": "local"}},
        "routes": {"r": ["remote-t", "local-t"]},
    })
    try:
        wait_for(lambda: (health_of(base, "remote")["last_probe"] or {}).get("result") == "ok", "a first probe")
        assert health_of(base, "remote")["state"] == "healthy"
        assert ask(base, "r").headers["x-turnout-model"] == "remote-t"
        upstream.stop()  # the upstream dies: probes fail with network errors

        wait_for(lambda: health_of(base, "remote")["state"] == "down", "remote to be down")
        h = health_of(base, "remote")
        assert h["probe_failures"] >= 2 and h["errors"].get("network", 0) >= 2 and h["uptime_seconds"] == 0
        assert h["last_error"]["category"] == "network" and h["last_error"]["source"] == "probe"
        doc = providers(base)
        assert doc["status"] == "degraded" and "remote down" in doc["reason"]
        # routing skips it before wasting a request on it
        r = ask(base, "r")
        assert r.status_code == 200 and r.headers["x-turnout-model"] == "local-t"
        assert "remote-t: skipped: unhealthy" in r.headers["x-turnout-fallbacks"]
        m = scrape(base)
        assert value(m, "turnout_fallbacks_total", **{"from": "remote-t", "to": "local-t"}, reason="unhealthy") == 1
        assert value(m, "turnout_backend_health", backend="remote") == 2
        assert value(m, "turnout_probes_total", backend="remote", result="failed") >= 2

        upstream = ServerThread(build_mock_upstream({}), port).start()  # it comes back
        wait_for(lambda: health_of(base, "remote")["state"] == "healthy", "remote to recover")
        assert ask(base, "r").headers["x-turnout-model"] == "remote-t"
        assert providers(base)["status"] == "healthy"
    finally:
        upstream.stop()
    logs = [r.getMessage() for r in caplog.records if r.name == "turnout.health"]
    assert any("remote is down" in x for x in logs) and any("remote is healthy (was down)" in x for x in logs)


def test_passive_failures_open_the_circuit_and_a_probe_ends_the_cooldown(turnout, caplog):
    base = turnout({
        "backends": {"m": {"type": "mock", "probe": {"interval": 0.5}},
                     "other": {"type": "mock", "probe": {"interval": 0}}},
        "models": {"t": {"backend": "m"}, "o": {"backend": "other"}},
        "routing": {"circuit": {"failures": 2, "cooldown": 60}},
    })
    assert ask(base, "t", "[mock:status=500]").status_code == 502
    h = health_of(base, "m")
    assert h["state"] == "degraded" and h["consecutive_failures"] == 1 and h["errors"] == {"server": 1}
    assert ask(base, "t", "[mock:status=500]").status_code == 502
    assert any("backend m is down (was degraded): circuit open after 2 failures" in r.getMessage()
               for r in caplog.records)
    # the next probe lists the models fine: the 60 s cool-down ends early, but a models probe does
    # not vouch for chat requests, so the backend stays degraded until a trial request answers
    wait_for(lambda: health_of(base, "m")["circuit"]["state"] == "half_open", "the probe to end the cool-down", 3)
    h = health_of(base, "m")
    assert h["state"] == "degraded" and "half-open" in h["reason"]
    assert providers(base)["status"] == "degraded"  # "other" is healthy
    assert ask(base, "t").status_code == 200
    assert health_of(base, "m")["circuit"]["state"] == "closed"
    h = health_of(base, "m")
    assert h["state"] == "healthy" and h["success_rate"] == pytest.approx(1 / 3, abs=0.01)
    names = [r.getMessage() for r in caplog.records if r.name in ("turnout.circuit", "turnout.health")]
    assert any("circuit m opened" in x for x in names) and any("circuit m closed" in x for x in names)


def test_errors_by_category_success_rate_and_latency(turnout):
    base = turnout({
        "backends": {"m": {"type": "mock", "latency": 0.01, "timeout": {"first_token": 0.2},
                           "probe": {"interval": 0}}},
        "models": {"t": {"backend": "m"}},
        "routing": {"circuit": {"failures": 50}},
    })
    for text in ("[mock:status=429]", "[mock:hang]", "[mock:status=401]", "[mock:status=500]", "ok", "ok",
                 "[mock:status=400]"):
        ask(base, "t", text)
    assert ask(base, "t", "[mock:drop=0]", stream=True).status_code == 502
    h = health_of(base, "m")
    # the client's own 400 counts as the backend working, but is listed
    assert h["errors"] == {"rate_limit": 1, "timeout": 1, "auth": 1, "server": 1, "network": 1, "client": 1}
    assert h["attempts"] == 8 and h["failures"] == 5
    assert h["success_rate"] == pytest.approx(3 / 8, abs=1e-3)
    assert h["state"] == "degraded" and h["consecutive_failures"] == 1
    assert 10 <= h["latency_ms"]["p50"] < 1000
    for _ in range(8):  # a run of successes: healthy again once the window's success rate is back over 90 %
        ask(base, "t")
    assert health_of(base, "m")["state"] == "degraded"  # 11 of 16 is not enough
    for _ in range(40):
        ask(base, "t")
    assert health_of(base, "m")["state"] == "healthy"


def test_providers_list_models_health_and_never_keys(serve, turnout):
    up = serve(build_mock_upstream({}))
    base = turnout({
        "backends": {
            "cloud": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-live-abcdefghijklmnop123456",
                      "probe": {"interval": 0}},
            "gem": {"type": "gemini", "api_key": "${GEMINI_API_KEY}"},
            "local": {"type": "mock"},
        },
        "models": {"gpt": {"backend": "cloud", "model": "gpt-x", "price": {"input": 2, "output": 8}},
                   "flash": {"backend": "gem", "model": "gemini-2.0-flash"},
                   "small": {"backend": "local", "vision": True}},
        "keys": [{"key": "sk-proxy-key-0001", "name": "ops"}],
    })
    assert httpx.get(base + "/turnout/providers").status_code == 401
    doc = providers(base, headers={"authorization": "Bearer sk-proxy-key-0001"})
    text = httpx.get(base + "/turnout/providers", headers={"authorization": "Bearer sk-proxy-key-0001"}).text
    assert "sk-live" not in text and "sk-proxy" not in text
    by = {p["name"]: p for p in doc["providers"]}
    assert by["cloud"]["key_set"] is True and by["cloud"]["available"] is True
    assert by["cloud"]["base_url"] == up + "/v1"
    assert by["cloud"]["models"][0] == {"name": "gpt", "model": "gpt-x", "price": {"input": 2.0, "output": 8.0},
                                        "vision": False, "tools": True, "context_window": None, "locality": "cloud"}
    assert by["gem"]["key_set"] is False and by["gem"]["available"] is False
    assert by["gem"]["health"]["state"] == "unavailable" and "GEMINI_API_KEY" in by["gem"]["unavailable_reason"]
    assert by["local"]["models"][0]["locality"] == "local" and by["local"]["health"]["state"] == "healthy"
    assert doc["status"] == "healthy"  # an unavailable backend does not degrade the system


def test_test_endpoint_makes_one_real_request(serve, turnout):
    up = serve(build_mock_upstream({}))
    base = turnout({
        "backends": {
            "cloud": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-test-abcdefghijklmnop999",
                      "probe": {"interval": 0}},
            "broken": {"type": "mock", "fail": {"status": 503}, "probe": {"interval": 0}},
            "none": {"type": "openai", "api_key": "${NOPE}"},
            "bare": {"type": "mock"},
        },
        "models": {"gpt": {"backend": "cloud", "model": "gpt-x", "price": {"input": 2, "output": 8}},
                   "gpt-mini": {"backend": "cloud", "model": "gpt-mini"},
                   "b": {"backend": "broken"}, "n": {"backend": "none"}},
    })
    r = httpx.post(base + "/turnout/providers/cloud/test", timeout=30)
    d = r.json()
    assert r.status_code == 200 and d["ok"] is True and d["target"] == "gpt" and d["model"] == "gpt-x"
    assert d["latency_ms"] > 0 and d["reply"] and d["usage"]["prompt_tokens"] > 0 and d["cost_usd"] > 0
    assert d["health"] == "healthy"
    d = httpx.post(base + "/turnout/providers/cloud/test", json={"model": "gpt-mini"}, timeout=30).json()
    assert d["ok"] is True and d["target"] == "gpt-mini"
    r = httpx.post(base + "/turnout/providers/cloud/test", json={"model": "b"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
    d = httpx.post(base + "/turnout/providers/broken/test", timeout=30).json()
    assert d["ok"] is False and d["error"]["category"] == "server" and d["error"]["status"] == 502
    assert health_of(base, "broken")["last_error"]["source"] == "probe"
    d = httpx.post(base + "/turnout/providers/none/test", timeout=30).json()
    assert d["ok"] is False and d["error"]["category"] == "unavailable"
    r = httpx.post(base + "/turnout/providers/bare/test", timeout=30)
    assert r.status_code == 400 and "No model target uses backend 'bare'" in r.json()["error"]["message"]
    r = httpx.post(base + "/turnout/providers/ghost/test", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "backend_not_found"


def test_test_endpoint_hides_keys_in_upstream_errors(serve, turnout):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def deny(request):
        return JSONResponse({"error": {"message": "Incorrect API key provided: sk-live-abcdefghijklmnop123456.",
                                       "type": "invalid_request_error", "code": "invalid_api_key"}}, status_code=401)

    up = serve(Starlette(routes=[Route("/v1/chat/completions", deny, methods=["POST"])]))
    base = turnout({"backends": {"c": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-live-abcdefghijklmnop123456",
                                       "probe": {"interval": 0}}},
                    "models": {"t": {"backend": "c"}}})
    r = httpx.post(base + "/turnout/providers/c/test", timeout=30)
    d = r.json()
    assert d["ok"] is False and d["error"]["category"] == "auth" and "abcdefghijklmnop" not in r.text
    assert "***" in d["error"]["message"]


def test_chat_probe_and_system_levels(turnout):
    base = turnout({
        "backends": {"a": {"type": "mock", "fail": {"status": 500, "times": 2},
                           "probe": {"interval": 0.1, "method": "chat", "down_after": 2}},
                     "b": {"type": "mock", "fail": {"status": 500},
                           "probe": {"interval": 0.1, "method": "chat", "down_after": 1}}},
        "models": {"a-t": {"backend": "a"}, "b-t": {"backend": "b"}},
    })
    # a's first two chat probes fail (down), then its fault is over and it recovers; b never does
    wait_for(lambda: health_of(base, "b")["state"] == "down", "b down")
    wait_for(lambda: health_of(base, "a")["probe_uptime"] is not None and health_of(base, "a")["state"] == "healthy"
             and health_of(base, "a")["errors"].get("server") == 2, "a to fail twice and recover")
    doc = providers(base)
    assert doc["status"] == "degraded" and doc["reason"] == "b down"
    assert 0 < health_of(base, "a")["probe_uptime"] < 1


def test_system_is_critical_when_nothing_is_up(turnout):
    base = turnout({"backends": {"g": {"type": "gemini", "api_key": "${GEMINI_API_KEY}"}},
                    "models": {"f": {"backend": "g"}}})
    doc = providers(base)
    assert doc["status"] == "critical" and "no backend is usable" in doc["reason"]
    assert value(scrape(base), "turnout_system_health") == 2


def test_probe_config_is_checked():
    base = {"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}}
    for probe, field in (({"interval": -1}, "backends.m.probe.interval"), ({"method": "ping"}, "backends.m.probe.method"),
                         ({"down_after": 0}, "backends.m.probe.down_after"), ({"every": 3}, "backends.m.probe.every"),
                         ({"model": "nope"}, "backends.m.probe.model"), ("often", "backends.m.probe")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            parse({**base, "backends": {"m": {"type": "mock", "probe": probe}}}, {})
    cfg = parse({**base, "backends": {"m": {"type": "mock", "probe": False}}}, {})
    assert cfg.backends["m"].probe.interval == 0 and "probe" not in cfg.backends["m"].options
