"""Issue 17 end to end: the `anthropic` SDK as the client → Turnout's /v1/messages (real HTTP) →
the Anthropic emulator (native pass-through), the Gemini and Ollama emulators and the mock.

Asserts what the client got (the SDK's own parsed types, its stream accumulator and its typed
errors) and what each upstream received.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Iterator

import anthropic
import httpx
import pytest
from anthropic.types import Message

from proxy.config import parse
from proxy.server.assembly import build_app
from tests.conftest import ServerThread
from tests.emulators.anthropic import Reply
from tests.emulators.anthropic import build_app as build_claude
from tests.emulators.gemini import build_gemini_emulator
from tests.emulators.ollama import build_ollama_emulator

TOKEN = "tk-team-1"
CLAUDE_KEY = "sk-ant-up"
GEMINI_KEY = "gemini-test-key"
SONNET = "claude-sonnet-4-5-20250929"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
HI = [{"role": "user", "content": "hello there"}]
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# what Claude Code sends, in shape: system blocks with cache_control, many tools, metadata, thinking, a beta header
CLAUDE_CODE_SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks.",
     "cache_control": {"type": "ephemeral"}}]
CLAUDE_CODE_TOOLS = [
    {"name": "Bash", "description": "Executes a given bash command",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"},
                                                       "timeout": {"type": "number"}},
                      "required": ["command"], "additionalProperties": False,
                      "$schema": "http://json-schema.org/draft-07/schema#"}},
    {"name": "Read", "description": "Reads a file from the local filesystem.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"],
                      "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"},
     "cache_control": {"type": "ephemeral"}}]
BETA = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"


def config(claude: str, gemini: str, ollama: str) -> dict:
    return {
        "backends": {
            "claude": {"type": "anthropic", "base_url": claude, "api_key": CLAUDE_KEY},
            "gem": {"type": "gemini", "base_url": gemini, "api_key": GEMINI_KEY},
            "local": {"type": "ollama", "base_url": ollama},
            "mock": {"type": "mock"},
            "down": {"type": "mock", "fail": {"status": 503}},
            "limited": {"type": "mock", "fail": {"status": 429, "retry_after": 7}},
        },
        "models": {
            "sonnet": {"backend": "claude", "model": SONNET, "vision": True},
            "flash": {"backend": "gem", "model": "gemini-2.5-flash", "vision": True},
            "llama": {"backend": "local", "model": "llama3.2:3b"},
            "mocky": {"backend": "mock", "model": "mock-1"},
            "down-model": {"backend": "down"},
            "limited-model": {"backend": "limited"},
        },
        "routes": {"auto": ["down-model", "mocky"], "dead": ["down-model"]},
        "aliases": {"claude-sonnet-4-5": "auto", "claude-sonnet-4-6": "sonnet", "claude-haiku-4-5": "llama"},
        "keys": [{"key": TOKEN, "name": "team"}],
    }


class Env:
    def __init__(self, base: str, claude, gemini, ollama) -> None:
        self.base, self.claude, self.gemini, self.ollama = base, claude, gemini, ollama
        self.client = anthropic.Anthropic(base_url=base, api_key=TOKEN, max_retries=0)

    def aclient(self) -> anthropic.AsyncAnthropic:
        """An async client for one event loop (one per asyncio.run)."""
        return anthropic.AsyncAnthropic(base_url=self.base, auth_token=TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def shared() -> Iterator[Env]:
    claude, gemini = build_claude(api_key=CLAUDE_KEY), build_gemini_emulator(GEMINI_KEY)
    ollama = build_ollama_emulator(models=["llama3.2:3b"], loaded=["llama3.2:3b"])
    servers = [ServerThread(a).start() for a in (claude, gemini, ollama)]
    claude.state.url = servers[0].url
    proxy = ServerThread(build_app(parse(config(*(s.url for s in servers)), {}))).start()
    yield Env(proxy.url, claude, gemini, ollama)
    for s in [proxy, *servers]:
        s.stop()


@pytest.fixture
def env(shared: Env) -> Env:
    for emu in (shared.claude, shared.gemini):
        emu.state.script.clear()
        emu.state.requests.clear()
    shared.claude.state.headers.clear()
    shared.ollama.state.requests.clear()
    shared.ollama.state.scripts.clear()
    return shared


def raw_post(env: Env, body: object, path: str = "/v1/messages", headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(env.base + path, content=content, timeout=30, headers={
        "content-type": "application/json", "x-api-key": TOKEN, "anthropic-version": "2023-06-01", **(headers or {})})


# --- the mock: create, stream, async, tools -----------------------------------------------------


def test_create_through_an_alias_with_fallback_and_turnout_headers(env):
    raw = env.client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=200, messages=HI)
    m = raw.parse()
    assert isinstance(m, Message) and m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and "You said: hello there" in m.content[0].text
    assert m.stop_reason == "end_turn" and m.usage.input_tokens > 0 and m.usage.output_tokens > 0
    assert raw.headers["x-turnout-model"] == "mocky" and raw.headers["x-turnout-route"] == "auto"
    assert raw.headers["x-turnout-fallbacks"].startswith("down-model: ")
    assert raw.headers["request-id"] == raw.headers["x-request-id"]


def test_stream_helper_accumulates_a_translated_stream(env):
    with env.client.messages.stream(model="mocky", max_tokens=200, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and "You said: hello there" in text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_max_tokens_maps_to_stop_reason_max_tokens(env):
    m = env.client.messages.create(model="mocky", max_tokens=3, messages=HI)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def test_multi_turn_tool_round_trip_sync_and_streamed(env):
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    first = env.client.messages.create(model="mocky", max_tokens=300, messages=msgs, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]}]
    with env.client.messages.stream(model="mocky", max_tokens=300, messages=msgs, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.content[0].text == "The tool returned: 18C and sunny"


def test_streamed_tool_call_arrives_as_input_json_delta(env):
    with env.client.messages.stream(model="mocky", max_tokens=300, messages=HI, tools=[WEATHER],
                                    tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas and set(deltas) == {"input_json_delta"}
    assert final.content[0].type == "tool_use" and final.stop_reason == "tool_use" and "city" in final.content[0].input


def test_async_create_and_stream_with_bearer_auth(env):
    async def go():
        client = env.aclient()
        m = await client.messages.create(model="mocky", max_tokens=100, messages=HI)
        async with client.messages.stream(model="mocky", max_tokens=100, messages=HI) as s:
            final = await s.get_final_message()
        return m, final

    m, final = asyncio.run(go())
    assert m.content[0].text == final.content[0].text


# --- Claude: native pass-through ----------------------------------------------------------------


def test_claude_pass_through_keeps_cache_control_documents_and_thinking_signatures(env):
    env.claude.state.script.append(Reply(blocks=[{"type": "thinking", "thinking": "Hmm.", "signature": "sig-2"},
                                                 {"type": "text", "text": "Done."}],
                                         usage={"cache_read_input_tokens": 40, "cache_creation_input_tokens": 7}))
    body = dict(model="claude-sonnet-4-6", max_tokens=4000, system=CLAUDE_CODE_SYSTEM, top_k=5,
                thinking={"type": "enabled", "budget_tokens": 2000}, tools=[WEATHER],
                messages=[{"role": "user", "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                    "data": base64.b64encode(b"%PDF-1.4").decode()}},
                    {"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}}]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "Call the tool.", "signature": "sig-1"},
                        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "3C"}]}])
    top_k = body.pop("top_k")  # the 2.x SDK no longer offers sampling parameters; Claude Code still sends them
    raw = env.client.messages.with_raw_response.create(**body, extra_body={"top_k": top_k},
                                                       extra_headers={"anthropic-beta": BETA})
    body["top_k"] = top_k
    m = raw.parse()
    sent = env.claude.state.requests[-1]
    assert sent == {**body, "model": SONNET}  # exactly the client's body, the target's model
    assert env.claude.state.headers[-1]["anthropic-beta"] == BETA
    assert raw.headers["x-turnout-model"] == "sonnet"
    assert m.content[0].type == "thinking" and m.content[0].signature == "sig-2"
    assert m.usage.cache_read_input_tokens == 40 and m.usage.cache_creation_input_tokens == 7
    assert m.model == SONNET and m.id.startswith("msg_01")


def test_claude_pass_through_streams_the_upstreams_own_events(env):
    env.claude.state.script.append(Reply(blocks=[{"type": "thinking", "thinking": "Short thought", "signature": "s"},
                                                 {"type": "text", "text": "Hi there friend"}]))
    with env.client.messages.stream(model="sonnet", max_tokens=3000, messages=HI,
                                    thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [e.type for e in events].count("content_block_start") == 2
    assert any(e.type == "content_block_delta" and e.delta.type == "signature_delta" for e in events)
    assert final.content[0].signature == "s" and final.content[1].text == "Hi there friend"


def test_count_tokens_asks_claude_or_gemini_or_estimates(env):
    r = env.client.messages.with_raw_response.count_tokens(model="sonnet", messages=HI, system="Be brief.")
    assert r.parse().input_tokens == 4 and r.headers["x-turnout-token-count"] == "provider"
    assert env.claude.state.requests[-1] == {"model": SONNET, "messages": HI, "system": "Be brief."}
    r = env.client.messages.with_raw_response.count_tokens(model="flash", messages=HI, system="Be brief.",
                                                           tools=[WEATHER])
    assert r.parse().input_tokens == 5 and r.headers["x-turnout-token-count"] == "provider"  # words and "."
    got = env.gemini.state.requests[-1]
    assert got["path"].endswith("/models/gemini-2.5-flash:countTokens")
    assert got["body"]["generateContentRequest"]["model"] == "models/gemini-2.5-flash"
    assert got["body"]["generateContentRequest"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    r = env.client.messages.with_raw_response.count_tokens(model="mocky", messages=HI, tools=[WEATHER])
    assert r.parse().input_tokens > 10 and r.headers["x-turnout-token-count"] == "estimate"


# --- Gemini and Ollama -------------------------------------------------------------------------


def test_gemini_gets_images_system_and_thinking_and_answers_in_anthropics_shape(env):
    env.gemini.state.script.append({"thought": "Looking at the pixel.", "text": "A single pixel."})
    m = env.client.messages.create(
        model="flash", max_tokens=4000, system=[{"type": "text", "text": "Describe.", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "text", "text": "What is this?"}]}])
    got = env.gemini.state.requests[-1]["body"]
    assert got["systemInstruction"]["parts"] == [{"text": "Describe."}]
    assert got["contents"][0]["parts"][0]["inlineData"] == {"mimeType": "image/png", "data": PNG}
    assert got["generationConfig"]["thinkingConfig"]["includeThoughts"] is True
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Looking at the pixel." and m.content[1].text == "A single pixel."


def test_claude_code_shaped_stream_answered_by_gemini(env):
    env.gemini.state.script.append({"calls": [{"name": "Bash", "args": {"command": "ls -la"}}]})
    with env.client.messages.stream(
            model="flash", max_tokens=32000, system=CLAUDE_CODE_SYSTEM, tools=CLAUDE_CODE_TOOLS,
            metadata={"user_id": "user_abc_account_def_session_123"}, extra_body={"temperature": 1},
            messages=[{"role": "user", "content": [{"type": "text", "text": "list the files",
                                                    "cache_control": {"type": "ephemeral"}}]}],
            extra_headers={"anthropic-beta": BETA}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = final.content[-1]
    assert tool.type == "tool_use" and tool.name == "Bash" and tool.input == {"command": "ls -la"}
    got = env.gemini.state.requests[-1]["body"]
    assert [d["name"] for d in got["tools"][0]["functionDeclarations"]] == ["Bash", "Read"]


def test_ollama_tool_round_trip_streamed(env):
    env.ollama.state.scripts.append({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]})
    msgs = [{"role": "user", "content": "Weather in Rome?"}]
    with env.client.messages.stream(model="claude-haiku-4-5", max_tokens=500, messages=msgs, tools=[WEATHER]) as s:
        first = s.get_final_message()
    call = first.content[-1]
    assert first.stop_reason == "tool_use" and call.input == {"city": "Rome"}
    env.ollama.state.scripts.append({"text": "Rome is warm."})
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "25C"}]}]
    m = env.client.messages.create(model="claude-haiku-4-5", max_tokens=500, messages=msgs, tools=[WEATHER])
    assert m.content[0].text == "Rome is warm." and m.stop_reason == "end_turn"
    sent = env.ollama.state.requests[-1]["messages"]
    assert sent[-1]["role"] == "tool" and sent[-1]["content"] == "25C"
    assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Rome"}}


# --- errors in Anthropic's shape -----------------------------------------------------------------


def test_auth_errors(env):
    bad = anthropic.Anthropic(base_url=env.base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="mocky", max_tokens=10, messages=HI)
    assert e.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                            "request_id": e.value.response.headers["request-id"]}
    r = httpx.post(env.base + "/v1/messages", json={"model": "mocky", "max_tokens": 5, "messages": HI})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("body, status, etype, message", [
    (b"{not json", 400, "invalid_request_error", "We could not parse the JSON body"),
    ({"model": "mocky", "messages": HI}, 400, "invalid_request_error", "max_tokens: Field required"),
    ({"model": "claude-nope", "max_tokens": 5, "messages": HI}, 404, "not_found_error", "model: claude-nope"),
    ({"model": "auto", "max_tokens": 5, "messages": HI, "tools": [{"type": "web_search_20250305", "name": "ws"}]},
     400, "invalid_request_error", "tools.0: the server tool"),
])
def test_bad_requests(env, body, status, etype, message):
    r = raw_post(env, body)
    assert r.status_code == status
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == etype
    assert r.json()["error"]["message"].startswith(message)


def test_rate_limit_and_overload_statuses_the_sdk_knows(env):
    with pytest.raises(anthropic.RateLimitError) as e:
        env.client.messages.create(model="limited-model", max_tokens=10, messages=HI)
    assert e.value.response.headers["retry-after"] == "7" and e.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.InternalServerError) as e:
        env.client.messages.create(model="dead", max_tokens=10, messages=HI)
    assert e.value.status_code in (500, 529) and e.value.body["type"] == "error"


def test_a_stream_failing_after_its_start_ends_with_an_error_event(env):
    with pytest.raises(anthropic.APIStatusError) as e:
        with env.client.messages.stream(model="mocky", max_tokens=100,
                                        messages=[{"role": "user", "content": "hi [mock:drop=3]"}]) as s:
            for _ in s:
                pass
    assert e.value.body["type"] == "error"
    r = raw_post(env, {"model": "mocky", "max_tokens": 100, "stream": True,
                       "messages": [{"role": "user", "content": "hi [mock:drop=3]"}]})
    frames = [f for f in r.text.split("\n\n") if f]
    assert frames[0].startswith("event: message_start") and frames[-1].startswith("event: error")


# --- the same pipeline: fallback past Claude, rate limits, the ledger ---------------------------


def test_a_failing_claude_falls_back_to_a_translated_answer(env, turnout):
    raw = config(env.claude.state.url, "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw["routes"]["claude-first"] = ["sonnet", "mocky"]
    base = turnout(raw)
    client = anthropic.Anthropic(base_url=base, api_key=TOKEN, max_retries=0)
    env.claude.state.script.append(Reply(status=529))
    r = client.messages.with_raw_response.create(model="claude-first", max_tokens=100, messages=HI)
    assert r.headers["x-turnout-model"] == "mocky" and r.headers["x-turnout-fallbacks"].startswith("sonnet: 502")
    assert "You said: hello there" in r.parse().content[0].text
    env.claude.state.script.append(Reply(stream_error=(1, "overloaded_error", "Overloaded")))
    with client.messages.stream(model="claude-first", max_tokens=100, messages=HI) as s:
        final = s.get_final_message()
    assert "You said: hello there" in final.content[0].text  # Claude's early error event: the mock answered


def test_claude_failing_mid_stream_ends_with_an_error_event(env):
    env.claude.state.script.append(Reply(text="one two three four five six", stream_error=(5, "overloaded_error",
                                                                                          "Overloaded")))
    with pytest.raises(anthropic.APIStatusError) as e:
        with env.client.messages.stream(model="sonnet", max_tokens=100, messages=HI) as s:
            for _ in s:
                pass
    assert e.value.body["error"]["type"] == "overloaded_error"


def test_rate_limits_and_the_ledger_apply(turnout, tmp_path):
    raw = config("http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw["keys"] = [{"key": TOKEN, "name": "team", "rate_limit": {"requests_per_minute": 2}}]
    raw["usage"] = {"ledger": str(tmp_path / "u.db"), "flush_interval": 0.05}
    base = turnout(raw)
    client = anthropic.Anthropic(base_url=base, api_key=TOKEN, max_retries=0)
    client.messages.create(model="mocky", max_tokens=50, messages=HI)
    with client.messages.stream(model="mocky", max_tokens=50, messages=HI) as s:
        s.until_done()
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model="mocky", max_tokens=50, messages=HI)
    assert e.value.body["error"]["type"] == "rate_limit_error" and int(e.value.response.headers["retry-after"]) > 0
    rows: list = []
    for _ in range(50):  # the ledger flushes every 50 ms
        r = httpx.get(base + "/turnout/usage/export", headers={"authorization": f"Bearer {TOKEN}"})
        rows = [json.loads(line) for line in r.text.splitlines() if line]
        if len(rows) >= 3:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert [(row["target"], row["status"], row["stream"]) for row in rows] == [
        ("mocky", 200, 0), ("mocky", 200, 1), (None, 429, 0)]
    assert rows[0]["completion_tokens"] > 0 and rows[1]["completion_tokens"] > 0


def test_ollama_thinking_streams_as_thinking_deltas(env):
    env.ollama.state.scripts.append({"thinking": "Rome is in Italy.", "text": "It is warm."})
    with env.client.messages.stream(model="llama", max_tokens=3000, messages=HI,
                                    thinking={"type": "enabled", "budget_tokens": 2000}) as s:
        events = list(s)
        final = s.get_final_message()
    assert env.ollama.state.requests[-1]["think"] is True
    assert {e.delta.type for e in events if e.type == "content_block_delta"} == {"thinking_delta", "text_delta"}
    assert final.content[0].thinking == "Rome is in Italy." and final.content[1].text == "It is warm."


def test_server_tools_go_only_to_claude_targets(env, turnout):
    raw = config(env.claude.state.url, "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw["routes"]["mixed"] = ["mocky", "sonnet"]
    client = anthropic.Anthropic(base_url=turnout(raw), api_key=TOKEN, max_retries=0)
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    r = client.messages.with_raw_response.create(model="mixed", max_tokens=100, messages=HI, tools=[search, WEATHER])
    assert r.headers["x-turnout-model"] == "sonnet"
    assert r.headers["x-turnout-fallbacks"] == "mocky: skipped: the request uses what only Claude takes"
    assert env.claude.state.requests[-1]["tools"] == [search, WEATHER]


def test_wrong_method_and_unknown_path_under_messages_answer_in_anthropics_shape(env):
    r = httpx.get(env.base + "/v1/messages", headers={"x-api-key": TOKEN})
    assert r.status_code == 405 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(env.base + "/v1/messages/batches", headers={"x-api-key": TOKEN}, json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_async_sdk_against_claude_and_gemini_with_images_and_cached_system(env):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    msgs = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    env.claude.state.script.append(Reply(text="A pixel on Claude"))
    env.gemini.state.script.append({"text": "A pixel on Gemini"})

    async def go():
        client = env.aclient()
        async with client.messages.stream(model="sonnet", max_tokens=100, messages=msgs,
                                               system=CLAUDE_CODE_SYSTEM) as s:
            claude = await s.get_final_message()
        gemini = await client.messages.create(model="flash", max_tokens=100, messages=msgs,
                                                   system=CLAUDE_CODE_SYSTEM)
        return claude, gemini

    claude, gemini = asyncio.run(go())
    assert claude.content[0].text == "A pixel on Claude" and gemini.content[0].text == "A pixel on Gemini"
    assert env.claude.state.requests[-1]["messages"] == msgs
    assert env.claude.state.requests[-1]["system"] == CLAUDE_CODE_SYSTEM
    parts = env.gemini.state.requests[-1]["body"]["contents"][0]["parts"]
    assert parts[0]["inlineData"]["data"] == PNG and parts[1] == {"text": "What is it?"}
