"""Issue 3: the Anthropic backend end to end — `openai` SDK → Turnout → Anthropic emulator — one
test (or more) per row of the mapping table in translators/anthropic.py, asserting both what the
emulator received and what the client got."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from proxy.config import parse
from proxy.server.assembly import build_app
from tests.conftest import ServerThread, collect, post, sdk
from tests.emulators.anthropic import Reply
from tests.emulators.anthropic import build_app as build_emulator
from translators import anthropic as tr
from tests.conftest import RECORDED

KEY = "sk-ant-secret-123"
SONNET = "claude-sonnet-4-5-20250929"
HI = [{"role": "user", "content": "hello"}]
PNG = "iVBORw0KGgo="
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def config(url: str) -> dict:
    return {
        "backends": {
            "claude": {"type": "anthropic", "base_url": url, "api_key": KEY},
            "claude-v1": {"type": "anthropic", "base_url": url + "/v1", "api_key": KEY, "max_tokens": 777,
                          "cache_control": {"type": "ephemeral"}},
            "claude-retry": {"type": "anthropic", "base_url": url, "api_key": KEY,
                             "retry": {"attempts": 2, "backoff": 0.01, "max_retry_after": 0.01}},
            "claude-badkey": {"type": "anthropic", "base_url": url, "api_key": "sk-ant-wrong-key-999"},
            "backup": {"type": "mock", "reply": "Backup: {prompt}"},
        },
        "models": {
            "sonnet": {"backend": "claude", "model": SONNET, "vision": True},
            "haiku-capped": {"backend": "claude", "model": "claude-haiku-4-5", "max_output_tokens": 1000},
            "future": {"backend": "claude", "model": "claude-future-9"},
            "opus-new": {"backend": "claude", "model": "claude-opus-4-8"},
            "v1": {"backend": "claude-v1", "model": "claude-future-9"},
            "thinker": {"backend": "claude", "model": SONNET, "options": {"thinking": {"budget_tokens": 2000}}},
            "retrying": {"backend": "claude-retry", "model": SONNET},
            "badkey": {"backend": "claude-badkey", "model": SONNET},
            "backup-model": {"backend": "backup", "model": "mock-backup"},
        },
        "routes": {"claude-then-backup": ["sonnet", "backup-model"],
                   "badkey-then-backup": ["badkey", "backup-model"]},
    }


@pytest.fixture(scope="module")
def shared():
    """One emulator and one Turnout for the module (servers are the slow part of a test)."""
    emu = build_emulator(api_key=KEY)
    upstream = ServerThread(emu).start()
    emu.state.url = upstream.url
    proxy = ServerThread(build_app(parse(config(upstream.url), {}))).start()
    yield emu, proxy.url
    proxy.stop()
    upstream.stop()


def _reset(emu) -> None:
    emu.state.script.clear()
    emu.state.requests.clear()
    emu.state.headers.clear()


@pytest.fixture
def env(shared):
    _reset(shared[0])
    return shared


@pytest.fixture
def fresh(shared, turnout):
    """The shared emulator behind a Turnout of its own: for tests whose failures would count
    towards the shared Turnout's circuit breakers."""
    emu = shared[0]
    _reset(emu)
    return emu, turnout(config(emu.state.url))


def script(emu, *replies: Reply) -> None:
    emu.state.script.extend(replies)


def last(emu) -> dict:
    return emu.state.requests[-1]


# --- plain answers, headers, ids ---------------------------------------------------------------


