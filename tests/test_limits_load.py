"""Issue 13, items 1 and 2: nothing client-sized stalls the event loop; memory per stream is bounded.

Turnout runs as a real `turnout serve` subprocess (so its RSS can be read from /proc and a crash
is visible); a test-local OpenAI-compatible upstream streams fast, large, whitespace-free chunks
with no usage (so the ledger has to estimate from what was sent).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CHUNK_CONTENT = 64 * 1024


def fast_upstream() -> Starlette:
    """Streams `size=N` bytes of content (from the prompt) in 64 KB whitespace-free chunks, no usage."""

    async def chat(request: Request) -> StreamingResponse:
        body = json.loads(await request.body())
        size = int(body["messages"][-1]["content"].split("size=")[1].split()[0])
        head = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"'
        tail = b'"},"finish_reason":null}]}\n\n'
        frame = head + b"a" * CHUNK_CONTENT + tail

        async def gen() -> Iterator[bytes]:
            sent = 0
            while sent < size:
                yield frame
                sent += CHUNK_CONTENT
            yield (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
                   b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')

        return StreamingResponse(gen(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Turnout:
    def __init__(self, cfg: dict[str, Any], tmp: Path) -> None:
        path = tmp / "turnout.json"  # JSON is YAML
        path.write_text(json.dumps(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port",
                                      str(self.port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(tmp / "turnout.log", "wb"))
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "turnout did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def turnout_proc(serve, tmp_path) -> Iterator[Turnout]:
    up = serve(fast_upstream())
    cfg = {"server": {"log_level": "warning"},
           "usage": {"ledger": str(tmp_path / "usage.sqlite")},
           "backends": {"up": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-x",
                               "timeout": {"first_token": 30, "idle": 30, "total": 600}},
                        "m": {"type": "mock"}},
           "models": {"big": {"backend": "up", "model": "m", "price": {"input": 1, "output": 1}},
                      "small-window": {"backend": "m", "context_window": 128000}},
           "routes": {}}
    t = Turnout(cfg, tmp_path)
    yield t
    t.stop()


def _stream(url: str, size: int, leave_after: int | None = None) -> int:
    got = 0
    body = {"model": "big", "stream": True, "messages": [{"role": "user", "content": f"size={size}"}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for part in r.iter_raw(1 << 20):
            got += len(part)
            if leave_after is not None and got >= leave_after:
                break
    return got


def test_a_1gb_stream_keeps_memory_flat_and_survives_clients_leaving(turnout_proc: Turnout) -> None:
    pid = turnout_proc.proc.pid
    _stream(turnout_proc.url, 8 << 20)  # warm up: pools, first allocations
    base = rss_kb(pid)
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.05)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        got = _stream(turnout_proc.url, 1 << 30)
        rng = random.Random(2)
        for _ in range(4):  # clients leaving at random points of long streams
            _stream(turnout_proc.url, 1 << 30, leave_after=rng.randrange(1, 32 << 20))
    finally:
        done.set()
        w.join()
    assert got > 1 << 30
    assert turnout_proc.proc.poll() is None
    assert httpx.get(turnout_proc.url + "/health", timeout=5).status_code == 200
    growth_mb = (peak[0] - base) / 1024
    assert growth_mb < 50, f"RSS grew {growth_mb:.0f} MB"


def test_a_huge_whitespace_free_prompt_does_not_stall_health(turnout_proc: Turnout) -> None:
    url = turnout_proc.url
    prompt = "a" * (15 << 20)
    results: list[int] = []

    def big() -> None:
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "small-window", "max_tokens": 5, "messages": [{"role": "user", "content": prompt}]})
        results.append(r.status_code)

    with httpx.Client(base_url=url, timeout=30) as c:
        c.get("/health")
        worst = 0.0
        for _ in range(3):
            t = threading.Thread(target=big)
            t.start()
            deadline = time.monotonic() + 30
            while t.is_alive() and time.monotonic() < deadline:
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                worst = max(worst, time.perf_counter() - t0)
                time.sleep(0.005)
            t.join()
    assert len(results) == 3 and all(s in (200, 400, 413, 503) for s in results), results
    assert worst < 1.0, f"/health took {worst * 1000:.0f} ms while a 15 MB prompt was handled"


def test_a_20mb_answer_without_usage_is_counted_from_a_bounded_sample(turnout, serve, tmp_path, monkeypatch) -> None:
    """The ledger estimates a big non-streamed answer that came without usage from a bounded sample of
    its text: the tokenizer and the JSON parser never see the whole 20 MB on the event loop (before:
    the answer was kept whole, parsed again and handed to the tokenizer)."""
    from proxy.usage import ledger, tokens

    size = 20 << 20
    answer = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "a" * size}, "finish_reason": "stop"}]}).encode()

    async def chat(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    up = serve(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    seen: list[int] = []
    count, sent_text = tokens.count, ledger.sent_text
    monkeypatch.setattr(tokens, "count", lambda text: seen.append(len(text)) or count(text))
    monkeypatch.setattr(ledger, "sent_text", lambda payloads: sent_text(p for p in payloads if not seen.append(len(p))))
    base = turnout({"backends": {"up": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-x"}},
                    "models": {"big": {"backend": "up", "model": "m", "price": {"input": 1, "output": 1}}},
                    "routes": {}, "usage": {"ledger": str(tmp_path / "u.db"), "flush_interval": 0.05}})
    r = httpx.post(base + "/v1/chat/completions", timeout=60,
                   json={"model": "big", "messages": [{"role": "user", "content": "a long one"}]})
    assert r.status_code == 200 and len(r.json()["choices"][0]["message"]["content"]) == size
    assert httpx.get(base + "/health", timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    row: dict[str, Any] = {}
    while not row and time.monotonic() < deadline:
        lines = httpx.get(base + "/turnout/usage/export", timeout=10).content.splitlines()
        row = json.loads(lines[0]) if lines else {}
        time.sleep(0.05)
    assert row["status"] == 200 and row["estimated"] in (1, True)
    expected = count("a" * size)
    assert abs(row["completion_tokens"] - expected) <= expected * 0.05, (row["completion_tokens"], expected)
    assert seen and max(seen) <= 512 * 1024, f"the ledger handled {max(seen)} bytes of the answer at once"


def test_routing_explanations_say_when_prompt_tokens_are_estimated(turnout) -> None:
    """Texts past `tokens.EXACT_CHARS` are counted from samples: the dry run says so."""
    base = turnout({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}, "routes": {}})
    got = {}
    for name, text in (("short", "hello there"), ("long", "word " * 40_000)):
        r = httpx.post(base + "/turnout/route", timeout=30, json={"model": "t", "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
        got[name] = r.json()["features"]
    assert got["short"]["prompt_tokens_estimated"] is False and got["long"]["prompt_tokens_estimated"] is True
    assert got["long"]["prompt_tokens"] > 30_000
