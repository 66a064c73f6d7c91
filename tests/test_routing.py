"""Issue 6: rules, heuristics, filters, overrides, dispatch and explanations, end to end over HTTP."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

from proxy.state import ManualClock

from proxy.routing.complexity import ComplexityScorer
from tests.conftest import post, sdk

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def user(text, image=False, images=0):
    content = text
    if image or images:
        content = [{"type": "text", "text": text}] + [
            {"type": "image_url", "image_url": {"url": PNG}} for _ in range(max(images, 1))]
    return {"role": "user", "content": content}


SEEDS = {
    "backends": {
        "local": {"type": "mock", "reply": "local: {prompt}"},
        "cloud": {"type": "mock", "reply": "cloud: {prompt}"},
        "fast": {"type": "mock", "reply": "fast: {prompt}"},
    },
    "models": {
        "qwen-vl": {"backend": "local", "vision": True},
        "llama-fast": {"backend": "local", "context_window": 4096},
        "gemini-flash": {"backend": "cloud", "vision": True, "price": {"input": 0.3, "output": 2.5}},
        "claude-sonnet": {"backend": "cloud", "price": {"input": 3, "output": 15}},
        "flash-lite": {"backend": "fast", "price": {"input": 0.1, "output": 0.4}},
    },
    "routes": {
        "auto": {"rules": [
            {"name": "vision", "when": {"has_images": True}, "then": ["qwen-vl", "gemini-flash"]},
            {"name": "complex", "when": {"complexity": {"gte": 0.5}}, "then": ["gemini-flash", "claude-sonnet"]},
            {"name": "simple", "then": ["llama-fast", "gemini-flash"]},
        ]},
        "plan": {"rules": [
            {"name": "planning", "when": {"turn": "first"}, "then": ["claude-sonnet"]},
            {"name": "execution", "when": {"turn": "followup"}, "then": ["flash-lite"]},
        ]},
        "features": {"rules": [
            {"name": "tools", "when": {"has_tools": True}, "then": ["claude-sonnet"]},
            {"name": "big", "when": {"prompt_tokens": {"gte": 1000}}, "then": ["gemini-flash"]},
            {"name": "translate", "when": {"task": "translate"}, "then": ["flash-lite"]},
            {"name": "quality", "when": {"requirement": "quality"}, "then": ["claude-sonnet"]},
            {"name": "pro-and-complex", "when": {"tier": ["pro", "admin"], "complexity": {"gte": 0.5}},
             "then": ["claude-sonnet"]},
            {"name": "rest", "then": ["llama-fast"]},
        ]},
    },
}

# The user's own examples: "local" is the simple tier, "cloud" the complex tier.
TABLE = [
    ("Make it brighter", False, "simple", "llama-fast"),
    ("Train LoRA for Spark", False, "simple", "llama-fast"),
    ("Generate scenes: castle, forest", False, "simple", "llama-fast"),
    ("Create wise old dragon mentor", False, "complex", "gemini-flash"),
    ("Make it feel more magical but less scary", False, "complex", "gemini-flash"),
    ("Check if image is child-appropriate", True, "vision", "qwen-vl"),
    ("Does Spark look consistent?", True, "vision", "qwen-vl"),
    ("Spark's friend is Whiskers", False, "simple", "llama-fast"),
]

ORDINARY = [
    ("What's the capital of France?", "simple"),
    ("thanks!", "simple"),
    ("Translate 'good morning' to French", "simple"),
    ("¿Cuál es la capital de Francia?", "simple"),
    ("Write a Python function that parses ISO 8601 dates and raises ValueError on bad input.", "complex"),
    ("Fix this:\n```js\nconst x = await fetch(u).json()\n```", "complex"),
    ("A bat and a ball cost $1.10. The bat costs $1.00 more than the ball. How much is the ball? "
     "Explain step by step.", "complex"),
    ("Summarize the following report. " + "Revenue grew in the north region while costs held. " * 120, "complex"),
    ("Write a product blurb. It must mention the price, must not exceed 50 words, should avoid jargon "
     "and make sure to end with a question.", "complex"),
    ("Erkläre mir bitte, warum der Himmel blau ist.", "complex"),
    ("Explique pourquoi la mer est salée.", "complex"),
    ("请解释为什么天空是蓝色的", "complex"),
    ("First read the CSV, then drop empty rows, then compute the mean per group and finally chart it.", "complex"),
]


@pytest.fixture
def seeds(turnout):
    return turnout(SEEDS)


def dry_run(base, body, headers=None):
    r = httpx.post(base + "/turnout/route", json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("text,image,rule,target", TABLE)
def test_users_examples_route_as_documented(seeds, text, image, rule, target):
    x = dry_run(seeds, {"model": "auto", "messages": [user(text, image)]})
    assert (x["rule"], x["target"]) == (rule, target), x["features"]["complexity"]
    raw = sdk(seeds).chat.completions.with_raw_response.create(model="auto", messages=[user(text, image)])
    assert raw.headers["x-turnout-reason"] == rule and raw.headers["x-turnout-model"] == target


@pytest.mark.parametrize("text,rule", ORDINARY)
def test_complexity_holds_up_on_ordinary_traffic(seeds, text, rule):
    x = dry_run(seeds, {"model": "auto", "messages": [user(text)]})
    assert x["rule"] == rule, x["features"]["complexity"]
    if rule == "complex":
        assert x["features"]["complexity"]["reasons"], "the score must list the features that moved it"


def test_complexity_is_configurable():
    s = ComplexityScorer({"keywords": {"creative": ["spaceship"]}, "weights": {"creative": 0.5}})
    assert s.score("Design a spaceship").value >= 0.75
    assert "creative or character work +0.50 (spaceship)" in s.score("Design a spaceship").reasons
    assert ComplexityScorer().score("Create wise old dragon mentor").value >= 0.5
    assert ComplexityScorer({"keywords": {"creative": []}}).score("Create wise old dragon mentor").value < 0.5


def test_planning_then_execution(seeds):
    msgs = [user("Plan a three-day trip to Rome")]
    raw = sdk(seeds).chat.completions.with_raw_response.create(model="plan", messages=msgs)
    assert (raw.headers["x-turnout-reason"], raw.headers["x-turnout-model"]) == ("planning", "claude-sonnet")
    msgs += [{"role": "assistant", "content": raw.parse().choices[0].message.content}, user("Shorter please")]
    raw = sdk(seeds).chat.completions.with_raw_response.create(model="plan", messages=msgs)
    assert (raw.headers["x-turnout-reason"], raw.headers["x-turnout-model"]) == ("execution", "flash-lite")


def test_each_condition(turnout):
    base = turnout({**SEEDS, "keys": [{"key": "k-free", "name": "a", "tier": "free"},
                                      {"key": "k-pro", "name": "b", "tier": "pro"}]})
    hard = "Explain step by step why the sky is blue"

    def reason(body, key="k-free", headers=None):
        r = post(base, {"model": "features", **body}, headers={"authorization": f"Bearer {key}", **(headers or {})})
        assert r.status_code == 200, r.text
        return r.headers["x-turnout-reason"]

    tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert reason({"messages": [user("hi")], "tools": tool}) == "tools"
    assert reason({"messages": [user("hi")], "tools": tool, "tool_choice": "none"}) == "rest"
    assert reason({"messages": [user("word " * 1200)]}) == "big"
    assert reason({"messages": [user("hi")]}, headers={"x-turnout-task": "translate"}) == "translate"
    assert reason({"messages": [user("hi")], "metadata": {"task": "translate"}}) == "translate"
    assert reason({"messages": [user("hi")], "metadata": {"requirement": "quality"}}) == "quality"
    assert reason({"messages": [user("hi")]}, headers={"x-turnout-requirement": "quality"}) == "quality"
    assert reason({"messages": [user(hard)]}, key="k-pro") == "pro-and-complex"
    assert reason({"messages": [user(hard)]}, key="k-free") == "rest"
    # a client cannot claim a tier its key does not have
    assert reason({"messages": [user(hard)]}, key="k-free", headers={"x-turnout-tier": "pro"}) == "rest"


# --- filters ------------------------------------------------------------------------------------


def test_filters_skip_with_reasons_and_name_every_target(turnout):
    base = turnout({
        "backends": {"nokey": {"type": "openai", "api_key": "${MISSING_KEY}"}, "m": {"type": "mock"}},
        "models": {"cloud": {"backend": "nokey"},
                   "tiny": {"backend": "m", "context_window": 50, "vision": True},
                   "blind": {"backend": "m", "vision": False, "tools": False, "json_schema": False},
                   "ok": {"backend": "m", "vision": True}},
        "routes": {"r": ["cloud", "tiny", "blind", "ok"], "none": ["cloud", "tiny", "blind"]},
    })
    body = {"model": "r", "messages": [user("describe " * 40, image=True)], "max_tokens": 20}
    raw = sdk(base).chat.completions.with_raw_response.create(**body)
    fb = raw.headers["x-turnout-fallbacks"]
    assert raw.headers["x-turnout-model"] == "ok"
    assert "cloud: skipped: no API key (${MISSING_KEY} is not set)" in fb
    assert "tiny: skipped: context window 50 <" in fb
    assert "blind: skipped: no vision" in fb
    r = post(base, {**body, "model": "none"})
    assert r.status_code == 503
    msg = r.json()["error"]["message"]
    assert all(t in msg for t in ("cloud (skipped: no API key", "tiny (skipped: context window", "blind (skipped: no vision"))
    x = dry_run(base, body)
    assert [c["status"] for c in x["chain"]] == ["skipped", "skipped", "skipped", "candidate"]
    r = post(base, {"model": "blind", "messages": [user("x")],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_capability"


def test_circuit_opens_and_recovers(turnout):
    clock = ManualClock()
    base = turnout({
        "routing": {"circuit": {"failures": 2, "cooldown": 1.5}},
        "backends": {"bad": {"type": "mock", "fail": {"status": 500, "times": 3}}, "good": {"type": "mock"}},
        "models": {"b": {"backend": "bad"}, "g": {"backend": "good"}},
        "routes": {"r": ["b", "g"]},
    }, clock=clock)
    msg = {"model": "r", "messages": [user("x")]}
    outcomes = [post(base, msg).headers["x-turnout-fallbacks"] for _ in range(3)]
    assert outcomes[0] == outcomes[1] == "b: 502 upstream_500"
    assert outcomes[2].startswith("b: skipped: circuit open after 2 failures")
    assert dry_run(base, msg)["chain"][0]["reason"].startswith("circuit open")
    clock.advance(1.6)  # cooldown over: one half-open trial, which fails (3rd scripted failure) and re-opens
    assert post(base, msg).headers["x-turnout-fallbacks"] == "b: 502 upstream_500"
    assert post(base, msg).headers["x-turnout-fallbacks"].startswith("b: skipped: circuit open")
    clock.advance(1.6)  # the next trial succeeds and closes the circuit
    r = post(base, msg)
    assert r.headers["x-turnout-model"] == "b" and "x-turnout-fallbacks" not in r.headers
    assert dry_run(base, msg)["chain"][0]["status"] == "candidate"


# --- overrides ----------------------------------------------------------------------------------


def test_override_header_and_metadata_per_key(turnout):
    base = turnout({**SEEDS, "keys": [{"key": "k-admin", "name": "admin", "tier": "admin", "allow_override": True},
                                      {"key": "k-user", "name": "user"}]})
    admin, plain = {"authorization": "Bearer k-admin"}, {"authorization": "Bearer k-user"}
    body = {"model": "auto", "messages": [user("Make it brighter")]}
    r = post(base, body, headers={**admin, "x-turnout-target": "claude-sonnet"})
    assert (r.headers["x-turnout-model"], r.headers["x-turnout-reason"]) == ("claude-sonnet", "override")
    r = post(base, {**body, "metadata": {"turnout_target": "flash-lite"}}, headers=admin)
    assert r.headers["x-turnout-model"] == "flash-lite"
    r = post(base, body, headers={**plain, "x-turnout-target": "claude-sonnet"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "override_not_allowed"
    r = post(base, body, headers={**admin, "x-turnout-target": "nope"})
    assert r.status_code == 404
    r = post(base, {"model": "claude-sonnet", "messages": [user("hi")]}, headers=plain)
    assert (r.headers["x-turnout-model"], r.headers["x-turnout-reason"]) == ("claude-sonnet", "direct")


# --- dispatch -----------------------------------------------------------------------------------


def test_retries_with_backoff_honour_retry_after_then_succeed(turnout):
    base = turnout({
        "backends": {"b": {"type": "mock", "retry": {"attempts": 3, "backoff": 0.05, "max_retry_after": 0.3},
                           "fail": {"status": 429, "retry_after": 30, "times": 2}}},
        "models": {"m": {"backend": "b"}},
    })
    t = time.perf_counter()
    r = post(base, {"model": "m", "messages": [user("x")]})
    took = time.perf_counter() - t
    assert r.status_code == 200
    assert r.headers["x-turnout-fallbacks"] == "m: 429 rate_limit_exceeded, m: 429 rate_limit_exceeded"
    assert 0.6 <= took < 5, "retry-after of 30 s is capped at max_retry_after (0.3 s) per retry"


def test_no_retry_on_client_errors_which_go_back_unchanged(turnout):
    base = turnout({
        "backends": {"b": {"type": "mock", "retry": {"attempts": 3}}, "c": {"type": "mock"}},
        "models": {"m": {"backend": "b"}, "n": {"backend": "c"}},
        "routes": {"r": ["m", "n"]},
    })
    r = post(base, {"model": "r", "messages": [user("[mock:status=422 message=no_such_thing]")]})
    assert r.status_code == 422 and r.json()["error"]["message"] == "no such thing"
    assert r.headers["x-turnout-fallbacks"] == "m: 422 invalid_request_error"


@pytest.mark.parametrize("fault,outcome", [("[mock:status=429]", "429 rate_limit_exceeded"),
                                           ("[mock:status=500]", "502 upstream_500"),
                                           ("[mock:hang]", "504 upstream_timeout")])
@pytest.mark.parametrize("stream", [False, True])
def test_fallback_under_faults(turnout, fault, outcome, stream):
    base = turnout({
        "backends": {"flaky": {"type": "mock", "timeout": {"first_token": 0.2}},
                     "ok": {"type": "mock", "reply": "ok", "directives": False}},
        "models": {"f": {"backend": "flaky"}, "o": {"backend": "ok"}},
        "routes": {"r": ["f", "o"]},
    })
    client = sdk(base)
    body = dict(model="r", messages=[user(f"hello {fault}")])
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **body) as raw:
            headers = raw.headers
            list(raw.parse())
    else:
        headers = client.chat.completions.with_raw_response.create(**body).headers
    assert headers["x-turnout-fallbacks"].startswith(f"f: {outcome}")


def test_context_length_error_moves_to_a_larger_window(turnout):
    base = turnout({
        "backends": {"small": {"type": "mock", "fail": {"status": 400, "message": "This model's maximum context length is 4096 tokens"}},
                     "mid": {"type": "mock"}, "big": {"type": "mock", "reply": "big"}},
        "models": {"s": {"backend": "small", "context_window": 4096}, "m": {"backend": "mid", "context_window": 4096},
                   "b": {"backend": "big", "context_window": 100000}},
        "routes": {"r": ["s", "m", "b"], "only": ["s"]},
    })
    r = post(base, {"model": "r", "messages": [user("x")]})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "b"
    assert "m: skipped: context window 4096 not larger" in r.headers["x-turnout-fallbacks"]
    r = post(base, {"model": "only", "messages": [user("x")]})
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]


def test_route_and_target_timeouts(turnout):
    base = turnout({
        "backends": {"slow": {"type": "mock", "latency": 1.0}, "ok": {"type": "mock"}},
        "models": {"s": {"backend": "slow", "timeout": 0.2}, "o": {"backend": "ok"}, "s2": {"backend": "slow"}},
        "routes": {"r": ["s", "o"], "deadline": {"chain": ["s2", "o"], "timeout": 0.3}},
    })
    for stream in (False, True):
        r = post(base, {"model": "r", "stream": stream, "messages": [user("x")]})
        assert r.status_code == 200 and r.headers["x-turnout-fallbacks"] == "s: 504 upstream_timeout"
        t = time.perf_counter()
        r = post(base, {"model": "deadline", "stream": stream, "messages": [user("x")]})
        assert r.status_code == 504 and time.perf_counter() - t < 0.9
        assert "Route 'deadline'" in r.json()["error"]["message"]


# --- quality escalation -------------------------------------------------------------------------


ESCALATION = {
    "backends": {
        "empty": {"type": "mock", "reply": " ", "force_reply": True},
        "refuses": {"type": "mock", "reply": "I'm sorry, but I can't help with that.", "force_reply": True},
        "prose": {"type": "mock", "reply": "Here you go: not json", "force_reply": True},
        "badargs": {"type": "mock", "tool_arguments": '{"city": 5}'},
        "good": {"type": "mock", "reply": "good answer to {prompt}"},
    },
    "models": {n: {"backend": n} for n in ("empty", "refuses", "prose", "badargs", "good")},
    "routes": {
        "esc": {"rules": [{"name": "cheap-first", "then": ["empty", "refuses", "good"], "escalate": 3}]},
        "json": {"rules": [{"name": "j", "then": ["prose", "good"], "escalate": 1}]},
        "once": {"rules": [{"name": "one", "then": ["empty", "refuses", "good"], "escalate": 1}]},
        "off": {"rules": [{"name": "no-escalation", "then": ["empty", "good"]}]},
        "tools": {"rules": [{"name": "t", "then": ["badargs", "good"], "escalate": 1}]},
    },
}


def test_quality_escalation(turnout):
    base = turnout(ESCALATION)
    raw = sdk(base).chat.completions.with_raw_response.create(model="esc", messages=[user("hello")])
    assert raw.parse().choices[0].message.content == "good answer to hello"
    assert raw.headers["x-turnout-escalated"] == "empty: empty answer, refuses: refused"
    assert raw.headers["x-turnout-model"] == "good"
    raw = sdk(base).chat.completions.with_raw_response.create(model="json", messages=[user("hello")])
    assert raw.headers["x-turnout-model"] == "prose", "prose is fine when no JSON was asked for"
    raw = sdk(base).chat.completions.with_raw_response.create(
        model="json", messages=[user("hello")], response_format={"type": "json_object"})
    assert raw.headers["x-turnout-escalated"] == "prose: invalid JSON"
    assert json.loads(raw.parse().choices[0].message.content)["echo"] == "hello"
    raw = sdk(base).chat.completions.with_raw_response.create(model="once", messages=[user("hello")])
    assert raw.headers["x-turnout-model"] == "refuses", "at most one escalation: the weak answer is kept"
    raw = sdk(base).chat.completions.with_raw_response.create(model="off", messages=[user("hello")])
    assert raw.headers["x-turnout-model"] == "empty" and "x-turnout-escalated" not in raw.headers
    raw = sdk(base).chat.completions.with_raw_response.create(model="esc", messages=[user("hello")], max_tokens=1)
    assert "empty: empty answer" in raw.headers["x-turnout-escalated"]
    tools = [{"type": "function", "function": {"name": "w", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    raw = sdk(base).chat.completions.with_raw_response.create(model="tools", messages=[user("Paris")], tools=tools)
    assert "badargs: tool w arguments invalid: $.city should be string" in raw.headers["x-turnout-escalated"]
    assert json.loads(raw.parse().choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_escalation_cost_includes_the_discarded_answer(turnout):
    base = turnout({"backends": {"a": {"type": "mock", "reply": " ", "force_reply": True}, "b": {"type": "mock"}},
                    "models": {"a": {"backend": "a", "price": {"input": 1, "output": 1}},
                               "b": {"backend": "b", "price": {"input": 2, "output": 2}}},
                    "routes": {"r": {"rules": [{"name": "x", "then": ["a", "b"], "escalate": 1}]}}})
    raw = sdk(base).chat.completions.with_raw_response.create(model="r", messages=[user("hello")])
    u = raw.parse().usage
    discarded = u.prompt_tokens * 1 / 1e6  # the empty answer of a: its prompt, no completion tokens
    assert raw.headers["x-turnout-escalated"] == "a: empty answer"
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(discarded + u.total_tokens * 2 / 1e6)


def test_cut_off_answer_escalates(turnout):
    base = turnout({"backends": {"a": {"type": "mock"}, "b": {"type": "mock", "reply": "ok"}},
                    "models": {"a": {"backend": "a"}, "b": {"backend": "b"}},
                    "routes": {"r": {"rules": [{"name": "x", "then": ["a", "b"], "escalate": 1}]}}})
    r = post(base, {"model": "r", "messages": [user("tell me a long story")], "max_tokens": 2})
    assert r.headers["x-turnout-escalated"] == "a: cut off by length"


# --- explanations -------------------------------------------------------------------------------


def test_headers_explain_and_cost(seeds):
    raw = sdk(seeds).chat.completions.with_raw_response.create(
        model="auto", messages=[user("Explain step by step why the sky is blue")])
    h = raw.headers
    assert (h["x-turnout-route"], h["x-turnout-reason"], h["x-turnout-model"]) == ("auto", "complex", "gemini-flash")
    u = raw.parse().usage
    assert float(h["x-turnout-cost-usd"]) == pytest.approx((u.prompt_tokens * 0.3 + u.completion_tokens * 2.5) / 1e6)


def test_dry_run_explains_without_calling_upstream(turnout):
    base = turnout({"backends": {"b": {"type": "mock", "fail": {"status": 500}}},
                    "models": {"m": {"backend": "b", "price": {"input": 1, "output": 2}}},
                    "routes": {"auto": {"rules": [{"name": "all", "then": ["m"]}]}}})
    x = dry_run(base, {"model": "auto", "messages": [user("Make it brighter")], "max_tokens": 100})
    assert x["route"] == "auto" and x["rule"] == "all" and x["target"] == "m"
    assert x["features"]["complexity"]["reasons"] == ["simple refinement -0.30 (brighter, make it)"] or \
        x["features"]["complexity"]["score"] == 0
    assert x["estimated_cost_usd"] == pytest.approx((x["features"]["prompt_tokens"] * 1 + 100 * 2) / 1e6)
    r = httpx.post(base + "/turnout/route", json={"model": "auto"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_route_cli_explains(tmp_path):
    import yaml

    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(yaml.safe_dump(SEEDS))
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")

    def route(*args):
        out = subprocess.run([sys.executable, "-m", "proxy", "route", *args, "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    out = route("Make it feel more magical but less scary")
    assert "rule:       complex" in out and "nuance +0.30" in out and "-> gemini-flash" in out
    assert "rule:       vision" in route("Does Spark look consistent?", "--image", str(img))
    assert "rule:       execution" in route("Shorter", "--model", "plan", "--turn", "followup")
    x = json.loads(route("Make it brighter", "--json"))
    assert x["rule"] == "simple" and x["target"] == "llama-fast"


# --- the shipped proxy.yaml ----------------------------------------------------------------------


def test_shipped_proxy_yaml_routes_the_seed_setups(turnout):
    import pathlib

    import yaml

    raw = yaml.safe_load((pathlib.Path(__file__).parent.parent / "proxy.yaml").read_text())
    keys = {"GEMINI_API_KEY": "g", "ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o"}
    base = turnout(raw, env=keys)

    def pick(model, text, image=False, followup=False, tier=None):
        msgs = [user(text, image)]
        if followup:
            msgs = [user("earlier"), {"role": "assistant", "content": "answer"}, *msgs]
        x = dry_run(base, {"model": model, "messages": msgs}, headers={"x-turnout-tier": tier} if tier else None)
        return x["rule"], x["target"], [c["target"] for c in x["chain"]]

    assert pick("auto", "Make it brighter")[:2] == ("simple", "llama-fast")
    assert pick("auto", "Make it feel more magical but less scary")[:2] == ("complex", "gemini-flash")
    assert pick("auto", "Is this child-appropriate?", image=True)[:2] == ("vision", "qwen-vl")
    assert pick("plan", "Plan the app")[:2] == ("planning", "claude-sonnet")
    assert pick("plan", "now the next step", followup=True)[:2] == ("execution", "gemini-flash")
    rule, target, chain = pick("private", "Explain step by step why the sky is blue")
    assert target == "llama-quality" and all(raw["models"][t]["backend"] == "local" for t in chain)
    assert pick("plans", "hi", tier="admin")[:2] == ("admin", "claude-sonnet")
    assert pick("plans", "Explain step by step why the sky is blue", tier="pro")[:2] == ("pro-complex", "gemini-pro")
    assert pick("plans", "hi", tier="free")[:2] == ("free", "llama-fast")
    _, _, chain = pick("cheap", "hi")
    prices = [raw["models"][t].get("price", {}).get("output", 0) for t in chain]
    assert prices == sorted(prices) and chain[0] == "llama-fast"

    no_keys = turnout(raw, env={})
    x = dry_run(no_keys, {"model": "auto", "messages": [user("Explain step by step why the sky is blue")]})
    assert [c["status"] for c in x["chain"]] == ["skipped", "skipped", "candidate"]
    assert x["chain"][0]["reason"] == "no API key (${GEMINI_API_KEY} is not set)"


def test_cheap_prompt_token_bound_is_never_below_the_count():
    from proxy.routing.features import Features

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for text in ["hello", "日本語のテキストです", "emoji 🎉🎉🎉 ok", "x" * 5000, "Ünïcödé " * 300, ""]:
        body = {"messages": [{"role": "system", "content": "sys"}, user(text, image=True),
                             {"role": "assistant", "content": None, "tool_calls": [
                                 {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": "β"}'}}]},
                             {"role": "tool", "tool_call_id": "c", "content": text}], "tools": tools}
        f = Features(body, {}, None, ComplexityScorer())
        assert f.prompt_tokens_at_most >= f.prompt_tokens