def test_non_streamed_answer_is_openai_shaped_and_headers_right(env):
    emu, base = env
    script(emu, Reply(text="Hi there!", usage={"input_tokens": 8, "output_tokens": 4}))
    raw = sdk(base).chat.completions.with_raw_response.create(model="sonnet", messages=HI)
    r = raw.parse()
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and isinstance(r.created, int)
    assert r.model == SONNET
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == "Hi there!"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (8, 4, 12)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert raw.headers["x-turnout-model"] == "sonnet"
    h = emu.state.headers[-1]
    assert h["x-api-key"] == KEY and h["anthropic-version"] == "2023-06-01"
    assert h["content-type"] == "application/json" and "authorization" not in h
    assert last(emu) == {"model": SONNET, "max_tokens": 64000, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello"}]}]}


def test_base_url_with_v1_and_backend_default_max_tokens(env):
    emu, base = env
    sdk(base).chat.completions.create(model="v1", messages=HI)
    assert last(emu)["max_tokens"] == 777 and last(emu)["cache_control"] == {"type": "ephemeral"}


# --- messages ----------------------------------------------------------------------------------


def test_system_and_developer_anywhere_go_top_level_and_same_roles_merge(env):
    emu, base = env
    sdk(base).chat.completions.create(model="sonnet", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
        {"role": "assistant", "content": "A"},
        {"role": "system", "content": ""},
        {"role": "assistant", "content": [{"type": "text", "text": "B"}]},
        {"role": "user", "content": "three"},
    ])
    got = last(emu)
    assert got["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}]
    assert got["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]


def test_cache_control_on_parts_is_kept(env):
    emu, base = env
    cc = {"type": "ephemeral"}
    post(base, {"model": "sonnet", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "long manual", "cache_control": cc}]},
        {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": cc}]}]})
    assert last(emu)["system"] == [{"type": "text", "text": "long manual", "cache_control": cc}]
    assert last(emu)["messages"][0]["content"] == [{"type": "text", "text": "q", "cache_control": cc}]


def test_trailing_assistant_is_a_prefill_without_trailing_whitespace(env):
    emu, base = env
    sdk(base).chat.completions.create(model="sonnet", messages=[*HI, {"role": "assistant", "content": "Sure: "}])
    assert last(emu)["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Sure:"}]}


def test_only_system_messages_is_a_clear_400(env):
    emu, base = env
    r = post(base, {"model": "sonnet", "messages": [{"role": "system", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert emu.state.requests == []


@pytest.mark.parametrize("body,expected", [
    ({}, 64000),
    ({"max_tokens": 50}, 50),
    ({"max_tokens": 50, "max_completion_tokens": 20}, 20),
    ({"max_completion_tokens": 30}, 30),
])
def test_max_tokens(env, body, expected):
    emu, base = env
    r = post(base, {"model": "sonnet", "messages": HI, **body})
    assert r.status_code == 200, r.text
    assert last(emu)["max_tokens"] == expected


def test_max_tokens_defaults_per_model_and_target_cap(env):
    emu, base = env
    post(base, {"model": "haiku-capped", "messages": HI})
    assert last(emu)["max_tokens"] == 1000
    post(base, {"model": "haiku-capped", "messages": HI, "max_tokens": 5000})
    assert last(emu)["max_tokens"] == 1000
    post(base, {"model": "future", "messages": HI})
    assert last(emu)["max_tokens"] == tr.FALLBACK_MAX_TOKENS
    assert tr.default_max_tokens("claude-3-5-haiku-20241022") == 8192
    assert tr.default_max_tokens("us.anthropic.claude-opus-4-1-20250805-v1:0") == 32000


def test_n_above_one_is_a_clear_400(env):
    emu, base = env
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="sonnet", messages=HI, n=2)
    assert e.value.body["param"] == "n" and "one choice" in e.value.body["message"]
    assert emu.state.requests == []


# --- images ------------------------------------------------------------------------------------


def test_images_data_url_to_base64_and_http_to_url_source(env):
    emu, base = env
    sdk(base).chat.completions.create(model="sonnet", messages=[{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}},
    ]}])
    assert last(emu)["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
    ]


