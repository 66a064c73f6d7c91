"""Issue 14: several replicas share their limits and breakers through Redis (proxy/state/redis.py).

Three real `turnout serve` processes on three ports (as three hosts would be), one SQLite ledger
each, one Redis (127.0.0.1:6379, a DB and key prefix of their own), one counting upstream in the
test process. Driven concurrently over HTTP: what reaches the upstream is counted there.
Then Redis goes away mid-run (a private redis-server on another port) and comes back.

Outside CI (env CI unset) the tests skip, saying why, when Redis is missing; in CI they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SHARED = "redis://127.0.0.1:6379/11"  # the machine's Redis; this file's own DB number and key prefixes


def missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def need_redis(url: str = SHARED) -> None:
    try:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as e:
        missing(f"no Redis at {url} ({type(e).__name__}); .ci/run starts one")


def need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        missing("no redis-server binary (Debian's redis-server package); .ci/run installs it")


def counting_upstream(seen: Counter[str]) -> Starlette:
    """An OpenAI-compatible upstream that counts requests per model; `flaky-model` answers 500."""

    async def chat(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        seen[body["model"]] += 1
        if body["model"] == "flaky-model":
            return JSONResponse({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
                                status_code=500)
        return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class Replica:
    """One `turnout serve` process."""

    def __init__(self, cfg: dict[str, Any], tmp: Path, name: str, *args: str) -> None:
        self.log = tmp / f"{name}.log"
        path = tmp / f"{name}.json"  # JSON is YAML
        cfg = {**cfg, "usage": {**cfg.get("usage", {}), "ledger": str(tmp / f"{name}.sqlite")}}
        path.write_text(json.dumps(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port",
                                      str(self.port), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))

    def wait(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "turnout did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def replicas(cfg: dict[str, Any], tmp: Path, n: int) -> list[Replica]:
    out = [Replica(cfg, tmp, f"replica{i}") for i in range(n)]  # started together, waited for together
    for r in out:
        r.wait()
    return out


def fleet_config(upstream: str, url: str) -> dict[str, Any]:
    up = {"type": "openai", "base_url": upstream + "/v1", "api_key": "sk-up"}
    return {
        "server": {"log_level": "warning"},
        "state": {"redis": {"url": url, "prefix": f"t{uuid.uuid4().hex[:8]}:"}},
        "keys": [{"name": "open", "key": "sk-open"},
                 {"name": "rl", "key": "sk-rl", "rate_limit": {"requests_per_minute": 10}},
                 {"name": "spender", "key": "sk-spender", "budget": {"daily": 0.001, "on_exceeded": "reject"}}],
        "backends": {"quota": {**up, "quota": {"requests_per_day": 100}}, "plain": up,
                     "flaky": {**up, "probe": False}},
        "routing": {"circuit": {"failures": 2, "cooldown": 60}},
        "models": {"q": {"backend": "quota", "model": "q-model"},
                   "free": {"backend": "plain", "model": "free-model"},
                   "paid": {"backend": "plain", "model": "paid-model", "price": {"input": 10, "output": 10}},
                   "flaky": {"backend": "flaky", "model": "flaky-model"}},
    }


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


async def drive(urls: list[str], n: int, model: str, key: str) -> list[int]:
    """`n` requests at once, spread over the replicas; their statuses."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as c:
        rs = await asyncio.gather(*(c.post(urls[i % len(urls)] + "/v1/chat/completions", json=chat(model),
                                           headers={"authorization": f"Bearer {key}"}) for i in range(n)))
    return [r.status_code for r in rs]


def post(url: str, model: str, key: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=chat(model), headers={"authorization": f"Bearer {key}"},
                      timeout=30)


@pytest.fixture
def fleet(serve, tmp_path) -> Iterator[tuple[list[Replica], Counter[str]]]:
    need_redis()
    seen: Counter[str] = Counter()
    upstream = serve(counting_upstream(seen))
    rs = replicas(fleet_config(upstream, SHARED), tmp_path, 3)
    yield rs, seen
    for r in rs:
        r.stop()


