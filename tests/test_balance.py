"""Balancing end to end: a weighted group's split, least in-flight against a slow and a fast
deployment, latency order, and a backend's several API keys rotated and cooled down on their own 429s."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.config import ConfigError, parse
from proxy.routing.balance import Balancer

from .conftest import sdk

MSG = [{"role": "user", "content": "hi"}]


def _targets(base: str, model: str, n: int, concurrency: int, raw: bool = False) -> collections.Counter[str]:
    """Send n requests (at most `concurrency` at once) with the OpenAI SDK (`raw`: plain httpx, for
    volume: the SDK's parsing costs ~15 ms a request on a loaded box); count the target that
    answered each (x-turnout-model)."""

    async def main() -> collections.Counter[str]:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        plain = httpx.AsyncClient(base_url=base, timeout=30)
        seen: collections.Counter[str] = collections.Counter()
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                if raw:
                    r = await plain.post("/v1/chat/completions", json={"model": model, "messages": MSG})
                    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
                else:
                    r = await client.chat.completions.with_raw_response.create(model=model, messages=MSG)
                    assert r.parse().choices[0].message.content
                seen[r.headers["x-turnout-model"]] += 1

        await asyncio.gather(*(one() for _ in range(n)))
        await client.close()
        await plain.aclose()
        return seen

    return asyncio.run(main())


def test_weighted_group_splits_by_weight(turnout: Any) -> None:
    base = turnout({
        "backends": {"east": {"type": "mock"}, "west": {"type": "mock"}, "spare": {"type": "mock"}},
        "models": {"a": {"backend": "east"}, "b": {"backend": "west"}, "c": {"backend": "spare"}},
        "routes": {"pool": [{"group": ["a", "b"], "weights": {"a": 3, "b": 1}}, "c"]},
    })
    seen = _targets(base, "pool", 1000, 50, raw=True)
    assert sum(seen.values()) == 1000 and set(seen) == {"a", "b"}  # the fallback after the group is not needed
    assert abs(seen["a"] / 1000 - 0.75) < 0.05, seen  # 3:1 (the binomial's sd is 1.4 points)


def test_group_rest_is_fallback_in_order(turnout: Any) -> None:
    base = turnout({
        "backends": {"down": {"type": "mock", "fail": {"status": 500}}, "up": {"type": "mock"}},
        "models": {"a": {"backend": "down"}, "b": {"backend": "up"}},
        "routes": {"pool": {"chain": [{"group": ["a", "b"]}]}},
    })
    seen = _targets(base, "pool", 40, 8)
    assert seen == {"b": 40}  # whichever came first, b answered (a failed and b was the rest of the group)


def test_least_inflight_prefers_the_free_deployment(turnout: Any) -> None:
    base = turnout({
        "backends": {"slow": {"type": "mock", "latency": 0.4}, "fast": {"type": "mock"}},
        "models": {"s": {"backend": "slow"}, "f": {"backend": "fast"}},
        "routes": {"pool": [{"group": ["s", "f"], "strategy": "least_inflight"}]},
    })
    seen = _targets(base, "pool", 120, 6)
    # random order would give about 60 each; the slow one holds its calls, so the fast one takes nearly all
    assert seen["f"] > 4 * seen["s"], seen


def test_latency_strategy_moves_to_the_faster(turnout: Any) -> None:
    base = turnout({  # a group in a rule's `then`
        "backends": {"slow": {"type": "mock", "latency": 0.2}, "fast": {"type": "mock"}},
        "models": {"s": {"backend": "slow"}, "f": {"backend": "fast"}},
        "routes": {"pool": {"rules": [{"then": [{"group": ["s", "f"], "strategy": "latency"}]}]}},
    })
    seen = _targets(base, "pool", 30, 1)
    assert seen["f"] >= 28, seen  # each is tried once (unmeasured counts as 0), then the faster leads


def test_weighted_order_is_a_full_fallback_order() -> None:
    cfg = parse({"backends": {"m": {"type": "mock"}}, "models": {t: {"backend": "m"} for t in "abcd"},
                 "routes": {"r": ["a", {"group": ["b", "c", "d"], "weights": {"b": 8}}]}}, {})
    b = Balancer()
    route = cfg.routes["r"]
    assert route.chain == ["a", "b", "c", "d"] and route.groups[0].targets == ["b", "c", "d"]
    firsts = collections.Counter(b.arrange(list(route.chain), route.groups)[1] for _ in range(2000))
    orders = {tuple(b.arrange(list(route.chain), route.groups)) for _ in range(200)}
    assert all(o[0] == "a" and sorted(o[1:]) == ["b", "c", "d"] for o in orders) and len(orders) > 1
    assert 0.74 < firsts["b"] / 2000 < 0.86  # 8 / 10


def test_group_config_errors() -> None:
    def err(route: Any) -> str:
        with pytest.raises(ConfigError) as e:
            parse({"backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}, "b": {"backend": "m"}},
                   "routes": {"r": route}}, {})
        return str(e.value)

    assert err([{"group": ["a", "b"], "weights": {"z": 2}}]) == "routes.r.chain[0].weights.z: not a target of this group (a, b)"
    assert err([{"group": ["a", "b"], "strategy": "fastest"}]) == \
        "routes.r.chain[0].strategy: expected weighted, least_inflight, latency, got 'fastest'"
    assert err([{"group": ["a", "b"], "wieghts": {}}]).startswith("routes.r.chain[0].wieghts: unknown field")
    assert err([{"group": ["a", "b"]}, "a"]) == "routes.r.chain[0].group: 'a' is also elsewhere in the chain"
    assert err([{"group": ["a", "b"], "weights": {"a": 0}}]) == \
        "routes.r.chain[0].weights.a: expected a weight more than 0, got 0"
    assert err({"chain": ["a"], "groups": []}).startswith("routes.r.groups: write a group inline")
    assert err([{"group": ["a", "zz"]}]).startswith("routes.r.chain[1]: unknown model target 'zz'")
    assert err([{"group": []}]) == "routes.r.chain[0].group: expected a non-empty list of model targets"


def _counting_upstream(limited: str) -> tuple[Starlette, collections.Counter[str]]:
    """An OpenAI-compatible upstream that counts requests per API key and 429s the `limited` key."""
    seen: collections.Counter[str] = collections.Counter()

    async def chat(request: Request) -> JSONResponse:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        seen[key] += 1
        if key == limited:
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests",
                                           "code": "rate_limit_exceeded"}}, 429, headers={"retry-after": "60"})
        body = await request.json()
        return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": f"via {key}"}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), seen


def test_api_keys_rotate_and_a_429_cools_only_that_key(serve: Any, turnout: Any) -> None:
    app, seen = _counting_upstream(limited="k1")
    up = serve(app)
    base = turnout({
        "backends": {"oa": {"type": "openai", "base_url": up + "/v1", "api_keys": ["${K1}", "${K2}", "${K3}", "${K4}"],
                            # the retry goes to the next key at once (retry-after is capped at 0 here)
                            "retry": {"attempts": 2, "max_retry_after": 0}}},
        "models": {"gpt": {"backend": "oa", "model": "gpt-4o-mini"}},
    }, env={"K1": "k1", "K2": "k2", "K3": "k3"})  # K4 unset: left out
    client = sdk(base)
    answers = [client.chat.completions.create(model="gpt", messages=MSG).choices[0].message.content
               for _ in range(20)]
    assert seen["k1"] == 1  # 429'd once, then rested for its retry-after (60 s) while the others served
    assert seen["k2"] + seen["k3"] == 20 and abs(seen["k2"] - seen["k3"]) <= 1, seen  # in turn
    assert set(answers) == {"via k2", "via k3"} and "" not in seen


def test_key_ring_cool_down_ends() -> None:
    from proxy.backends.keyring import DEFAULT_COOLDOWN, KeyRing

    now = [0.0]
    ring = KeyRing(["a", "b"], clock=lambda: now[0])
    assert [ring.pick() for _ in range(4)] == ["a", "b", "a", "b"]
    ring.cool("a", 2.0)
    ring.cool("b", None)
    assert ring.available() == 0 and ring.pick() == "a"  # all resting: the one that frees up first
    now[0] = 2.5
    assert [ring.pick() for _ in range(3)] == ["a", "a", "a"]
    now[0] = DEFAULT_COOLDOWN
    assert sorted(ring.pick() for _ in range(2)) == ["a", "b"]
