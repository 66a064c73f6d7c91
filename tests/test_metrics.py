"""Issue 8: Prometheus metrics. Every metric is caused by a request that should move it; the
exposition passes `promtool check metrics`; a real Prometheus server scrapes Turnout and answers
every query of the Grafana dashboard; several uvicorn workers add up."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.call import Attempt
from proxy.observability.metrics import is_local, transitions
from tests.conftest import free_port, post, sdk

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def need(tool: str) -> str:
    """The path of a tool from Debian's packages (.ci/run installs them): skipped outside CI, a
    failure in CI (CI=true)."""
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} is not installed (apt-get install -y --no-install-recommends prometheus chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " - .ci/run must install it")
    pytest.skip(msg)


def scrape(base: str) -> str:
    r = httpx.get(base + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def value(text: str, metric: str, **labels: str) -> float:
    """The sum of the samples called `metric` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def chat(base: str, model: str, text: str = "hello", **kw: Any) -> httpx.Response:
    return post(base, {"model": model, "messages": [{"role": "user", "content": text}], **kw})


def details_upstream() -> Starlette:
    """An OpenAI-compatible upstream whose usage has cached and reasoning tokens."""

    async def complete(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "thought about it"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                      "prompt_tokens_details": {"cached_tokens": 40},
                      "completion_tokens_details": {"reasoning_tokens": 20}}})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "thinker", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


def config(upstream: str) -> dict[str, Any]:
    return {
        "server": {"metrics_key_names": True},
        "backends": {
            "ok": {"type": "mock", "reply": "fine answer from ok"},
            "slow": {"type": "mock", "latency": 0.6, "probe": {"interval": 0}},
            "failing": {"type": "mock", "fail": {"status": 503}, "probe": {"interval": 0}},
            "flaky": {"type": "mock", "fail": {"status": 503, "times": 1}, "retry": {"attempts": 2, "backoff": 0}},
            "weak": {"type": "mock", "reply": " ", "force_reply": True},
            "brk": {"type": "mock", "probe": {"interval": 0}},
            "hangs": {"type": "mock", "timeout": {"first_token": 0.2}, "probe": {"interval": 0}},
            "thinker": {"type": "openai", "base_url": upstream + "/v1", "probe": {"interval": 0.1}},
        },
        "models": {
            "ok-t": {"backend": "ok", "price": {"input": 1, "output": 2}},
            "local-t": {"backend": "ok", "model": "llama"},
            "slow-t": {"backend": "slow"},
            "failing-t": {"backend": "failing", "price": {"input": 5, "output": 5}},
            "flaky-t": {"backend": "flaky"},
            "weak-t": {"backend": "weak"},
            "brk-t": {"backend": "brk"},
            "hangs-t": {"backend": "hangs"},
            "thinker-t": {"backend": "thinker", "model": "thinker",
                          "price": {"input": 10, "output": 20, "cached": 1}},
        },
        "routes": {
            "fb": ["failing-t", "ok-t"],
            "esc": {"rules": [{"name": "quality", "then": ["weak-t", "ok-t"], "escalate": 1}]},
        },
        "routing": {"circuit": {"failures": 2, "cooldown": 0.5}},
        "keys": [{"key": "sk-metrics-secret-1", "name": "storybook"}],
    }


H = {"authorization": "Bearer sk-metrics-secret-1"}