@pytest.mark.parametrize("url,code", [
    (f"data:image/bmp;base64,{PNG}", "invalid_image_format"),
    ("data:image/png;base64,@@@", "invalid_image_url"),
])
def test_bad_images_are_400_before_any_upstream_call(env, url, code):
    emu, base = env
    r = post(base, {"model": "sonnet", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == code
    assert emu.state.requests == []


def test_pdf_file_part_becomes_document(env):
    emu, base = env
    post(base, {"model": "sonnet", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "text", "text": "summarise"}]}]})
    assert last(emu)["messages"][0]["content"][0] == {
        "type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        "title": "a.pdf"}


# --- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,expected", [
    ({}, {"type": "auto"}),
    ({"tool_choice": "auto"}, {"type": "auto"}),
    ({"tool_choice": "none"}, {"type": "none"}),
    ({"tool_choice": "required"}, {"type": "any"}),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, {"type": "tool", "name": "get_time"}),
    ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
    ({"tool_choice": "required", "parallel_tool_calls": False}, {"type": "any", "disable_parallel_tool_use": True}),
    ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
])
def test_tools_and_tool_choice(env, kw, expected):
    emu, base = env
    sdk(base).chat.completions.create(model="sonnet", messages=HI, tools=WEATHER, **kw)
    got = last(emu)
    assert got["tool_choice"] == expected
    assert got["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER[0]["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_choice_without_tools_is_dropped(env):
    emu, base = env
    post(base, {"model": "sonnet", "messages": HI, "tool_choice": "none"})
    assert "tool_choice" not in last(emu) and "tools" not in last(emu)


def test_tool_call_history_to_tool_use_and_paired_tool_results(env):
    emu, base = env
    sdk(base).chat.completions.create(model="sonnet", tools=WEATHER, messages=[
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_B", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_A", "content": "21C"},
        {"role": "tool", "tool_call_id": "toolu_B", "content": [{"type": "text", "text": "12:00"},
                                                                {"type": "text", "text": " CET"}]},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_C", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_C", "content": ""},
    ])
    assert last(emu)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and the time?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_B", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_A", "content": "21C"},
            {"type": "tool_result", "tool_use_id": "toolu_B", "content": [
                {"type": "text", "text": "12:00"}, {"type": "text", "text": " CET"}]},
            {"type": "text", "text": "Thanks!"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_C", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_C"}]},
    ]


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]"])
def test_invalid_tool_arguments_are_a_400_not_a_crash(env, arguments):
    emu, base = env
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="sonnet", tools=WEATHER, messages=[
            *HI, {"role": "assistant", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "x"}])
    assert e.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
    assert e.value.body["code"] == "invalid_tool_arguments"
    assert emu.state.requests == []


def test_history_with_tool_calls_but_no_tools_still_works(env):
    emu, base = env
    r = sdk(base).chat.completions.create(model="sonnet", messages=[
        *HI, {"role": "assistant", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "noon"}])
    assert r.choices[0].finish_reason == "stop"
    assert last(emu)["tools"] == [{"name": "get_time", "input_schema": {"type": "object"}}]
    assert last(emu)["tool_choice"] == {"type": "none"}


def test_upstream_pairing_error_comes_back_as_400(env):
    emu, base = env
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="sonnet", tools=WEATHER, messages=[
            *HI, {"role": "assistant", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "user", "content": "never mind"}])
    assert "`tool_use` ids were found without `tool_result`" in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


# --- sampling and the rest of the request ------------------------------------------------------


def test_stop_temperature_top_p_user(env):
    emu, base = env
    sdk(base).chat.completions.create(model="sonnet", messages=HI, stop=["END", "###"], temperature=0.3, top_p=0.9,
                                      user="user-42", seed=7, presence_penalty=0.5, frequency_penalty=0.1,
                                      logprobs=False, metadata={"team": "x"}, store=False)
    got = last(emu)
    assert got["stop_sequences"] == ["END", "###"] and got["temperature"] == 0.3
    assert "top_p" not in got  # current models take temperature or top_p, not both
    assert got["metadata"] == {"user_id": "user-42"}
    for k in ("seed", "presence_penalty", "frequency_penalty", "logprobs", "store", "n", "stop"):
        assert k not in got
    sdk(base).chat.completions.create(model="sonnet", messages=HI, stop="END", temperature=1.7)
    assert last(emu)["stop_sequences"] == ["END"] and last(emu)["temperature"] == 1.0
    sdk(base).chat.completions.create(model="sonnet", messages=HI, top_p=0.5)
    assert last(emu)["top_p"] == 0.5 and "temperature" not in last(emu)


