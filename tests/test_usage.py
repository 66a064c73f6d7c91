"""Issue 7: GET /turnout/usage, the JSONL export, `turnout usage` and `turnout usage export` agree
with the ledger and with each other."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time

import httpx
import orjson
import pytest
import yaml

from proxy.server.assembly import build_app
from proxy.cli import main as cli_main
from proxy.config import parse
from tests.conftest import ServerThread, collect, post, sdk

HI = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens; the reply has 5
P = {"input": 1.0, "output": 2.0}
BASE = {"input": 10.0, "output": 20.0}  # the baseline: 10x the paid target


def config(db: str) -> dict:
    return {
        "backends": {"cloud": {"type": "mock", "reply": "one two three four five",
                               "quota": {"requests_per_day": 100, "reserve": 10}},
                     "local": {"type": "mock", "reply": "uno dos tres"}},
        "models": {"paid": {"backend": "cloud", "price": P}, "free": {"backend": "local"},
                   "big": {"backend": "cloud", "price": BASE}},
        "routes": {"auto": {"rules": [{"name": "translate", "when": {"task": "translate"}, "then": ["free"]},
                                      {"name": "rest", "then": ["paid", "free"]}]}},
        "keys": [{"key": "sk-a", "name": "alice", "budget": {"daily": 1.0}, "role": "admin"},
                 {"key": "sk-b", "name": "bob"}],
        "usage": {"ledger": db, "baseline": "big"},
    }


@pytest.fixture
def env(tmp_path):
    db = str(tmp_path / "usage.db")
    raw = config(db)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    s = ServerThread(build_app(parse(raw))).start()
    a, b = sdk(s.url, api_key="sk-a"), sdk(s.url, api_key="sk-b")
    a.chat.completions.create(model="auto", messages=HI)  # paid: 5 + 5 tokens
    collect(a.chat.completions.create(model="auto", messages=HI, stream=True))  # paid, streamed
    b.chat.completions.create(model="auto", messages=HI, extra_headers={"x-turnout-task": "translate"})  # free: 5 + 3
    b.chat.completions.create(model="paid", messages=HI)  # paid, direct
    post(s.url, {"model": "nope", "messages": HI}, headers={"authorization": "Bearer sk-b"})  # 404, no target
    yield s, str(path), db
    s.stop()


def get(s, path, **params):
    r = httpx.get(s.url + path, params=params, headers={"authorization": "Bearer sk-a"}, timeout=10)
    assert r.status_code == 200, r.text
    return r


def cli(*argv: str) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit) as e:
        sys_stdout, sys.stdout = sys.stdout, out
        try:
            cli_main(list(argv))
        finally:
            sys.stdout = sys_stdout
    assert e.value.code == 0
    return out.getvalue()


def test_report_is_exact_per_backend_and_target(env):
    s, _, _ = env
    d = get(s, "/turnout/usage").json()
    t = d["totals"]
    paid_cost = 3 * (5 * 1.0 + 5 * 2.0) / 1e6
    assert (t["requests"], t["ok"], t["failed"], t["answered"]) == (5, 4, 1, 4)
    assert (t["prompt_tokens"], t["completion_tokens"]) == (20, 18)
    assert t["cost_usd"] == pytest.approx(paid_cost)
    assert t["baseline_cost_usd"] == pytest.approx((20 * 10.0 + 18 * 20.0) / 1e6)
    assert t["savings_usd"] == pytest.approx(t["baseline_cost_usd"] - paid_cost)
    assert t["calls_today"] == t["calls_total"] == 4 and t["requests_today"] == t["requests_total"] == 5
    cloud, local = d["backends"]
    assert cloud["name"] == "cloud" and cloud["calls"] == 3 and cloud["share"] == 0.75
    assert cloud["remaining_today"]["requests"] == 97 and cloud["calls_total"] == 3
    assert cloud["cost_today_usd"] == pytest.approx(paid_cost) == pytest.approx(cloud["cost_total_usd"])
    paid, big = cloud["targets"]
    assert paid["name"] == "paid" and paid["calls"] == 3 and (paid["prompt_tokens"], paid["completion_tokens"]) == (15, 15)
    assert paid["price"] == {"input": 1.0, "output": 2.0, "cached": None} and paid["price_source"] == "config"
    assert big["calls"] == 0 and big["cost_usd"] == 0
    assert local["calls"] == 1 and local["share"] == 0.25 and local["cost_usd"] == 0
    assert local["savings_usd"] == pytest.approx((5 * 10.0 + 3 * 20.0) / 1e6)
    assert local["remaining_today"] is None
    assert d["baseline"]["model"] == "big" and d["baseline"]["price"]["input"] == 10.0
    assert {k["name"]: k["calls"] for k in d["keys"]} == {"alice": 2, "bob": 3}
    alice, = d["budgets"]
    assert alice["name"] == "key 'alice'" and alice["spent_usd"] == pytest.approx(2 * (5 + 10) / 1e6)


def test_filters_by_key_and_period(env):
    s, _, _ = env
    d = get(s, "/turnout/usage", key="bob").json()
    assert d["key"] == "bob" and d["totals"]["requests"] == 3 and d["totals"]["answered"] == 2
    assert get(s, "/turnout/usage", period="yesterday").json()["totals"]["requests"] == 0
    assert get(s, "/turnout/usage", period="today").json()["totals"]["requests"] == 5
    assert get(s, "/turnout/usage", period="7d").json()["totals"]["requests"] == 5
    assert get(s, "/turnout/usage", since="1h", until="30m").json()["totals"]["requests"] == 0
    r = httpx.get(s.url + "/turnout/usage", params={"period": "fortnight"}, headers={"authorization": "Bearer sk-a"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_period"
    r = httpx.get(s.url + "/turnout/usage")
    assert r.status_code == 401


def test_export_matches_the_ledger_and_filters(env):
    s, _, db = env
    rows = [orjson.loads(x) for x in get(s, "/turnout/usage/export").content.splitlines()]
    with sqlite3.connect(db) as c:
        n, cost = c.execute("SELECT COUNT(*), SUM(cost_usd) FROM requests").fetchone()
    assert len(rows) == n == 5
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(cost)
    assert [r["key"] for r in rows] == ["alice", "alice", "bob", "bob", "bob"]
    assert [r["stream"] for r in rows] == [False, True, False, False, False]
    assert rows[2]["rule"] == "translate" and rows[2]["features"]["task"] == "translate"
    assert len(get(s, "/turnout/usage/export", key="alice").content.splitlines()) == 2
    later = time.time() + 60
    assert get(s, "/turnout/usage/export", since=str(later)).content == b""
    assert len(get(s, "/turnout/usage/export", since="2000-01-01").content.splitlines()) == 5


def test_cli_table_json_and_export_agree_with_the_endpoint(env, tmp_path):
    s, path, _ = env
    api = get(s, "/turnout/usage").json()
    data = json.loads(cli("usage", "--config", path, "--json"))
    for k in ("totals", "backends", "keys", "quotas", "budgets", "baseline"):
        a, b = data[k], api[k]
        if k == "quotas":
            for q in a + b:
                q.pop("resets_at")
        assert a == b, k
    via_url = json.loads(cli("usage", "--url", s.url, "--api-key", "sk-a", "--json"))
    assert via_url["totals"] == api["totals"]
    table = cli("usage", "--config", path)
    assert "cloud" in table and "  paid" in table and "97 req" in table and "saved" in table
    assert "budget key 'alice' daily" in table
    out = tmp_path / "export.jsonl"
    cli("usage", "export", "--config", path, "-o", str(out))
    exported = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert exported == [orjson.loads(x) for x in get(s, "/turnout/usage/export").content.splitlines()]
    assert len(json.loads(cli("usage", "--config", path, "--json", "--key", "alice"))["keys"]) == 1


def test_cli_runs_as_a_command(env):
    s, path, _ = env
    time.sleep(1.2)  # the writer's interval: the file has every row without asking the server to flush
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "usage", "export", "--config", path, "--key", "bob"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3


def test_a_key_with_usage_own_sees_only_its_own(tmp_path):
    raw = config(str(tmp_path / "u.db"))
    raw["keys"][1]["usage"] = "own"
    s = ServerThread(build_app(parse(raw))).start()
    try:
        sdk(s.url, api_key="sk-a").chat.completions.create(model="auto", messages=HI)
        sdk(s.url, api_key="sk-b").chat.completions.create(model="auto", messages=HI)
        bob = {"authorization": "Bearer sk-b"}
        d = httpx.get(s.url + "/turnout/usage", headers=bob).json()
        assert d["key"] == "bob" and d["totals"]["requests"] == 1 and d["budgets"] == []
        r = httpx.get(s.url + "/turnout/usage", params={"key": "alice"}, headers=bob)
        assert r.status_code == 403 and r.json()["error"]["code"] == "usage_not_allowed"
        rows = httpx.get(s.url + "/turnout/usage/export", headers=bob).content.splitlines()
        assert [orjson.loads(x)["key"] for x in rows] == ["bob"]
        alice = httpx.get(s.url + "/turnout/usage", headers={"authorization": "Bearer sk-a"}).json()
        assert alice["totals"]["requests"] == 2  # usage: all (the default) sees everyone
    finally:
        s.stop()


def test_rollup_sums_equal_the_rows(tmp_path):
    """Reports read whole quarter hours from the rollup and the edges from the rows: the same sums."""
    import random

    from proxy.usage import api as usage_api
    from proxy.usage.ledger import Ledger

    led = Ledger(str(tmp_path / "r.db"))
    led.open()
    now = time.time()
    rnd = random.Random(7)
    batch = []
    for i in range(3000):
        target = rnd.choice(["paid", "free", None])
        batch.append((now - rnd.random() * 3 * 86400, f"r{i}", rnd.choice(["alice", "bob", None]), "auto", "auto",
                      "rest", target, {"paid": "cloud", "free": "local"}.get(target), rnd.choice([200, 200, 429]),
                      None, 0, 1, rnd.randint(1, 500), rnd.randint(1, 500), rnd.randint(0, 5), rnd.randint(0, 3),
                      rnd.randint(0, 1), rnd.random() / 1000, 5.0, None, None, None, [], [], None))
    for i in range(0, len(batch), 700):  # several batches: rollup rows are added to
        led.write(batch[i:i + 700], [], False, "w")
    conn = led.conn
    for start, end in [(0, now + 1), (now - 86400, now + 1), (now - 2 * 86400 + 123.4, now - 3600.5),
                       (now - 1000, now - 10)]:
        for key in (None, "alice"):
            for by in ("backend, target", "key"):
                raw: dict = {}
                usage_api._raw(conn, start, end, key, by, raw)
                got = usage_api._groups(conn, start, end, key, by)
                assert got.keys() == raw.keys()
                for k in raw:
                    assert got[k][:6] == raw[k][:6] and got[k][7] == raw[k][7]
                    assert got[k][6] == pytest.approx(raw[k][6])
    led.close()
