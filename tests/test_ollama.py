"""Issue 5: the native Ollama backend, end to end: the `openai` SDK → Turnout → the Ollama emulator
over real HTTP, asserting both what the emulator received and what the client got."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from proxy import cli
from tests.conftest import collect, post, sdk
from tests.emulators.ollama import build_ollama_emulator, model_entry

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
PNG_B64 = base64.b64encode(PNG).decode()
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}}}}]
USER = [{"role": "user", "content": "hello there"}]


def config(url: str, timeout: dict | None = None, **backend) -> dict:
    return {
        "backends": {
            "local": {"type": "ollama", "base_url": url, "images": {"allow_private": True},
                      "timeout": timeout or {"connect": 2, "first_token": 5, "idle": 5, "total": 10}, **backend},
            "backup": {"type": "mock", "reply": "Backup: {prompt}"},
        },
        "models": {
            "llama": {"backend": "local", "model": "llama3.2:3b", "options": {"keep_alive": "30m", "num_ctx": 8192}},
            "vision": {"backend": "local", "model": "qwen2.5vl:7b", "vision": True},
            "plain": {"backend": "local", "model": "llama3.2:3b"},
            "missing": {"backend": "local", "model": "mistral:7b"},
            "backup-model": {"backend": "backup", "model": "mock-backup"},
        },
        "routes": {"missing-then-backup": ["missing", "backup-model"], "local-then-backup": ["plain", "backup-model"]},
    }


@pytest.fixture
def emu(serve):
    app = build_ollama_emulator(models=["llama3.2:3b", model_entry("qwen2.5vl:7b", "8.3B", 6_000_000_000, "qwen25vl")],
                                loaded=["llama3.2:3b"])
    return app, serve(app)


@pytest.fixture
def env(emu, turnout):
    app, url = emu
    return app, turnout(config(url))


def last(app) -> dict:
    return app.state.requests[-1]


# --- text, roles, usage -------------------------------------------------------------------------


def test_non_streamed_text_roles_and_usage(env):
    app, base = env
    app.state.script = {"text": "Hi! How can I help?", "prompt_eval_count": 26, "eval_count": 9}
    raw = sdk(base).chat.completions.with_raw_response.create(model="llama", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Really."},
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "again"}])
    r = raw.parse()
    assert raw.headers["x-turnout-model"] == "llama"
    assert r.object == "chat.completion" and r.model == "llama3.2:3b" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.content == "Hi! How can I help?" and r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (26, 9, 35)
    got = last(app)
    assert got["model"] == "llama3.2:3b" and got["stream"] is False
    assert got["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Really."},
                               {"role": "user", "content": "hello there"}, {"role": "assistant", "content": "Hi."},
                               {"role": "user", "content": "again"}]
    assert got["keep_alive"] == "30m" and got["options"] == {"num_ctx": 8192}


def test_streamed_text_chunks_and_usage_chunk(env):
    app, base = env
    app.state.script = {"text": "The sky is blue.", "prompt_eval_count": 12, "eval_count": 5}
    stream = sdk(base).chat.completions.create(model="llama", messages=USER, stream=True,
                                               stream_options={"include_usage": True})
    text, chunks = collect(stream)
    assert text == "The sky is blue."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.model == "llama3.2:3b" for c in chunks)
    assert len(chunks) == 4 + 1 + 1  # one per NDJSON text line, the finish chunk, the usage chunk
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 12 and chunks[-1].usage.completion_tokens == 5
    assert last(app)["stream"] is True


def test_stream_wire_format_ends_with_done(env):
    app, base = env
    with httpx.stream("POST", base + "/v1/chat/completions", json={"model": "llama", "stream": True,
                                                                   "messages": USER}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    assert body.endswith("data: [DONE]\n\n") and all(e.startswith("data: ") for e in body.split("\n\n") if e)


def test_thinking_becomes_reasoning_content_never_content(env):
    app, base = env
    app.state.script = {"thinking": "Hmm, the user greets me.", "text": "Hello!"}
    r = sdk(base).chat.completions.create(model="llama", messages=USER, reasoning_effort="high")
    msg = r.choices[0].message
    assert msg.content == "Hello!" and msg.model_extra["reasoning_content"] == "Hmm, the user greets me."
    assert last(app)["think"] is True
    _, chunks = collect(sdk(base).chat.completions.create(model="llama", messages=USER, stream=True,
                                                          reasoning_effort="none"))
    thinking = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert thinking == "Hmm, the user greets me." and content == "Hello!"
    assert last(app)["think"] is False
    # the reasoning goes back to Ollama as `thinking` on the assistant turn
    sdk(base).chat.completions.create(model="llama", messages=[
        *USER, {"role": "assistant", "content": "Hello!", "reasoning_content": "Hmm."}, {"role": "user", "content": "x"}])
    assert last(app)["messages"][1] == {"role": "assistant", "content": "Hello!", "thinking": "Hmm."}


# --- options ------------------------------------------------------------------------------------


def test_sampling_options_keep_alive_and_num_ctx(env):
    app, base = env
    client = sdk(base)
    client.chat.completions.create(model="llama", messages=USER, temperature=0.3, top_p=0.9, seed=42,
                                   stop="END", max_tokens=64, presence_penalty=0.5, frequency_penalty=0.25)
    got = last(app)
    assert got["options"] == {"num_ctx": 8192, "temperature": 0.3, "top_p": 0.9, "seed": 42, "stop": ["END"],
                              "num_predict": 64, "presence_penalty": 0.5, "frequency_penalty": 0.25}
    assert got["keep_alive"] == "30m"
    client.chat.completions.create(model="plain", messages=USER, stop=["a", "b"], max_tokens=5,
                                   max_completion_tokens=7)
    got = last(app)
    assert got["options"] == {"stop": ["a", "b"], "num_predict": 7} and "keep_alive" not in got
    for gone in ("temperature", "max_tokens", "n", "user", "metadata"):
        assert gone not in got


def test_backend_wide_keep_alive_and_num_ctx(emu, turnout):
    app, url = emu
    base = turnout(config(url, keep_alive=-1, num_ctx=4096))
    sdk(base).chat.completions.create(model="plain", messages=USER)
    assert last(app)["keep_alive"] == -1 and last(app)["options"] == {"num_ctx": 4096}
    sdk(base).chat.completions.create(model="llama", messages=USER)  # the target's own win
    assert last(app)["keep_alive"] == "30m" and last(app)["options"] == {"num_ctx": 8192}


def test_response_format_json_and_schema(env):
    app, base = env
    client = sdk(base)
    app.state.script = {"text": '{"n": 1}'}
    r = client.chat.completions.create(model="llama", messages=USER, response_format={"type": "json_object"})
    assert last(app)["format"] == "json" and json.loads(r.choices[0].message.content) == {"n": 1}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    client.chat.completions.create(model="llama", messages=USER, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    assert last(app)["format"] == schema
    client.chat.completions.create(model="llama", messages=USER, response_format={"type": "text"})
    assert "format" not in last(app)


def test_n_above_one_is_a_clear_400(env):
    app, base = env
    before = len(app.state.requests)
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="llama", messages=USER, n=2)
    assert e.value.body["param"] == "n" and "one choice" in e.value.body["message"]
    assert len(app.state.requests) == before


def test_length_finish_reason_both_ways(env):
    app, base = env
    app.state.script = {"text": "a b c", "done_reason": "length"}
    r = sdk(base).chat.completions.create(model="llama", messages=USER, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    _, chunks = collect(sdk(base).chat.completions.create(model="llama", messages=USER, max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"


# --- tools --------------------------------------------------------------------------------------


def test_tool_call_non_streamed_then_result_turn(env):
    app, base = env
    client = sdk(base)
    app.state.scripts.append({"text": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Tokyo"}}],
                              "tool_call_ids": True})
    messages = [{"role": "user", "content": "Weather in Tokyo?"}]
    r = client.chat.completions.create(model="llama", messages=messages, tools=WEATHER)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}
    sent_tools = last(app)["tools"]
    assert sent_tools[0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER[0]["function"]["parameters"]}}
    assert sent_tools[1]["function"]["name"] == "get_time" and "description" not in sent_tools[1]["function"]

    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "21C and sunny"}]
    r2 = client.chat.completions.create(model="llama", messages=messages, tools=WEATHER)
    assert r2.choices[0].message.content == "The tool get_weather said: 21C and sunny"
    got = last(app)["messages"]
    assert got[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]}
    assert got[2] == {"role": "tool", "content": "21C and sunny", "tool_name": "get_weather"}


@pytest.mark.parametrize("with_ids", [False, True])  # newer Ollama versions add id and function.index
def test_streamed_tool_calling_conversation(env, with_ids):
    app, base = env
    client = sdk(base)
    app.state.scripts.append({"text": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                          {"name": "get_time", "arguments": {"tz": "CET"}}],
                              "tool_call_ids": with_ids})
    messages = [{"role": "user", "content": "Weather and time in Paris?"}]
    with client.chat.completions.stream(model="llama", messages=messages, tools=WEATHER) as s:
        chunks = [e.chunk for e in s if e.type == "chunk"]
        final = s.get_final_completion()
    tool_deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in tool_deltas] == [0, 1]  # one delta per call, each complete, with its index
    assert all(d.id.startswith("call_") and d.function.name and d.function.arguments for d in tool_deltas)
    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    assert calls[0].id != calls[1].id

    messages += [final.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}),
                 {"role": "tool", "tool_call_id": calls[1].id, "content": "14:00"},
                 {"role": "tool", "tool_call_id": calls[0].id, "content": "rain"}]
    app.state.scripts.append({"text": "Rainy, and it is 14:00."})
    text, chunks = collect(client.chat.completions.create(model="llama", messages=messages, tools=WEATHER, stream=True))
    assert text == "Rainy, and it is 14:00." and chunks[-1].choices[0].finish_reason == "stop"
    got = last(app)["messages"]
    assert got[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                                    {"function": {"name": "get_time", "arguments": {"tz": "CET"}}}]
    assert got[2:] == [{"role": "tool", "content": "14:00", "tool_name": "get_time"},
                       {"role": "tool", "content": "rain", "tool_name": "get_weather"}]


def test_tool_choice_none_and_named(env):
    app, base = env
    client = sdk(base)
    client.chat.completions.create(model="llama", messages=USER, tools=WEATHER, tool_choice="none")
    assert "tools" not in last(app)
    client.chat.completions.create(model="llama", messages=USER, tools=WEATHER,
                                   tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [t["function"]["name"] for t in last(app)["tools"]] == ["get_time"]


def test_tool_result_for_unknown_call_is_400(env):
    app, base = env
    r = post(base, {"model": "llama", "messages": [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.[1].role"  # OpenAI's check, first


def test_audio_part_is_400(env):
    app, base = env
    r = post(base, {"model": "llama", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]})
    assert r.status_code == 400 and "audio" in r.json()["error"]["message"]


# --- images -------------------------------------------------------------------------------------


def image_server(serve) -> str:
    async def cat(request):
        return Response(PNG, media_type="image/png")

    async def page(request):
        return Response(b"<html></html>", media_type="text/html")

    return serve(Starlette(routes=[Route("/cat.png", cat), Route("/page", page)]))


def test_vision_data_url_and_http_url(env, serve):
    app, base = env
    img = image_server(serve)
    client = sdk(base)
    r = client.chat.completions.create(model="vision", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": img + "/cat.png", "detail": "low"}}]}])
    assert r.choices[0].message.content == "You said: What is in these? [2 images]"
    got = last(app)
    assert got["model"] == "qwen2.5vl:7b"
    assert got["messages"][0]["images"] == [PNG_B64, PNG_B64] and got["messages"][0]["content"] == "What is in these?"
    # streamed, too
    text, _ = collect(client.chat.completions.create(model="vision", stream=True, messages=[{"role": "user", "content": [
        {"type": "text", "text": "and this?"}, {"type": "image_url", "image_url": {"url": img + "/cat.png"}}]}]))
    assert text == "You said: and this? [1 image]"
    r = post(base, {"model": "vision", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": img + "/page"}}]}]})
    assert r.status_code == 400 and "not return an image" in r.json()["error"]["message"]


def test_default_policy_refuses_loopback_images(emu, turnout, serve):
    app, url = emu
    cfg = config(url)
    del cfg["backends"]["local"]["images"]
    base = turnout(cfg)
    img = image_server(serve)
    before = len(app.state.requests)
    with pytest.raises(openai.BadRequestError) as e:
        sdk(base).chat.completions.create(model="vision", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": img + "/cat.png"}}]}])
    assert "not a public address" in e.value.body["message"] and e.value.body["code"] == "invalid_image_url"
    assert len(app.state.requests) == before


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_model_not_found_is_a_clear_404(env, stream):
    app, base = env
    with pytest.raises(openai.NotFoundError) as e:
        r = sdk(base).chat.completions.create(model="missing", messages=USER, stream=stream)
        list(r)
    msg = e.value.body["message"]
    assert "mistral:7b" in msg and "`ollama pull mistral:7b`" in msg and "'local'" in msg
    assert e.value.body["code"] == "model_not_found"


def test_model_not_found_falls_back_to_the_next_target(env):
    app, base = env
    raw = sdk(base).chat.completions.with_raw_response.create(model="missing-then-backup", messages=USER)
    assert raw.parse().choices[0].message.content == "Backup: hello there"
    assert "missing: 404" in raw.headers["x-turnout-fallbacks"]


def test_older_not_found_wording_is_recognised_too(env):
    app, base = env
    app.state.scripts.append({"status": 404, "error": 'model "llama3.2:3b" not found, try pulling it first'})
    r = post(base, {"model": "llama", "messages": USER})
    assert r.status_code == 404 and "ollama pull llama3.2:3b" in r.json()["error"]["message"]


def test_upstream_500_is_502_and_falls_back(env):
    app, base = env
    app.state.scripts.append({"status": 500, "error": "llama runner process has terminated: exit status 2"})
    r = post(base, {"model": "plain", "messages": USER})
    assert r.status_code == 502 and "llama runner process has terminated" in r.json()["error"]["message"]
    app.state.scripts.append({"status": 500, "error": "out of memory"})
    r = post(base, {"model": "local-then-backup", "messages": USER, "stream": True})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "backup-model"


def test_error_line_mid_stream_ends_with_an_error_the_sdk_raises(env):
    app, base = env
    app.state.script = {"text": "one two three four", "error_after": 2, "error_message": "CUDA error: out of memory"}
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in sdk(base).chat.completions.create(model="llama", messages=USER, stream=True):
            got.append(c)
    assert "".join(c.choices[0].delta.content or "" for c in got) == "one two "
    assert "CUDA error: out of memory" in e.value.message
    r = post(base, {"model": "llama", "messages": USER, "stream": True})
    assert "[DONE]" not in r.text and '"error"' in r.text.split("\n\n")[-2]


def test_error_line_before_any_token_falls_back(env):
    app, base = env
    app.state.scripts.append({"error_after": 0, "error_message": "model failed to load"})
    r = post(base, {"model": "local-then-backup", "messages": USER, "stream": True})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "backup-model"
    assert "local-then-backup" not in r.headers.get("x-turnout-fallbacks", "") and "plain" in r.headers["x-turnout-fallbacks"]


def test_dropped_connection_mid_stream(env):
    app, base = env
    app.state.script = {"text": "one two three four", "drop_after": 2}
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in sdk(base).chat.completions.create(model="llama", messages=USER, stream=True):
            got.append(c)
    assert len(got) == 2 and "dropped the stream" in e.value.message


def test_ollama_not_running_is_a_quick_502(turnout):
    from tests.conftest import free_port

    base = turnout(config(f"http://127.0.0.1:{free_port()}"))
    t0 = time.monotonic()
    r = post(base, {"model": "llama", "messages": USER})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert "is Ollama running (`ollama serve`)?" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 2
    r = post(base, {"model": "local-then-backup", "messages": USER, "stream": True})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "backup-model"


# --- cold starts: separate connect, first-token and idle timeouts --------------------------------


def test_a_loading_model_is_not_mistaken_for_a_dead_one(emu, turnout):
    app, url = emu
    base = turnout(config(url, timeout={"connect": 0.5, "first_token": 2, "idle": 0.2, "total": 5}))
    # loading takes longer than the idle bound, but within first_token: fine, both ways
    app.state.script = {"text": "warm now", "load_delay": 0.3, "first_token_delay": 0.1, "line_delay": 0.05}
    text, _ = collect(sdk(base).chat.completions.create(model="llama", messages=USER, stream=True))
    assert text == "warm now"
    r = sdk(base).chat.completions.create(model="llama", messages=USER)
    assert r.choices[0].message.content == "warm now"


def test_first_token_timeout(emu, turnout):
    app, url = emu
    base = turnout(config(url, timeout={"connect": 0.5, "first_token": 0.4, "idle": 5, "total": 5}))
    app.state.script = {"load_delay": 1.0}
    t0 = time.monotonic()
    r = post(base, {"model": "llama", "messages": USER, "stream": True})
    assert r.status_code == 504 and "first token" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 0.9
    r = post(base, {"model": "local-then-backup", "messages": USER, "stream": True})
    assert r.status_code == 200 and r.headers["x-turnout-model"] == "backup-model"


def test_idle_timeout_mid_stream(emu, turnout):
    app, url = emu
    base = turnout(config(url, timeout={"connect": 0.5, "first_token": 5, "idle": 0.3, "total": 5}))
    app.state.script = {"text": "one two three", "line_delay": 0.8}
    got = []
    t0 = time.monotonic()
    with pytest.raises(openai.APIError) as e:
        for c in sdk(base).chat.completions.create(model="llama", messages=USER, stream=True):
            got.append(c)
    assert len(got) == 1 and "stalled" in e.value.message and "timeout.idle" in e.value.message
    assert time.monotonic() - t0 < 0.75


def test_non_streamed_total_timeout(emu, turnout):
    app, url = emu
    base = turnout(config(url, timeout={"connect": 0.5, "first_token": 5, "idle": 5, "total": 0.4}))
    app.state.script = {"load_delay": 1.0}
    r = post(base, {"model": "llama", "messages": USER})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


# --- discovery, check-config, doctor --------------------------------------------------------------


def write_config(tmp_path: Path, url: str) -> str:
    p = tmp_path / "proxy.yaml"
    p.write_text(yaml.safe_dump(config(url)))
    return str(p)


def test_check_config_says_which_ollama_models_are_missing(emu, tmp_path, capsys):
    app, url = emu
    cli.main(["check-config", write_config(tmp_path, url)])
    out = capsys.readouterr().out
    assert "local: 2 installed" in out and "3 of 4 configured models present" in out
    assert "MISSING mistral:7b (model missing) - run `ollama pull mistral:7b`" in out
    assert "config OK" in out


def test_check_config_with_ollama_not_running_does_not_hang(tmp_path, capsys):
    from tests.conftest import free_port

    t0 = time.monotonic()
    cli.main(["check-config", write_config(tmp_path, f"http://127.0.0.1:{free_port()}")])
    out = capsys.readouterr().out
    assert "local: not reachable at http://127.0.0.1:" in out and "ollama serve" in out and "config OK" in out
    assert time.monotonic() - t0 < 3


def fake_nvidia_smi(tmp_path: Path, monkeypatch, line: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho '{line}'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_doctor_report_with_a_gpu(emu, tmp_path, capsys, monkeypatch):
    app, url = emu
    fake_nvidia_smi(tmp_path, monkeypatch, "0, NVIDIA GeForce RTX 3060, 12288, 1024, 11264")
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--config", write_config(tmp_path, url)])
    out = capsys.readouterr().out
    assert e.value.code == 1  # a configured model is missing
    assert f"Ollama backend 'local' at {url}" in out and "version:   0.12.6" in out
    assert "installed: 2 models" in out and "used by: llama, plain" in out
    assert "loaded (ollama ps): 1" in out and "100% GPU" in out
    assert "mistral:7b" in out and "MISSING - run `ollama pull mistral:7b`" in out
    assert "GPU 0: NVIDIA GeForce RTX 3060, 12288 MiB total" in out
    assert "Budget: 10.0 GB for models (12.0 GB, 2.0 GB kept for other work" in out
    assert "llama3.2:3b                  needs ~2.2 GB   fits" in out
    assert "Recommended pair: llama3.1:8b (ollama pull llama3.1:8b) + llama3.2:3b - 7.4 GB" in out
    assert app.state.paths.count("/api/version") == 1 and "/api/ps" in app.state.paths


def test_doctor_all_good_small_gpu_and_no_gpu(emu, tmp_path, capsys, monkeypatch):
    app, url = emu
    cfg = config(url)
    del cfg["models"]["missing"], cfg["routes"]["missing-then-backup"]
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(cfg))
    fake_nvidia_smi(tmp_path, monkeypatch, "0, Tiny GPU, 4096, 1024, 3072")
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--config", str(p)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "All good." in out
    assert "qwen2.5vl:7b                 needs ~6.4 GB   does NOT fit" in out
    assert "Recommended pair: qwen2.5:3b (ollama pull qwen2.5:3b) + gemma2:2b (ollama pull gemma2:2b)" in out
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--config", str(p)])
    out = capsys.readouterr().out
    assert "GPU: none found" in out and "prefer 1B-3B models" in out and "(nvidia-smi is not on PATH)" in out


def test_doctor_with_ollama_down(tmp_path, capsys):
    from tests.conftest import free_port

    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--config", write_config(tmp_path, f"http://127.0.0.1:{free_port()}")])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "NOT REACHABLE" in out and "ollama serve" in out


def test_backend_list_models_uses_api_tags(emu):
    import asyncio

    from proxy.backends import create
    from proxy.config import parse

    app, url = emu

    async def go():
        b = create(parse(config(url), {}).backends["local"])
        await b.start()
        try:
            return await b.list_models()
        finally:
            await b.aclose()

    assert asyncio.run(go()) == ["llama3.2:3b", "qwen2.5vl:7b"]


# --- translator units on the recorded Ollama responses ---------------------------------------------


def test_translator_on_recorded_responses():
    from tests.test_ollama_emulator import RECORDED
    from translators import ollama as tr

    rec = json.loads(RECORDED.read_text())
    out = tr.from_response(rec["chat_nonstream_tools"][0], "chatcmpl-1", 1, "llama3.2")
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"city": "Tokyo"}
    assert out["usage"] == {"prompt_tokens": 169, "completion_tokens": 18, "total_tokens": 187}
    out = tr.from_response(rec["chat_nonstream"][0], "chatcmpl-1", 1, "llama3.2")
    assert out["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hello! How are you today?",
                                                         "refusal": None}, "logprobs": None, "finish_reason": "stop"}
    st = tr.StreamState("chatcmpl-1", 1, "llama3.2")
    chunks = [json.loads(c) for line in rec["chat_stream_text"] for c in st.feed(line)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "The"}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert st.usage == {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}
    st = tr.StreamState("chatcmpl-1", 1, "llama3.2")
    chunks = [json.loads(c) for line in rec["chat_stream_tools"] for c in st.feed(line)]
    delta = chunks[0]["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["tool_calls"][0]["index"] == 0
    assert delta["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_doctor_without_a_config_checks_the_local_ollama(emu, tmp_path, capsys, monkeypatch):
    app, url = emu
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", url.removeprefix("http://"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"checking the Ollama at {url}" in out and "version:   0.12.6" in out
    assert "(not in config)" in out and "GPU: none found" in out