def test_every_metric_moves_when_its_cause_happens(serve):
    from proxy.config import parse
    from proxy.server.assembly import build_app
    from proxy.state import ManualClock

    up = serve(details_upstream())
    clock = ManualClock()  # brk's circuit: its cool-down is stepped over, not slept through
    base = serve(build_app(parse(config(up), {}), clock=clock))
    before = scrape(base)
    assert value(before, "turnout_in_flight_requests") == 0
    assert value(before, "turnout_circuit_state", backend="brk") == 0
    assert value(before, "turnout_build_info") == 1

    # a fallback: failing-t answers 503, ok-t takes over
    r = post(base, {"model": "fb", "messages": [{"role": "user", "content": "hi"}]}, H)
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "ok-t"
    # a retry: flaky fails once, the second try of the same target answers
    assert post(base, {"model": "flaky-t", "messages": [{"role": "user", "content": "hi"}]}, H).status_code == 200
    # an escalation: weak-t's blank answer moves the request to ok-t
    r = post(base, {"model": "esc", "messages": [{"role": "user", "content": "explain it"}]}, H)
    assert r.headers["x-turnout-model"] == "ok-t" and "x-turnout-escalated" in r.headers
    # cached and reasoning tokens, and their price
    assert post(base, {"model": "thinker-t", "messages": [{"role": "user", "content": "think"}]}, H).status_code == 200
    # a stream: time to first token
    with sdk(base, "sk-metrics-secret-1").chat.completions.create(
            model="ok-t", messages=[{"role": "user", "content": "stream"}], stream=True) as s:
        assert len(list(s)) > 1
    # errors by category: rate limit, timeout
    assert post(base, {"model": "ok-t", "messages": [{"role": "user", "content": "[mock:status=429]"}]},
                H).status_code == 429
    assert post(base, {"model": "hangs-t", "messages": [{"role": "user", "content": "[mock:hang]"}]},
                H).status_code == 504
    # a client error: no route or target
    assert post(base, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, H).status_code == 404
    # the circuit: two server errors open it, a success after the cool-down closes it
    for _ in range(2):
        post(base, {"model": "brk-t", "messages": [{"role": "user", "content": "[mock:status=500]"}]}, H)
    opened = scrape(base)
    assert value(opened, "turnout_circuit_state", backend="brk") == 2
    assert value(opened, "turnout_backend_health", backend="brk") == 2  # down
    clock.advance(0.6)  # past the cool-down
    assert value(scrape(base), "turnout_circuit_state", backend="brk") == 1  # half-open
    assert post(base, {"model": "brk-t", "messages": [{"role": "user", "content": "ok"}]}, H).status_code == 200
    # in flight: a slow request seen while it runs
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, base, {"model": "slow-t", "messages": [{"role": "user", "content": "zz"}]}, H)
        deadline = time.monotonic() + 5
        while value(scrape(base), "turnout_in_flight_requests") != 1:
            assert time.monotonic() < deadline, "the slow request never showed as in flight"
            time.sleep(0.02)
        assert slow.result().status_code == 200
    time.sleep(0.3)  # at least two probes of `thinker`

    m = scrape(base)
    assert value(m, "turnout_in_flight_requests") == 0
    assert value(m, "turnout_fallbacks_total", route="fb", **{"from": "failing-t", "to": "ok-t"},
                 reason="server") == 1
    assert value(m, "turnout_fallbacks_total", route="esc", **{"from": "weak-t", "to": "ok-t"},
                 reason="escalated") == 1
    assert value(m, "turnout_escalations_total", route="esc", **{"from": "weak-t", "to": "ok-t"}) == 1
    assert value(m, "turnout_retries_total", backend="flaky", target="flaky-t", reason="server") == 1
    assert value(m, "turnout_requests_total", route="fb", rule="chain", target="ok-t", locality="cloud",
                 status_class="2xx", stream="false", key="storybook") == 1
    assert value(m, "turnout_requests_total", route="none", rule="none", target="none", status_class="4xx") == 1
    # a request nobody answered has no target: the 429 (the upstream errors say which backend failed)
    assert value(m, "turnout_requests_total", route="none", rule="direct", target="none", status_class="4xx") == 1
    assert value(m, "turnout_requests_total", target="none", status_class="5xx") == 3  # the timeout, brk x2
    assert value(m, "turnout_requests_total") == 12
    assert value(m, "turnout_request_duration_seconds_count") == 12
    assert value(m, "turnout_request_duration_seconds_bucket", route="none", target="slow-t", stream="false",
                 le="0.5") == 0
    assert value(m, "turnout_request_duration_seconds_bucket", target="slow-t", le="1.0") == 1
    assert value(m, "turnout_time_to_first_token_seconds_count", target="ok-t") == 1
    assert value(m, "turnout_upstream_latency_seconds_count", backend="failing", outcome="server") == 1
    assert value(m, "turnout_upstream_latency_seconds_count", backend="weak", outcome="escalated") == 1
    assert value(m, "turnout_upstream_latency_seconds_count", backend="thinker", outcome="ok") == 1
    assert value(m, "turnout_upstream_errors_total", backend="ok", category="rate_limit") == 1
    assert value(m, "turnout_upstream_errors_total", backend="hangs", category="timeout") == 1
    assert value(m, "turnout_upstream_errors_total", backend="brk", category="server") == 2
    for kind, n in (("prompt", 100), ("completion", 30), ("cached", 40), ("reasoning", 20)):
        assert value(m, "turnout_tokens_total", target="thinker-t", kind=kind, key="storybook") == n
    # 60 uncached at $10/M + 40 cached at $1/M + 30 out at $20/M
    assert value(m, "turnout_cost_usd_total", target="thinker-t", locality="cloud") == pytest.approx(0.00124)
    assert value(m, "turnout_cost_usd_total", target="ok-t") > 0
    assert value(m, "turnout_circuit_state", backend="brk") == 0
    assert value(m, "turnout_circuit_transitions_total", backend="brk", state="open") == 1
    assert value(m, "turnout_circuit_transitions_total", backend="brk", state="closed") == 1
    assert value(m, "turnout_probes_total", backend="thinker", result="ok") >= 2
    assert value(m, "turnout_backend_health", backend="failing") == 1  # degraded: its only attempt failed
    assert value(m, "turnout_backend_health", backend="ok") == 0
    assert value(m, "turnout_system_health") == 1
    assert value(m, "turnout_backend_success_ratio", backend="failing") == 0
    assert value(m, "turnout_backend_consecutive_failures", backend="failing") == 1
    # nothing secret or unbounded in the labels
    assert "sk-metrics-secret-1" not in m and "explain it" not in m and "req_" not in m and "chatcmpl" not in m


