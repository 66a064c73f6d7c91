"""Issue 2: the drop-in /v1/chat/completions surface, driven by the official `openai` SDK over HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import collect, post, sdk

MOCKS = {
    "backends": {
        "fast": {"type": "mock", "reply": "Fast {model}: {prompt}"},
        "smart": {"type": "mock", "reply": "Smart {model}: {prompt}"},
        "down": {"type": "mock", "fail": {"status": 503}},
        "limited": {"type": "mock", "fail": {"status": 429, "retry_after": 7}},
        "slow": {"type": "mock", "timeout": {"first_token": 0.3}, "fail": {"hang": True}},
    },
    "models": {
        "fast-model": {"backend": "fast", "model": "mock-fast", "vision": True},
        "smart-model": {"backend": "smart", "model": "mock-smart"},
        "down-model": {"backend": "down"},
        "limited-model": {"backend": "limited"},
        "slow-model": {"backend": "slow"},
    },
    "routes": {
        "auto": ["down-model", "smart-model"],
        "all-down": ["down-model"],
        "limited": ["limited-model"],
        "slow": ["slow-model"],
        "slow-then-fast": ["slow-model", "fast-model"],
    },
}

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}]


@pytest.fixture
def base(turnout):
    return turnout(MOCKS)


def test_non_streaming_answer_with_routing_headers(base):
    raw = sdk(base).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}])
    r = raw.parse()
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Smart mock-smart: hello"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert raw.headers["x-turnout-model"] == "smart-model"
    assert raw.headers["x-turnout-route"] == "auto"
    assert "down-model" in raw.headers["x-turnout-fallbacks"]


def test_streaming_with_usage_chunk(base):
    stream = sdk(base).chat.completions.create(
        model="fast-model", messages=[{"role": "user", "content": "hello world"}], stream=True,
        stream_options={"include_usage": True})
    text, chunks = collect(stream)
    assert text == "Fast mock-fast: hello world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_stream_without_include_usage_has_no_usage_chunk(base):
    _, chunks = collect(sdk(base).chat.completions.create(
        model="fast-model", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert len(chunks) >= 2 and all(c.choices for c in chunks)  # not vacuous: an empty stream fails


def test_stream_wire_format_ends_with_done(base):
    with httpx.stream("POST", base + "/v1/chat/completions", json={
            "model": "fast-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = body.split("\n\n")
    assert all(e.startswith("data: ") for e in events if e)
    assert body.endswith("data: [DONE]\n\n")


def test_tool_call_non_streaming_and_result_turn(base):
    client = sdk(base)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="smart-model", messages=messages, tools=WEATHER)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments)["unit"] == "c"
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "21C and sunny"}]
    r2 = client.chat.completions.create(model="smart-model", messages=messages, tools=WEATHER)
    assert r2.choices[0].message.content == "The tool returned: 21C and sunny"


def test_tool_call_streamed_through_sdk_stream_helper(base):
    client = sdk(base)
    with client.chat.completions.stream(model="smart-model", tools=WEATHER,
                                        messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    tc = final.choices[0].message.tool_calls[0]
    assert final.choices[0].message.content is None, "a tool-call-only answer has content null, as OpenAI's"
    assert final.choices[0].finish_reason == "tool_calls"
    assert tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Weather in Paris?", "unit": "c"}


def test_request_surface_params(base):
    client = sdk(base)
    r = client.chat.completions.create(model="fast-model", messages=[
        {"role": "system", "content": "be brief"}, {"role": "developer", "content": "really"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        temperature=0.2, top_p=0.9, max_tokens=2, seed=1, user="u1", metadata={"task": "x"}, n=2,
        stop=["never"], parallel_tool_calls=False)
    assert len(r.choices) == 2 and r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == "Fast mock-fast:"
    r = client.chat.completions.create(model="fast-model", messages=[{"role": "user", "content": "a b c"}], stop="b")
    assert r.choices[0].message.content == "Fast mock-fast: a"
    r = client.chat.completions.create(model="fast-model", messages=[{"role": "user", "content": "q"}],
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}})
    assert json.loads(r.choices[0].message.content) == {"n": 1}


# --- fallback and upstream errors ---------------------------------------------------------------


def test_stream_falls_back_before_first_byte(base):
    with sdk(base).chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True) as raw:
        assert raw.headers["x-turnout-model"] == "smart-model"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Smart mock-smart: hi"


def test_upstream_5xx_is_502_when_no_fallback_left(base):
    with pytest.raises(openai.APIStatusError) as e:
        sdk(base).chat.completions.create(model="all-down", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502
    assert set(e.value.body) == {"message", "type", "param", "code"}


def test_upstream_429_keeps_retry_after(base):
    r = post(base, {"model": "limited", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_upstream_timeout_is_504_and_falls_back(base):
    r = post(base, {"model": "slow", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    r = post(base, {"model": "slow-then-fast", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "fast-model"


def test_midstream_failure_ends_with_error_the_sdk_raises(base):
    stream = sdk(base).chat.completions.create(
        model="fast-model", stream=True, messages=[{"role": "user", "content": "one two three [mock:drop=3]"}])
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in stream:
            got.append(c)
    assert len(got) == 3 and "dropped" in e.value.message
    r = post(base, {"model": "fast-model", "stream": True,
                    "messages": [{"role": "user", "content": "one two [mock:drop=2]"}]})
    assert "[DONE]" not in r.text and '"error"' in r.text.split("\n\n")[-2]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body,status,param,code", [
    (b"{not json", 400, None, "invalid_json"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", "missing_required_parameter"),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, 400, "model", "invalid_type"),
    ({"model": "auto"}, 400, "messages", "missing_required_parameter"),
    ({"model": "auto", "messages": "hi"}, 400, "messages", "invalid_type"),
    ({"model": "auto", "messages": []}, 400, "messages", "empty_array"),
    ({"model": "auto", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
    ({"model": "auto", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", "invalid_type"),
    ({"model": "auto", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].tool_call_id", "missing_required_parameter"),
    ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature", "decimal_above_max_value"),
    ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "array_above_max_length"),
    ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, 400, "tool_choice", None),
    ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, 400, "response_format.type", "invalid_value"),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model", "model_not_found"),
])
def test_bad_input_gets_openai_error_shape(base, body, status, param, code):
    r = post(base, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code
    assert "Traceback" not in r.text


def test_sdk_raises_typed_errors(base):
    client = sdk(base)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=[])
    assert e.value.body["param"] == "messages"


def test_body_over_limit_is_413(turnout):
    base = turnout({**MOCKS, "server": {"max_body_bytes": 1000}})
    big = {"model": "fast-model", "messages": [{"role": "user", "content": "x" * 2000}]}
    r = post(base, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():
        yield json.dumps(big).encode()
    r = httpx.post(base + "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_proxy_keys(turnout):
    base = turnout({**MOCKS, "keys": [{"key": "${APP_KEY}", "name": "app", "tier": "free"}]},
                   env={"APP_KEY": "sk-turnout-secret"})
    msg = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(base, api_key="wrong-key").chat.completions.create(model="fast-model", messages=msg)
    assert "wrong-key" not in str(e.value.body) and e.value.body["code"] == "invalid_api_key"
    r = post(base, {"model": "fast-model", "messages": msg})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert sdk(base, api_key="sk-turnout-secret").chat.completions.create(model="fast-model", messages=msg).choices
    assert httpx.get(base + "/v1/models").status_code == 401
    assert httpx.get(base + "/health").status_code == 200


# --- models, health, ready ----------------------------------------------------------------------


def test_models_lists_routes_and_targets(base):
    ids = [m.id for m in sdk(base).models.list()]
    assert ids[:5] == ["auto", "all-down", "limited", "slow", "slow-then-fast"]
    assert "fast-model" in ids and "smart-model" in ids
    assert sdk(base).models.retrieve("fast-model").owned_by == "fast"


def test_health_and_ready(base, turnout):
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    assert httpx.get(base + "/ready").status_code == 200
    only_cloud = turnout({"backends": {"c": {"type": "openai", "api_key": "${NOPE}"}},
                          "models": {"m": {"backend": "c"}}})
    r = httpx.get(only_cloud + "/ready")
    assert r.status_code == 503 and "NOPE" in r.json()["backends"]["c"]
    r = post(only_cloud, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_available_target"
    assert "no API key" in r.json()["error"]["message"]


def test_unknown_path_and_method_are_openai_shaped(base):
    r = httpx.get(base + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(base + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
