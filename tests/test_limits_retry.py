"""Issue 13, item 12: no retry storms. When Turnout has walked the whole chain its 502/503/504
says `x-should-retry: false`, which the official SDKs obey before their own status rules, so the
`openai` SDK with its default `max_retries` sends the request once, not three times."""

from __future__ import annotations

import openai
import pytest

from proxy.mock.server import build_mock_upstream
from tests.conftest import post


@pytest.fixture
def env(serve, turnout):
    up = build_mock_upstream({"fail": {"status": 503}})
    up_url = serve(up)
    base = turnout({
        "backends": {"up": {"type": "openai", "base_url": up_url + "/v1", "api_key": "k",
                            "retry": {"attempts": 1}},
                     "down": {"type": "mock", "fail": {"status": 503}, "retry": {"attempts": 1}},
                     "limited": {"type": "mock", "fail": {"status": 429, "retry_after": 1},
                                 "retry": {"attempts": 1}},
                     "ok": {"type": "mock"}},
        "models": {"up-m": {"backend": "up"}, "down-m": {"backend": "down"}, "limited-m": {"backend": "limited"},
                   "ok-m": {"backend": "ok"}},
        "routes": {"exhausted": ["down-m", "up-m"]},
        "routing": {"circuit": {"failures": 100}},
    })
    return up, base


def test_sdk_with_default_retries_sends_a_chain_exhausted_request_once(env) -> None:
    up, base = env
    client = openai.OpenAI(base_url=base + "/v1", api_key="x")  # max_retries: the SDK's default (2)
    assert client.max_retries == 2
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="exhausted", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(up.state.requests) == 1  # one pass over the chain: the SDK did not come back


def test_retry_hints_per_answer(env) -> None:
    _, base = env
    hi = [{"role": "user", "content": "hi"}]
    assert post(base, {"model": "exhausted", "messages": hi}).headers["x-should-retry"] == "false"
    bad = post(base, {"model": "ok-m", "messages": "nope"})
    assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
    assert post(base, {"model": "no-such", "messages": hi}).headers["x-should-retry"] == "false"
    limited = post(base, {"model": "limited-m", "messages": hi})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.headers["x-should-retry"] == "true"  # come back after retry-after: it may work
    ok = post(base, {"model": "ok-m", "messages": hi})
    assert ok.status_code == 200 and "x-should-retry" not in ok.headers


def test_anthropic_front_door_says_the_same(env) -> None:
    import anthropic

    up, base = env
    client = anthropic.Anthropic(base_url=base, api_key="x")  # default max_retries (2)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="exhausted", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(up.state.requests) == 1