def test_key_names_are_off_by_default_and_sources_feed_gauges(turnout):
    base = turnout({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}},
                    "keys": [{"key": "sk-hidden-2", "name": "app"}]})
    assert chat(base, "t", headers={}).status_code == 401
    assert post(base, {"model": "t", "messages": [{"role": "user", "content": "x"}]},
                {"authorization": "Bearer sk-hidden-2"}).status_code == 200
    m = scrape(base)
    assert 'key="' not in m and "sk-hidden-2" not in m and "app" not in m
    assert value(m, "turnout_requests_total", target="t", locality="local") == 1
    assert value(m, "turnout_requests_total", status_class="4xx") == 1


def test_gauge_sources(serve):
    from proxy.server.assembly import build_app
    from proxy.config import parse

    app = build_app(parse({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}}))
    metrics = app.state.turnout.metrics
    left = {"n": 1400}
    metrics.register_gauge_source("turnout_quota_remaining", "Requests left in the quota period.",
                                  ("backend", "period"), lambda: [(("m", "day"), left["n"])])
    metrics.register_gauge_source("turnout_budget_spent_usd", "Spent.", ("scope", "name", "period"),
                                  lambda: 1 / 0)  # a broken source is left out, the scrape still works
    with pytest.raises(ValueError):
        metrics.register_gauge_source("quota", "no prefix", (), list)
    base = serve(app)
    assert value(scrape(base), "turnout_quota_remaining", backend="m", period="day") == 1400
    left["n"] = 99
    m = scrape(base)
    assert value(m, "turnout_quota_remaining", backend="m", period="day") == 99
    assert "turnout_budget_spent_usd" not in m
    stats = httpx.get(base + "/turnout/stats").json()
    assert stats["gauges"] == [{"name": "turnout_quota_remaining", "labels": {"backend": "m", "period": "day"},
                                "value": 99.0}]


def test_transitions_and_locality():
    a = [Attempt("a", "skipped: circuit open after 5 failures (trial in 3s)"), Attempt("b", "502 upstream_503", 502, 0.1, "server"),
         Attempt("b", "502 upstream_503", 502, 0.1, "server"), Attempt("c", "escalated: empty answer", None, 0.2),
         Attempt("d", "ok", 200, 0.3)]
    fallbacks, retries, escalations = transitions(a)
    assert fallbacks == [("a", "b", "circuit_open"), ("b", "c", "server"), ("c", "d", "escalated")]
    assert retries == [("b", "server")]
    assert escalations == [("c", "d")]
    skipped = [Attempt("a", "skipped: no API key (${X} is not set)"), Attempt("b", "skipped: unhealthy: 2 probes failed"),
               Attempt("c", "skipped: context window 4096 < 9000 tokens needed"), Attempt("d", "ok", 200, 0.1)]
    assert [f[2] for f in transitions(skipped)[0]] == ["no_key", "unhealthy", "context_window"]
    from proxy.config import parse

    cfg = parse({"backends": {"o": {"type": "ollama"}, "m": {"type": "mock"}, "v": {"type": "openai",
                 "base_url": "http://10.0.0.5:8000/v1"}, "c": {"type": "openai", "base_url": "https://api.example.com/v1",
                 "api_key": "k"}},
                 "models": {"o": {"backend": "o"}, "m0": {"backend": "m"}, "m1": {"backend": "m", "price": {"input": 1}},
                            "v": {"backend": "v"}, "c": {"backend": "c"}}}, {})
    local = {n: is_local(cfg.backends[t.backend], t) for n, t in cfg.models.items()}
    assert local == {"o": True, "m0": True, "m1": False, "v": True, "c": False}


