"""Issue 13, items 3 and 13: bad client input is a 4xx in OpenAI's error shape, never a 5xx.

A seeded fuzz of mutated chat bodies against a real Turnout whose targets are the built-in mock
and the Anthropic, Gemini and Ollama emulators (so every translator sees the bodies), plus one
test per shape the fuzzer once turned into a 500, and the bounded mock directives.
"""

from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest

from proxy.config import parse
from proxy.server.assembly import build_app
from proxy.web.responses import MAX_DEPTH
from tests.conftest import ServerThread
from tests.emulators.anthropic import build_app as build_anthropic
from tests.emulators.gemini import build_gemini_emulator
from tests.emulators.ollama import build_ollama_emulator
from tests.fuzz import bodies

MODELS = ["mock", "claude", "gem", "oll"]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    servers = [ServerThread(build_anthropic("k")).start(), ServerThread(build_gemini_emulator("k")).start(),
               ServerThread(build_ollama_emulator()).start()]
    a, g, o = (s.url for s in servers)
    cfg = {"backends": {"m": {"type": "mock"}, "a": {"type": "anthropic", "base_url": a, "api_key": "k"},
                        "g": {"type": "gemini", "base_url": g, "api_key": "k"},
                        "o": {"type": "ollama", "base_url": o, "images": {"allow_private": True}}},
           "models": {"mock": {"backend": "m", "vision": True},
                      "claude": {"backend": "a", "model": "claude-sonnet-4-5", "vision": True},
                      "gem": {"backend": "g", "model": "gemini-2.5-flash", "vision": True},
                      "oll": {"backend": "o", "model": "llama3.2:3b", "vision": True}},
           "routes": {}}
    servers.append(ServerThread(build_app(parse(cfg, {}))).start())
    yield servers[-1].url
    for s in reversed(servers):
        s.stop()


def assert_openai_error(r: httpx.Response, status: int | None = None) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["type"]
    return err


def test_fuzzed_bodies_never_get_a_5xx(base: str) -> None:
    seen: dict[int, int] = {}
    with httpx.Client(base_url=base, timeout=30, headers={"content-type": "application/json"}) as c:
        for body in bodies(seed=13, n=1300, models=MODELS):
            r = c.post("/v1/chat/completions", content=body)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            if r.status_code != 200:
                assert_openai_error(r)
    assert sum(seen.values()) >= 1000
    assert seen.get(200, 0) > 50 and seen.get(400, 0) > 300  # the fuzz reached both sides


def post(base: str, body: dict | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(base + "/v1/chat/completions", content=content,
                      headers={"content-type": "application/json"}, timeout=30)


HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def _nested(depth: int) -> object:
    v: object = "x"
    for _ in range(depth - 1):
        v = [v]
    return v


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": {"function": "x"}, "tools": TOOLS}, "tool_choice"),
    ({"metadata": {"turnout_target": {"a": 1}}}, "metadata.turnout_target"),
    ({"metadata": {"turnout_target": ["a"]}}, "metadata.turnout_target"),
    ({"reasoning_effort": 5}, "reasoning_effort"),
    ({"reasoning_effort": {"x": 1}}, "reasoning_effort"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}]},
     "messages[0].content[0].input_audio"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": []}]}]}, "messages[0].content[0].file"),
    ({"messages": [{"role": "assistant", "content": None, "function_call": "x"}]}, "messages[0].function_call"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://[::1"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": "x"}}}]},
     "tools[0].function.parameters.properties"),
])
def test_shapes_that_were_500s_are_400s(base: str, model: str, extra: dict, param: str) -> None:
    err = assert_openai_error(post(base, {"model": model, "messages": HI, **extra}), 400)
    assert err["param"] == param


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 254, 600, 1022, 5000])
def test_deep_json_is_a_documented_400(base: str, depth: int) -> None:
    deep_content = {"model": "mock", "messages": [{"role": "user", "content": _nested(depth)}]}
    for body in (deep_content, {"model": "claude", "messages": HI, "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": _nested(depth)}}}}]}):
        raw = json.dumps(body).encode() if depth < 900 else _dump_deep(body)
        err = assert_openai_error(post(base, raw), 400)
        assert err["code"] in ("nesting_too_deep", "invalid_json") and (str(MAX_DEPTH) in err["message"]
                                                                         or err["code"] == "invalid_json")


def _dump_deep(body: dict) -> bytes:
    """json.dumps recurses too; write the nested value by hand."""
    marker = "__DEEP__"

    def swap(v: object) -> object:
        depth = 0
        while isinstance(v, list):
            v, depth = v[0], depth + 1
        return marker + str(depth)

    def walk(v: object) -> object:
        if isinstance(v, list) and v and isinstance(v[0], list):
            return swap(v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    text = json.dumps(walk(body))
    start = text.index('"' + marker)
    end = text.index('"', start + 1) + 1
    depth = int(text[start + 1 + len(marker):end - 1])
    return (text[:start] + "[" * depth + '"x"' + "]" * depth + text[end:]).encode()


def test_nesting_at_the_limit_is_served(base: str) -> None:
    body = {"model": "mock", "messages": HI, "metadata": {"task": "chat"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}}}]}
    r = post(base, body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("directive, name", [
    ("chunks=99999999999", "chunks"), ("latency=1e9", "latency"), ("status=abc", "status"),
    ("status=99999", "status"), ("drop=-5", "drop"), ("retry_after=nan", "retry_after"),
    ("chunk_delay=inf", "chunk_delay"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_mock_directives_are_bounded(base: str, directive: str, name: str, stream: bool) -> None:
    r = post(base, {"model": "mock", "stream": stream,
                    "messages": [{"role": "user", "content": f"hi [mock:{directive}]"}]})
    err = assert_openai_error(r, 400)
    assert err["code"] == "invalid_mock_directive" and f"'{name}=" in err["message"]


def test_mock_directives_within_bounds_still_work(base: str) -> None:
    r = post(base, {"model": "mock", "messages": [{"role": "user", "content": "hi [mock:chunks=50]"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].count(" more") > 40
