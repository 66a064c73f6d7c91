"""CPU per Claude request: the official `anthropic` SDK's async client vs Anthropic's wire format
spoken directly over a pooled client. Not part of the tests; figures and decision in docs/anthropic.md.

Every path does the backend's whole job for one OpenAI request — translate it, send it, read the
answer (or every stream event), translate it back to OpenAI JSON bytes — against the Anthropic
emulator running in a separate process, so only this process's CPU (time.process_time) counts.

- pool:  Turnout's pool (`proxy.http.HTTPClient`, aiohttp under httpx's API), what the backend uses
- httpx: a plain pooled `httpx.AsyncClient`
- sdk:   `anthropic.AsyncAnthropic(max_retries=0)` — `messages.create(...)` returning a pydantic
         `Message` (dumped to a dict for the translator), and `messages.create(stream=True)` whose
         typed events are dumped for the stream translator

`--proxy` also runs Turnout itself (a `type: anthropic` backend pointed at the emulator) as a
process and reports its CPU per request from /proc: the whole proxy's cost, HTTP in and out.

    /work/venv/bin/python benchmarks/anthropic_sdk_vs_httpx.py [--requests 2000] [--proxy]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import httpx
import orjson

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from proxy.backends.base import sse_data  # noqa: E402
from translators import anthropic as tr  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench import cpu_seconds, free_port, wait_up  # noqa: E402

KEY = "sk-ant-bench"
MODEL = "claude-sonnet-4-6"
BODY = {
    "model": "sonnet",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France? Answer in one sentence, please."},
    ],
    "temperature": 0.2,
    "max_tokens": 200,
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
}
STREAM_BODY = {**BODY, "stream": True}
HEADERS = {"x-api-key": KEY, "anthropic-version": tr.API_VERSION}
JSON = {"content-type": "application/json"}

# a 20-word answer streamed one word per event (~26 events)
EMULATOR = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from tests.emulators.anthropic import Reply, build_app
app = build_app({key!r})
app.state.default = Reply(text=" ".join(["word"] * 20))
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False, http="httptools",
            loop="uvloop")
"""


async def measure(n: int, one) -> float:
    for _ in range(50):
        await one()
    t0 = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - t0) / n


def _complete_one(post):
    async def one() -> None:
        req = orjson.dumps(tr.to_request(BODY, MODEL, stream=False))
        r = await post("/v1/messages", content=req, headers=JSON)
        out = orjson.dumps(tr.from_response(orjson.loads(r.content), "chatcmpl-x", 0, None))
        assert b'"content":"word' in out
    return one


def _stream_one(client):
    async def one() -> None:
        req = orjson.dumps(tr.to_request(STREAM_BODY, MODEL, stream=True))
        state = tr.StreamState("chatcmpl-x", 0, MODEL)
        n = 0
        async with client.stream("POST", "/v1/messages", content=req, headers=JSON) as r:
            async for payload in sse_data(r):
                data = orjson.loads(payload)
                for c in state.feed(data["type"], data):
                    orjson.dumps(c)
                    n += 1
        assert state.done and n > 20
    return one


async def pool_path(n: int, url: str) -> tuple[float, float]:
    from proxy.http import HTTPClient

    client = HTTPClient(url, headers=HEADERS)
    try:
        return await measure(n, _complete_one(client.post)), await measure(n, _stream_one(client))
    finally:
        await client.aclose()


async def httpx_path(n: int, url: str) -> tuple[float, float]:
    client = httpx.AsyncClient(base_url=url, headers=HEADERS, trust_env=False,
                               limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))
    try:
        return await measure(n, _complete_one(client.post)), await measure(n, _stream_one(client))
    finally:
        await client.aclose()