def test_three_replicas_share_quota_rate_limit_budget_and_circuits(fleet) -> None:
    rs, seen = fleet
    urls = [r.url for r in rs]

    # a 100/day quota: exactly 100 of 300 concurrent requests reach its backend
    statuses = asyncio.run(drive(urls, 300, "q", "sk-open"))
    assert seen["q-model"] == 100, seen
    assert statuses.count(200) == 100 and 500 not in statuses, Counter(statuses)

    # a 10/minute key rate limit: exactly 10 of 30 concurrent requests
    statuses = asyncio.run(drive(urls, 30, "free", "sk-rl"))
    assert seen["free-model"] == 10, seen
    assert statuses.count(200) == 10 and statuses.count(429) == 20, Counter(statuses)

    # a $0.001/day budget at $0.0002 a request: 5 requests, whichever replica they reach; then refused everywhere
    answers = [post(urls[i % 3], "paid", "sk-spender") for i in range(9)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 4, [a.text[:200] for a in answers]
    assert seen["paid-model"] == 5
    for url in urls:
        r = post(url, "paid", "sk-spender")
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
    assert seen["paid-model"] == 5

    # a circuit opened through one replica (2 failures) is honoured by the others within a second
    for _ in range(2):
        assert post(urls[0], "flaky", "sk-open").status_code >= 500
    assert seen["flaky-model"] == 2
    time.sleep(1.0)
    for url in urls:
        r = post(url, "flaky", "sk-open")
        assert r.status_code == 503 and "circuit open" in r.text, r.text
        m = httpx.get(url + "/metrics", timeout=10).text
        assert 'turnout_circuit_state{backend="flaky"} 2.0' in m  # read from the shared state
        assert 'turnout_quota_remaining{kind="requests",name="quota",scope="backend"} 0.0' in m
        stats = httpx.get(url + "/turnout/stats", headers={"authorization": "Bearer sk-open"}, timeout=10).json()
        left = [g["value"] for g in stats["gauges"] if g["name"] == "turnout_quota_remaining"]
        assert left == [0.0] and stats["health"]["state"]["status"] == "ok"  # the dashboard: the fleet's view
    assert seen["flaky-model"] == 2, "a replica sent to a backend whose circuit another replica opened"


def test_serve_workers_share_the_same_redis_state(serve, tmp_path) -> None:
    """`turnout serve --workers 2`: each worker builds its app from the config, so all use Redis."""
    need_redis()
    seen: Counter[str] = Counter()
    cfg = fleet_config(serve(counting_upstream(seen)), SHARED)
    cfg["backends"]["quota"]["quota"] = {"requests_per_day": 20}
    r = Replica(cfg, tmp_path, "workers", "--workers", "2")
    try:
        r.wait()
        statuses = asyncio.run(drive([r.url], 60, "q", "sk-open"))
        assert seen["q-model"] == 20 and statuses.count(200) == 20, (seen, Counter(statuses))
        assert "state: shared by every replica in Redis at redis://127.0.0.1:6379/11" in r.log.read_text()
    finally:
        r.stop()


# --- Redis stopped mid-run and restarted -------------------------------------------------------------


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except (redis.RedisError, OSError):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def test_redis_stopped_mid_run_and_restarted(serve, tmp_path) -> None:
    need_redis_server()
    db = PrivateRedis()
    db.start()
    seen: Counter[str] = Counter()
    upstream = serve(counting_upstream(seen))
    rs = replicas(fleet_config(upstream, f"redis://127.0.0.1:{db.port}/0"), tmp_path, 2)
    urls = [r.url for r in rs]
    try:
        statuses = asyncio.run(drive(urls, 20, "q", "sk-open"))
        db.stop()  # mid-run
        statuses += asyncio.run(drive(urls, 20, "q", "sk-open"))
        statuses += asyncio.run(drive(urls, 20, "free", "sk-rl"))  # a shared rate limit, now per replica
        assert all(s < 500 for s in statuses), Counter(statuses)
        assert statuses.count(200) >= 50, Counter(statuses)
        for r in rs:
            ready = httpx.get(r.url + "/ready", timeout=10)
            assert ready.status_code == 200 and ready.json()["state"]["status"] == "degraded", ready.text
            providers = httpx.get(r.url + "/turnout/providers", headers={"authorization": "Bearer sk-open"}).json()
            assert providers["status"] == "degraded" and providers["state"]["status"] == "degraded"
            stats = httpx.get(r.url + "/turnout/stats", headers={"authorization": "Bearer sk-open"}).json()
            assert stats["health"]["state"]["status"] == "degraded"  # the dashboard's shared-state tile
            m = httpx.get(r.url + "/metrics", timeout=10).text
            errors = [line for line in m.splitlines() if line.startswith("turnout_state_errors_total{")]
            assert errors and float(errors[0].split()[-1]) >= 1, errors
            warning = f"shared state: redis at redis://127.0.0.1:{db.port}/0 unreachable"
            assert r.log.read_text().count(warning) == 1  # one warning, not one a request

        db.start()  # back, empty (no persistence): the replicas merge what they counted meanwhile
        deadline = time.monotonic() + 15
        while any(httpx.get(u + "/ready", timeout=10).json()["state"]["status"] != "ok" for u in urls):
            assert time.monotonic() < deadline, "the replicas did not reconnect"
            asyncio.run(drive(urls, 2, "q", "sk-open"))  # a request notices the probe's news
            time.sleep(0.2)
        counter = [k for k in redis.Redis(port=db.port).keys("*quota:backend:quota*")]
        assert counter, "nothing merged back"
        before = float(redis.Redis(port=db.port).hget(counter[0], "r"))
        # merged into the empty Redis: the 20 counted during the outage, on top of the fleet total the first
        # replica back had last seen (at least its own 10 of the 20 before: each admission returns the total)
        assert before >= 30
        statuses = asyncio.run(drive(urls, 10, "q", "sk-open"))
        assert statuses == [200] * 10
        assert float(redis.Redis(port=db.port).hget(counter[0], "r")) == before + 10  # shared again
    finally:
        for r in rs:
            r.stop()
        db.stop()


def test_on_error_reject_refuses_only_what_needs_a_shared_limit_and_a_frozen_redis_does_not_hang(
        turnout, tmp_path) -> None:
    need_redis_server()
    db = PrivateRedis()
    db.start()
    raw = {"state": {"redis": {"url": f"redis://127.0.0.1:{db.port}/0", "on_error": "reject"}},
           "usage": {"ledger": "off"},
           "keys": [{"name": "open", "key": "sk-open"},
                    {"name": "rl", "key": "sk-rl", "rate_limit": {"requests_per_minute": 100}}],
           "backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}}}
    url = turnout(raw)
    try:
        assert post(url, "a", "sk-rl").status_code == 200
        os.kill(db.proc.pid, 19)  # SIGSTOP: Redis accepts nothing and answers nothing
        try:
            r = httpx.post(url + "/v1/chat/completions", json=chat("a"), timeout=5,
                           headers={"authorization": "Bearer sk-rl"})  # answered within the state timeout, not hung
            open_key = post(url, "a", "sk-open").status_code
            ready = httpx.get(url + "/ready").json()
        finally:
            os.kill(db.proc.pid, 18)  # SIGCONT
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "shared_state_unavailable" and "Redis" in err["message"]
        assert open_key == 200  # no shared limit needed: served
        assert ready["status"] == "degraded" and ready["state"]["on_error"] == "reject"
    finally:
        db.stop()


def test_state_config_is_checked() -> None:
    from proxy.config import ConfigError, parse

    base = {"backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}}}
    cfg = parse({**base, "state": {"redis": {"url": "redis://127.0.0.1:6379/2"}}}, {})
    assert (cfg.state.redis.prefix, cfg.state.redis.on_error, cfg.state.redis.timeout) == ("turnout:", "local", 0.05)
    for bad, where in (({"url": "http://x"}, "state.redis.url"), ({"on_error": "ignore"}, "state.redis.on_error"),
                       ({"timeout": 0}, "state.redis.timeout"), ({"urll": "redis://x"}, "state.redis")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            parse({**base, "state": {"redis": bad}}, {})


def test_two_states_on_one_redis_share_windows_and_one_half_open_trial() -> None:
    """RedisState against RedisState, in this process, on a manual clock: calendar and sliding windows,
    settle and refund, a circuit opened by one seen by the other, and one trial for the fleet."""
    need_redis()
    from proxy.state import Amount, Ask, Hold, Limit, ManualClock, Refused, Window
    from proxy.state.redis import REFRESH, RedisState

    clock, prefix = ManualClock(), f"t{uuid.uuid4().hex[:8]}:"
    a, b = (RedisState(SHARED, prefix, clock=clock, timeout=1.0) for _ in range(2))
    day = Window("day", "Asia/Kolkata", 5)
    quota = Ask("quota:x", day, Amount(1, 100), Limit(3, None))
    holds = [s.admit([quota]) for s in (a, b, a)]
    assert all(isinstance(h, Hold) for h in holds)
    refused = b.admit([quota])
    assert isinstance(refused, Refused) and refused.field == "requests"
    assert refused.resets_at == day.bounds(clock.time())[1]  # the next 05:00 in Kolkata
    a.settle(holds[0], [Amount(1, 7)])
    b.refund(holds[1])
    assert isinstance(a.admit([quota]), Hold)  # the refund made room
    clock.advance(REFRESH)
    assert (b.usage("quota:x", day).requests, b.usage("quota:x", day).tokens) == (3, 207)

    rate = Ask("rate:k", Window("minute"), Amount(1, 0), Limit(2, None))
    assert isinstance(a.admit([rate]), Hold)
    clock.advance(30)
    assert isinstance(b.admit([rate]), Hold)
    late = a.admit([rate])
    assert isinstance(late, Refused) and late.retry_after == 30.0  # when the first leaves the minute
    clock.advance(30.5)
    assert isinstance(a.admit([rate]), Hold)

    for _ in range(2):
        a.breaker_failure("up", 2)
    clock.advance(REFRESH)
    assert b.breaker("up").opened_ago is not None and not b.breaker_begin("up", 10)
    clock.advance(10)
    assert [a.breaker_begin("up", 10), b.breaker_begin("up", 10)] == [True, False]  # one trial for the fleet
    opened, now = a.breaker_failure("up", 2)
    assert now and opened.opened_ago == 0.0  # the trial failed: open again
    clock.advance(10)
    assert b.breaker_begin("up", 10)
    assert b.breaker_success("up").trial and a.breaker_begin("up", 10)  # closed for everyone
    a.put("k", b"v", 5)
    assert b.get("k") == b"v"
    for s in (a, b):
        s.close()
    client = redis.Redis.from_url(SHARED)
    client.delete(*client.scan_iter(prefix + "*"))


def test_the_response_cache_is_shared_by_two_replicas_through_redis(serve, tmp_path) -> None:
    """Issue 15: with `state.redis`, an answer one replica cached serves the other (0 upstream calls)."""
    need_redis()
    seen: Counter[str] = Counter()
    upstream = serve(counting_upstream(seen))
    cfg = {**fleet_config(upstream, SHARED), "cache": {"ttl": 60}}
    rs = replicas(cfg, tmp_path, 2)
    try:
        first = post(rs[0].url, "free", "sk-open")
        assert first.status_code == 200 and first.headers["x-turnout-cache"] == "miss"
        assert seen["free-model"] == 1
        for r in rs:  # the other replica, and the first one again: both answer from the shared cache
            hit = post(r.url, "free", "sk-open")
            assert hit.status_code == 200 and hit.headers["x-turnout-cache"] == "hit", hit.headers
            assert hit.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        assert seen["free-model"] == 1, seen  # no upstream call for either hit
        other_key = post(rs[1].url, "free", "sk-rl")  # scope key: another key's answer is never served
        assert other_key.headers["x-turnout-cache"] == "miss" and seen["free-model"] == 2
    finally:
        for r in rs:
            r.stop()
