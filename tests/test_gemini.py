"""Issue 4: the Gemini backend, every row of the mapping end to end:
official `openai` SDK → Turnout (real HTTP) → Gemini emulator (real HTTP), asserting what the
emulator received and what the client got. The table is in translators/gemini.py and docs/gemini.md."""

from __future__ import annotations

import base64
import json
from typing import Iterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from proxy.server.assembly import build_app
from proxy.config import parse
from tests.conftest import ServerThread, collect, post, run, sdk
from tests.emulators.gemini import build_gemini_emulator
from translators import gemini as tr
from tests.conftest import RECORDED

KEY = "gemini-test-key"
SIG = base64.b64encode(b"\x01\x02signature-of-the-thought+/\xff").decode()
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


class Env:
    def __init__(self, emu: Starlette, base: str) -> None:
        self.emu = emu
        self.base = base
        self.client = sdk(base)

    def script(self, *replies: dict) -> None:
        self.emu.state.script.extend(replies)

    @property
    def last(self) -> dict:
        return self.emu.state.requests[-1]

    @property
    def body(self) -> dict:
        return self.last["body"]


def config(url: str, backend_extra: dict | None = None, models: dict | None = None, **kw) -> dict:
    return {
        "backends": {"gem": {"type": "gemini", "base_url": url, "api_key": KEY, **(backend_extra or {})},
                     "spare": {"type": "mock", "reply": "Spare: {prompt}"}},
        "models": models or {
            "flash": {"backend": "gem", "model": "gemini-2.5-flash", "vision": True},
            "pro3": {"backend": "gem", "model": "gemini-3-pro-preview"},
            "thinker": {"backend": "gem", "model": "gemini-2.5-pro", "options": {"include_thoughts": True}},
            "spare-model": {"backend": "spare"},
        },
        "routes": {"with-spare": ["flash", "spare-model"]} if not models else {},
        **kw,
    }


@pytest.fixture(scope="module")
def shared() -> Iterator[Env]:
    """One emulator and one Turnout for the module (servers are slow to stop); reset per test."""
    emu_server = ServerThread(build_gemini_emulator(KEY)).start()
    app = build_app(parse(config(emu_server.url), {}))
    turnout_server = ServerThread(app).start()
    emu_server.config.app.state.url = emu_server.url
    yield Env(emu_server.config.app, turnout_server.url)
    turnout_server.stop()
    emu_server.stop()


@pytest.fixture
def env(shared: Env) -> Env:
    shared.emu.state.requests.clear()
    shared.emu.state.script.clear()
    return shared


@pytest.fixture
def fresh(env: Env, turnout) -> Env:
    """The shared emulator behind a Turnout of its own, for tests of failures (which would
    otherwise count against the shared Turnout's circuit breaker)."""
    return Env(env.emu, turnout(config(env.emu.state.url)))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- messages, roles, URL and key ----------------------------------------------------------------


def test_text_roles_system_joined_path_and_key_header(env):
    raw = env.client.chat.completions.with_raw_response.create(model="flash", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "system", "content": "No emojis."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}]},
    ])
    r = raw.parse()
    assert env.last["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert env.last["query"] == "" and KEY not in env.last["path"]
    assert env.last["headers"]["x-goog-api-key"] == KEY and "authorization" not in env.last["headers"]
    assert env.body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in French.\n\nNo emojis."}]}
    assert env.body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Bonjour"}]},
        {"role": "user", "parts": [{"text": "Capital of "}, {"text": "France?"}]},
    ]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "gemini-2.5-flash" and raw.headers["x-turnout-model"] == "flash"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "Echo: Capital of France?"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6


def test_stream_text_chunks_usage_once(env):
    env.script({"text": "one two three four five six seven",
                "usage": {"promptTokenCount": 11, "candidatesTokenCount": 7, "totalTokenCount": 18}})
    text, chunks = collect(env.client.chat.completions.create(
        model="flash", messages=user("count"), stream=True, stream_options={"include_usage": True}))
    assert env.last["path"].endswith(":streamGenerateContent") and env.last["query"] == "alt=sse"
    assert text == "one two three four five six seven"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert sum(1 for c in chunks if c.usage) == 1
    # earlier events carried usage without candidatesTokenCount: the last one is the total, counted once
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 7)
    text, chunks = collect(env.client.chat.completions.create(model="flash", messages=user("x"), stream=True))
    assert text and all(c.choices and c.usage is None for c in chunks)  # text: not vacuous on an empty stream


