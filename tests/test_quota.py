"""Issue 7: quotas with a reserve (one warning), per-key rate limits, budgets with alerts, all
enforced across a restart."""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest

from proxy.server.assembly import build_app
from proxy.config import Quota, parse
from proxy.state import Amount, Ask, ManualClock, MemoryState, Window
from proxy.usage.quota import QuotaState, day_bounds, month_bounds
from tests.conftest import ServerThread, post, sdk

HI = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens with the mock
COST = (5 * 1.0 + 5 * 2.0) / 1e6  # 5 prompt + 5 completion tokens at $1 / $2 per M


def config(db: str, *, quota=None, target_quota=None, keys=None, budget=None) -> dict:
    cloud = {"type": "mock", "reply": "one two three four five"}
    if quota:
        cloud["quota"] = quota
    paid = {"backend": "cloud", "price": {"input": 1.0, "output": 2.0}}
    if target_quota:
        paid["quota"] = target_quota
    raw = {"backends": {"cloud": cloud, "local": {"type": "mock", "reply": "local says hi"}},
           "models": {"paid": paid, "free": {"backend": "local"}},
           "routes": {"auto": ["paid", "free"], "paid-only": ["paid"]},
           "usage": {"ledger": db, "flush_interval": 0.1}}
    if keys:
        raw["keys"] = keys
    if budget:
        raw["usage"]["budget"] = budget
    return raw


class Proxy:
    """Turnout on a ledger file that a test can stop and start again (a restart)."""

    def __init__(self, raw: dict) -> None:
        self.raw = raw
        self.server: ServerThread | None = None

    def start(self) -> str:
        self.server = ServerThread(build_app(parse(self.raw))).start()
        return self.server.url

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None


@pytest.fixture
def proxy():
    made: list[Proxy] = []

    def make(raw: dict) -> Proxy:
        made.append(Proxy(raw))
        return made[-1]

    yield make
    for p in made:
        p.stop()


def routed(base: str, model: str = "auto", key: str = "sk-test") -> httpx.Response:
    return post(base, {"model": model, "messages": HI}, headers={"authorization": f"Bearer {key}"})


# --- quotas ------------------------------------------------------------------------------------


def test_quota_reserve_skips_the_target_and_warns_once_across_a_restart(proxy, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="turnout.usage")
    p = proxy(config(str(tmp_path / "u.db"), quota={"requests_per_day": 5, "reserve": 2,
                                                  "timezone": "America/Los_Angeles"}))
    base = p.start()
    for _ in range(2):
        assert routed(base).headers["x-turnout-model"] == "paid"
    p.stop()  # a restart: the counter continues from the ledger
    base = p.start()
    r = routed(base)
    assert r.headers["x-turnout-model"] == "paid"  # 3 used, 2 left = the reserve
    for _ in range(3):
        r = routed(base)
        assert r.status_code == 200 and r.headers["x-turnout-model"] == "free"
        assert r.headers["x-turnout-fallbacks"] == "paid: skipped: backend cloud quota: 2 requests left today, reserve 2"
    warnings = [rec.getMessage() for rec in caplog.records if "requests left today" in rec.getMessage()]
    assert warnings == ["cloud: 2 requests left today, reserve 2 — routing to free"]
    usage = httpx.get(base + "/turnout/usage").json()
    cloud = next(b for b in usage["backends"] if b["name"] == "cloud")
    assert cloud["remaining_today"]["requests"] == 2 and cloud["remaining_today"]["in_reserve"] is True
    assert cloud["remaining_today"]["resets_at"].endswith(("-08:00", "-07:00"))  # midnight Pacific
    assert cloud["calls_total"] == 3
    # the dry run shows the same reason
    explain = httpx.post(base + "/turnout/route", json={"model": "auto", "messages": HI}).json()
    assert explain["target"] == "free" and "2 requests left today" in explain["chain"][0]["reason"]


