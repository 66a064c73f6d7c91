"""CPU per request of two Turnout checkouts, measured side by side so machine load cancels out.

Starts one mock upstream and two Turnout servers (each from its own checkout directory, same
config: an `openai` backend, ledger, metrics and health on), then alternates blocks of requests
A, B, A, B… from one client, reading each server's CPU time (utime+stime, /proc) around its own
blocks. Load drift on a shared machine hits both sides alike; the medians are what to compare.
127.0.0.1 only; bounded by `--blocks` × `--block` requests per kind.

    python benchmarks/ab_compare.py /path/to/checkout-a /path/to/checkout-b [--blocks 10] [--block 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BODY, cpu_seconds, free_port, rss_mb, wait_up  # noqa: E402


async def block(client: httpx.AsyncClient, url: str, n: int, body: dict) -> None:
    for _ in range(n):
        r = await client.post(url, json=body)
        await r.aread()
        assert r.status_code == 200, r.text


async def run(args: argparse.Namespace) -> None:
    up_port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "proxy", "mock-upstream", "--port", str(up_port), "--chunks", "20"],
                          cwd=args.a)
    servers, cfgs = [], []
    try:
        for root in (args.a, args.b):
            port = free_port()
            cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            cfg.write(f"""
server: {{host: 127.0.0.1, port: {port}, log_level: warning}}
backends:
  upstream: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1"}}
models:
  bench: {{backend: upstream, model: bench}}
""")
            cfg.close()
            cfgs.append(cfg.name)
            servers.append((subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", cfg.name], cwd=root,
                                             stderr=subprocess.DEVNULL), port))
        wait_up(f"http://127.0.0.1:{up_port}/v1/models")
        for _, port in servers:
            wait_up(f"http://127.0.0.1:{port}/health")
        kinds = {"plain": BODY, "stream": {**BODY, "stream": True}}
        results: dict[tuple[str, int], list[float]] = {}
        async with httpx.AsyncClient(timeout=30) as client:
            for proc, port in servers:  # warm up
                for body in kinds.values():
                    await block(client, f"http://127.0.0.1:{port}/v1/chat/completions", 200, body)
            for _ in range(args.blocks):
                for kind, body in kinds.items():
                    for i, (proc, port) in enumerate(servers):
                        c0 = cpu_seconds(proc.pid)
                        await block(client, f"http://127.0.0.1:{port}/v1/chat/completions", args.block, body)
                        results.setdefault((kind, i), []).append((cpu_seconds(proc.pid) - c0) / args.block * 1000)
        print(f"CPU ms per request, median (min..max) over {args.blocks} blocks of {args.block}:")
        for kind in kinds:
            cells = []
            for i, name in enumerate(("A", "B")):
                xs = results[(kind, i)]
                cells.append(f"{name} {statistics.median(xs):.3f} ({min(xs):.3f}..{max(xs):.3f})")
            print(f"  {kind:7s} " + "   ".join(cells))
        for (proc, _), name in zip(servers, ("A", "B")):
            print(f"  RSS {name}: {rss_mb(proc.pid):.0f} MB")
        print(f"  A = {args.a}\n  B = {args.b}")
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(5)
        up.terminate()
        up.wait(5)
        for c in cfgs:
            os.unlink(c)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--block", type=int, default=200)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
