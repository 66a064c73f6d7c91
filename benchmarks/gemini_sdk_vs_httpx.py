"""CPU per non-streamed Gemini request: the google-genai SDK's async client vs direct pooled calls.

Three clients: Turnout's own pool (`proxy.http.HTTPClient`, aiohttp under httpx's API — what the
backend uses), a plain pooled `httpx.AsyncClient`, and the SDK (`client.aio`, which itself runs on
aiohttp when it is installed, else httpx). Each path does the whole backend job for one OpenAI request — translate it, send it, parse the
answer, translate it back — against the Gemini emulator running in a separate process (so its
CPU is not counted). CPU time of this process (time.process_time) is divided by the request
count; requests run sequentially with `--concurrency 1`, or in waves with a higher value.

    /work/venv/bin/python benchmarks/gemini_sdk_vs_httpx.py [--requests 2000] [--concurrency 1]

Not part of the tests. Figures and the decision are in docs/gemini.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx
import orjson

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from translators import gemini as tr  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench import cpu_seconds, free_port, wait_up  # noqa: E402

KEY = "gemini-test-key"
MODEL = "gemini-2.5-flash"
BODY = {
    "model": "flash",
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

EMULATOR = """
import uvicorn, sys
sys.path.insert(0, {root!r})
from tests.emulators.gemini import build_gemini_emulator
uvicorn.run(build_gemini_emulator({key!r}), host="127.0.0.1", port={port}, log_level="warning",
            access_log=False, http="httptools", loop="uvloop")
"""


async def httpx_path(n: int, conc: int, url: str) -> float:
    client = httpx.AsyncClient(base_url=url, headers={"x-goog-api-key": KEY},
                               limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
                               trust_env=False)
    path = f"/v1beta/models/{MODEL}:generateContent"

    async def one() -> None:
        req = orjson.dumps(tr.to_request(BODY, MODEL))
        r = await client.post(path, content=req, headers={"content-type": "application/json"})
        out = tr.from_response(orjson.loads(r.content), "chatcmpl-x", 0, MODEL)
        assert out["choices"][0]["message"]["content"]

    for _ in range(20):
        await one()
    t0 = time.process_time()
    for _ in range(n // conc):
        await asyncio.gather(*(one() for _ in range(conc)))
    cpu = time.process_time() - t0
    await client.aclose()
    return cpu / (n // conc * conc)


async def pool_path(n: int, conc: int, url: str) -> float:
    from proxy.http import HTTPClient

    client = HTTPClient(url, headers={"x-goog-api-key": KEY})
    path = f"/v1beta/models/{MODEL}:generateContent"

    async def one() -> None:
        req = orjson.dumps(tr.to_request(BODY, MODEL))
        r = await client.post(path, content=req, headers={"content-type": "application/json"})
        out = tr.from_response(orjson.loads(r.content), "chatcmpl-x", 0, MODEL)
        assert out["choices"][0]["message"]["content"]

    for _ in range(20):
        await one()
    t0 = time.process_time()
    for _ in range(n // conc):
        await asyncio.gather(*(one() for _ in range(conc)))
    cpu = time.process_time() - t0
    await client.aclose()
    return cpu / (n // conc * conc)


async def sdk_path(n: int, conc: int, url: str) -> float:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=url, api_version="v1beta"))

    async def one() -> None:
        req = tr.to_request(BODY, MODEL)
        g = req.get("generationConfig", {})
        config = types.GenerateContentConfig(
            system_instruction=req["systemInstruction"], tools=req.get("tools"),
            temperature=g.get("temperature"), max_output_tokens=g.get("maxOutputTokens"),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
        resp = await client.aio.models.generate_content(model=MODEL, contents=req["contents"], config=config)
        data = resp.model_dump(mode="json", by_alias=True, exclude_none=True)
        out = tr.from_response(data, "chatcmpl-x", 0, MODEL)
        assert out["choices"][0]["message"]["content"]

    for _ in range(20):
        await one()
    t0 = time.process_time()
    for _ in range(n // conc):
        await asyncio.gather(*(one() for _ in range(conc)))
    cpu = time.process_time() - t0
    return cpu / (n // conc * conc)


def translation_only(n: int) -> float:
    """The translator alone (request out, canned answer back): Turnout's own share of the hot path."""
    answer = orjson.dumps({"candidates": [{"content": {"parts": [{"text": "Paris is the capital of France."}],
                                                       "role": "model"}, "finishReason": "STOP", "index": 0}],
                           "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 8,
                                             "totalTokenCount": 38}, "modelVersion": MODEL})
    t0 = time.process_time()
    for _ in range(n):
        orjson.dumps(tr.to_request(BODY, MODEL))
        orjson.dumps(tr.from_response(orjson.loads(answer), "chatcmpl-x", 0, MODEL))
    return (time.process_time() - t0) / n


def whole_proxy(url: str, n: int, conc: int) -> tuple[float, float]:
    """CPU per request of a `turnout serve` process with a gemini backend: (non-streamed, streamed)."""
    import tempfile

    port = free_port()
    cfg = (f"server: {{port: {port}, log_level: warning}}\n"
           f"backends: {{gem: {{type: gemini, base_url: '{url}', api_key: {KEY}}}}}\n"
           f"models: {{flash: {{backend: gem, model: {MODEL}}}}}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(cfg)
    turnout = os.path.join(os.path.dirname(sys.executable), "turnout")
    proc = subprocess.Popen([turnout, "serve", "--config", f.name], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {**BODY, "model": "flash"}
    try:
        wait_up(f"http://127.0.0.1:{port}/health")

        async def drive(stream: bool) -> float:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conc)) as c:
                async def one() -> None:
                    r = await c.post(base, json={**body, "stream": stream})
                    assert r.status_code == 200, r.text
                for _ in range(50):
                    await one()
                t0 = cpu_seconds(proc.pid)
                for _ in range(n // conc):
                    await asyncio.gather(*(one() for _ in range(conc)))
                return (cpu_seconds(proc.pid) - t0) / (n // conc * conc)

        return asyncio.run(drive(False)), asyncio.run(drive(True))
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(f.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    port = free_port()
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    proc = subprocess.Popen([sys.executable, "-c", EMULATOR.format(root=root, key=KEY, port=port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/")
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        p = runner(pool_path(args.requests, args.concurrency, url))
        h = runner(httpx_path(args.requests, args.concurrency, url))
        s = runner(sdk_path(args.requests, args.concurrency, url))
        t = translation_only(20000)
        print(f"requests={args.requests} concurrency={args.concurrency}")
        print(f"translator alone           : {t * 1000:.3f} ms CPU per request")
        print(f"Turnout pool + translator  : {p * 1000:.3f} ms CPU per request  (what the backend runs)")
        print(f"pooled httpx + translator  : {h * 1000:.3f} ms CPU per request")
        print(f"google-genai SDK (aio)     : {s * 1000:.3f} ms CPU per request")
        print(f"SDK / Turnout pool         : {s / p:.1f}x")
        ns, st = whole_proxy(url, args.requests, args.concurrency)
        print(f"whole proxy (turnout serve, gemini backend), CPU of the Turnout process per request:")
        print(f"  non-streamed             : {ns * 1000:.3f} ms")
        print(f"  streamed (3 events)      : {st * 1000:.3f} ms")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
