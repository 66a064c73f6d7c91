"""The response cache through the `openai` SDK, counting the calls that reach a real HTTP upstream
(the mock served by `turnout mock-upstream`'s app behind an `openai` backend)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.config import parse
from proxy.server.assembly import build_app
from tests.conftest import collect, post, sdk
from proxy.mock.server import build_mock_upstream

Q = [{"role": "user", "content": "Name a colour of the sea"}]


def config(upstream: str, cache: Any = None, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "backends": {"up": {"type": "openai", "base_url": upstream + "/v1", "api_key": "k", "probe": False}},
        "models": {"gpt": {"backend": "up", "model": "gpt-up", "price": {"input": 1.0, "output": 2.0}}},
        "routes": {"auto": ["gpt"]},
        "usage": {"ledger": None},
        **extra,
    }
    if cache is not None:
        raw["cache"] = cache
    return raw


@pytest.fixture
def upstream(serve: Any) -> tuple[str, list[dict[str, Any]]]:
    app = build_mock_upstream()
    return serve(app), app.state.requests


def start(serve: Any, raw: dict[str, Any]) -> str:
    return serve(build_app(parse(raw, {})))


def test_repeat_is_served_from_the_cache(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    base = start(serve, config(url, {"ttl": 3600}))
    client = sdk(base)
    first = client.chat.completions.with_raw_response.create(model="auto", messages=Q, temperature=0)
    assert first.headers["x-turnout-cache"] == "miss" and len(seen) == 1
    assert float(first.headers["x-turnout-cost-usd"]) > 0
    again = client.chat.completions.with_raw_response.create(model="auto", messages=Q, temperature=0)
    assert again.headers["x-turnout-cache"] == "hit" and len(seen) == 1  # no upstream call
    assert "age" in again.headers and float(again.headers["x-turnout-cost-usd"]) == 0
    assert again.headers["x-turnout-model"] == "gpt"
    a, b = first.parse(), again.parse()
    assert a.choices[0].message.content == b.choices[0].message.content and a.choices[0].message.content
    assert a.id != b.id and b.usage is not None and b.usage.total_tokens == a.usage.total_tokens
    # anything that changes the answer is another entry: sampling, the named route or target
    client.chat.completions.create(model="auto", messages=Q, temperature=1)
    client.chat.completions.create(model="gpt", messages=Q, temperature=0)
    assert len(seen) == 3


def test_scope_key_never_serves_another_key(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    keys = [{"key": "sk-a", "name": "a"}, {"key": "sk-b", "name": "b"}]
    base = start(serve, config(url, {"ttl": 60}, keys=keys))
    sdk(base, "sk-a").chat.completions.create(model="auto", messages=Q)
    r = sdk(base, "sk-b").chat.completions.with_raw_response.create(model="auto", messages=Q)
    assert r.headers["x-turnout-cache"] == "miss" and len(seen) == 2
    r = sdk(base, "sk-a").chat.completions.with_raw_response.create(model="auto", messages=Q)
    assert r.headers["x-turnout-cache"] == "hit" and len(seen) == 2
    # scope global: one answer for every key
    url2 = url
    base2 = start(serve, config(url2, {"ttl": 60, "scope": "global"}, keys=keys))
    sdk(base2, "sk-a").chat.completions.create(model="auto", messages=Q)
    r = sdk(base2, "sk-b").chat.completions.with_raw_response.create(model="auto", messages=Q)
    assert r.headers["x-turnout-cache"] == "hit" and len(seen) == 3


def test_no_cache_refreshes_and_no_store_bypasses(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    base = start(serve, config(url, {"ttl": 60}))
    client = sdk(base)
    r = client.chat.completions.with_raw_response.create(model="auto", messages=Q,
                                                         extra_headers={"cache-control": "no-store"})
    assert r.headers["x-turnout-cache"] == "bypass" and len(seen) == 1
    r = client.chat.completions.with_raw_response.create(model="auto", messages=Q)
    assert r.headers["x-turnout-cache"] == "miss" and len(seen) == 2  # no-store kept nothing
    r = client.chat.completions.with_raw_response.create(model="auto", messages=Q,
                                                         extra_headers={"cache-control": "no-cache"})
    assert r.headers["x-turnout-cache"] == "miss" and len(seen) == 3  # looked past the entry, refreshed it
    r = client.chat.completions.with_raw_response.create(model="auto", messages=Q, metadata={"turnout_cache": "false"})
    assert r.headers["x-turnout-cache"] == "bypass" and len(seen) == 4
    r = client.chat.completions.with_raw_response.create(model="auto", messages=Q)
    assert r.headers["x-turnout-cache"] == "hit" and len(seen) == 4


def test_streamed_miss_is_stored_and_hits_replay_as_sse(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    base = start(serve, config(url, {"ttl": 60}))
    client = sdk(base)
    msgs = [{"role": "user", "content": "Tell a long story about a lighthouse keeper"}]
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=msgs, stream=True, stream_options={"include_usage": True}) as r:
        assert r.headers["x-turnout-cache"] == "miss"
        text1, chunks1 = collect(r.parse())
    assert len(seen) == 1 and len(chunks1) > 3 and text1
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=msgs, stream=True, stream_options={"include_usage": True}) as r:
        assert r.headers["x-turnout-cache"] == "hit"
        text2, chunks2 = collect(r.parse())
    assert len(seen) == 1 and text2 == text1
    assert chunks2[-1].usage is not None and chunks2[-1].usage.completion_tokens == chunks1[-1].usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks2 if c.choices][-1] == "stop"
    raw = post(base, {"model": "auto", "messages": msgs, "stream": True}).text
    assert raw.endswith("data: [DONE]\n\n") and '"usage"' not in raw
    # a non-streamed request gets the answer the stream stored
    r = client.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert r.headers["x-turnout-cache"] == "hit" and r.parse().choices[0].message.content == text1


def test_tool_calls_replay_and_cut_answers_are_not_stored(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    base = start(serve, config(url, {"ttl": 60}))
    client = sdk(base)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    a = client.chat.completions.create(model="auto", messages=msgs, tools=tools)
    chunks = list(client.chat.completions.create(model="auto", messages=msgs, tools=tools, stream=True))
    assert len(seen) == 1 and a.choices[0].finish_reason == "tool_calls"
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == a.choices[0].message.tool_calls[0].function.name
    assert "".join(tc.function.arguments or "" for tc in calls) == a.choices[0].message.tool_calls[0].function.arguments
    # finish_reason length: not stored unless the config says so
    for _ in range(2):
        r = client.chat.completions.create(model="auto", messages=Q, max_tokens=2)
        assert r.choices[0].finish_reason == "length"
    assert len(seen) == 3
    # a failed stream stores nothing
    bad = [{"role": "user", "content": "Fail late [mock:drop=2]"}]
    for _ in range(2):
        with pytest.raises(Exception):
            collect(client.chat.completions.create(model="auto", messages=bad, stream=True))
    assert len(seen) == 5


def test_route_and_rule_overrides(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    raw = config(url, None)
    raw["routes"] = {"auto": {"chain": ["gpt"], "cache": {"ttl": 60, "length": True}},
                     "fresh": {"rules": [{"name": "no", "when": {"task": "live"}, "then": ["gpt"], "cache": False},
                                         {"name": "yes", "then": ["gpt"]}], "cache": True}}
    base = start(serve, raw)
    client = sdk(base)
    for _ in range(2):
        client.chat.completions.create(model="auto", messages=Q, max_tokens=2)  # length kept on this route
    assert len(seen) == 1
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(model="gpt", messages=Q)  # no top-level cache
        assert "x-turnout-cache" not in r.headers
    assert len(seen) == 3
    for _ in range(2):
        client.chat.completions.create(model="fresh", messages=Q, metadata={"task": "live"})
    assert len(seen) == 5
    for _ in range(2):
        client.chat.completions.create(model="fresh", messages=Q)
    assert len(seen) == 6


def test_config_shapes() -> None:
    cfg = parse({"backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}}, "cache": True,
                 "routes": {"r": {"chain": ["a"], "cache": False}}}, {})
    assert cfg.cache is not None and cfg.cache.ttl == 3600 and cfg.routes["r"].cache.enabled is False
    with pytest.raises(ValueError, match="cache.scope"):
        parse({"backends": {"m": {"type": "mock"}}, "cache": {"scope": "everyone"}}, {})
    with pytest.raises(ValueError, match="cache_ttl"):
        parse({"backends": {"m": {"type": "mock"}}, "cache": {"cache_ttl": 5}}, {})


def test_hits_in_ledger_usage_and_metrics(serve: Any, upstream: Any, tmp_path: Any) -> None:
    url, seen = upstream
    base = start(serve, config(url, {"ttl": 60}, usage={"ledger": str(tmp_path / "u.sqlite"), "flush_interval": 0.05}))
    client = sdk(base)
    first = client.chat.completions.with_raw_response.create(model="auto", messages=Q)
    for _ in range(3):
        client.chat.completions.create(model="auto", messages=Q)
    cost = float(first.headers["x-turnout-cost-usd"])
    assert len(seen) == 1 and cost > 0
    import time
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(base + "/turnout/usage").json()
        if report["cache"]["hits"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    c = report["cache"]
    assert (c["hits"], c["misses"], c["hit_rate"]) == (3, 1, 0.75)
    assert c["saved_usd"] == pytest.approx(3 * cost, rel=1e-6)
    assert c["by"] == [{"route": "auto", "target": "gpt", **{k: c[k] for k in ("hits", "misses", "bypass",
                                                                                "hit_rate", "saved_usd")}}]
    assert report["totals"]["cost_usd"] == pytest.approx(cost, rel=1e-6)  # hits cost nothing
    from proxy.usage.cli import render
    assert "cache: 3 hits, 1 misses, 0 bypassed, hit rate 75.0 %" in render(report)  # `turnout usage`
    metrics = httpx.get(base + "/metrics").text
    assert 'turnout_cache_requests_total{result="hit",route="auto",target="gpt"} 3.0' in metrics
    saved = [l for l in metrics.splitlines() if l.startswith("turnout_cache_saved_usd_total{")]
    assert saved and float(saved[0].split()[-1]) == pytest.approx(3 * cost, rel=1e-6)


def test_memory_store_is_bounded_lru() -> None:
    from proxy.state import MemoryState
    s = MemoryState(kv_max_bytes=3 * (1000 + 2 + 100))
    for k in ("k1", "k2", "k3"):
        s.put(k, b"x" * 1000, 60)
    assert s.get("k1") is not None  # k1 is now the most recently used
    s.put("k4", b"x" * 1000, 60)
    assert s.get("k2") is None and all(s.get(k) is not None for k in ("k1", "k3", "k4"))
    assert s.kv_bytes <= s.kv_max_bytes
    s.put("big", b"x" * 10_000, 60)  # larger than the bound: not kept, nothing else lost
    assert s.get("big") is None and s.get("k4") is not None


def test_anthropic_front_door_is_cached_but_not_a_claude_pass_through(serve: Any) -> None:
    import anthropic

    from tests.emulators.anthropic import build_app as build_claude
    from tests.emulators.gemini import build_gemini_emulator

    claude, gemini = build_claude(api_key="sk-ant"), build_gemini_emulator("g-key")
    curl, gurl = serve(claude), serve(gemini)
    claude.state.url = curl
    raw = {"backends": {"claude": {"type": "anthropic", "base_url": curl, "api_key": "sk-ant", "probe": False},
                        "gem": {"type": "gemini", "base_url": gurl, "api_key": "g-key", "probe": False}},
           "models": {"sonnet": {"backend": "claude", "model": "claude-sonnet-4-5"},
                      "flash": {"backend": "gem", "model": "gemini-2.5-flash"}},
           "cache": {"ttl": 60}, "usage": {"ledger": None}}
    base = start(serve, raw)
    client = anthropic.Anthropic(base_url=base, api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "Hello there"}]
    texts = []
    for _ in range(2):
        r = client.messages.with_raw_response.create(model="flash", max_tokens=100, messages=msgs)
        texts.append(r.parse().content[0].text)
    assert r.headers["x-turnout-cache"] == "hit" and len(gemini.state.requests) == 1 and texts[0] == texts[1]
    with client.messages.stream(model="flash", max_tokens=100, messages=msgs) as s:
        assert "".join(s.text_stream) == texts[0]
    assert len(gemini.state.requests) == 1
    # Anthropic's own fields are part of the key: a system prompt makes another entry
    client.messages.create(model="flash", max_tokens=100, messages=msgs, system="Be brief")
    assert len(gemini.state.requests) == 2
    for _ in range(2):  # Claude's own Message goes through as it came: never stored
        r = client.messages.with_raw_response.create(model="sonnet", max_tokens=100, messages=msgs)
        assert r.headers["x-turnout-cache"] == "miss"
    assert len(claude.state.requests) == 2


def test_responses_and_legacy_completions_front_doors_share_the_cache(serve: Any, upstream: Any) -> None:
    url, seen = upstream
    base = start(serve, config(url, {"ttl": 60}))
    client = sdk(base)
    texts = []
    for _ in range(2):
        r = client.responses.with_raw_response.create(model="auto", input="Name a colour of the sea", store=False)
        texts.append(r.parse().output_text)
    assert r.headers["x-turnout-cache"] == "hit" and len(seen) == 1 and texts[0] == texts[1] and texts[0]
    for _ in range(2):
        r = client.completions.with_raw_response.create(model="auto", prompt="Once upon a time", max_tokens=50)
    assert r.headers["x-turnout-cache"] == "hit" and len(seen) == 2