def test_target_token_quota_and_all_skipped_is_clear(proxy, tmp_path):
    p = proxy(config(str(tmp_path / "u.db"), target_quota={"tokens_per_day": 25, "reserve_tokens": 5}))
    base = p.start()
    assert routed(base).headers["x-turnout-model"] == "paid"  # 10 tokens
    assert routed(base).headers["x-turnout-model"] == "paid"  # 20 tokens: 5 left
    assert routed(base).headers["x-turnout-model"] == "free"
    r = routed(base, "paid-only")
    assert r.status_code == 503 and "5 tokens left today, reserve 5" in r.json()["error"]["message"]


def test_failed_requests_count_against_the_quota(proxy, tmp_path):
    p = proxy(config(str(tmp_path / "u.db"), quota={"requests_per_day": 3}))
    base = p.start()
    post(base, {"model": "auto", "messages": [{"role": "user", "content": "x [mock:status=500]"}]})
    status = p.server.config.app.state.turnout.usage.accounts.remaining()[0]
    assert status["requests_used"] == 1 and status["tokens_used"] == 0 and status["requests_left"] == 2


def test_quota_day_starts_at_the_reset_hour_in_its_zone():
    la = ZoneInfo("America/Los_Angeles")
    now = datetime(2026, 11, 22, 23, 30, tzinfo=la).timestamp()
    start, end = day_bounds(now, la, 0)
    assert datetime.fromtimestamp(start, la) == datetime(2026, 11, 22, 0, tzinfo=la)
    assert datetime.fromtimestamp(end, la) == datetime(2026, 11, 23, 0, tzinfo=la)
    # before the reset hour the day began yesterday; across a DST change the day is 25 hours
    start, end = day_bounds(datetime(2026, 11, 1, 5, tzinfo=la).timestamp(), la, 7)
    assert datetime.fromtimestamp(start, la) == datetime(2026, 10, 31, 7, tzinfo=la)
    assert end - start == 25 * 3600
    start, end = month_bounds(datetime(2026, 1, 1, 0, 30, tzinfo=la).timestamp(), la, 1)
    assert datetime.fromtimestamp(start, la) == datetime(2025, 12, 1, 1, tzinfo=la)
    assert datetime.fromtimestamp(end, la) == datetime(2026, 1, 1, 1, tzinfo=la)

    clock = ManualClock(datetime(2026, 11, 22, 23, 59, tzinfo=la).timestamp())
    q = QuotaState("backend", "gemini", Quota(requests_per_day=100, reserve=10, timezone="America/Los_Angeles"),
                   MemoryState(clock))
    q.add(95, 0)
    assert q.shortage() == "5 requests left today, reserve 10"
    clock.advance(120)  # midnight Pacific passed: a new day
    assert q.shortage() is None
    assert q.left() == (100, None)


def test_counter_survives_only_within_its_period():
    clock = ManualClock(1_000_000.0)
    state, day = MemoryState(clock), Window("day")
    state.admit([Ask("x", day, Amount(7))])
    clock.advance(10)
    assert state.usage("x", day).requests == 7
    clock.now = 1_000_000.0 + 86400
    assert state.usage("x", day).requests == 0


# --- rate limits -------------------------------------------------------------------------------


def test_rate_limit_per_key_gives_429_with_retry_after(proxy, tmp_path):
    keys = [{"key": "sk-a", "name": "a", "rate_limit": {"requests_per_minute": 2}},
            {"key": "sk-b", "name": "b"}]
    base = proxy(config(str(tmp_path / "u.db"), keys=keys)).start()
    client = sdk(base, api_key="sk-a")
    client.chat.completions.create(model="auto", messages=HI)
    client.chat.completions.create(model="auto", messages=HI)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="auto", messages=HI)
    assert e.value.code == "rate_limit_exceeded" and "2 requests per minute" in e.value.message
    retry = int(e.value.response.headers["retry-after"])
    assert 55 <= retry <= 60
    assert routed(base, key="sk-b").status_code == 200  # another key is not limited


def test_tokens_per_minute(proxy, tmp_path):
    keys = [{"key": "sk-a", "name": "a", "rate_limit": {"tokens_per_minute": 15}}]
    base = proxy(config(str(tmp_path / "u.db"), keys=keys)).start()
    assert routed(base, key="sk-a").status_code == 200  # 10 tokens
    assert routed(base, key="sk-a").status_code == 200  # 20 tokens: over, counted at the end
    r = routed(base, key="sk-a")
    assert r.status_code == 429 and "15 tokens per minute" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1