def test_stream_wire_format_ends_with_done(env):
    with httpx.stream("POST", env.base + "/v1/chat/completions", json={
            "model": "flash", "stream": True, "messages": user("hi")}) as r:
        body = r.read().decode()
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


# --- images --------------------------------------------------------------------------------------


@pytest.fixture
def images(serve) -> str:
    async def png(request):
        return Response(PNG, media_type="image/png")

    async def big(request):
        return Response(b"\x89PNG" + b"0" * 5000, media_type="image/png")

    return serve(Starlette(routes=[Route("/cat.png", png), Route("/big.png", big)]))


def test_images_data_url_and_fetched_url(serve, turnout, images):
    emu = build_gemini_emulator(KEY)
    base = turnout(config(serve(emu), {"images": {"allow_private": True, "max_bytes": 1000}}))
    data_url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpegbytes").decode()
    r = sdk(base).chat.completions.create(model="flash", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "image_url", "image_url": {"url": images + "/cat.png", "detail": "high"}}]}])
    parts = emu.state.requests[-1]["body"]["contents"][0]["parts"]
    assert parts == [{"text": "What is in these?"},
                     {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(b"\xff\xd8jpegbytes").decode()}},
                     {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}}]
    assert r.choices[0].message.content == "Echo: What is in these?"
    # streamed too
    text, _ = collect(sdk(base).chat.completions.create(model="flash", stream=True, messages=[{"role": "user", "content": [
        {"type": "text", "text": "And this?"}, {"type": "image_url", "image_url": {"url": images + "/cat.png"}}]}]))
    assert text == "Echo: And this?"
    assert emu.state.requests[-1]["body"]["contents"][0]["parts"][1]["inlineData"]["mimeType"] == "image/png"
    # over the size limit: a clear 400, nothing sent upstream
    n = len(emu.state.requests)
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="flash", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": images + "/big.png"}}]}])
    assert e.value.body["code"] == "image_too_large" and len(emu.state.requests) == n


def test_loopback_image_refused_by_default(env, images):
    with pytest.raises(openai.BadRequestError) as e:
        env.client.chat.completions.create(model="flash", messages=[{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": images + "/cat.png"}}]}])
    assert e.value.body["code"] == "invalid_image_url" and "not a public address" in e.value.body["message"]
    assert env.emu.state.requests == []
    r = post(env.base, {"model": "flash", "stream": True, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_bad_data_url_is_400(env):
    with pytest.raises(openai.BadRequestError) as e:
        env.client.chat.completions.create(model="flash", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}])
    assert e.value.body["code"] == "invalid_image_url"


# --- tools ---------------------------------------------------------------------------------------

PYDANTIC_STYLE = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "title": "Order",
    "additionalProperties": False,
    "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"},
                                                        "qty": {"type": "integer", "minimum": 1, "default": 1}},
                       "required": ["sku"], "additionalProperties": False}},
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
        "main": {"$ref": "#/$defs/Item", "description": "the main item"},
        "speed": {"type": "string", "enum": ["slow", "fast"]},
        "priority": {"type": "integer", "enum": [1, 2, 3]},
        "kind": {"const": "order"},
        "note": {"oneOf": [{"type": "string"}, {"type": "null"}], "examples": ["x"]},
        "extra": {"type": "object", "additionalProperties": {"type": "string"}},
        "when": {"allOf": [{"$ref": "#/$defs/Item"}]},
    },
    "required": ["items", "speed"],
    "strict": True,
}


def test_tools_schema_cleaned_and_accepted(env):
    r = env.client.chat.completions.create(model="flash", messages=user("order"), tools=[
        {"type": "function", "function": {"name": "place_order", "description": "Order things",
                                          "parameters": PYDANTIC_STYLE, "strict": True}},
        {"type": "function", "function": {"name": "ping"}}])
    assert r.choices[0].message.content  # the emulator accepted the declarations
    decls = env.body["tools"][0]["functionDeclarations"]
    assert decls[1] == {"name": "ping"}
    s = decls[0]["parametersJsonSchema"]
    assert decls[0]["description"] == "Order things"
    assert "$schema" not in s and "strict" not in s and s["additionalProperties"] is False
    assert s["$defs"]["Item"]["properties"]["qty"] == {"type": "integer", "minimum": 1}
    assert s["properties"]["main"] == {"$ref": "#/$defs/Item"}
    assert s["properties"]["when"] == {"$ref": "#/$defs/Item"}
    assert s["properties"]["priority"]["enum"] == [1, 2, 3]
    assert s["properties"]["kind"] == {"enum": ["order"]}
    assert s["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert s["properties"]["extra"]["additionalProperties"] == {"type": "string"}


def test_parameters_without_type_get_object(env):
    env.client.chat.completions.create(model="flash", messages=user("x"), tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}}])
    assert env.body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == {
        "properties": {"a": {"type": "string"}}, "type": "object"}


