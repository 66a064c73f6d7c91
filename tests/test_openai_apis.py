"""Issue 18: /v1/responses, /v1/completions and /v1/embeddings end to end with the real `openai` SDK
against Turnout on the mock backend (routing, fallback, ledger, headers, errors)."""

from __future__ import annotations

import base64
import struct
import time

import httpx
import openai
import orjson
import pytest

from proxy.mock.engine import embedding
from tests.conftest import sdk

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


def config(ledger: str | None = None) -> dict:
    cfg = {
        "backends": {"mock": {"type": "mock"}, "down": {"type": "mock", "fail": {"status": 503}}},
        "models": {"chat": {"backend": "mock", "model": "mock-chat"},
                   "broken": {"backend": "down", "model": "mock-down"},
                   "embed": {"backend": "mock", "model": "mock-embed-small", "price": {"input": 0.02}},
                   "broken-embed": {"backend": "down", "model": "down-embed"}},
        "routes": {"smart": ["broken", "chat"], "vectors": ["broken-embed", "embed"]},
    }
    if ledger:
        cfg["usage"] = {"ledger": ledger}
    return cfg


@pytest.fixture
def url(turnout, tmp_path):
    return turnout(config(str(tmp_path / "u.db")))


def test_embeddings_float_base64_dimensions_and_fallback(url, tmp_path):
    client = sdk(url)
    raw = client.embeddings.with_raw_response.create(model="vectors", input=["the cat sat", "on the mat"])
    r = raw.parse()
    assert r.data[0].embedding == pytest.approx(embedding("the cat sat"))
    assert r.data[1].embedding == pytest.approx(embedding("on the mat")) and r.data[1].index == 1
    assert r.model == "mock-embed-small" and r.usage.prompt_tokens == 6 == r.usage.total_tokens
    assert raw.headers["x-turnout-model"] == "embed" and raw.headers["x-turnout-route"] == "vectors"
    assert raw.headers["x-turnout-fallbacks"].startswith("broken-embed: 502") and raw.headers["x-request-id"]
    # base64: float32 little-endian, cut to `dimensions` (and unit length), as OpenAI encodes
    b = httpx.post(url + "/v1/embeddings", json={"model": "embed", "input": "hi", "encoding_format": "base64",
                                                 "dimensions": 8}).json()
    floats = struct.unpack("<8f", base64.b64decode(b["data"][0]["embedding"]))
    assert floats == pytest.approx(embedding("hi", 8), abs=1e-6)
    # token arrays: decoded with cl100k_base for a text-only provider
    t = client.embeddings.create(model="embed", input=[[15339, 1917]])  # "hello world"
    assert t.data[0].embedding == pytest.approx(embedding("hello world"))
    # chat targets are not embedding models, and the reverse
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="chat", input="x")
    assert e.value.code == "unsupported_capability" and "not an embedding model" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "x"}])
    assert "embedding model" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="embed", input="x", encoding_format="hex")  # type: ignore[arg-type]
    assert e.value.param == "encoding_format"