# --- budgets -----------------------------------------------------------------------------------


def test_key_budget_rejects_with_reset_time_across_a_restart(proxy, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="turnout.usage")
    keys = [{"key": "sk-a", "name": "app", "budget": {"daily": COST * 2.5, "alert": "80%"}},
            {"key": "sk-b", "name": "other"}]
    p = proxy(config(str(tmp_path / "u.db"), keys=keys))
    base = p.start()
    assert routed(base, "paid-only", "sk-a").status_code == 200
    assert routed(base, "paid-only", "sk-a").status_code == 200  # 2/2.5 = 80 %: the alert
    alerts = [r.getMessage() for r in caplog.records if "alert at 80 %" in r.getMessage()]
    assert len(alerts) == 1 and "key 'app'" in alerts[0]
    p.stop()
    base = p.start()
    assert routed(base, "paid-only", "sk-a").status_code == 200  # 3 calls: spent
    client = sdk(base, api_key="sk-a")
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="paid-only", messages=HI)
    assert e.value.code == "budget_exceeded" and e.value.type == "insufficient_quota"
    assert "daily budget" in e.value.message and "resets at" in e.value.message
    assert int(e.value.response.headers["retry-after"]) > 0
    assert routed(base, "paid-only", "sk-b").status_code == 200  # another key has no budget
    p.stop()
    base = p.start()  # still spent after a second restart
    assert routed(base, "paid-only", "sk-a").status_code == 429
    assert len([r for r in caplog.records if "alert at 80 %" in r.getMessage()]) == 1
    spent = {s["name"]: s for s in p.server.config.app.state.turnout.usage.accounts.spent()}
    assert spent["key 'app'"]["exceeded"] and spent["key 'app'"]["spent_usd"] == pytest.approx(COST * 3)


def test_overall_budget_free_only_routes_to_free_targets(proxy, tmp_path):
    p = proxy(config(str(tmp_path / "u.db"), budget={"monthly": COST, "on_exceeded": "free_only"}))
    base = p.start()
    assert routed(base).headers["x-turnout-model"] == "paid"
    r = routed(base)
    assert r.headers["x-turnout-model"] == "free"
    assert r.headers["x-turnout-fallbacks"].startswith(
        "paid: skipped: budget: the overall budget monthly budget of $0.00 is spent")
    accounts = p.server.config.app.state.turnout.usage.accounts
    s, = accounts.spent()
    assert s["period"] == "monthly" and s["exceeded"] and s["alerting"]
    assert accounts.alerting() == [s]


def test_worker_processes_share_quotas_and_budgets_through_the_ledger(proxy, tmp_path):
    """Two Turnouts on one ledger (as `turnout serve --workers 2` runs): each saves its own counts
    with its rows and takes in the other's within the flush interval."""
    raw = config(str(tmp_path / "u.db"), quota={"requests_per_day": 4}, budget={"daily": COST * 3})
    a, b = proxy(raw).start(), proxy(raw).start()
    for base in (a, b, a):
        assert routed(base).headers["x-turnout-model"] == "paid"
    import time

    time.sleep(0.5)  # a few flush intervals: each has seen the other's counts
    assert routed(b).status_code == 429  # the overall budget: 3 paid calls across both
    rows = httpx.get(b + "/turnout/usage").json()  # b writes its pending row first; a wrote its rows already
    assert rows["quotas"][0]["requests_used"] == 3 and rows["budgets"][0]["exceeded"]
    assert rows["totals"]["requests"] == 4  # the rejected one is in the ledger too


def test_free_only_budget_with_no_free_target_is_a_429(proxy, tmp_path):
    p = proxy(config(str(tmp_path / "u.db"), budget={"daily": COST, "on_exceeded": "free_only"}))
    base = p.start()
    assert routed(base, "paid-only").status_code == 200  # spends the budget
    r = routed(base, "paid-only")
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert "only free targets may be used, and 'paid-only' has none" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) > 0
    assert routed(base, "auto").headers["x-turnout-model"] == "free"  # a route with a free target still works
