"""Turnout's overhead against an instant local upstream (not part of the test suite).

Starts the mock OpenAI-compatible upstream (`turnout mock-upstream`) and Turnout (an `openai`
backend pointed at it) as separate processes on 127.0.0.1, then measures:
- added latency: p50/p99 of one client hitting Turnout minus the same client hitting the upstream;
- CPU per request of the Turnout process (utime+stime from /proc), non-streamed and 20-chunk streams;
- throughput at a given concurrency, and Turnout's RSS afterwards.

    python benchmarks/bench.py [--requests 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

CLK = os.sysconf("SC_CLK_TCK")
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_up(url: str) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def one_by_one(client: httpx.AsyncClient, url: str, n: int, body: dict) -> list[float]:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        r = await client.post(url, json=body)
        r.read()
        lat.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    return lat


async def concurrent(client: httpx.AsyncClient, url: str, n: int, conc: int, body: dict) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            r = await client.post(url, json=body)
            assert r.status_code == 200

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return n / (time.perf_counter() - t)


def wrk(url: str, conc: int, seconds: int) -> float | None:
    """Requests/s from wrk (a C load generator, so the client is not the bottleneck), if installed."""
    if not shutil.which("wrk"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(BODY))}\n'
                'wrk.headers["Content-Type"] = "application/json"\n')
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "-s", f.name, url],
                             capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(f.name)
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else None


@contextmanager
def stack(backend: str = "", extra: str = "") -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """The mock upstream (20-chunk streams) and Turnout in front of it (an `openai` backend, target
    `bench`), as separate processes on 127.0.0.1: (upstream port, Turnout port, Turnout's process).
    `backend`: more options of the backend mapping; `extra`: more top-level YAML."""
    up_port, tp_port = free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(f"""
server: {{host: 127.0.0.1, port: {tp_port}, log_level: warning}}
backends:
  upstream: {{type: openai, base_url: "http://127.0.0.1:{up_port}/v1"{backend}}}
models:
  bench: {{backend: upstream, model: bench}}
{extra}""")
    cfg.close()
    turnout = [sys.executable, "-m", "proxy"]
    up = subprocess.Popen(turnout + ["mock-upstream", "--port", str(up_port), "--chunks", "20"])
    tp = subprocess.Popen(turnout + ["serve", "--config", cfg.name], stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{up_port}/v1/models")
        wait_up(f"http://127.0.0.1:{tp_port}/health")
        yield up_port, tp_port, tp
    finally:
        for proc in (tp, up):
            proc.terminate()
            proc.wait(5)
        os.unlink(cfg.name)


async def run(args: argparse.Namespace) -> None:
    with stack() as (up_port, tp_port, tp):
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{tp_port}/v1/chat/completions"
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            await one_by_one(client, via, 200, BODY)  # warm up
            await one_by_one(client, direct, 200, BODY)
            n = args.requests
            d = await one_by_one(client, direct, n, BODY)
            c0 = cpu_seconds(tp.pid)
            v = await one_by_one(client, via, n, BODY)
            cpu_plain = (cpu_seconds(tp.pid) - c0) / n * 1000
            stream_body = {**BODY, "stream": True}
            c0 = cpu_seconds(tp.pid)
            sn = max(200, n // 4)
            await one_by_one(client, via, sn, stream_body)
            cpu_stream = (cpu_seconds(tp.pid) - c0) / sn * 1000
            rps_direct = await concurrent(client, direct, n, args.concurrency, BODY)
            c0 = cpu_seconds(tp.pid)
            rps_via = await concurrent(client, via, n, args.concurrency, BODY)
            cpu_loaded = (cpu_seconds(tp.pid) - c0) / n * 1000
        c0 = cpu_seconds(tp.pid)
        w_direct = wrk(direct, args.concurrency, args.seconds)
        w_via = wrk(via, args.concurrency, args.seconds)
        wrk_cpu = (cpu_seconds(tp.pid) - c0) / (w_via * args.seconds) * 1000 if w_via else None
        p = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1]  # noqa: E731
        print(f"requests per measurement:      {n} (streams: {sn}, 20 content chunks each)")
        print(f"latency direct p50/p99:        {p(d, 50):.2f} / {p(d, 99):.2f} ms")
        print(f"latency via Turnout p50/p99:   {p(v, 50):.2f} / {p(v, 99):.2f} ms")
        print(f"added latency p50:             {p(v, 50) - p(d, 50):.2f} ms")
        print(f"Turnout CPU per request:       {cpu_plain:.3f} ms (one client), {cpu_loaded:.3f} ms (c={args.concurrency})")
        print(f"Turnout CPU per 20-chunk stream: {cpu_stream:.3f} ms")
        print(f"throughput direct / via:       {rps_direct:.0f} / {rps_via:.0f} req/s (c={args.concurrency}, one client process)")
        if w_via:
            print(f"wrk throughput direct / via:   {w_direct:.0f} / {w_via:.0f} req/s (c={args.concurrency}, "
                  f"{args.seconds}s; Turnout CPU {wrk_cpu:.3f} ms/req)")
        print(f"Turnout RSS after the run:     {rss_mb(tp.pid):.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=5, help="wrk run length")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
