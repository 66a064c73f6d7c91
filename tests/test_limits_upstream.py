"""Issue 13, items 4 and 10 (secrets): a broken upstream is an upstream failure that falls back,
and Turnout's key never reaches a client through an upstream's words, streamed or not.

One scripted upstream answers every provider's path (OpenAI, Anthropic, Gemini, Ollama) with a
broken body: a JSON array, HTML, a stream whose first event is not JSON (or a JSON array).
"""

from __future__ import annotations

from typing import Iterator

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from proxy.backends.base import redact
from proxy.config import parse
from proxy.server.assembly import build_app
from tests.conftest import ServerThread, collect, post, sdk

KEY = "sk-operator-SECRET-0123456789abcdef"


def broken_upstream() -> Starlette:
    async def answer(request: Request) -> Response:
        mode = request.app.state.mode
        ndjson = request.url.path.endswith("/api/chat")
        if mode == "array":
            return Response(b"[1, 2, 3]", media_type="application/json")
        if mode == "html":
            return Response(b"<html><body>502 Bad Gateway</body></html>", media_type="text/html")
        if mode == "event-html":
            body = b"<html>oops</html>\n" if ndjson else b"data: <html>oops</html>\n\n"
            return Response(body, media_type="text/event-stream")
        if mode == "event-array":
            body = b"[1]\n" if ndjson else b"data: [1]\n\n"
            return Response(body, media_type="text/event-stream")
        if mode == "key-echo":  # an OpenAI-compatible stream that fails after one chunk, quoting the key
            first = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
                     b'[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n')
            err = (b'data: {"error":{"message":"Incorrect API key provided: ' + KEY.encode()
                   + b' (' + KEY[:12].encode() + b'...' + KEY[-10:].encode() + b')","type":"invalid_request_error",'
                   b'"code":"invalid_api_key"}}\n\n')
            return StreamingResponse(iter([first, err]), media_type="text/event-stream")
        raise AssertionError(mode)

    app = Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])
    app.state.mode = "array"
    return app


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Starlette, str]]:
    up = ServerThread(broken_upstream()).start()
    url = up.url
    cfg = {"backends": {"oa": {"type": "openai", "base_url": url + "/v1", "api_key": KEY},
                        "an": {"type": "anthropic", "base_url": url, "api_key": KEY},
                        "ge": {"type": "gemini", "base_url": url, "api_key": KEY},
                        "ol": {"type": "ollama", "base_url": url},
                        "spare": {"type": "mock", "reply": "Spare: {prompt}"}},
           "models": {"oa-m": {"backend": "oa", "model": "gpt-4o-mini"},
                      "an-m": {"backend": "an", "model": "claude-sonnet-4-5"},
                      "ge-m": {"backend": "ge", "model": "gemini-2.5-flash"},
                      "ol-m": {"backend": "ol", "model": "llama3.2:3b"},
                      "spare-m": {"backend": "spare"}},
           "routes": {f"{p}-then-spare": [f"{p}-m", "spare-m"] for p in ("oa", "an", "ge", "ol")},
           "routing": {"circuit": {"failures": 1000}}}
    t = ServerThread(build_app(parse(cfg, {}))).start()
    yield up.config.app, t.url
    t.stop()
    up.stop()


@pytest.mark.parametrize("provider", ["oa", "an", "ge", "ol"])
@pytest.mark.parametrize("mode", ["array", "html", "event-html", "event-array"])
@pytest.mark.parametrize("stream", [False, True])
def test_broken_upstream_falls_back(env, provider: str, mode: str, stream: bool) -> None:
    app, base = env
    app.state.mode = mode
    if mode.startswith("event") and not stream:
        mode = "html"  # a non-streamed answer with an event-stream body is simply not JSON
    client = sdk(base)
    msgs = [{"role": "user", "content": "hello"}]
    if stream:
        raw = client.chat.completions.with_raw_response.create(model=f"{provider}-then-spare", messages=msgs,
                                                               stream=True)
        text, _ = collect(raw.parse())
    else:
        raw = client.chat.completions.with_raw_response.create(model=f"{provider}-then-spare", messages=msgs)
        text = raw.parse().choices[0].message.content
    assert text == "Spare: hello"
    assert raw.headers["x-turnout-model"] == "spare-m"
    assert raw.headers["x-turnout-fallbacks"].startswith(f"{provider}-m: 502 ")


def test_broken_upstream_alone_is_a_502_not_a_500(env) -> None:
    app, base = env
    app.state.mode = "array"
    r = post(base, {"model": "oa-m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"


def test_operator_key_echoed_mid_stream_is_masked(env) -> None:
    app, base = env
    app.state.mode = "key-echo"
    stream = sdk(base).chat.completions.create(model="oa-m", stream=True,
                                               messages=[{"role": "user", "content": "hi"}])
    got = []
    with pytest.raises(openai.APIError) as info:
        for c in stream:
            got.append(c)
    assert got and got[0].choices[0].delta.content == "Hi"
    message = str(info.value.message)
    assert "Incorrect API key provided" in message
    assert KEY not in message and KEY[:12] not in message and KEY[-10:] not in message


def test_redact_masks_whole_keys_and_fragments() -> None:
    assert redact(f"bad key {KEY}!", KEY) == "bad key ***!"
    masked = redact(f"key {KEY[:9]}...{KEY[-8:]} rejected", KEY)
    assert KEY[:9] not in masked and KEY[-8:] not in masked and masked.endswith(" rejected")
    assert redact("nothing secret here", KEY) == "nothing secret here"
    assert redact("anything", None) == "anything"