def test_models_that_reject_sampling_and_think_adaptively(env):
    emu, base = env
    r = post(base, {"model": "opus-new", "messages": HI, "temperature": 0.2, "top_p": 0.3})
    assert r.status_code == 200, r.text
    assert "temperature" not in last(emu) and "top_p" not in last(emu)
    r = post(base, {"model": "opus-new", "messages": HI, "reasoning_effort": "high"})
    assert r.status_code == 200, r.text
    assert last(emu)["thinking"] == {"type": "adaptive"} and last(emu)["output_config"] == {"effort": "high"}
    post(base, {"model": "opus-new", "messages": HI, "reasoning_effort": "none"})
    assert "thinking" not in last(emu)


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_that_rejects_temperature_is_learned_and_retried_without_it(fresh, stream):
    emu, base = fresh
    script(emu, Reply(status=400, message="`temperature` is deprecated for this model."),
           Reply(text="fine"), Reply(text="again"))
    body = {"model": "sonnet", "messages": HI, "temperature": 0.2, "stream": stream}
    r = post(base, body)
    assert r.status_code == 200 and "fine" in r.text
    assert [("temperature" in b) for b in emu.state.requests] == [True, False]
    r = post(base, body)
    assert r.status_code == 200 and "again" in r.text
    assert "temperature" not in last(emu) and len(emu.state.requests) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_whitespace_stop_sequences_are_applied_by_turnout(env, stream):
    emu, base = env
    script(emu, Reply(text="first line\n\nsecond END third", chunk_words=1))
    body = {"model": "sonnet", "messages": HI, "stop": ["\n\n", "END"], "stream": stream}
    if stream:
        text, chunks = collect(sdk(base).chat.completions.create(**body))
        finish = chunks[-1].choices[0].finish_reason
    else:
        r = sdk(base).chat.completions.create(**body)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert text == "first line" and finish == "stop"
    assert last(emu)["stop_sequences"] == ["END"]  # the API rejects whitespace-only stop sequences


def test_stop_sequence_cuts_and_maps_to_stop(env):
    emu, base = env
    script(emu, Reply(text="one two END three"))
    r = sdk(base).chat.completions.create(model="sonnet", messages=HI, stop="END")
    assert r.choices[0].message.content == "one two " and r.choices[0].finish_reason == "stop"


# --- response_format ---------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_by_forced_tool(env, stream):
    emu, base = env
    script(emu, Reply(blocks=[{"type": "tool_use", "name": "person", "input": {"name": "Ada", "age": 36}}]))
    client = sdk(base)
    if stream:
        text, chunks = collect(client.chat.completions.create(model="sonnet", messages=HI, response_format=JSON_SCHEMA,
                                                              stream=True))
        finish = chunks[-1].choices[0].finish_reason
        assert all(not c.choices[0].delta.tool_calls for c in chunks)
    else:
        r = client.chat.completions.create(model="sonnet", messages=HI, response_format=JSON_SCHEMA)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert r.choices[0].message.tool_calls is None
    assert json.loads(text) == {"name": "Ada", "age": 36} and finish == "stop"
    got = last(emu)
    assert [(t["name"], t["input_schema"]) for t in got["tools"]] == [("person", SCHEMA)]
    assert got["tool_choice"] == {"type": "tool", "name": "person"}


def test_response_format_parse_helper(env):
    emu, base = env
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    script(emu, Reply(blocks=[{"type": "tool_use", "name": "Person", "input": {"name": "Ada", "age": 36}}]))
    r = sdk(base).chat.completions.parse(model="sonnet", messages=HI, response_format=Person)
    assert r.choices[0].message.parsed == Person(name="Ada", age=36)


def test_response_format_json_object(env):
    emu, base = env
    script(emu, Reply(blocks=[{"type": "tool_use", "name": "json_object", "input": {"ok": True}}]))
    r = sdk(base).chat.completions.create(model="sonnet", messages=HI, response_format={"type": "json_object"})
    assert json.loads(r.choices[0].message.content) == {"ok": True} and r.choices[0].finish_reason == "stop"
    assert last(emu)["tool_choice"] == {"type": "tool", "name": "json_object"}
    assert last(emu)["tools"][0]["input_schema"]["type"] == "object"


