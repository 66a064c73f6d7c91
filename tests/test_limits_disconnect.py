"""Issue 13, item 5: a client that leaves is a client that left. Non-streamed, or before a stream's
first byte, the upstream work is cancelled at once and the ledger records 499 (not a billed 200,
not a 504 after the first-token timeout)."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest


def rows(base: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = httpx.get(base + "/turnout/usage/export", timeout=10)
        out = [orjson.loads(line) for line in r.content.splitlines() if line]
        if out:
            return out
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_answer_is_a_499_and_nothing_is_billed(turnout, tmp_path, stream) -> None:
    base = turnout({"backends": {"m": {"type": "mock", "timeout": {"first_token": 30}}},
                    "models": {"paid": {"backend": "m", "price": {"input": 1, "output": 1}}},
                    "routes": {}, "usage": {"ledger": str(tmp_path / "u.db"), "flush_interval": 0.05}})
    body = {"model": "paid", "stream": stream, "messages": [{"role": "user", "content": "hi [mock:latency=3]"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/chat/completions", json=body, timeout=0.3)  # the client gives up
    row, = rows(base)
    assert (row["status"], row["error"]) == (499, "client_disconnected")
    assert row["cost_usd"] == 0 and row["completion_tokens"] == 0  # not the 3 s answer nobody received


@pytest.mark.parametrize("pace", [0.05, 0.0])  # a slow stream, and one as fast as the upstream can go
def test_a_streaming_client_that_leaves_closes_the_upstream_at_once(turnout, serve, pace) -> None:
    """Issue 13, item 2: the upstream connection is closed the moment a streaming client leaves (not
    drained, not left open). A recording upstream (plain ASGI, watching its own connection) streams
    without end in 64 KB chunks, paced or not, and notes when Turnout goes away and what it had sent."""
    import asyncio
    import threading

    closed = threading.Event()
    sent: list[tuple[float, int]] = []  # (when, bytes so far)
    frame = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
             b'"delta":{"content":"' + b"a" * 65536 + b'"},"finish_reason":null}]}\n\n')

    async def upstream(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["method"] == "GET":  # the health probe (GET /v1/models)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"object":"list","data":[]}'})
            return
        while (await receive()).get("more_body"):
            pass
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        total = 0
        for _ in range(30_000):  # bounded: 2 GB, or 25 minutes paced, at most
            if gone.is_set():
                break
            total += len(frame)
            sent.append((time.monotonic(), total))
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            await asyncio.sleep(pace)
        watcher.cancel()
        closed.set()

    up = serve(upstream)
    base = turnout({"backends": {"up": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-x"}},
                    "models": {"t": {"backend": "up", "model": "m"}}, "routes": {}, "usage": {"ledger": None}})
    body = {"model": "t", "stream": True, "messages": [{"role": "user", "content": "go on forever"}]}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        got = 0
        for part in r.iter_raw(65536):
            got += len(part)
            if got >= 4 * 65536:
                break
    left = time.monotonic()
    assert closed.wait(5), "the upstream was still connected 5 s after the client left"
    when, total = sent[-1]
    assert when - left < 1.0, f"the upstream kept streaming {when - left:.1f} s after the client left"
    assert total < 64 << 20, f"the upstream sent {total >> 20} MB for a client that read {got >> 10} KB"
