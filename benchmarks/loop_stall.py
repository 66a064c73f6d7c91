"""`/health` latency while Turnout handles client-sized work (not part of the test suite).

Starts, as separate processes on 127.0.0.1, an upstream that answers every chat call with a 20 MB
non-streamed answer and no usage, and `turnout serve` in front of it (a ledger, so the answer is
counted). Then, for each case, sends `--requests` big requests one after the other while this
process asks `/health` every 5 ms (``idle``: 3 s of nothing else, the machine's floor), and prints p50 / p99 / max of `/health` and the machine's load:

- ``prompt-window``: a 15 MB whitespace-free prompt to a target with a `context_window` (refused)
- ``prompt``: the same prompt to a target that takes it (a mock, in process)
- ``answer``: a short prompt whose 20 MB answer comes without usage (the ledger estimates it)

    python benchmarks/loop_stall.py [--requests 5]          # or: --src DIR  (another checkout)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, wait_up  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = """
import sys, orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "a" * (20 << 20)}, "finish_reason": "stop"}]})
async def chat(request):
    await request.body()
    return Response(ANSWER, media_type="application/json")
uvicorn.run(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--src", default=str(ROOT), help="the checkout whose Turnout runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    up_port, port = free_port(), free_port()
    cfg = {"server": {"log_level": "warning"}, "usage": {"ledger": str(tmp / "u.db")},
           "backends": {"up": {"type": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "x"},
                        "m": {"type": "mock"}},
           "models": {"window": {"backend": "m", "context_window": 128000}, "mock": {"backend": "m"},
                      "up": {"backend": "up", "model": "m"}}, "routes": {}}
    (tmp / "t.json").write_text(json.dumps(cfg))
    procs = [subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)]),
             subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(tmp / "t.json"), "--port",
                               str(port)], cwd=args.src, env={**os.environ, "PYTHONPATH": args.src})]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/health")
        prompt = "a" * (15 << 20)
        bodies = {"idle": None, "prompt-window": {"model": "window", "max_tokens": 5, "messages": [{"role": "user", "content": prompt}]},
                  "prompt": {"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": prompt}]},
                  "answer": {"model": "up", "messages": [{"role": "user", "content": "hi"}]}}
        for name, body in bodies.items():
            raw = json.dumps(body).encode() if body else b""
            lat: list[float] = []
            done = threading.Event()

            def big() -> None:
                if not raw:
                    time.sleep(3)  # the floor: /health alone, on this machine as loaded as it is
                with httpx.Client(timeout=120) as c:
                    for _ in range(args.requests if raw else 0):
                        c.post(url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
                done.set()

            t = threading.Thread(target=big)
            with httpx.Client(base_url=url, timeout=30) as c:
                c.get("/health")
                t.start()
                while not done.is_set():
                    t0 = time.perf_counter()
                    c.get("/health")
                    lat.append(time.perf_counter() - t0)
                    time.sleep(0.005)
            t.join()
            lat.sort()
            print(f"{name:14s} /health n={len(lat)} p50={statistics.median(lat) * 1000:.1f} ms "
                  f"p99={lat[int(len(lat) * 0.99)] * 1000:.1f} ms max={lat[-1] * 1000:.1f} ms  "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