def test_completions_plain_list_and_stream(url):
    client = sdk(url)
    raw = client.completions.with_raw_response.create(model="smart", prompt="hello there", max_tokens=50)
    c = raw.parse()
    assert c.object == "text_completion" and c.choices[0].text == "Hello from mock-chat! You said: hello there"
    assert c.choices[0].finish_reason == "stop" and c.usage.completion_tokens > 0 and c.id.startswith("cmpl-")
    assert raw.headers["x-turnout-model"] == "chat" and "broken" in raw.headers["x-turnout-fallbacks"]
    c = client.completions.create(model="chat", prompt=["one", "two"], max_tokens=50)
    assert [(x.index, x.text.endswith(p)) for x, p in zip(c.choices, ["one", "two"])] == [(0, True), (1, True)]
    short = client.completions.create(model="chat", prompt="a b c d e f g h i j k l m n o p q r s t")
    assert short.choices[0].finish_reason == "length"  # OpenAI's default max_tokens of 16
    chunks = list(client.completions.create(model="chat", prompt="streamed", max_tokens=50, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(x.choices[0].text for x in chunks if x.choices) == "Hello from mock-chat! You said: streamed"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(x.usage is None for x in chunks[:-1]) and chunks[-2].choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat", prompt="x", suffix="y")
    assert e.value.param == "suffix"


def test_responses_create_stream_and_tool_round_trip(url):
    client = sdk(url)
    raw = client.responses.with_raw_response.create(model="smart", input="hello there", instructions="Be brief.")
    r = raw.parse()
    assert r.output_text == "Hello from mock-chat! You said: hello there" and r.status == "completed"
    assert r.usage.input_tokens > 0 and r.instructions == "Be brief." and raw.headers["x-turnout-model"] == "chat"

    with client.responses.stream(model="chat", input="stream me") as s:
        types = [e.type for e in s]
        final = s.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and final.output_text == "Hello from mock-chat! You said: stream me"
    assert final.usage.output_tokens > 0

    r = client.responses.create(model="chat", input="What is the weather in Oslo?", tools=[WEATHER])
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    r2 = client.responses.create(model="chat", tools=[WEATHER], input=[
        {"role": "user", "content": "What is the weather in Oslo?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "3C and snowing"}])
    assert r2.output_text == "The tool returned: 3C and snowing"

    # previous_response_id continues the stored conversation; GET and DELETE
    r3 = client.responses.create(model="chat", previous_response_id=r.id, tools=[WEATHER],
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": "-2C"}])
    assert r3.output_text == "The tool returned: -2C" and r3.previous_response_id == r.id
    assert client.responses.retrieve(r3.id).output_text == r3.output_text
    client.responses.delete(r3.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r3.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", previous_response_id="resp_nope", input="x")
    assert e.value.param == "previous_response_id"


def test_responses_errors_and_storage_off(turnout):
    url = turnout(config())
    client = sdk(url)
    r = client.responses.create(model="chat", input="hi")
    assert r.store is False
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", previous_response_id=r.id, input="again")
    assert e.value.code == "storage_disabled" and "storage is off" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", input="x", tools=[{"type": "web_search"}])
    assert e.value.param == "tools[0].type"
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="nope", input="x")
    with pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="broken", input="x")
    assert e.value.status_code == 502 and e.value.response.headers["x-request-id"]


def test_chat_gaps_found_with_real_clients(turnout):
    url = turnout({**config(), "keys": [{"key": "sk-good", "name": "k"}]})
    client = sdk(url, api_key="sk-good")
    fn = {"name": "get_weather", "description": "w", "parameters": WEATHER["parameters"]}
    # legacy functions: the tool call comes back as function_call, as OpenAI answers that dialect
    r = client.chat.completions.create(model="chat", functions=[fn], function_call={"name": "get_weather"},
                                       messages=[{"role": "user", "content": "weather in Oslo?"}])
    assert r.choices[0].finish_reason == "function_call" and r.choices[0].message.function_call.name == "get_weather"
    chunks = list(client.chat.completions.create(model="chat", functions=[fn], stream=True,
                                                 messages=[{"role": "user", "content": "weather?"}]))
    assert chunks[0].choices[0].delta.function_call is None and any(c.choices[0].delta.function_call for c in chunks)
    r = client.chat.completions.create(model="chat", functions=[fn], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"role": "function", "name": "get_weather", "content": "3C"}])
    assert r.choices[0].message.content == "The tool returned: 3C"
    # allowed_tools narrows the tools; an orphan tool message is OpenAI's 400
    other = {"type": "function", "function": {**fn, "name": "other"}}
    r = client.chat.completions.create(model="chat", tools=[{"type": "function", "function": fn}, other],
                                       tool_choice={"type": "allowed_tools", "allowed_tools": {
                                           "mode": "required", "tools": [{"type": "function", "function": {"name": "other"}}]}},
                                       messages=[{"role": "user", "content": "x"}])
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["other"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"},
                                                               {"role": "tool", "tool_call_id": "call_1", "content": "y"}])
    assert e.value.param == "messages.[1].role"
    # usage: null on every chunk but the last with include_usage
    raw = httpx.post(url + "/v1/chat/completions", headers={"authorization": "Bearer sk-good"}, json={
        "model": "chat", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]}).text
    data = [orjson.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert all("usage" in d and d["usage"] is None for d in data[:-1]) and data[-1]["usage"]["total_tokens"] > 0
    # x-request-id everywhere; /v1/models `created` stable
    for resp in (httpx.get(url + "/v1/models", headers={"authorization": "Bearer sk-good"}),
                 httpx.get(url + "/v1/models"), httpx.get(url + "/v1/nope"),
                 httpx.post(url + "/v1/embeddings", json={"model": "embed", "input": "x"})):
        assert resp.headers["x-request-id"], resp.status_code
    assert httpx.get(url + "/v1/models", headers={"x-request-id": "mine-1"}).headers["x-request-id"] == "mine-1"
    first = client.models.list().data
    time.sleep(1.05)
    assert [m.created for m in client.models.list().data] == [m.created for m in first]


def test_declared_kind_wins_over_the_name(turnout):
    cfg = config()
    cfg["models"]["vec"] = {"backend": "mock", "model": "custom-vectors", "kind": "embedding"}
    cfg["models"]["embedchat"] = {"backend": "mock", "model": "embed-looking-chat", "kind": "chat"}
    client = sdk(turnout(cfg))
    assert len(client.embeddings.create(model="vec", input="x").data[0].embedding) == 256
    assert client.chat.completions.create(model="embedchat", messages=[{"role": "user", "content": "x"}]).choices
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embedchat", input="x")
    models = {m.id: m.model_extra["turnout"] for m in client.models.list().data}
    assert models["vec"]["serves"] == "embedding" and models["embedchat"]["serves"] == "chat"


def test_parse_with_nested_pydantic_models_and_enums(turnout):
    """`parse()` with nested models and an enum ($defs/$ref/anyOf, as pydantic writes them) on the mock,
    and the quality check reads the same schema (an answer that breaks it is escalated past)."""
    import enum

    import pydantic

    from proxy.routing.quality import schema_error

    class Mood(str, enum.Enum):
        happy = "happy"
        sad = "sad"

    class Friend(pydantic.BaseModel):
        name: str
        mood: Mood

    class Character(pydantic.BaseModel):
        name: str
        friends: list[Friend]
        mentor: Friend | None

    client = sdk(turnout(config()))
    r = client.chat.completions.parse(model="chat", response_format=Character,
                                      messages=[{"role": "user", "content": "Create wise old dragon mentor"}])
    c = r.choices[0].message.parsed
    assert isinstance(c, Character) and c.friends[0].mood is Mood.happy and isinstance(c.mentor, Friend)
    schema = Character.model_json_schema()
    assert "$defs" in schema and schema_error({"name": "x", "friends": [{"name": "y", "mood": "angry"}],
                                               "mentor": None}, schema) == "$.friends[0].mood is not one of ['happy', 'sad']"
    assert schema_error({"name": "x", "friends": [], "mentor": {"name": "m", "mood": "sad"}}, schema) is None