async def sdk_path(n: int, url: str) -> tuple[float, float]:
    import anthropic

    # SDK 2.x sends anthropic-version 2026-10-21, which rejects temperature/top_p, and has no such
    # parameters: pin 2023-06-01 as the backend does and pass sampling through extra_body
    client = anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0,
                                      default_headers={"anthropic-version": tr.API_VERSION})

    def kwargs(req: dict) -> dict:
        extra = {k: req.pop(k) for k in ("temperature", "top_p") if k in req}
        return {**req, "extra_body": extra} if extra else req

    async def complete() -> None:
        req = tr.to_request(BODY, MODEL, stream=False)
        msg = await client.messages.create(**kwargs(req))
        out = orjson.dumps(tr.from_response(msg.to_dict(), "chatcmpl-x", 0, None))
        assert b'"content":"word' in out

    async def stream() -> None:
        req = tr.to_request(STREAM_BODY, MODEL, stream=True)
        state = tr.StreamState("chatcmpl-x", 0, MODEL)
        n = 0
        async for event in await client.messages.create(**kwargs(req)):
            for c in state.feed(event.type, event.to_dict()):
                orjson.dumps(c)
                n += 1
        assert state.done and n > 20

    try:
        return await measure(n, complete), await measure(n, stream)
    finally:
        await client.close()


def translation_only(n: int) -> float:
    """The translator alone (request out, canned answer back): Turnout's own share of the path."""
    answer = orjson.dumps({"id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
                           "content": [{"type": "text", "text": "Paris is the capital of France."}],
                           "stop_reason": "end_turn", "stop_sequence": None,
                           "usage": {"input_tokens": 30, "output_tokens": 8}})
    t0 = time.process_time()
    for _ in range(n):
        orjson.dumps(tr.to_request(BODY, MODEL, stream=False))
        orjson.dumps(tr.from_response(orjson.loads(answer), "chatcmpl-x", 0, None))
    return (time.process_time() - t0) / n


def proxy_cpu(n: int, emulator: str) -> tuple[float, float]:
    """Turnout's own CPU per request (from /proc), non-streamed and streamed, one client at a time."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"server: {{host: 127.0.0.1, port: {port}, log_level: warning}}\n"
                f"backends: {{claude: {{type: anthropic, base_url: '{emulator}', api_key: {KEY}}}}}\n"
                f"models: {{sonnet: {{backend: claude, model: {MODEL}}}}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", f.name], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/health")
        out = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for body in (BODY, STREAM_BODY):
                for _ in range(50):
                    c.post("/v1/chat/completions", json=body).read()
                t0 = cpu_seconds(proc.pid)
                for _ in range(n):
                    r = c.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                out.append((cpu_seconds(proc.pid) - t0) / n)
        return out[0], out[1]
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(f.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--proxy", action="store_true", help="also measure a whole Turnout process")
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", EMULATOR.format(root=ROOT, key=KEY, port=port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/v1/models")
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        n = args.requests
        p = runner(pool_path(n, url))
        h = runner(httpx_path(n, url))
        s = runner(sdk_path(n, url))
        t = translation_only(20000)
        print(f"requests={n}, one at a time; stream = 20 text deltas (~26 events)")
        print(f"translator alone (non-streamed)     : {t * 1000:.3f} ms CPU")
        print(f"{'':37s}  non-streamed   streamed")
        print(f"Turnout pool (aiohttp) + translator : {p[0] * 1000:8.3f} ms  {p[1] * 1000:8.3f} ms")
        print(f"pooled httpx + translator           : {h[0] * 1000:8.3f} ms  {h[1] * 1000:8.3f} ms")
        print(f"anthropic SDK (AsyncAnthropic)      : {s[0] * 1000:8.3f} ms  {s[1] * 1000:8.3f} ms")
        print(f"SDK / Turnout pool                  : {s[0] / p[0]:8.1f}x    {s[1] / p[1]:8.1f}x")
        if args.proxy:
            c, st = proxy_cpu(min(n, 2000), url)
            print(f"whole Turnout process (anthropic)   : {c * 1000:8.3f} ms  {st * 1000:8.3f} ms")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