@pytest.mark.parametrize("choice,expected", [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
])
def test_tool_choice(env, choice, expected):
    env.client.chat.completions.create(model="flash", messages=user("x"), tools=WEATHER, tool_choice=choice)
    assert env.body["toolConfig"] == {"functionCallingConfig": expected}


def test_tool_call_non_streamed_then_results_round_trip(env):
    env.script({"text": "Let me check.", "calls": [
        {"name": "get_weather", "args": {"city": "Paris"}, "signature": SIG},
        {"name": "get_weather", "args": {"city": "Rome", "days": [1, 2]}}]})
    messages = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    r = env.client.chat.completions.create(model="flash", messages=messages, tools=WEATHER)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"  # Gemini said STOP
    assert m.content == "Let me check."
    a, b = m.tool_calls
    assert a.type == "function" and a.function.name == "get_weather"
    assert json.loads(a.function.arguments) == {"city": "Paris"}
    assert json.loads(b.function.arguments) == {"city": "Rome", "days": [1, 2]}
    assert a.id.startswith("call_") and b.id.startswith("call_") and a.id != b.id
    assert tr.decode_signature_id(a.id) == SIG and tr.decode_signature_id(b.id) is None
    assert all(c.isalnum() or c in "_-" for c in a.id)
    messages += [m.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": a.id, "content": '{"temp": 21, "sky": "clear"}'},
                 {"role": "tool", "tool_call_id": b.id, "content": "Rainy, 14C"},
                 {"role": "user", "content": "Thanks! Which is warmer?"}]
    r2 = env.client.chat.completions.create(model="flash", messages=messages, tools=WEATHER)
    contents = env.body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "user"]
    assert contents[1]["parts"] == [
        {"text": "Let me check."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
        {"functionCall": {"name": "get_weather", "args": {"city": "Rome", "days": [1, 2]}}}]
    assert contents[2]["parts"] == [  # consecutive results merged into one turn, names looked up by id
        {"functionResponse": {"name": "get_weather", "response": {"temp": 21, "sky": "clear"}}},
        {"functionResponse": {"name": "get_weather", "response": {"content": "Rainy, 14C"}}}]
    assert r2.choices[0].message.content == "Echo: Thanks! Which is warmer?"


def test_signature_from_extra_content_and_user_turns_merged(env):
    env.client.chat.completions.create(model="pro3", tools=WEATHER, messages=[
        {"role": "user", "content": "weather?"}, {"role": "user", "content": "in Oslo"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
             "extra_content": {"google": {"thought_signature": SIG}}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "cold"}])
    contents = env.body["contents"]
    assert contents[0] == {"role": "user", "parts": [{"text": "weather?"}, {"text": "in Oslo"}]}
    assert contents[1]["parts"][0]["thoughtSignature"] == SIG


def test_tool_result_json_shapes_and_unknown_id(env):
    msgs = [{"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}},
                {"id": "call_c", "type": "function", "function": {"name": "h", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "[1, 2]"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "plain"}]},
            {"role": "tool", "tool_call_id": "call_c", "content": "{not json"}]
    r = env.client.chat.completions.create(model="flash", messages=msgs)
    assert [p["functionResponse"] for p in env.body["contents"][2]["parts"]] == [
        {"name": "f", "response": {"content": [1, 2]}},
        {"name": "g", "response": {"content": "plain"}},
        {"name": "h", "response": {"content": "{not json"}}]
    assert env.body["contents"][1]["parts"][1] == {"functionCall": {"name": "g", "args": {}}}
    assert r.choices[0].message.content.startswith("Echo: tool results f=")
    with pytest.raises(openai.BadRequestError) as e:
        env.client.chat.completions.create(model="flash", messages=[
            {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_zzz", "content": "1"}])
    assert e.value.body["param"] == "messages.[1].role"  # OpenAI's check, before any translation


def test_streamed_multi_turn_tool_conversation_gemini3(env):
    """A gemini-3 model demands the thought signature back: it survives in the tool-call id."""
    client = env.client
    env.script({"thought": "Need the weather.", "calls": [
        {"name": "get_weather", "args": {"city": "Paris"}, "signature": SIG},
        {"name": "get_weather", "args": {"city": "Lima"}}]})
    messages = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris and Lima?"}]
    with client.chat.completions.stream(model="pro3", messages=messages, tools=WEATHER) as s:
        raw = []
        for event in s:
            if event.type == "chunk":
                raw.append(event.chunk)
        final = s.get_final_completion()
    deltas = [tc for c in raw for tc in (c.choices[0].delta.tool_calls or [])]
    # each call is one complete delta with its index, id, name and arguments
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
        (0, "get_weather", {"city": "Paris"}), (1, "get_weather", {"city": "Lima"})]
    assert all(d.id and d.type == "function" for d in deltas)
    assert all(not (c.choices[0].delta.content or "") for c in raw)
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in raw) == "Need the weather."
    msg = final.choices[0].message
    assert msg.content is None, "a tool-call-only answer has content null, as OpenAI's"
    assert final.choices[0].finish_reason == "tool_calls" and [t.id for t in msg.tool_calls] == [d.id for d in deltas]
    messages.append(msg.model_dump(exclude_none=True))
    for t, result in zip(msg.tool_calls, ['{"temp": 18}', '{"temp": 24}']):
        messages.append({"role": "tool", "tool_call_id": t.id, "content": result})
    env.script({"text": "Lima is warmer."})
    text, chunks = collect(client.chat.completions.create(model="pro3", messages=messages, tools=WEATHER, stream=True))
    assert text == "Lima is warmer." and chunks[-1].choices[0].finish_reason == "stop"
    contents = env.body["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == SIG
    assert [p["functionResponse"]["response"] for p in contents[2]["parts"]] == [{"temp": 18}, {"temp": 24}]
    # a third turn still carries the signature from the first
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And tomorrow?"}]
    env.script({"text": "Same."})
    assert client.chat.completions.create(model="pro3", messages=messages, tools=WEATHER).choices[0].message.content == "Same."


def test_gemini3_history_without_signature_fails_clearly_or_uses_fallback(serve, turnout):
    emu = build_gemini_emulator(KEY)
    url = serve(emu)
    msgs = [{"role": "user", "content": "w?"},
            {"role": "assistant", "tool_calls": [{"id": "call_from_elsewhere", "type": "function",
                                                  "function": {"name": "get_weather", "arguments": "{\"city\": \"X\"}"}}]},
            {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "sunny"}]
    base = turnout(config(url))
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="pro3", messages=msgs, tools=WEATHER)
    assert "thought_signature" in e.value.body["message"]
    base = turnout(config(url, models={"pro3": {"backend": "gem", "model": "gemini-3-pro-preview", "options": {
        "thought_signature_fallback": "skip_thought_signature_validator"}}}))
    assert sdk(base).chat.completions.create(model="pro3", messages=msgs, tools=WEATHER).choices[0].message.content
    part = emu.state.requests[-1]["body"]["contents"][1]["parts"][0]
    assert part["thoughtSignature"] == "skip_thought_signature_validator"


# --- generation config ---------------------------------------------------------------------------


def test_generation_params(env):
    env.client.chat.completions.create(model="flash", messages=user("x"), temperature=0.4, top_p=0.9, max_tokens=50,
                                       stop=["END", "STOP"], seed=7, presence_penalty=0.5, frequency_penalty=-0.5,
                                       user="u1", metadata={"a": "b"}, parallel_tool_calls=False, store=False)
    assert env.body["generationConfig"] == {"temperature": 0.4, "topP": 0.9, "maxOutputTokens": 50,
                                            "stopSequences": ["END", "STOP"], "seed": 7, "presencePenalty": 0.5,
                                            "frequencyPenalty": -0.5}
    assert set(env.body) == {"contents", "generationConfig"}
    env.client.chat.completions.create(model="flash", messages=user("x"), max_tokens=50, max_completion_tokens=20,
                                       stop="END")
    assert env.body["generationConfig"] == {"maxOutputTokens": 20, "stopSequences": ["END"]}


def test_stop_and_max_tokens_take_effect(env):
    r = env.client.chat.completions.create(model="flash", messages=user("alpha beta gamma"), stop=["gamma"])
    assert r.choices[0].message.content == "Echo: alpha beta " and r.choices[0].finish_reason == "stop"
    r = env.client.chat.completions.create(model="flash", messages=user("alpha beta gamma delta"), max_tokens=3)
    assert r.choices[0].message.content == "Echo: alpha beta" and r.choices[0].finish_reason == "length"


def test_n_candidates_non_streamed_and_streamed(env):
    r = env.client.chat.completions.create(model="flash", messages=user("hi there"), n=2)
    assert env.body["generationConfig"] == {"candidateCount": 2}
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.message.content for c in r.choices] == ["Echo: hi there", "Echo: hi there (candidate 1)"]
    _, chunks = collect(env.client.chat.completions.create(model="flash", messages=user("hi there"), n=2, stream=True))
    by_index: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] = by_index.get(ch.index, "") + (ch.delta.content or "")
    assert by_index == {0: "Echo: hi there", 1: "Echo: hi there (candidate 1)"}
    finishes = {ch.index: ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason}
    assert finishes == {0: "stop", 1: "stop"}


