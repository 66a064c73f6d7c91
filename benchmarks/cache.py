"""CPU and latency of a response-cache hit vs a proxied call, in Turnout's own process.

Runs the mock upstream (`turnout mock-upstream`, 20 content chunks per answer) and Turnout
(`cache: {ttl: 3600}`, ledger off) as separate processes, then sends the same request one by one:
- proxied: every request differs (its prompt has a counter), so each one is a miss and a call
- hit:     the same request again and again, each served from the cache
for plain and streamed requests. Turnout's CPU per request is read from /proc (time.process_time
of its process); latency is the client's round trip. Figures in README ("Response cache").

    .venv/bin/python benchmarks/cache.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from bench import cpu_seconds, stack  # noqa: E402


def body(i: int | None, stream: bool = False) -> dict:
    text = "What is the capital of France? Answer in one sentence." + (f" ({i})" if i is not None else "")
    return {"model": "bench", "messages": [{"role": "user", "content": text}], "temperature": 0.2, "stream": stream}


async def measure(client: httpx.AsyncClient, url: str, pid: int, n: int, hit: bool, stream: bool) -> tuple[float, float]:
    """(Turnout CPU ms per request, client p50 latency ms)."""
    lat = []
    c0 = cpu_seconds(pid)
    for i in range(n):
        t = asyncio.get_running_loop().time()
        r = await client.post(url, json=body(None if hit else i + (1 << 20) * stream, stream))
        r.read()
        lat.append((asyncio.get_running_loop().time() - t) * 1000)
        assert r.status_code == 200, r.text
        assert r.headers["x-turnout-cache"] == ("hit" if hit else "miss"), r.headers
    return (cpu_seconds(pid) - c0) / n * 1000, statistics.median(lat)


async def run(args: argparse.Namespace) -> None:
    with stack(backend=", probe: false", extra="cache: {ttl: 3600}\nusage: {ledger: off}\n") as (_, tp_port, tp):
        url = f"http://127.0.0.1:{tp_port}/v1/chat/completions"
        n = args.requests
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(url, json=body(None))  # the entry every hit reads
            await client.post(url, json=body(None, True))
            for i in range(100):  # warm up both paths
                await client.post(url, json=body(-i - 1))
                await client.post(url, json=body(None))
            rows = []
            for stream in (False, True):
                miss = await measure(client, url, tp.pid, n, False, stream)
                hit = await measure(client, url, tp.pid, n, True, stream)
                rows.append(("stream" if stream else "plain", miss, hit))
        print(f"{n} requests each, one client, Turnout CPU per request (ms) and client p50 latency (ms):")
        for kind, (mc, ml), (hc, hl) in rows:
            print(f"  {kind:6s} proxied: {mc:.3f} ms CPU, p50 {ml:.2f} ms | cache hit: {hc:.3f} ms CPU, p50 {hl:.2f} ms"
                  f" | hit/proxied CPU {hc / mc:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
