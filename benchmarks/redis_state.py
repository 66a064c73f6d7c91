"""What shared state on Redis adds per request (issue 14; not part of the suite).

1. Admission alone: `State.admit` of a typical gate (the key's sliding-minute rate limit and its
   daily and monthly budgets) then `settle`, on `MemoryState` and on `RedisState` (one Lua script,
   one round trip each), alternated in rounds; p50 and p99 per call.
0. Calibration: a bare PING round trip back to back, and after 2 ms idle (a server between
   requests sleeps, and on a busy machine waking Redis and Turnout up again costs more than the call).
2. Whole requests: Turnout in this process (uvicorn on 127.0.0.1, the built-in mock backend with no
   latency, a key with a rate limit and a budget, a backend with a daily quota: two admissions and
   a settle per request), sequential requests from httpx, memory and Redis alternated in rounds;
   p50 per request and the difference.

Needs Redis at --url (default redis://127.0.0.1:6379/15; its keys under a fresh prefix are deleted).

    python benchmarks/redis_state.py [--url redis://127.0.0.1:6379/15] [--calls 5000] [--requests 1500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxy.config import parse  # noqa: E402
from proxy.server.assembly import build_app  # noqa: E402
from proxy.state import Amount, Ask, Limit, MemoryState, Window  # noqa: E402
from proxy.state.redis import RedisState  # noqa: E402
from tests.conftest import ServerThread  # noqa: E402

ROUNDS = 5


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def admissions(state: Any, n: int) -> tuple[list[float], list[float]]:
    asks = [Ask("rate:key:bench", Window("minute"), Amount(1, 500), Limit(10**9, 10**12)),
            Ask("budget:key:bench:day", Window("day", "Europe/Paris", 6), Amount(usd=0.01), Limit(usd=10.0**9)),
            Ask("budget:key:bench:month", Window("month", "Europe/Paris", 6), Amount(usd=0.01), Limit(usd=10.0**9))]
    real = [Amount(1, 300), Amount(usd=0.004), Amount(usd=0.004)]
    admit, settle = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        hold = state.admit(asks)
        t1 = time.perf_counter()
        state.settle(hold, real)
        t2 = time.perf_counter()
        admit.append(t1 - t0)
        settle.append(t2 - t1)
    return admit, settle


def requests(url: str, n: int) -> list[float]:
    body = {"model": "a", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
    out = []
    with httpx.Client(base_url=url, headers={"authorization": "Bearer sk-bench"}, timeout=30) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/v1/chat/completions", json=body)
            out.append(time.perf_counter() - t0)
            r.raise_for_status()
    return out


def pings(client: redis.Redis, n: int, gap: float) -> list[float]:
    """PING round trips, back to back or each after `gap` idle seconds (as a server between requests)."""
    out = []
    for _ in range(n):
        if gap:
            time.sleep(gap)
        t0 = time.perf_counter()
        client.ping()
        out.append(time.perf_counter() - t0)
    return out


def config(url: str | None, prefix: str, timeout: float) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"log_level": "warning"}, "usage": {"ledger": "off"},
        "keys": [{"name": "bench", "key": "sk-bench", "rate_limit": {"requests_per_minute": 10**8},
                  "budget": {"daily": 10**6}}],
        "backends": {"m": {"type": "mock", "quota": {"requests_per_day": 10**8}}},
        "models": {"a": {"backend": "m", "price": {"input": 1, "output": 1}}}}
    if url:
        cfg["state"] = {"redis": {"url": url, "prefix": prefix, "timeout": timeout}}
    return cfg


def rounds(kinds: dict[str, Callable[[], list[float]]]) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(ROUNDS):
        for k, fn in kinds.items():
            got[k] += fn()
    return got


def ms(x: float) -> str:
    return f"{x * 1000:.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--timeout", type=float, default=1.0)
    args = ap.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    # a timeout far above the default 50 ms: on a loaded machine a slow call would otherwise fall back to
    # memory and be measured as a fast one (the runs below say if any call failed)
    memory, shared = MemoryState(), RedisState(args.url, prefix, timeout=args.timeout)
    try:
        p = {gap: pings(shared.client, 500, gap) for gap in (0.0, 0.002)}
        print("calibration, the machine's own round trip: PING p50 back to back "
              f"{ms(statistics.median(p[0.0]))}, after 2 ms idle {ms(statistics.median(p[0.002]))}")
        per = args.calls // ROUNDS
        admissions(shared, 200)  # warm: connection, script loaded
        a = rounds({"memory": lambda: admissions(memory, per)[0], "redis": lambda: admissions(shared, per)[0]})
        s = rounds({"memory": lambda: admissions(memory, per)[1], "redis": lambda: admissions(shared, per)[1]})
        print(f"admit of 3 counters (rate limit, daily and monthly budget), {args.calls} calls each:")
        for k in a:
            print(f"  {k:7s} admit p50 {ms(statistics.median(a[k]))}  p99 {ms(pct(a[k], 0.99))}   "
                  f"settle p50 {ms(statistics.median(s[k]))}")
        print(f"  Redis adds per admission (p50): {ms(statistics.median(a['redis']) - statistics.median(a['memory']))}"
              f"; failed Redis calls: {shared.errors}")

        servers = {k: ServerThread(build_app(parse(config(u, prefix, args.timeout), {}))).start()
                   for k, u in (("memory", None), ("redis", args.url))}
        state = servers["redis"].config.app.state.turnout.state
        try:
            per = args.requests // ROUNDS
            for s_ in servers.values():
                requests(s_.url, 100)  # warm
            r = rounds({k: (lambda u=s_.url: requests(u, per)) for k, s_ in servers.items()})
        finally:
            for s_ in servers.values():
                s_.stop()
        print(f"whole requests (rate limit + budget at the gate, a quota per try, settle), {args.requests} each:")
        for k in r:
            print(f"  {k:7s} p50 {ms(statistics.median(r[k]))}  p99 {ms(pct(r[k], 0.99))}")
        print(f"  Redis adds per request (p50): {ms(statistics.median(r['redis']) - statistics.median(r['memory']))}"
              f"; failed Redis calls: {state.errors}")
    finally:
        client = redis.Redis.from_url(args.url)
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)
        shared.close()


if __name__ == "__main__":
    main()