def test_response_format(env):
    env.script({"text": '{"city": "Paris"}'})
    r = env.client.chat.completions.create(model="flash", messages=user("json"), response_format={"type": "json_object"})
    assert env.body["generationConfig"] == {"responseMimeType": "application/json"}
    assert json.loads(r.choices[0].message.content) == {"city": "Paris"}
    env.client.chat.completions.create(model="flash", messages=user("json"), response_format={
        "type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": False, "$schema": "x"}}})
    assert env.body["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}
    env.client.chat.completions.create(model="flash", messages=user("t"), response_format={"type": "text"})
    assert "generationConfig" not in env.body


def test_logprobs_asked_in_generation_config(env):
    r = env.client.chat.completions.create(model="flash", messages=user("x"), logprobs=True, top_logprobs=3)
    assert env.body["generationConfig"] == {"responseLogprobs": True, "logprobs": 3}
    assert r.choices[0].logprobs.content  # more in tests/test_logprobs.py


# --- reasoning -----------------------------------------------------------------------------------


def test_thoughts_become_reasoning_content(env):
    env.script({"thought": "Paris is the capital.", "text": "Paris.",
                "usage": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 40,
                          "cachedContentTokenCount": 4, "totalTokenCount": 51}})
    r = env.client.chat.completions.create(model="thinker", messages=user("capital?"))
    assert env.body["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}
    m = r.choices[0].message
    assert m.content == "Paris." and m.reasoning_content == "Paris is the capital."
    assert r.usage.completion_tokens == 42 and r.usage.completion_tokens_details.reasoning_tokens == 40
    assert r.usage.prompt_tokens == 9 and r.usage.prompt_tokens_details.cached_tokens == 4
    assert r.usage.total_tokens == 51
    env.script({"thought": "Thinking it over now.", "text": "Paris it is."})
    text, chunks = collect(env.client.chat.completions.create(
        model="thinker", messages=user("capital?"), stream=True, stream_options={"include_usage": True}))
    assert text == "Paris it is."
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == "Thinking it over now."
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 5  # the emulator counts words and stops


@pytest.mark.parametrize("model,effort,expected", [
    ("flash", "low", {"includeThoughts": True, "thinkingBudget": 1024}),
    ("flash", "none", {"thinkingBudget": 0}),
    ("thinker", "none", {"includeThoughts": True, "thinkingBudget": 128}),  # 2.5 Pro always thinks
    ("pro3", "high", {"includeThoughts": True, "thinkingLevel": "high"}),
])
def test_reasoning_effort(env, model, effort, expected):
    env.client.chat.completions.create(model=model, messages=user("x"), reasoning_effort=effort)
    assert env.body["generationConfig"]["thinkingConfig"] == expected


# --- finish reasons, blocks, usage ---------------------------------------------------------------


@pytest.mark.parametrize("reason,expected", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("OTHER", "stop"),
])
def test_finish_reasons(env, reason, expected):
    env.script({"text": "partial answer", "finish": reason}, {"text": "partial answer", "finish": reason})
    r = env.client.chat.completions.create(model="flash", messages=user("x"))
    assert r.choices[0].finish_reason == expected and r.choices[0].message.content == "partial answer"
    _, chunks = collect(env.client.chat.completions.create(model="flash", messages=user("x"), stream=True))
    assert chunks[-1].choices[0].finish_reason == expected


