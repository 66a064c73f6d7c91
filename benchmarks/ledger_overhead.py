"""What the usage ledger costs per request (not part of the test suite).

Runs Turnout (an `openai` backend in front of `turnout mock-upstream`, both separate processes on
127.0.0.1, as in bench.py) with the ledger off, on, and on without the routing features, in
alternating rounds, and reports per mode the median over rounds of: Turnout's CPU per request
(utime+stime of its process, so the writer thread's inserts count too), the client's p50 latency,
and the CPU per 20-chunk stream. The spread of the same mode across rounds is the noise.

    python benchmarks/ledger_overhead.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench import BODY, cpu_seconds, free_port, one_by_one, wait_up  # noqa: E402

MODES = {"off": "ledger: off", "on": "ledger: {db}", "on, no features": "ledger: {db}\n  features: false"}


def config(port: int, up_port: int, usage: str) -> str:
    return f"""
server: {{host: 127.0.0.1, port: {port}, log_level: warning}}
backends:
  upstream: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1"}}
models:
  bench: {{backend: upstream, model: bench, price: {{input: 1, output: 2}}}}
usage:
  {usage}
"""


async def measure(mode: str, up_port: int, n: int, tmp: str) -> dict[str, float]:
    port = free_port()
    db = os.path.join(tmp, f"ledger-{mode.replace(' ', '').replace(',', '')}-{time.time_ns()}.sqlite")
    path = os.path.join(tmp, f"{port}.yaml")
    Path(path).write_text(config(port, up_port, MODES[mode].format(db=db)))
    tp = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", path], stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}/health")
        via = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with httpx.AsyncClient(timeout=30) as client:
            await one_by_one(client, via, 300, BODY)  # warm up
            await asyncio.sleep(1.2)  # let the warm-up rows be written
            c0 = cpu_seconds(tp.pid)
            lat = await one_by_one(client, via, n, BODY)
            await asyncio.sleep(1.2)  # the rows of this run are written (and their CPU counted) before reading
            cpu = (cpu_seconds(tp.pid) - c0) / n * 1000
            sn = max(200, n // 4)
            c0 = cpu_seconds(tp.pid)
            await one_by_one(client, via, sn, {**BODY, "stream": True})
            await asyncio.sleep(1.2)
            cpu_stream = (cpu_seconds(tp.pid) - c0) / sn * 1000
        rows = None
        if mode != "off":
            import sqlite3

            tp.terminate()
            tp.wait(10)
            with sqlite3.connect(db) as c:
                rows = c.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            assert rows == 300 + n + sn, (rows, 300 + n + sn)
        return {"cpu": cpu, "p50": statistics.median(lat), "cpu_stream": cpu_stream}
    finally:
        if tp.poll() is None:
            tp.terminate()
            tp.wait(10)


async def run(args: argparse.Namespace) -> None:
    up_port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "proxy", "mock-upstream", "--port", str(up_port), "--chunks", "20"])
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        wait_up(f"http://127.0.0.1:{up_port}/v1/models")
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for mode in MODES:
                    results[mode].append(await measure(mode, up_port, args.requests, tmp))
                    m = results[mode][-1]
                    print(f"round {r + 1} {mode:16s} CPU {m['cpu']:.3f} ms/req  p50 {m['p50']:.3f} ms  "
                          f"stream CPU {m['cpu_stream']:.3f} ms", flush=True)
    finally:
        up.terminate()
        up.wait(5)
    print(f"\n{args.requests} requests per round (one client, one by one), {args.rounds} rounds; "
          "median [min..max] over rounds")
    for mode, ms in results.items():
        def f(k: str) -> str:
            xs = [m[k] for m in ms]
            return f"{statistics.median(xs):.3f} [{min(xs):.3f}..{max(xs):.3f}]"
        print(f"{mode:16s} CPU/request {f('cpu')} ms   p50 latency {f('p50')} ms   CPU/stream {f('cpu_stream')} ms")
    off = statistics.median(m["cpu"] for m in results["off"])
    on = statistics.median(m["cpu"] for m in results["on"])
    noise = max(max(m["cpu"] for m in ms) - min(m["cpu"] for m in ms) for ms in results.values())
    print(f"\nledger on - off: {on - off:+.3f} ms CPU per request ({100 * (on - off) / off:+.1f} %); "
          f"noise (largest spread of one mode across rounds): {noise:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
