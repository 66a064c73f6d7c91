"""Issue 9, 3c: routing with a real model at the end of the chain. A route whose first target fails
(a real HTTP upstream answering 500) falls back to SmolLM2 on llama.cpp's server; a simple prompt on
`auto`, whose chain starts with the local target, is answered by it."""

from __future__ import annotations

import pytest

from proxy.mock.server import build_mock_upstream
from tests.conftest import collect, sdk
from tests.real.conftest import MODEL, SIMPLE, Turnout


@pytest.fixture(scope="module")
def gateway(llama: str):
    from tests.conftest import ServerThread

    broken = ServerThread(build_mock_upstream({"fail": {"status": 500, "message": "emulated outage"}})).start()
    t = Turnout({
        "backends": {
            "broken": {"type": "openai", "base_url": broken.url + "/v1"},
            "builtin-broken": {"type": "mock", "fail": {"status": 500}},
            "local": {"type": "openai", "base_url": llama + "/v1"},
            "cloud": {"type": "mock", "reply": "cloud says {prompt}"},
        },
        "models": {
            "broken-model": {"backend": "broken", "model": "gpt-4o"},
            "builtin-broken-model": {"backend": "builtin-broken", "model": "mock"},
            "local-model": {"backend": "local", "model": MODEL},
            "cloud-model": {"backend": "cloud", "model": "mock-cloud"},
        },
        "routes": {
            "auto": ["local-model", "cloud-model"],
            "resilient": ["broken-model", "local-model", "cloud-model"],
            "resilient-builtin": ["builtin-broken-model", "local-model"],
        },
    })
    try:
        yield t.url
    finally:
        t.stop()
        broken.stop()


@pytest.mark.parametrize("route, failed", [("resilient", "broken-model"),
                                           ("resilient-builtin", "builtin-broken-model")])
def test_first_target_fails_with_500_and_the_real_model_answers(gateway, route, failed):
    raw = sdk(gateway).chat.completions.with_raw_response.create(model=route, messages=SIMPLE, max_tokens=8)
    r = raw.parse()
    assert raw.headers["x-turnout-route"] == route
    assert raw.headers["x-turnout-model"] == "local-model"
    assert raw.headers["x-turnout-fallbacks"].startswith(failed) and "502" in raw.headers["x-turnout-fallbacks"]
    assert r.model == MODEL and r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8


def test_streamed_fallback_to_the_real_model(gateway):
    with sdk(gateway).chat.completions.with_streaming_response.create(
            model="resilient", messages=SIMPLE, max_tokens=8, stream=True,
            stream_options={"include_usage": True}) as raw:
        assert raw.headers["x-turnout-model"] == "local-model"
        assert "broken-model" in raw.headers["x-turnout-fallbacks"]
        text, chunks = collect(raw.parse())
    assert text and chunks[-1].usage.completion_tokens > 0
    assert {c.model for c in chunks} == {MODEL}


def test_simple_prompt_on_auto_is_answered_by_the_local_model(gateway):
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=12)
    assert raw.headers["x-turnout-route"] == "auto"
    assert raw.headers["x-turnout-model"] == "local-model"
    assert "x-turnout-fallbacks" not in raw.headers
    r = raw.parse()
    assert r.model == MODEL and r.choices[0].message.content and r.usage.completion_tokens > 0