def test_max_tokens_with_content_lacking_parts(env):
    env.script({"raw": json.loads((RECORDED / "gemini_max_tokens_empty_content.json").read_text())})
    r = env.client.chat.completions.create(model="flash", messages=user("x"), max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == ""
    assert r.model == "gemini-2.5-pro"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (15, 2)
    assert r.usage.completion_tokens_details.reasoning_tokens == 2


def test_prompt_blocked_is_a_clear_error(env):
    env.script({"block": "PROHIBITED_CONTENT"}, {"block": "SAFETY"})
    with pytest.raises(openai.BadRequestError) as e:
        env.client.chat.completions.create(model="with-spare", messages=user("bad"))
    assert e.value.body["code"] == "content_filter" and "PROHIBITED_CONTENT" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # a stream is refused before it starts
        env.client.chat.completions.create(model="flash", messages=user("bad"), stream=True)
    assert "SAFETY" in e.value.body["message"]


# --- recorded Gemini streams through Turnout -----------------------------------------------------


def _events(name: str) -> list[dict]:
    raw = (RECORDED / name).read_bytes()
    return [json.loads(e[6:]) for e in raw.split(b"\r\n\r\n") if e.startswith(b"data: ")]


def test_recorded_streams(env):
    env.script({"events": _events("gemini_stream_text.sse")})  # no candidate index, usage on the last only
    text, chunks = collect(env.client.chat.completions.create(
        model="flash", messages=user("capital?"), stream=True, stream_options={"include_usage": True}))
    assert text == "The capital of France is Paris.\n" and chunks[1].model == "gemini-2.0-flash-exp"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (13, 8)
    env.script({"events": _events("gemini_stream_function_call.sse")})
    with env.client.chat.completions.stream(model="flash", messages=user("country?")) as s:
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and call.function.name == "get_country"
    assert call.function.arguments == "{}" and tr.decode_signature_id(call.id).startswith("EpwICpkIAXLI2nx")
    assert final.usage is None or final.usage.completion_tokens == 212
    env.script({"raw": json.loads((RECORDED / "gemini_message_function_call.json").read_text())})
    r = env.client.chat.completions.create(model="flash", messages=user("capital?"))
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"country": "France"}
    assert r.usage.completion_tokens == 15 + 124 and r.usage.completion_tokens_details.reasoning_tokens == 124


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code,status,type_,err_code", [
    (400, 400, "invalid_request_error", "invalid_argument"),
    (401, 502, "upstream_auth_error", "upstream_401"),
    (403, 502, "upstream_auth_error", "upstream_403"),
    (404, 404, "invalid_request_error", "model_not_found"),
    (500, 502, "upstream_error", "upstream_500"),
    (503, 502, "upstream_error", "upstream_503"),
    (504, 504, "timeout", "upstream_timeout"),
])
def test_upstream_errors_openai_shaped(fresh, code, status, type_, err_code):
    fresh.script({"error": {"code": code, "message": f"gemini says {code}"}},
               {"error": {"code": code, "message": f"gemini says {code}"}})
    r = post(fresh.base, {"model": "flash", "messages": user("x")})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_ and err["code"] == err_code
    # what an upstream says about Turnout's own key is the operator's business, not the client's
    assert (f"gemini says {code}" in err["message"]) == (type_ != "upstream_auth_error")
    r = post(fresh.base, {"model": "flash", "stream": True, "messages": user("x")})
    assert r.status_code == status and r.json()["error"]["code"] == err_code