def test_response_format_with_tool_choice_none_forces_the_format(env):
    emu, base = env
    script(emu, Reply(blocks=[{"type": "tool_use", "name": "person", "input": {"name": "Bo", "age": 3}}]))
    r = sdk(base).chat.completions.create(model="sonnet", messages=HI, tools=WEATHER, tool_choice="none",
                                          response_format=JSON_SCHEMA, parallel_tool_calls=False)
    assert json.loads(r.choices[0].message.content) == {"name": "Bo", "age": 3}
    assert last(emu)["tool_choice"] == {"type": "tool", "name": "person", "disable_parallel_tool_use": True}


def test_response_format_with_client_tools_lets_the_model_choose(env):
    emu, base = env
    script(emu, Reply(blocks=[{"type": "tool_use", "name": "get_time", "input": {}}]))
    r = sdk(base).chat.completions.create(model="sonnet", messages=HI, tools=WEATHER, response_format=JSON_SCHEMA)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls[0].function.name == "get_time"
    assert last(emu)["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in last(emu)["tools"]] == ["get_weather", "get_time", "person"]


# --- streaming ---------------------------------------------------------------------------------


def test_stream_text_role_first_and_usage_with_cache_tokens(env):
    emu, base = env
    script(emu, Reply(text="Hello there friend", usage={"input_tokens": 10, "cache_creation_input_tokens": 100,
                                                         "cache_read_input_tokens": 1000, "output_tokens": 3}))
    text, chunks = collect(sdk(base).chat.completions.create(
        model="sonnet", messages=HI, stream=True, stream_options={"include_usage": True}))
    assert text == "Hello there friend"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {SONNET}
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    u = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (1110, 3, 1113)
    assert u.prompt_tokens_details.cached_tokens == 1000
    assert last(emu)["stream"] is True


def test_stream_without_include_usage_has_no_usage_chunk(env):
    emu, base = env
    text, chunks = collect(sdk(base).chat.completions.create(model="sonnet", messages=HI, stream=True))
    assert text and len(chunks) >= 2  # not an empty stream: the checks below would pass on one
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_non_streamed_usage_with_cache_tokens(env):
    emu, base = env
    script(emu, Reply(text="ok", usage={"input_tokens": 5, "cache_creation_input_tokens": 20,
                                        "cache_read_input_tokens": 30, "output_tokens": 2}))
    u = sdk(base).chat.completions.create(model="sonnet", messages=HI).usage
    assert (u.prompt_tokens, u.completion_tokens, u.prompt_tokens_details.cached_tokens) == (55, 2, 30)


def test_stream_tool_calls_index_id_name_once_then_argument_deltas(env):
    emu, base = env
    script(emu, Reply(blocks=[{"type": "text", "text": "Checking both."},
                              {"type": "tool_use", "id": "toolu_W", "name": "get_weather",
                               "input": {"city": "Paris, the capital of France"}},
                              {"type": "tool_use", "id": "toolu_T", "name": "get_time", "input": {"tz": "Europe/Paris"}}]))
    _, chunks = collect(sdk(base).chat.completions.create(model="sonnet", messages=HI, tools=WEATHER, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.id, d.function.name, d.type) for d in firsts] == [
        (0, "toolu_W", "get_weather", "function"), (1, "toolu_T", "get_time", "function")]
    rest = [d for d in deltas if not d.id]
    assert all(d.function.name is None and d.type is None for d in rest) and len(rest) > 2
    args = {i: "".join(d.function.arguments for d in deltas if d.index == i) for i in (0, 1)}
    assert json.loads(args[0]) == {"city": "Paris, the capital of France"} and json.loads(args[1]) == {"tz": "Europe/Paris"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Checking both."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_goes_to_reasoning_content_never_content(env, stream):
    emu, base = env
    script(emu, Reply(blocks=[{"type": "thinking", "thinking": "Let me think about this."},
                              {"type": "text", "text": "Forty-two."}],
                      usage={"output_tokens": 9, "output_tokens_details": {"thinking_tokens": 6}}))
    client = sdk(base)
    if stream:
        text, chunks = collect(client.chat.completions.create(model="thinker", messages=HI, stream=True,
                                                              stream_options={"include_usage": True}))
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        u = chunks[-1].usage
    else:
        r = client.chat.completions.create(model="thinker", messages=HI)
        text, reasoning, u = r.choices[0].message.content, r.choices[0].message.reasoning_content, r.usage
    assert text == "Forty-two." and reasoning == "Let me think about this."
    assert u.completion_tokens == 9 and u.completion_tokens_details.reasoning_tokens == 6
    assert last(emu)["thinking"] == {"type": "enabled", "budget_tokens": 2000}


def test_reasoning_effort_enables_thinking_and_drops_temperature(env):
    emu, base = env
    post(base, {"model": "sonnet", "messages": HI, "reasoning_effort": "low", "temperature": 0.2, "max_tokens": 5000})
    got = last(emu)
    assert got["thinking"] == {"type": "enabled", "budget_tokens": 2048} and "temperature" not in got
    post(base, {"model": "sonnet", "messages": HI, "reasoning_effort": "high", "max_tokens": 1500})
    assert last(emu)["thinking"] == {"type": "enabled", "budget_tokens": 1499}
    post(base, {"model": "sonnet", "messages": HI, "reasoning_effort": "high", "max_tokens": 500})
    assert "thinking" not in last(emu)
    post(base, {"model": "thinker", "messages": HI, "tools": WEATHER, "tool_choice": "required"})
    assert "thinking" not in last(emu)  # the API refuses thinking with a forced tool


def test_recorded_anthropic_stream_through_turnout(env):
    emu, base = env
    script(emu, Reply(raw_sse=(RECORDED / "anthropic_stream_thinking_text.sse").read_bytes()))
    text, chunks = collect(sdk(base).chat.completions.create(model="sonnet", messages=HI, stream=True,
                                                             stream_options={"include_usage": True}))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning.startswith("This is a straightforward question about pedestrian safety.")
    assert text.endswith("prioritize safety over speed when crossing streets.") and "pedest" not in text[:5]
    assert chunks[-1].usage.prompt_tokens == 43 and chunks[-1].usage.completion_tokens == 282
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {"claude-sonnet-4-20250514"}


# --- stop reasons ------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_reason,finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_reasons(env, stop_reason, finish, stream):
    emu, base = env
    blocks = [{"type": "text", "text": "partial answer"}]
    if stop_reason == "tool_use":
        blocks.append({"type": "tool_use", "name": "get_time", "input": {}})
    script(emu, Reply(blocks=blocks, stop_reason=stop_reason))
    client = sdk(base)
    if stream:
        _, chunks = collect(client.chat.completions.create(model="sonnet", messages=HI, tools=WEATHER, stream=True))
        assert chunks[-1].choices[0].finish_reason == finish
        assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    else:
        r = client.chat.completions.create(model="sonnet", messages=HI, tools=WEATHER)
        assert r.choices[0].finish_reason == finish


def test_max_tokens_cut_is_length(env):
    emu, base = env
    script(emu, Reply(text="one two three four five"))
    r = sdk(base).chat.completions.create(model="sonnet", messages=HI, max_tokens=2)
    assert r.choices[0].message.content == "one two" and r.choices[0].finish_reason == "length"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status,client_status,otype,code,retried", [
    (400, 400, "invalid_request_error", None, False),
    (401, 502, "upstream_auth_error", "upstream_401", False),
    (403, 502, "upstream_auth_error", "upstream_403", False),
    (404, 404, "invalid_request_error", "model_not_found", False),
    (413, 413, "invalid_request_error", "request_too_large", False),
    (429, 429, "rate_limit_error", "rate_limit_exceeded", True),
    (500, 502, "upstream_error", "upstream_500", True),
    (529, 502, "upstream_error", "upstream_overloaded", True),
])
def test_upstream_errors_map_to_openai_shape_and_retry_policy(fresh, status, client_status, otype, code, retried):
    emu, base = fresh
    headers = {"retry-after": "5"} if status == 429 else {}
    script(emu, Reply(status=status, message=f"boom {status}", headers=headers),
           Reply(status=status, message=f"boom {status}", headers=headers))
    r = post(base, {"model": "retrying", "messages": HI})
    assert r.status_code == client_status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == otype and err["code"] == code
    if otype == "upstream_auth_error":  # the upstream's words about Turnout's key stay out of the client's view
        assert f"boom {status}" not in err["message"] and f"(HTTP {status})" in err["message"]
    else:
        assert f"boom {status}" in err["message"]
    assert len(emu.state.requests) == (2 if retried else 1)
    if status == 429:
        assert r.headers["retry-after"] == "5"
    assert KEY not in r.text


