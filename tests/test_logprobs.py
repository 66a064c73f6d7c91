"""Issue 18 item 9: `logprobs` / `top_logprobs` the same everywhere. Passed through to an
OpenAI-compatible upstream (with its `system_fingerprint`), translated for Gemini
(`generationConfig.responseLogprobs` / `logprobs` → `logprobsResult`, proven with google-genai
against the emulator), a target that cannot serve them skipped with its reason, and a clear 400
(`unsupported_parameter`, param logprobs) when no target of the chain can."""

from __future__ import annotations

import ollama
import openai
import orjson
import pytest
from google import genai
from google.genai import types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import collect, post, sdk
from tests.emulators.gemini import build_gemini_emulator
from tests.emulators.ollama import build_ollama_emulator

KEY = "gemini-test-key"
USER = [{"role": "user", "content": "Say two words"}]
LP = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                   "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}], "refusal": None}


def openai_upstream() -> Starlette:
    """An OpenAI-compatible upstream that answers with logprobs and a system_fingerprint."""
    seen: list[dict] = []

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        seen.append(body)
        base = {"id": "chatcmpl-up", "created": 1, "model": body["model"], "system_fingerprint": "fp_up_123"}
        if not body.get("stream"):
            return Response(orjson.dumps({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "logprobs": LP,
                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}),
                media_type="application/json")
        chunks = [{**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "logprobs": LP, "finish_reason": None}]},
                  {**base, "object": "chat.completion.chunk", "choices": [
                      {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
                  {**base, "object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}]
        data = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        return Response(data, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.seen = seen
    return app


@pytest.fixture
def env(serve, turnout):
    gem = build_gemini_emulator(KEY)
    gem_url = serve(gem)
    up = openai_upstream()
    up_url = serve(up)
    oll = build_ollama_emulator(models=["llama3.2:3b"])
    oll_url = oll.state.url = serve(oll)
    url = turnout({
        "backends": {"gem": {"type": "gemini", "base_url": gem_url, "api_key": KEY},
                     "oll": {"type": "ollama", "base_url": oll_url},
                     "up": {"type": "openai", "base_url": up_url + "/v1"},
                     "claude": {"type": "anthropic", "base_url": "http://127.0.0.1:9", "api_key": "k"},
                     "m": {"type": "mock"}},
        "models": {"flash": {"backend": "gem", "model": "gemini-2.5-flash"},
                   "llama": {"backend": "oll", "model": "llama3.2:3b"},
                   "gpt": {"backend": "up", "model": "gpt-4o-mini"},
                   "sonnet": {"backend": "claude", "model": "claude-sonnet-4-5"},
                   "local": {"backend": "m", "model": "local"},
                   "flash-nolp": {"backend": "gem", "model": "gemini-2.0-flash", "logprobs": False}},
        "routes": {"mixed": ["sonnet", "local", "flash"], "none": ["sonnet", "local", "flash-nolp"]},
    })
    return gem, up, url, oll


def test_gemini_emulator_logprobs_with_google_genai():
    """The emulator's logprobsResult reads as google-genai's own types."""
    from tests.conftest import ServerThread
    server = ServerThread(build_gemini_emulator(KEY)).start()
    try:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.url, api_version="v1beta"))
        r = client.models.generate_content(model="gemini-2.5-flash", contents="Say two words",
                                           config=types.GenerateContentConfig(response_logprobs=True, logprobs=2))
        c = r.candidates[0]
        assert "".join(x.token for x in c.logprobs_result.chosen_candidates) == r.text
        assert all(len(t.candidates) == 2 for t in c.logprobs_result.top_candidates)
        assert c.avg_logprobs < 0
    finally:
        server.stop()


def test_gemini_logprobs_translated(env):
    gem, _, url, _ = env
    client = sdk(url)
    r = client.chat.completions.create(model="flash", messages=USER, logprobs=True, top_logprobs=2)
    sent = gem.state.requests[-1]["body"]["generationConfig"]
    assert sent["responseLogprobs"] is True and sent["logprobs"] == 2
    lp = r.choices[0].logprobs
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in lp.content)
    assert lp.content[0].logprob == -0.25
    text, chunks = collect(client.chat.completions.create(model="flash", messages=USER, logprobs=True, stream=True))
    assert "logprobs" not in gem.state.requests[-1]["body"]["generationConfig"]
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in streamed) == text and text
    # without logprobs asked, none come back
    plain = client.chat.completions.create(model="flash", messages=USER)
    assert plain.choices[0].logprobs is None and "responseLogprobs" not in (
        gem.state.requests[-1]["body"].get("generationConfig") or {})


def test_openai_compatible_passes_logprobs_and_system_fingerprint(env):
    _, up, url, _ = env
    client = sdk(url)
    r = client.chat.completions.create(model="gpt", messages=USER, logprobs=True, top_logprobs=1)
    assert up.state.seen[-1]["logprobs"] is True and up.state.seen[-1]["top_logprobs"] == 1
    assert r.choices[0].logprobs.content[0].token == "Hi" and r.system_fingerprint == "fp_up_123"
    _, chunks = collect(client.chat.completions.create(model="gpt", messages=USER, logprobs=True, stream=True))
    assert chunks[0].choices[0].logprobs.content[0].logprob == -0.1
    assert all(c.system_fingerprint == "fp_up_123" for c in chunks)


def test_a_target_without_logprobs_is_skipped_with_its_reason(env):
    gem, _, url, _ = env
    raw = sdk(url).chat.completions.with_raw_response.create(model="mixed", messages=USER, logprobs=True)
    assert raw.headers["x-turnout-model"] == "flash" and raw.parse().choices[0].logprobs.content
    fallbacks = raw.headers["x-turnout-fallbacks"]
    assert "sonnet: skipped: no logprobs" in fallbacks and "local: skipped: no logprobs" in fallbacks
    # without logprobs the chain's first target that answers is used (the mock; sonnet is unreachable)
    raw = sdk(url).chat.completions.with_raw_response.create(model="mixed", messages=USER)
    assert raw.headers["x-turnout-model"] == "local"


@pytest.mark.parametrize("model", ["none", "sonnet", "local", "flash-nolp"])
def test_no_target_with_logprobs_is_a_clear_400(env, model):
    _, _, url, _ = env
    with pytest.raises(openai.BadRequestError) as e:
        sdk(url).chat.completions.create(model=model, messages=USER, logprobs=True, top_logprobs=3)
    body = e.value.body
    assert body["param"] == "logprobs" and body["code"] == "unsupported_parameter"
    assert "no logprobs" in body["message"]


def test_top_logprobs_checked_as_openai(env):
    _, _, url, _ = env
    r = post(url, {"model": "flash", "messages": USER, "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = post(url, {"model": "flash", "messages": USER, "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["code"] == "integer_above_max_value"
    r = post(url, {"model": "flash", "messages": USER, "logprobs": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_ollama_logprobs_translated(env):
    *_, url, oll = env
    client = sdk(url)
    # the emulator's answer reads as the ollama SDK's own types
    native = ollama.Client(host=oll.state.url).chat(model="llama3.2:3b", messages=USER, logprobs=True, top_logprobs=2)
    assert "".join(e.token for e in native.logprobs) == native.message.content
    assert all(len(e.top_logprobs) == 2 for e in native.logprobs)
    r = client.chat.completions.create(model="llama", messages=USER, logprobs=True, top_logprobs=2)
    sent = oll.state.requests[-1]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    lp = r.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == r.choices[0].message.content and lp[0].logprob == -0.5
    assert [t.token for t in lp[0].top_logprobs] == [lp[0].token, lp[0].token + "~1"]
    text, chunks = collect(client.chat.completions.create(model="llama", messages=USER, logprobs=True, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in streamed) == text and text
    plain = client.chat.completions.create(model="llama", messages=USER)
    assert plain.choices[0].logprobs is None and "logprobs" not in oll.state.requests[-1]