def test_rate_limit_keeps_retry_info(fresh):
    fresh.script({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "retry_delay": "7s"}})
    with pytest.raises(openai.RateLimitError) as e:
        fresh.client.chat.completions.create(model="flash", messages=user("x"))
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.body["type"] == "rate_limit_error" and "exhausted" in e.value.body["message"]


def test_invalid_operator_key_is_not_the_clients_fault(serve, turnout):
    emu = build_gemini_emulator(KEY)
    base = turnout({"backends": {"gem": {"type": "gemini", "base_url": serve(emu), "api_key": "wrong"}},
                    "models": {"flash": {"backend": "gem", "model": "gemini-2.5-flash"}}})
    r = post(base, {"model": "flash", "messages": user("x")})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_auth_error"
    assert "wrong" not in r.text


def test_answer_without_candidates_is_502(fresh):
    fresh.script({"raw": {"usageMetadata": {"promptTokenCount": 3}, "modelVersion": "gemini-2.5-flash"}})
    r = post(fresh.base, {"model": "flash", "messages": user("x")})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_empty_response"


def test_retryable_503_retried_then_fallback(serve, turnout):
    emu = build_gemini_emulator(KEY)
    base = turnout(config(serve(emu), {"retry": {"attempts": 2, "backoff": 0.01}}))
    emu.state.script.append({"error": {"code": 503, "message": "The model is overloaded."}})
    r = sdk(base).chat.completions.create(model="flash", messages=user("hi"))
    assert r.choices[0].message.content == "Echo: hi" and len(emu.state.requests) == 2
    emu.state.script.extend([{"error": {"code": 503, "message": "overloaded"}}] * 2)
    raw = sdk(base).chat.completions.with_raw_response.create(model="with-spare", messages=user("hi"), stream=True)
    assert raw.headers["x-turnout-model"] == "spare-model" and "flash" in raw.headers["x-turnout-fallbacks"]


