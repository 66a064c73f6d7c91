"""How many of 300 concurrent requests pass a 100-per-day quota, by worker count (not part of the suite).

Starts the mock OpenAI-compatible upstream and `turnout serve --workers N` (a ledger in a temporary
directory, the upstream answering after 0.5 s) as separate processes on 127.0.0.1, fires 300
concurrent requests at a route `[paid, free]` whose paid target's backend has
`quota: {requests_per_day: 100}`, and counts the answers that came from the paid target, which is
what reached the upstream. One worker admits exactly; N workers share their counters through the
ledger, at most one `usage.flush_interval` old, so they can pass the quota by what the others
admitted within that interval (at most N x the quota).

    python benchmarks/admission.py [--workers 1 2 4] [--flush 1.0 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench import free_port, wait_up  # noqa: E402

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello [mock:latency=0.5]"}]}


async def burst(url: str, n: int) -> list[str]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        async def one() -> str:
            r = await client.post(url, json=BODY)
            r.raise_for_status()
            return r.headers["x-turnout-model"]

        return await asyncio.gather(*(one() for _ in range(n)))


def measure(workers: int, flush: float, n: int, quota: int) -> int:
    up_port, tp_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "admission.yaml"
        cfg.write_text(f"""
server: {{host: 127.0.0.1, port: {tp_port}, log_level: warning}}
backends:
  upstream: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1", quota: {{requests_per_day: {quota}}}}}
  local: {{type: mock}}
models:
  paid: {{backend: upstream, model: bench}}
  free: {{backend: local}}
routes:
  auto: [paid, free]
usage: {{ledger: "{tmp}/usage.db", flush_interval: {flush}}}
""")
        turnout = [sys.executable, "-m", "proxy"]
        up = subprocess.Popen(turnout + ["mock-upstream", "--port", str(up_port)])
        tp = subprocess.Popen(turnout + ["serve", "--config", str(cfg), "--workers", str(workers)],
                              stderr=subprocess.DEVNULL)
        try:
            wait_up(f"http://127.0.0.1:{up_port}/v1/models")
            wait_up(f"http://127.0.0.1:{tp_port}/health")
            models = asyncio.run(burst(f"http://127.0.0.1:{tp_port}/v1/chat/completions", n))
            return models.count("paid")
        finally:
            for p in (tp, up):
                p.terminate()
                p.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--flush", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--quota", type=int, default=100)
    args = ap.parse_args()
    print(f"{args.requests} concurrent requests, quota {args.quota}/day, upstream answers after 0.5 s")
    print("workers  flush_interval  reached the upstream")
    for w in args.workers:
        for f in args.flush:
            print(f"{w:>7}  {f:>14g}  {measure(w, f, args.requests, args.quota):>20}", flush=True)


if __name__ == "__main__":
    main()