@pytest.mark.parametrize("status,falls_back", [(529, True), (500, True), (429, True), (401, True), (403, True),
                                               (402, True), (404, True), (400, False), (413, False)])
def test_fallback_to_next_target(fresh, status, falls_back):
    emu, base = fresh
    script(emu, Reply(status=status))
    r = post(base, {"model": "claude-then-backup", "messages": HI})
    if falls_back:
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Backup: hello"
        assert "sonnet" in r.headers["x-turnout-fallbacks"]
    else:
        assert r.status_code == status and r.json()["error"]["type"] == "invalid_request_error"


def test_sdk_raises_typed_errors(fresh):
    emu, base = fresh
    script(emu, Reply(status=429, headers={"retry-after": "1"}), Reply(status=400, message="messages: bad"))
    with pytest.raises(openai.RateLimitError):
        sdk(base).chat.completions.create(model="sonnet", messages=HI)
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="sonnet", messages=HI)
    assert e.value.body["message"] == "messages: bad"


def test_turnouts_bad_upstream_key_is_an_upstream_problem_and_never_echoed(fresh):
    emu, base = fresh
    r = post(base, {"model": "badkey", "messages": HI})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_auth_error"
    assert "sk-ant-wrong-key-999" not in r.text and KEY not in r.text
    r = post(base, {"model": "badkey-then-backup", "messages": HI})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Backup: hello"