def test_first_token_timeout(serve, turnout):
    emu = build_gemini_emulator(KEY)
    base = turnout(config(serve(emu), {"timeout": {"first_token": 0.3, "total": 0.3}}))
    emu.state.script.extend([{"latency": 1.0}, {"latency": 1.0}])
    r = post(base, {"model": "flash", "messages": user("x")})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    r = post(base, {"model": "with-spare", "stream": True, "messages": user("x")})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "spare-model"


@pytest.mark.parametrize("fault", [{"drop_after": 2}, {"truncate_after": 2}, {"error_after": 2}])
def test_broken_stream_ends_with_error_the_sdk_raises(fresh, fault):
    fresh.script({"text": "one two three four five six seven eight", **fault})
    stream = fresh.client.chat.completions.create(model="flash", messages=user("x"), stream=True)
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in stream:
            got.append(c)
    assert got and "".join(c.choices[0].delta.content or "" for c in got) == "one two three four"
    assert e.value.message
    r = post(fresh.base, {"model": "flash", "stream": True, "messages": user("x")})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")  # the next request is fine


def test_unreachable_backend_is_502(turnout):
    base = turnout(config("http://127.0.0.1:9"))
    r = post(base, {"model": "flash", "messages": user("x")})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"


def test_missing_key_marks_backend_unavailable(turnout):
    base = turnout({"backends": {"gem": {"type": "gemini", "api_key": "${GEMINI_API_KEY}"}},
                    "models": {"flash": {"backend": "gem", "model": "gemini-2.5-flash"}}})
    r = post(base, {"model": "flash", "messages": user("x")})
    assert r.status_code == 503 and "GEMINI_API_KEY" in r.json()["error"]["message"]


def test_backend_options_checked_at_load():
    from proxy.backends import create
    from proxy.config import ConfigError

    with pytest.raises(ConfigError, match="backends.gem.imagez"):
        create(parse({"backends": {"gem": {"type": "gemini", "api_key": "k", "imagez": {}}}}, {}).backends["gem"])
    with pytest.raises(ConfigError, match="backends.gem.api_version"):
        create(parse({"backends": {"gem": {"type": "gemini", "api_key": "k", "api_version": 1}}}, {}).backends["gem"])
    b = create(parse({"backends": {"gem": {"type": "gemini", "api_key": "k"}}}, {}).backends["gem"])
    assert b.base_url == "https://generativelanguage.googleapis.com" and b._path("models/gemini-2.5-flash",
                                                                                "generateContent") == \
        "/v1beta/models/gemini-2.5-flash:generateContent"
    assert b._path("tunedModels/my-tune", "generateContent") == "/v1beta/tunedModels/my-tune:generateContent"
    assert "k" not in b.describe()


def test_list_models(env):
    from proxy.backends import create

    async def go():
        b = create(parse(config(env.emu.state.url), {}).backends["gem"])
        await b.start()
        try:
            return await b.list_models()
        finally:
            await b.aclose()

    assert "gemini-2.5-flash" in run(go())