def test_promtool_accepts_the_exposition(turnout, tmp_path):
    promtool = need("promtool")
    base = turnout({"backends": {"a": {"type": "mock"}, "b": {"type": "mock", "fail": {"status": 500}}},
                    "models": {"a-t": {"backend": "a", "price": {"input": 1, "output": 1}}, "b-t": {"backend": "b"}},
                    "routes": {"r": ["b-t", "a-t"]}})
    for text in ("one", "two [mock:status=429]"):
        chat(base, "r", text)
    with sdk(base).chat.completions.create(model="r", messages=[{"role": "user", "content": "s"}], stream=True) as s:
        list(s)
    text = scrape(base)
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    # promtool's own checks pass; and every family has HELP and TYPE and the turnout_ prefix
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 10
    for family in families:
        assert family.name.startswith("turnout_") and family.documentation, family.name


def grafana_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the shipped Grafana dashboard, with its variables
    replaced as Grafana would."""
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    out = []
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
            expr = expr.replace('=~"$route"', '=~".*"').replace('=~"$backend"', '=~".*"')
            out.append((panel["title"], expr))
    return out


def test_real_prometheus_scrapes_turnout_and_answers_the_dashboard(turnout, tmp_path):
    prometheus = need("prometheus")
    base = turnout({
        "backends": {"ok": {"type": "mock"}, "failing": {"type": "mock", "fail": {"status": 503}},
                     "local": {"type": "mock"}},
        "models": {"ok-t": {"backend": "ok", "price": {"input": 3, "output": 15}}, "failing-t": {"backend": "failing"},
                   "local-t": {"backend": "local"}},
        "routes": {"fb": ["failing-t", "ok-t"], "l": ["local-t"]}})
    for _ in range(3):
        assert chat(base, "fb").status_code == 200
        assert chat(base, "l").status_code == 200
    port = free_port()
    target = base.removeprefix("http://")
    cfg = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")  # the shipped alerting rules, evaluated for real
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                   "rule_files": ["alerts.yml"],
                                   "scrape_configs": [{"job_name": "turnout", "static_configs": [{"targets": [target]}]}]}))
    promtool = shutil.which("promtool")
    if promtool:  # the shipped config is valid too
        for f in (cfg, DEPLOY / "prometheus.yml"):
            out = subprocess.run([promtool, "check", "config", str(f)], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stdout + out.stderr
    proc = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 30
        result: list[Any] = []
        while time.monotonic() < deadline:
            try:
                r = httpx.get(api + "/query", params={"query": 'turnout_fallbacks_total{from="failing-t"}'}, timeout=2)
                result = r.json()["data"]["result"] if r.status_code == 200 else []
            except httpx.HTTPError:
                result = []
            if result:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "prometheus exited"
            time.sleep(0.5)
        assert result, "Prometheus never stored a sample of turnout_fallbacks_total"
        assert result[0]["metric"]["to"] == "ok-t" and result[0]["metric"]["reason"] == "server"
        assert float(result[0]["value"][1]) == 3
        r = httpx.get(api + "/targets", timeout=5).json()
        assert [t["health"] for t in r["data"]["activeTargets"]] == ["up"]
        q = httpx.get(api + "/query", params={"query": 'sum by (locality) (turnout_requests_total)'}, timeout=5).json()
        assert {x["metric"]["locality"]: float(x["value"][1]) for x in q["data"]["result"]} == {"cloud": 3, "local": 3}
        # every query of the Grafana dashboard is valid PromQL that Prometheus evaluates
        queries = grafana_queries()
        assert len(queries) >= 10
        for title, expr in queries:
            r = httpx.get(api + "/query", params={"query": expr}, timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "success", (title, expr, r.text)
        # the shipped alerting rules load and evaluate without errors
        deadline = time.monotonic() + 10
        while True:
            groups = httpx.get(api + "/rules", timeout=5).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("2") and not r["lastEvaluation"].startswith("0001")
                             for r in rules):
                break
            assert time.monotonic() < deadline, "the alerting rules were never evaluated"
            time.sleep(0.5)
        assert len(rules) == 7 and all(r["health"] == "ok" for r in rules), rules
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_several_workers_add_up(tmp_path):
    port = free_port()
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port, "log_format": "json"},
        "backends": {"m": {"type": "mock", "latency": 0.15}}, "models": {"t": {"backend": "m"}}}))
    mp = tmp_path / "metrics"
    (mp).mkdir()
    (mp / "counter_999999.db").write_bytes(b"stale")  # an old run's file is cleared at start
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp)}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--workers", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "turnout serve --workers 2 did not start"
            time.sleep(0.1)
        n = 40
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda i: chat(base, "t", f"n{i}").status_code, range(n)))
        assert codes == [200] * n
        from prometheus_client.mmap_dict import MmapedDict

        pids = set()
        for f in mp.glob("counter_*.db"):
            d = MmapedDict(str(f), read_mode=True)
            if any("turnout_requests_total" in k and v > 0 for k, v, _ in d.read_all_values()):
                pids.add(f.name)
            d.close()
        assert len(pids) == 2, f"both workers should have answered: {pids}"
        for _ in range(6):  # whichever worker answers the scrape, the totals are the sum of both
            m = scrape(base)
            assert value(m, "turnout_requests_total", target="t", status_class="2xx") == n
            assert value(m, "turnout_request_duration_seconds_count") == n
            assert value(m, "turnout_in_flight_requests") == 0
        deadline = time.monotonic() + 10  # the dashboard's stats too, once both workers shared theirs
        while sum(httpx.get(base + "/turnout/stats", timeout=5).json()["requests"]["t"]) != n:
            assert time.monotonic() < deadline, "the dashboard stats do not add the workers up"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "turnout.access"]
    assert len(access) == n and all(x["status"] == 200 and x["target"] == "t" for x in access)


def test_quota_and_budget_gauges_follow_the_usage_accounts(serve, tmp_path):
    from proxy.server.assembly import build_app
    from proxy.config import ConfigError, parse

    try:
        app = build_app(parse({
            "backends": {"gem": {"type": "mock", "quota": {"requests_per_day": 10, "reserve": 2}}},
            "models": {"flash": {"backend": "gem", "price": {"input": 100, "output": 100}}},
            "keys": [{"key": "sk-budget-1", "name": "app", "budget": {"daily": 5}}],
            "usage": {"ledger": str(tmp_path / "usage.db"), "budget": {"daily": 20}},
            "server": {"metrics_key_names": True}}, {}))
    except ConfigError:
        pytest.skip("usage accounting (issue 7) is not in this tree")
    if getattr(app.state.turnout, "usage", None) is None:
        pytest.skip("usage accounting (issue 7) is not in this tree")
    base = serve(app)
    for _ in range(3):
        assert post(base, {"model": "flash", "messages": [{"role": "user", "content": "count me"}]},
                    {"authorization": "Bearer sk-budget-1"}).status_code == 200
    m = scrape(base)
    assert value(m, "turnout_quota_limit", name="gem", kind="requests") == 10
    assert value(m, "turnout_quota_remaining", name="gem", kind="requests") == 7
    spent = value(m, "turnout_budget_spent_usd", scope="all", period="daily")
    assert spent == pytest.approx(value(m, "turnout_cost_usd_total"), rel=1e-6) and spent > 0
    assert value(m, "turnout_budget_limit_usd", scope="all", period="daily") == 20
    assert value(m, "turnout_budget_spent_usd", scope="key:app", period="daily") == pytest.approx(spent)
    stats = httpx.get(base + "/turnout/stats", headers={"authorization": "Bearer sk-budget-1"}).json()
    names = {g["name"] for g in stats["gauges"]}
    assert names == {"turnout_quota_remaining", "turnout_quota_limit", "turnout_budget_spent_usd",
                     "turnout_budget_limit_usd"}