def test_midstream_error_event_ends_stream_with_error_the_sdk_raises(fresh):
    emu, base = fresh
    script(emu, Reply(text="a b c d e f", stream_error=(6, "overloaded_error", "Overloaded")))
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in sdk(base).chat.completions.create(model="sonnet", messages=HI, stream=True):
            got.append(c)
    assert "Overloaded" in e.value.message
    assert "".join(c.choices[0].delta.content or "" for c in got) == "a b c "
    script(emu, Reply(text="a b c d e f", stream_error=(6, "overloaded_error", "Overloaded")))
    r = post(base, {"model": "sonnet", "messages": HI, "stream": True})
    last_event = r.text.strip().split("\n\n")[-1]
    assert "[DONE]" not in r.text and json.loads(last_event[6:])["error"]["code"] == "upstream_overloaded"


def test_error_event_before_any_content_falls_back(fresh):
    emu, base = fresh
    script(emu, Reply(text="never", stream_error=(1, "overloaded_error", "Overloaded")))
    text, _ = collect(sdk(base).chat.completions.create(model="claude-then-backup", messages=HI, stream=True))
    assert text == "Backup: hello"


def test_dropped_connection_midstream_and_before_content(fresh):
    emu, base = fresh
    script(emu, Reply(text="a b c d e f", drop=6))
    with pytest.raises(openai.APIError):
        collect(sdk(base).chat.completions.create(model="sonnet", messages=HI, stream=True))
    script(emu, Reply(text="a b c", drop=1))
    text, _ = collect(sdk(base).chat.completions.create(model="claude-then-backup", messages=HI, stream=True))
    assert text == "Backup: hello"


def test_stream_cut_after_message_delta_still_ends_cleanly(fresh):
    emu, base = fresh
    script(emu, Reply(text="a b c", drop=9))  # start, block start, ping, 3 deltas, stop, message_delta | stop
    text, chunks = collect(sdk(base).chat.completions.create(model="sonnet", messages=HI, stream=True))
    assert text == "a b c" and chunks[-1].choices[0].finish_reason == "stop"


def test_unreachable_upstream_is_502(turnout):
    base = turnout({"backends": {"c": {"type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"}},
                    "models": {"m": {"backend": "c", "model": SONNET}}})
    r = post(base, {"model": "m", "messages": HI})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"


# --- the whole conversation through the SDK's stream helpers ------------------------------------


