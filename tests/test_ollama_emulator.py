"""The Ollama emulator is faithful: the official `ollama` client (sync and async) talks to it, and
its lines have the fields of the responses recorded from real Ollama servers."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import ollama
import pytest

from tests.conftest import RECORDED as FIXTURES
from tests.emulators.ollama import build_ollama_emulator, model_entry

RECORDED = FIXTURES / "ollama_native_docs_examples.json"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


@pytest.fixture
def emu(serve):
    app = build_ollama_emulator(models=["llama3.2:3b", model_entry("qwen2.5vl:7b", "8.3B", 6_000_000_000, "qwen25vl")],
                                loaded=["llama3.2:3b"], version="0.12.6")
    return app, serve(app)


def test_official_client_chat_non_streamed_and_streamed(emu):
    app, url = emu
    client = ollama.Client(host=url)
    app.state.script = {"text": "Hello there friend", "thinking": "Let me think", "eval_count": 7}
    r = client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}],
                    options={"temperature": 0.1, "num_predict": 20, "stop": ["x"]}, keep_alive="10m", think=True)
    assert r.message.content == "Hello there friend" and r.message.thinking == "Let me think"
    assert r.done and r.done_reason == "stop" and r.eval_count == 7 and r.prompt_eval_count > 0
    assert app.state.requests[-1]["options"] == {"temperature": 0.1, "num_predict": 20, "stop": ["x"]}
    assert app.state.requests[-1]["keep_alive"] == "10m" and app.state.requests[-1]["stream"] is False

    parts = list(client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.message.content or "" for p in parts) == "Hello there friend"
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done_reason == "stop"


def test_official_async_client_tools_images_and_errors(emu):
    app, url = emu

    async def go():
        client = ollama.AsyncClient(host=url)
        app.state.script = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Tokyo"}}], "text": ""}
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
        r = await client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "weather?"}], tools=tools)
        assert r.message.tool_calls[0].function.name == "get_weather"
        assert r.message.tool_calls[0].function.arguments == {"city": "Tokyo"}
        stream = await client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "weather?"}],
                                   tools=tools, stream=True)
        calls = [tc async for p in stream for tc in (p.message.tool_calls or [])]
        assert calls[0].function.arguments == {"city": "Tokyo"}
        # a tool result round trip, as the client sends it
        app.state.script = {}
        r = await client.chat(model="llama3.2:3b", messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                            "arguments": {"city": "Tokyo"}}}]},
            {"role": "tool", "content": "20C", "tool_name": "get_weather"}])
        assert r.message.content == "The tool get_weather said: 20C"
        # images: the client sends bytes as base64 without a data: prefix
        r = await client.chat(model="qwen2.5vl:7b", messages=[{"role": "user", "content": "what is it?",
                                                                "images": [PNG]}])
        assert r.message.content == "You said: what is it? [1 image]"
        assert base64.b64decode(app.state.requests[-1]["messages"][0]["images"][0]) == PNG
        # errors: model not found is a 404 with Ollama's wording
        with pytest.raises(ollama.ResponseError) as e:
            await client.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 404 and "not found" in e.value.error
        app.state.script = {"error_after": 2, "error_message": "runner crashed"}
        with pytest.raises(ollama.ResponseError) as e:
            async for _ in await client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "a b c d"}],
                                             stream=True):
                pass
        assert e.value.error == "runner crashed"
        app.state.script = {"status": 500, "error": "llama runner process has terminated"}
        with pytest.raises(ollama.ResponseError) as e:
            await client.chat(model="llama3.2:3b", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 500

    asyncio.run(go())


def test_official_client_list_ps_version(emu):
    app, url = emu
    client = ollama.Client(host=url)
    names = [m.model for m in client.list().models]
    assert names == ["llama3.2:3b", "qwen2.5vl:7b"]
    assert client.list().models[1].details.parameter_size == "8.3B"
    ps = client.ps().models
    assert [m.model for m in ps] == ["llama3.2:3b"] and ps[0].size_vram > 0 and ps[0].expires_at is not None
    assert client._request_raw("GET", "/api/version").json() == {"version": "0.12.6"}
    assert httpx.get(url + "/").text == "Ollama is running"


def test_emulator_lines_have_the_recorded_fields(emu):
    app, url = emu
    rec = json.loads(RECORDED.read_text())
    app.state.script = {"text": "The sky"}
    lines = [json.loads(x) for x in httpx.post(url + "/api/chat", json={
        "model": "llama3.2:3b", "messages": [{"role": "user", "content": "x"}]}).text.splitlines()]
    assert set(lines[0]) == set(rec["chat_stream_text"][0]) - {"message"} | {"message"}
    assert set(lines[-1]) >= set(rec["chat_stream_text"][1])
    assert set(lines[-1]) == set(rec["chat_stream_tools"][1])
    r = httpx.post(url + "/api/chat", json={"model": "llama3.2:3b", "stream": False,
                                            "messages": [{"role": "user", "content": "x"}]}).json()
    assert set(r) == set(rec["chat_nonstream_tools"][0])
    tags = httpx.get(url + "/api/tags").json()
    assert set(tags["models"][0]) == set(rec["tags"][0]["models"][0])
    assert set(tags["models"][0]["details"]) == set(rec["tags"][0]["models"][0]["details"])
    ps = httpx.get(url + "/api/ps").json()
    assert set(ps["models"][0]) >= set(rec["ps"][0]["models"][0])


@pytest.mark.parametrize("body,status,words", [
    ({"model": "llama3.2:3b", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, 400,
     "cannot unmarshal array"),
    ({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,AA=="]}]},
     400, "illegal base64"),
    ({"model": "llama3.2:3b", "messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "{\"a\": 1}"}}]}]}, 400, "cannot unmarshal string"),
    ({"model": "llama3.2:3b", "messages": [], "options": {"num_predict": "10"}}, 400, "must be of type integer"),
    ({"model": "llama3.2:3b", "messages": [], "options": {"max_tokens": 10}}, 400, "unknown option"),
    ({"model": "llama3.2:3b", "messages": [], "temperature": 1}, 400, "unknown field"),
    ({"messages": []}, 400, "model is required"),
    ({"model": "missing:7b", "messages": []}, 404, "model 'missing:7b' not found"),
])
def test_emulator_rejects_what_ollama_rejects(emu, body, status, words):
    app, url = emu
    r = httpx.post(url + "/api/chat", json=body)
    assert r.status_code == status and words in r.json()["error"]
