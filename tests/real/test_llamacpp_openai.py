"""Issue 9, 3a: llama.cpp's real server running SmolLM2, behind the `openai` backend (a server we
point at) and the `llamacpp` backend (a server Turnout runs itself), driven by the `openai` SDK:
stream and non-stream, usage counted, stop and max_tokens honoured."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import collect, sdk
from tests.real.conftest import LONG, MODEL, SIMPLE, Turnout, local_backend


@pytest.fixture(scope="module", params=["openai", "llamacpp"])
def local(request: pytest.FixtureRequest, llama: str) -> Iterator[str]:
    """Base URL of Turnout whose target `local` is SmolLM2 through the backend type of the param."""
    if request.param == "openai":
        backend: dict[str, Any] = {"type": "openai", "base_url": llama + "/v1"}
    else:
        request.getfixturevalue("gguf")
        backend = local_backend()
    t = Turnout({"backends": {"real": backend},
                 "models": {"local": {"backend": "real", "model": MODEL}},
                 "routes": {"auto": ["local"]}})
    try:
        yield t.url
    finally:
        t.stop()


def test_non_streaming_answer_with_usage(local):
    raw = sdk(local).chat.completions.with_raw_response.create(
        model="auto", messages=SIMPLE, max_tokens=16, temperature=0)
    r = raw.parse()
    assert raw.headers["x-turnout-model"] == "local" and raw.headers["x-turnout-route"] == "auto"
    assert r.object == "chat.completion" and r.id
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and msg.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_max_tokens_is_honoured(local):
    r = sdk(local).chat.completions.create(model="local", messages=LONG, max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.choices[0].message.content


def test_max_completion_tokens_is_honoured(local):
    r = sdk(local).chat.completions.create(model="local", messages=LONG, max_completion_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4


def test_stop_sequence_is_honoured(local):
    free = sdk(local).chat.completions.create(model="local", messages=LONG, max_tokens=24, temperature=0)
    assert " " in free.choices[0].message.content  # 24 tokens of a story have a space somewhere
    r = sdk(local).chat.completions.create(model="local", messages=LONG, max_tokens=24, temperature=0,
                                           stop=[" "])
    assert r.choices[0].finish_reason == "stop"
    assert " " not in (r.choices[0].message.content or "")
    assert r.usage.completion_tokens < 24


def test_stream_with_usage(local):
    text, chunks = collect(sdk(local).chat.completions.create(
        model="auto", messages=LONG, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert text
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 8 and last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_still_counts_usage(local, caplog):
    caplog.set_level(logging.INFO, logger="turnout.access")
    raw = httpx.post(local + "/v1/chat/completions", timeout=60, json={
        "model": "auto", "messages": LONG, "max_tokens": 6, "stream": True})
    assert raw.status_code == 200 and raw.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw.text  # the client did not ask for it ...
    rid = raw.headers["x-request-id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "turnout.access" and rid in r.getMessage()]
    assert len(lines) == 1 and "status=200" in lines[0]
    tokens = lines[0].split("tokens=")[1].split()[0]  # ... but Turnout counted it
    prompt, completion = map(int, tokens.split("/"))
    assert prompt > 0 and completion == 6


def test_stop_in_a_stream(local):
    text, chunks = collect(sdk(local).chat.completions.create(
        model="local", messages=LONG, max_tokens=24, temperature=0, stop=[" "], stream=True))
    assert " " not in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_models_lists_the_local_target(local):
    ids = {m.id for m in sdk(local).models.list()}
    assert {"auto", "local"} <= ids