def test_multi_turn_tool_conversation_streamed_through_sdk_helpers(env):
    emu, base = env
    client = sdk(base)
    script(emu, Reply(blocks=[{"type": "tool_use", "id": "toolu_01Paris", "name": "get_weather",
                               "input": {"city": "Paris"}}]),
           Reply(blocks=[{"type": "text", "text": "It is 21C and sunny in Paris."}],
                 usage={"input_tokens": 50, "output_tokens": 9}))
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather in Paris?"}]
    with client.chat.completions.stream(model="sonnet", messages=messages, tools=WEATHER) as s:
        events = [e.type for e in s]
        first = s.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.content is None and msg.role == "assistant"
    call = msg.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("toolu_01Paris", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [msg.model_dump(exclude_none=True, exclude={"parsed", "refusal"}),
                 {"role": "tool", "tool_call_id": call.id, "content": "21C, sunny"}]
    with client.chat.completions.stream(model="sonnet", messages=messages, tools=WEATHER,
                                        stream_options={"include_usage": True}) as s:
        text = "".join(e.delta for e in s if e.type == "content.delta")
        final = s.get_final_completion()
    assert text == "It is 21C and sunny in Paris."
    assert final.choices[0].message.content == text and final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls
    assert final.usage.prompt_tokens == 50 and final.usage.completion_tokens == 9
    sent = last(emu)
    assert sent["system"] == [{"type": "text", "text": "You are terse."}]
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01Paris", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01Paris", "content": "21C, sunny"}]}]


# --- translator units on recorded Anthropic responses ---------------------------------------------


def test_from_response_on_recorded_messages():
    text = json.loads((RECORDED / "anthropic_message_text.json").read_text())
    out = tr.from_response(text, "chatcmpl-x", 1, None)
    assert out["choices"][0]["message"]["content"] == "Hello! 👋 How can I help you today?"
    assert out["usage"] == {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24,
                            "prompt_tokens_details": {"cached_tokens": 0}}
    assert out["model"] == "claude-haiku-4-5-20251001"
    tool = json.loads((RECORDED / "anthropic_message_tool_use.json").read_text())
    out = tr.from_response(tool, "chatcmpl-x", 1, None)
    m = out["choices"][0]["message"]
    assert m["content"] is None and out["choices"][0]["finish_reason"] == "tool_calls"
    assert m["tool_calls"][0]["id"] == "toolu_01LZABsgreMefH2Go8D5PQbW"
    assert json.loads(m["tool_calls"][0]["function"]["arguments"]) == {"city": "Mexico City", "country": "Mexico"}
    out = tr.from_response(tool, "chatcmpl-x", 1, "final_result")
    assert json.loads(out["choices"][0]["message"]["content"])["city"] == "Mexico City"
    assert out["choices"][0]["finish_reason"] == "stop"


def test_stream_state_on_recorded_events():
    state = tr.StreamState("chatcmpl-x", 1, "m")
    chunks = []
    for block in (RECORDED / "anthropic_stream_thinking_text.sse").read_text().strip().split("\n\n"):
        data = json.loads(block.split("data: ", 1)[1])
        chunks += state.feed(data["type"], data)
    assert state.done and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("content" not in c["choices"][0]["delta"] for c in chunks if "reasoning_content" in c["choices"][0]["delta"])
    assert state.usage["completion_tokens"] == 282


def test_error_event_raises_stream_error():
    state = tr.StreamState("chatcmpl-x", 1, "m")
    with pytest.raises(tr.StreamError) as e:
        state.feed("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    assert e.value.status == 429 and e.value.message == "slow down"


def test_list_models(env):
    emu, _ = env
    from proxy.backends import create
    b = create(parse(config(emu.state.url), {}).backends["claude"])

    async def go():
        await b.start()
        try:
            return await b.list_models()
        finally:
            await b.aclose()
    assert SONNET in asyncio.run(go())


def test_stream_state_cuts_a_stop_split_across_deltas():
    state = tr.StreamState("chatcmpl-x", 1, "m", stops=("\n\n",))
    events = [("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
               for t in ("one\n", "\ntwo", " three")]
    events += [("content_block_stop", {"index": 0}),
               ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})]
    chunks = [c for name, data in events for c in state.feed(name, {"type": name, **data})]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "one"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    state = tr.StreamState("chatcmpl-x", 1, "m", stops=("\n\n",))
    chunks = [c for name, data in events[:2] + events[3:] for c in state.feed(name, {"type": name, **data})]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "one\n three"
