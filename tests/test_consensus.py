"""Consensus through the `openai` SDK: three real HTTP upstreams (the mock upstream, each with its
own scripted `reply`), counting the calls each one gets."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from proxy.config import parse
from proxy.mock.server import build_mock_upstream
from proxy.server.assembly import build_app
from tests.conftest import collect, sdk

Q = [{"role": "user", "content": "What is the capital of France?"}]


def upstreams(serve: Any, replies: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    backends, seen = {}, {}
    for name, opts in replies.items():
        app = build_mock_upstream(opts)
        backends[name] = {"type": "openai", "base_url": serve(app) + "/v1", "api_key": "k", "probe": False}
        seen[name] = app.state.requests
    return backends, seen


def config(backends: dict[str, Any], consensus: dict[str, Any], **extra: Any) -> dict[str, Any]:
    models = {n: {"backend": n, "model": f"m-{n}", "price": {"input": 1.0, "output": 1.0}} for n in backends}
    return {"backends": backends, "models": models, "usage": {"ledger": None},
            "routes": {"critical": {"chain": [next(iter(backends))], "consensus": consensus}}, **extra}


def test_majority_wins_and_is_reported(serve: Any) -> None:
    backends, seen = upstreams(serve, {
        "a": {"reply": "The capital of France is Paris."},
        "b": {"reply": "Lyon, obviously."},
        "c": {"reply": "the capital of france is paris"}})
    base = serve(build_app(parse(config(backends, {"targets": ["b", "a", "c"], "agree": 0.66}), {})))
    r = sdk(base).chat.completions.with_raw_response.create(model="critical", messages=Q)
    assert all(len(v) == 1 for v in seen.values())  # each asked once, in parallel
    assert r.headers["x-turnout-consensus"] == "2/3 agree (a, c); dissent: b"
    assert r.headers["x-turnout-model"] == "a"
    assert r.parse().choices[0].message.content == "The capital of France is Paris."
    one = r.parse().usage
    assert float(r.headers["x-turnout-cost-usd"]) > (one.prompt_tokens + one.completion_tokens) / 1e6  # all three paid
    # streamed: the chosen answer replayed as SSE once decided
    text, chunks = collect(sdk(base).chat.completions.create(model="critical", messages=Q, stream=True))
    assert text == "The capital of France is Paris." and all(len(v) == 2 for v in seen.values())
    metrics = httpx.get(base + "/metrics").text
    assert 'turnout_consensus_total{outcome="agree",route="critical"} 2.0' in metrics


def test_tool_calls_agree_by_canonical_equality(serve: Any) -> None:
    backends, seen = upstreams(serve, {"a": {"tool_arguments": '{"city": "Paris", "unit": "c"}'},
                                       "b": {"tool_arguments": '{"unit":"c","city":"Paris"}'},
                                       "c": {"tool_arguments": '{"city": "Lyon"}'}})
    base = serve(build_app(parse(config(backends, {"targets": ["c", "a", "b"]}), {})))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    r = sdk(base).chat.completions.with_raw_response.create(model="critical", messages=Q, tools=tools)
    assert r.headers["x-turnout-consensus"] == "2/3 agree (a, b); dissent: c"
    assert r.parse().choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris", "unit": "c"}'


def test_failing_member_and_disagreement(serve: Any) -> None:
    backends, seen = upstreams(serve, {
        "a": {"reply": "Paris."}, "b": {"fail": {"status": 500}}, "c": {"reply": "Paris"}, "d": {"reply": "Lyon"},
        "j": {"reply": "Answer 2 is best."}})
    cfg = config(backends, {"targets": ["a", "b", "c"]})
    cfg["routes"]["split"] = {"chain": ["a"], "consensus": {"targets": ["a", "b", "d"], "on_disagreement": "first"}}
    cfg["routes"]["strict"] = {"chain": ["a"], "consensus": {"targets": ["a", "d"], "agree": 1,
                                                              "on_disagreement": "error"}}
    cfg["routes"]["judged"] = {"chain": ["a"], "consensus": {"targets": ["d", "a"], "agree": 1,
                                                              "on_disagreement": "judge", "judge": "j"}}
    base = serve(build_app(parse(cfg, {})))
    client = sdk(base)
    r = client.chat.completions.with_raw_response.create(model="critical", messages=Q)
    assert r.headers["x-turnout-consensus"] == "2/3 agree (a, c); dissent: b (502 upstream_500)"
    assert len(seen["b"]) == 1
    r = client.chat.completions.with_raw_response.create(model="split", messages=Q)
    assert r.headers["x-turnout-consensus"].startswith("no agreement: 1/3 at most, 0.66 needed; first: a")
    assert r.parse().choices[0].message.content == "Paris."
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="strict", messages=Q)
    assert e.value.status_code == 502 and e.value.body["code"] == "no_consensus"
    assert e.value.response.headers["x-turnout-consensus"].startswith("no agreement: 1/2 at most")
    r = client.chat.completions.with_raw_response.create(model="judged", messages=Q)
    assert "judge j chose a" in r.headers["x-turnout-consensus"] and len(seen["j"]) == 1
    assert r.parse().choices[0].message.content == "Paris." and "Answer 1" in str(seen["j"][0]["messages"])


def test_consensus_config_is_checked() -> None:
    raw = {"backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}},
           "routes": {"r": {"chain": ["a"], "consensus": {"targets": ["a", "nope"]}}}}
    with pytest.raises(ValueError, match="routes.r.consensus.targets"):
        parse(raw, {})
    raw["routes"]["r"]["consensus"] = {"targets": ["a", "a"], "on_disagreement": "judge"}
    with pytest.raises(ValueError, match="consensus.judge: required"):
        parse(raw, {})
    raw["routes"]["r"]["consensus"] = {"targets": ["a"]}
    with pytest.raises(ValueError, match="consensus.targets"):
        parse(raw, {})


def test_route_explains_and_simulate_prices(tmp_path: Any) -> None:
    from proxy.backends import create
    from proxy.call import Call
    from proxy.routing.router import Router
    from proxy.usage import simulate

    raw = {"backends": {"m": {"type": "mock"}},
           "models": {n: {"backend": "m", "price": {"input": p, "output": p}} for n, p in (("a", 1), ("b", 2), ("c", 3))},
           "routes": {"auto": {"chain": ["a"], "cache": {"ttl": 60}},
                      "critical": {"chain": ["a"], "consensus": {"targets": ["a", "b", "c"]}}}}
    cfg = parse(raw, {})
    router = Router(cfg, {name: create(b) for name, b in cfg.backends.items()})
    body = {"model": "critical", "messages": Q, "max_tokens": 100}
    x = router.explain(Call(request_model="critical"), router.features(body, {}, None))
    assert x["consensus"]["calls"] == 3 and x["cache"]["applies"] is False
    assert x["consensus"]["estimated_cost_usd"] == pytest.approx(sum(x["consensus"]["estimated_cost_per_target_usd"].values()))
    body = {"model": "auto", "messages": Q}
    x = router.explain(Call(request_model="auto"), router.features(body, {"cache-control": "no-cache"}, None))
    assert x["cache"] == {"applies": True, "action": "refresh (no-cache)", "ttl": 60.0, "scope": "key",
                          "store_length": False} and x["consensus"] is None
    mix = tmp_path / "mix.yaml"
    mix.write_text("model: critical\nrequests_per_day: 10\ndays: 1\ntasks:\n"
                   "  - {name: chat, share: 1.0, prompt_tokens: 1000, completion_tokens: 1000}\n")
    d = simulate.run_mix(cfg, str(mix)).as_dict()
    assert d["totals"]["cost_usd"] == pytest.approx(10 * 2000 * (1 + 2 + 3) / 1e6)  # three calls each
    assert d["consensus_requests"] == 10 and {t["name"]: t["calls"] for t in d["targets"]} == {"a": 10, "b": 10, "c": 10}
    mix.write_text(mix.read_text().replace("critical", "auto"))
    d = simulate.run_mix(cfg, str(mix), cache_hit_rate=0.3).as_dict()
    assert d["totals"]["cost_usd"] == pytest.approx(0.7 * 10 * 2000 / 1e6)
    assert d["cache"]["saved_usd"] == pytest.approx(0.3 * 10 * 2000 / 1e6)


def test_prose_compared_by_meaning_with_the_embedding_engine() -> None:
    from proxy.routing.consensus import Member, embeddings, groups

    def answer(text: str) -> dict:
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}

    members = [Member("a", answer("The meeting is moved to Friday afternoon.")),
               Member("b", answer("We rescheduled the meeting; it now takes place on Friday after lunch.")),
               Member("c", answer("Bananas are rich in potassium."))]
    assert [len(g) for g in groups(members, 0.8)] == [1, 1, 1]  # as text, nobody agrees
    import asyncio
    vectors = asyncio.run(embeddings(members))
    sims = {t: float(vectors["a"] @ v) for t, v in vectors.items()}
    assert sims["b"] > sims["c"]
    threshold = (sims["b"] + sims["c"]) / 2
    assert [[m.target for m in g] for g in groups(members, 0.8, vectors, threshold)] == [["a", "b"], ["c"]]
