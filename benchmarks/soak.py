"""Soak: Turnout at saturation for minutes, against the mock upstream (not part of the test suite).

Starts `turnout mock-upstream` and `turnout serve` (an `openai` backend pointed at it, a ledger)
as separate processes on 127.0.0.1, then keeps `--concurrency` clients busy for `--minutes`:
short non-streamed asks, short streams, long streams (2,000 chunks) and clients that leave a long
stream at a random point. Every 10 s it prints Turnout's RSS and the running counts; at the end
the RSS drift (the last third against the first, after warm-up), requests by status and the count
of 5xx. Bounded: it stops after `--minutes` whatever happens.

    python benchmarks/soak.py [--minutes 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, rss_mb, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def config(up: str, ledger: str) -> dict:
    return {"server": {"log_level": "warning"}, "usage": {"ledger": ledger},
            "backends": {"up": {"type": "openai", "base_url": up + "/v1", "api_key": "sk-soak"}},
            "models": {"soak": {"backend": "up", "model": "mock", "price": {"input": 1, "output": 2}}},
            "routes": {}}


def body(kind: str) -> dict:
    if kind == "short":
        return {"model": "soak", "messages": [{"role": "user", "content": "Say hello to the soak test"}]}
    if kind == "stream":
        return {"model": "soak", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "A short stream, please"}]}
    return {"model": "soak", "stream": True,
            "messages": [{"role": "user", "content": "A long stream [mock:chunks=2000]"}]}


async def client(c: httpx.AsyncClient, stop: float, counts: collections.Counter, rng: random.Random) -> None:
    while time.monotonic() < stop:
        kind = rng.choices(["short", "stream", "long", "leave"], weights=[4, 4, 1, 1])[0]
        try:
            if kind == "short":
                r = await c.post("/v1/chat/completions", json=body("short"))
                counts[r.status_code] += 1
                continue
            async with c.stream("POST", "/v1/chat/completions", json=body("long" if kind == "leave" else kind)) as r:
                counts[r.status_code] += 1
                leave_at = rng.randrange(1, 1500) if kind == "leave" else None
                n = 0
                async for _ in r.aiter_lines():
                    n += 1
                    if leave_at is not None and n >= leave_at:
                        counts["left"] += 1
                        break  # the client goes away mid-stream
        except httpx.HTTPError as e:
            counts[type(e).__name__] += 1


async def soak(base: str, pid: int, minutes: float, concurrency: int) -> None:
    stop = time.monotonic() + minutes * 60
    counts: collections.Counter = collections.Counter()
    samples: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        rngs = [random.Random(i) for i in range(concurrency)]
        tasks = [asyncio.create_task(client(c, stop, counts, rngs[i])) for i in range(concurrency)]
        t0 = time.monotonic()
        while time.monotonic() < stop:
            await asyncio.sleep(min(10, max(0.1, stop - time.monotonic())))
            mb = rss_mb(pid)
            samples.append((time.monotonic() - t0, mb))
            done = sum(v for k, v in counts.items() if isinstance(k, int))
            print(f"{samples[-1][0]:6.0f} s  RSS {mb:7.1f} MB  requests {done:8d}  "
                  f"5xx {sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)}  "
                  f"left {counts['left']}", flush=True)
        await asyncio.gather(*tasks)
    done = sum(v for k, v in counts.items() if isinstance(k, int))
    fivexx = sum(v for k, v in counts.items() if isinstance(k, int) and k >= 500)
    third = max(1, len(samples) // 3)
    first, last = statistics.mean(m for _, m in samples[:third]), statistics.mean(m for _, m in samples[-third:])
    print(json.dumps({"minutes": minutes, "concurrency": concurrency, "requests": done,
                      "requests_per_s": round(done / (minutes * 60), 1),
                      "by_status": {str(k): v for k, v in sorted(counts.items(), key=str)}, "5xx": fivexx,
                      "rss_mb_first_third": round(first, 1), "rss_mb_last_third": round(last, 1),
                      "rss_drift_pct": round(100 * (last - first) / first, 1),
                      "rss_mb_max": round(max(m for _, m in samples), 1)}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    turnout = [sys.executable, "-m", "proxy"]
    up_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "soak.json"
        cfg.write_text(json.dumps(config(f"http://127.0.0.1:{up_port}", str(Path(tmp) / "usage.sqlite"))))
        up = subprocess.Popen(turnout + ["mock-upstream", "--port", str(up_port)], cwd=ROOT,
                              stderr=subprocess.DEVNULL)
        tp = subprocess.Popen(turnout + ["serve", "--config", str(cfg), "--port", str(port)], cwd=ROOT,
                              stderr=subprocess.DEVNULL)
        try:
            wait_up(f"http://127.0.0.1:{up_port}/v1/models")
            wait_up(f"http://127.0.0.1:{port}/health")
            asyncio.run(soak(f"http://127.0.0.1:{port}", tp.pid, args.minutes, args.concurrency))
            assert tp.poll() is None, "turnout died"
        finally:
            for p in (tp, up):
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
