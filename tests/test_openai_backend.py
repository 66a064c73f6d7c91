"""The `openai` backend: any OpenAI-compatible upstream, here the mock upstream over real HTTP."""

from __future__ import annotations

import json
import logging

import openai
import pytest

from proxy.mock.server import build_mock_upstream
from tests.conftest import collect, post, sdk
from tests.test_core import WEATHER


@pytest.fixture
def upstream(serve):
    app = build_mock_upstream(api_key="sk-upstream-secret")
    return app, serve(app)


@pytest.fixture
def base(upstream, turnout):
    _, url = upstream
    return turnout({
        "backends": {
            "up": {"type": "openai", "base_url": url + "/v1", "api_key": "${UP_KEY}",
                   "timeout": {"first_token": 0.5, "total": 0.5}},
            "badkey": {"type": "openai", "base_url": url + "/v1", "api_key": "sk-wrong-secret"},
            "nowhere": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "x",
                        "timeout": {"connect": 0.5}},
            "local": {"type": "mock"},
        },
        "models": {
            "gpt": {"backend": "up", "model": "gpt-4o-mini"},
            "bad": {"backend": "badkey", "model": "gpt-4o-mini"},
            "gone": {"backend": "nowhere", "model": "x"},
            "fallback": {"backend": "local", "model": "local-model"},
        },
        "routes": {"chain": ["bad", "gone", "gpt"], "bad-only": ["bad"]},
    }, env={"UP_KEY": "sk-upstream-secret"})


def test_passthrough_non_streaming(upstream, base):
    app, _ = upstream
    r = sdk(base).chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}],
                                          metadata={"task": "t"}, temperature=0.5, seed=3)
    assert r.model == "gpt-4o-mini" and r.choices[0].message.content == "Hello from gpt-4o-mini! You said: hi"
    assert r.usage.total_tokens > 0
    sent = app.state.requests[-1]
    assert sent["model"] == "gpt-4o-mini" and "metadata" not in sent
    assert sent["temperature"] == 0.5 and sent["seed"] == 3


def test_passthrough_stream_counts_usage_and_hides_it_unless_asked(upstream, base):
    app, _ = upstream
    text, chunks = collect(sdk(base).chat.completions.create(
        model="gpt", stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert text == "Hello from gpt-4o-mini! You said: hi"
    assert app.state.requests[-1]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)
    _, chunks = collect(sdk(base).chat.completions.create(
        model="gpt", stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "hi"}]))
    assert chunks[-1].usage.completion_tokens == 6 and len({c.id for c in chunks}) == 1


def test_tool_calls_stream_through(base):
    with sdk(base).chat.completions.stream(model="gpt", tools=WEATHER,
                                           messages=[{"role": "user", "content": "Paris"}]) as s:
        final = s.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments)["city"] == "Paris"


def test_upstream_errors_map_and_fall_back(base, caplog):
    caplog.set_level(logging.DEBUG)
    raw = sdk(base).chat.completions.with_raw_response.create(model="chain", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-turnout-model"] == "gpt"
    assert "bad: 502 upstream_401" in raw.headers["x-turnout-fallbacks"]
    assert "gone: 502 upstream_unreachable" in raw.headers["x-turnout-fallbacks"]
    with pytest.raises(openai.APIStatusError) as e:
        sdk(base).chat.completions.create(model="bad-only", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and e.value.body["type"] == "upstream_auth_error"
    assert "secret" not in e.value.response.text
    assert "secret" not in caplog.text


@pytest.mark.parametrize("directive,status,code", [
    ("[mock:status=429 retry_after=3]", 429, None),
    ("[mock:status=500]", 502, "upstream_500"),
    ("[mock:status=400 message=bad_thing]", 400, None),
    ("[mock:hang]", 504, "upstream_timeout"),
])
def test_upstream_status_mapping(base, directive, status, code):
    for stream in (False, True):
        r = post(base, {"model": "gpt", "stream": stream, "messages": [{"role": "user", "content": directive}]})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        if code:
            assert err["code"] == code
        if status == 429:
            assert r.headers["retry-after"] == "3"
        if status == 400:
            assert err["message"] == "bad thing"


def test_upstream_drop_midstream_raises_in_sdk(base):
    stream = sdk(base).chat.completions.create(model="gpt", stream=True,
                                               messages=[{"role": "user", "content": "a b c d [mock:drop=3]"}])
    with pytest.raises(openai.APIError):
        list(stream)
