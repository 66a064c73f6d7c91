"""Issue 13, item 6: a non-streamed call honours `timeout.first_token` — the time to the upstream's
response headers — and falls back then, instead of waiting for `total` (600 s by default)."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import post


def slow_headers() -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        await asyncio.sleep(1.5)  # the answer (and so its headers) takes 1.5 s
        return JSONResponse({"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_non_streamed_call_falls_back_after_first_token(serve, turnout) -> None:
    up = serve(slow_headers())
    base = turnout({
        "backends": {"slow": {"type": "openai", "base_url": up + "/v1", "api_key": "k", "retry": {"attempts": 1},
                              "timeout": {"connect": 2, "first_token": 0.3, "idle": 60, "total": 600}},
                     "spare": {"type": "mock", "reply": "Spare: {prompt}"}},
        "models": {"slow-m": {"backend": "slow"}, "spare-m": {"backend": "spare"}},
        "routes": {"r": ["slow-m", "spare-m"]},
    })
    r = post(base, {"model": "r", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Spare: hi"
    assert r.headers["x-turnout-fallbacks"] == "slow-m: 504 upstream_timeout"


def test_a_slow_answer_within_first_token_is_kept(serve, turnout) -> None:
    up = serve(slow_headers())
    base = turnout({
        "backends": {"slow": {"type": "openai", "base_url": up + "/v1", "api_key": "k",
                              "timeout": {"first_token": 10, "total": 20}},
                     "spare": {"type": "mock"}},
        "models": {"slow-m": {"backend": "slow"}, "spare-m": {"backend": "spare"}},
        "routes": {"r": ["slow-m", "spare-m"]},
    })
    r = post(base, {"model": "r", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "slow"
