"""The Gemini emulator is faithful: the official google-genai SDK drives it as it drives the real API,
and its answers have the shape of real recorded Gemini responses."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.emulators.gemini import build_gemini_emulator
from tests.conftest import RECORDED

KEY = "gemini-test-key"
SIG = base64.b64encode(b"opaque-signature-bytes").decode()


@pytest.fixture
def emu(serve):
    app = build_gemini_emulator(KEY)
    app.state.url = serve(app)
    return app


def client(emu, version: str = "v1beta", key: str = KEY) -> genai.Client:
    """A google-genai client for the emulator, kept alive with it (a dropped client closes its pool)."""
    clients = emu.state.__dict__.setdefault("_state", {}).setdefault("clients", {})
    if (version, key) not in clients:
        clients[version, key] = genai.Client(api_key=key, http_options=types.HttpOptions(
            base_url=emu.state.url, api_version=version, retry_options=types.HttpRetryOptions(attempts=1)))
    return clients[version, key]


WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="Weather for a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                            "additionalProperties": False})])


def test_generate_content_text_usage_and_key_header(emu):
    r = client(emu).models.generate_content(
        model="gemini-2.5-flash", contents="hello there",
        config=types.GenerateContentConfig(system_instruction="be brief", temperature=0.3, max_output_tokens=40))
    assert r.text == "Echo: hello there"
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.candidates_token_count == 4 and r.usage_metadata.prompt_token_count > 0
    got = emu.state.requests[-1]
    assert got["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert got["headers"]["x-goog-api-key"] == KEY and "key=" not in got["query"]
    assert got["body"]["systemInstruction"]["parts"][0]["text"] == "be brief"


def test_default_api_version_v1_also_served(emu):
    r = client(emu, version="v1").models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text == "Echo: hi" and emu.state.requests[-1]["path"].startswith("/v1/models/")


def test_stream_chunks_usage_only_complete_at_the_end(emu):
    chunks = list(client(emu).models.generate_content_stream(model="gemini-2.5-flash",
                                                             contents="one two three four five"))
    assert "".join(c.text or "" for c in chunks) == "Echo: one two three four five"
    assert len(chunks) == 3
    assert [c.candidates[0].finish_reason for c in chunks][-1] == types.FinishReason.STOP
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage_metadata.candidates_token_count is None for c in chunks[:-1])
    assert chunks[-1].usage_metadata.candidates_token_count == 7
    assert emu.state.requests[-1]["query"] == "alt=sse"


def test_function_calling_round_trip_with_thought_signature(emu):
    c = client(emu)
    emu.state.script.append({"calls": [{"name": "get_weather", "args": {"city": "Paris"}, "signature": SIG}]})
    cfg = types.GenerateContentConfig(tools=[WEATHER], automatic_function_calling=types.AutomaticFunctionCallingConfig(
        disable=True), tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")))
    r = c.models.generate_content(model="gemini-3-pro-preview", contents="weather in Paris?", config=cfg)
    part = r.candidates[0].content.parts[0]
    assert part.function_call.name == "get_weather" and part.function_call.args == {"city": "Paris"}
    assert part.thought_signature == b"opaque-signature-bytes"
    history = [types.Content(role="user", parts=[types.Part(text="weather in Paris?")]), r.candidates[0].content,
               types.Content(role="user", parts=[types.Part.from_function_response(
                   name="get_weather", response={"temp": 21})])]
    r2 = c.models.generate_content(model="gemini-3-pro-preview", contents=history, config=cfg)
    assert r2.text == 'Echo: tool results get_weather={"temp":21}'
    sent = emu.state.requests[-1]["body"]["contents"][1]["parts"][0]
    assert sent["thoughtSignature"] == SIG or sent.get("thought_signature") == SIG


def test_gemini3_refuses_function_call_history_without_signature(emu):
    history = [types.Content(role="user", parts=[types.Part(text="weather?")]),
               types.Content(role="model", parts=[types.Part.from_function_call(name="get_weather", args={"city": "X"})]),
               types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={})])]
    cfg = types.GenerateContentConfig(tools=[WEATHER])
    with pytest.raises(errors.ClientError) as e:
        client(emu).models.generate_content(model="gemini-3-pro-preview", contents=history, config=cfg)
    assert e.value.code == 400 and "thought_signature" in e.value.message
    # Gemini 2.5 does not require them
    assert client(emu).models.generate_content(model="gemini-2.5-flash", contents=history, config=cfg).text


def test_function_response_count_must_match_calls(emu):
    history = [types.Content(role="user", parts=[types.Part(text="weather?")]),
               types.Content(role="model", parts=[types.Part.from_function_call(name="get_weather", args={"city": "X"}),
                                                  types.Part.from_function_call(name="get_weather", args={"city": "Y"})]),
               types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={})])]
    with pytest.raises(errors.ClientError) as e:
        client(emu).models.generate_content(model="gemini-2.5-flash", contents=history,
                                            config=types.GenerateContentConfig(tools=[WEATHER]))
    assert "number of function response parts" in e.value.message


def test_streamed_function_call_and_thoughts(emu):
    emu.state.script.append({"thought": "Let me think", "text": "Checking.",
                             "calls": [{"name": "get_weather", "args": {"city": "Oslo"}}]})
    chunks = list(client(emu).models.generate_content_stream(
        model="gemini-2.5-flash", contents="weather?", config=types.GenerateContentConfig(
            tools=[WEATHER], thinking_config=types.ThinkingConfig(include_thoughts=True),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))))
    parts = [p for c in chunks for p in c.candidates[0].content.parts]
    assert "".join(p.text for p in parts if p.thought) == "Let me think"
    assert "".join(p.text for p in parts if p.text and not p.thought) == "Checking."
    calls = [p.function_call for p in parts if p.function_call]
    assert len(calls) == 1 and calls[0].args == {"city": "Oslo"}
    assert chunks[-1].usage_metadata.thoughts_token_count == 3


def test_candidate_count_gives_indexed_candidates(emu):
    r = client(emu).models.generate_content(model="gemini-2.5-flash", contents="hi",
                                            config=types.GenerateContentConfig(candidate_count=2))
    assert [c.index for c in r.candidates] == [0, 1]
    chunks = list(client(emu).models.generate_content_stream(model="gemini-2.5-flash", contents="hi",
                                                             config=types.GenerateContentConfig(candidate_count=2)))
    assert {c.index for ch in chunks for c in ch.candidates} == {0, 1}


def test_validation_errors_are_google_shaped(emu):
    with pytest.raises(errors.ClientError) as e:
        client(emu).models.generate_content(model="gemini-2.5-flash", contents=[
            types.Content(role="assistant", parts=[types.Part(text="x")])])
    assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT" and "valid role" in e.value.message
    r = httpx.post(emu.state.url + "/v1beta/models/gemini-2.5-flash:generateContent",
                   headers={"x-goog-api-key": KEY}, json={"contents": [{"role": "user", "parts": [{"txt": "x"}]}]})
    assert r.status_code == 400 and 'Unknown name "txt"' in r.json()["error"]["message"]
    r = httpx.post(emu.state.url + "/v1beta/models/gemini-2.5-flash:generateContent", headers={"x-goog-api-key": KEY},
                   json={"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                         "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
                             "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}]}]})
    assert r.status_code == 400 and 'Unknown name "additionalProperties"' in r.json()["error"]["message"]


def test_errors_keys_and_faults(emu):
    with pytest.raises(errors.ClientError) as e:
        client(emu, key="wrong").models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 400 and e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    emu.state.script.append({"error": {"code": 429, "message": "Quota exceeded", "retry_delay": "7s"}})
    with pytest.raises(errors.ClientError) as e:
        client(emu).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 429 and e.value.status == "RESOURCE_EXHAUSTED"
    assert e.value.details["error"]["details"][0]["retryDelay"] == "7s"
    emu.state.script.append({"error": {"code": 503, "message": "The model is overloaded."}})
    with pytest.raises(errors.ServerError) as e:
        client(emu).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.status == "UNAVAILABLE"
    with pytest.raises(errors.ClientError) as e:
        client(emu).models.generate_content(model="missing-model", contents="hi")
    assert e.value.code == 404


def test_prompt_block(emu):
    emu.state.script.append({"block": "SAFETY"})
    r = client(emu).models.generate_content(model="gemini-2.5-flash", contents="bad")
    assert r.candidates is None and r.prompt_feedback.block_reason == types.BlockedReason.SAFETY


def _recorded_events(name: str) -> list[dict]:
    raw = (RECORDED / name).read_bytes()
    return [json.loads(e[6:]) for e in raw.split(b"\r\n\r\n") if e.startswith(b"data: ")]


def test_emulator_events_have_the_recorded_shape(emu):
    """Same keys, same CRLF framing as the recorded gemini-3 stream (candidates with index, usage each time)."""
    emu.state.script.append({"text": "The capital of Mexico is Mexico City."})
    with httpx.stream("POST", emu.state.url + "/v1beta/models/gemini-3-pro-preview:streamGenerateContent?alt=sse",
                      headers={"x-goog-api-key": KEY}, json={"contents": [{"role": "user", "parts": [{"text": "q"}]}]}) as r:
        body = r.read()
    assert r.headers["content-type"].startswith("text/event-stream")
    ours = [json.loads(e[6:]) for e in body.split(b"\r\n\r\n") if e]
    rec = _recorded_events("gemini_stream_text_multi.sse")
    assert set(ours[0]) == set(rec[0]) == {"candidates", "usageMetadata", "modelVersion", "responseId"}
    assert set(ours[0]["candidates"][0]) == set(rec[0]["candidates"][0])
    assert set(ours[-1]["candidates"][0]) == set(rec[-1]["candidates"][0])
    assert "candidatesTokenCount" not in ours[0]["usageMetadata"] and "candidatesTokenCount" in ours[-1]["usageMetadata"]


def test_sdk_reads_recorded_events_replayed_by_the_emulator(emu):
    emu.state.script.append({"events": _recorded_events("gemini_stream_function_call.sse")})
    chunks = list(client(emu).models.generate_content_stream(model="gemini-3-pro-preview", contents="country?"))
    fc = chunks[0].candidates[0].content.parts[0]
    assert fc.function_call.name == "get_country" and fc.thought_signature
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    rec = json.loads((RECORDED / "gemini_max_tokens_empty_content.json").read_text())
    emu.state.script.append({"raw": rec})
    r = client(emu).models.generate_content(model="gemini-2.5-pro", contents="x")
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS and r.candidates[0].content.parts is None


def test_count_tokens_answers_the_sdk(emu):
    r = client(emu).models.count_tokens(model="gemini-2.5-flash", contents="one two three")
    assert r.total_tokens == 3
    assert emu.state.requests[-1]["body"] == {"contents": [{"parts": [{"text": "one two three"}], "role": "user"}]}
