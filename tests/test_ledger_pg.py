"""Issue 14 item 3: the ledger on PostgreSQL. The same traffic into a SQLite ledger and a PostgreSQL
ledger gives the same report, export, `turnout usage` and `simulate` replay; the schema is created
and migrated at start; two `turnout serve` processes writing one PostgreSQL ledger leave exactly
one row per request sent. Each test gets its own database (tests/pgdb.py)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import psycopg
import pytest
import yaml

from proxy.cli import main as cli_main
from proxy.config import parse
from proxy.server.assembly import build_app
from proxy.usage import api as usage_api
from proxy.usage.ledger import MIGRATIONS, Ledger, connect
from tests.conftest import ServerThread, collect, free_port, post, sdk

HI = [{"role": "user", "content": "hi there"}]
P = {"input": 1.0, "output": 2.0}
BASE = {"input": 10.0, "output": 20.0}


def config(ledger: str) -> dict:
    return {
        "backends": {"cloud": {"type": "mock", "reply": "one two three four five",
                               "quota": {"requests_per_day": 100, "reserve": 10}},
                     "local": {"type": "mock", "reply": "uno dos tres"},
                     "down": {"type": "mock", "fail": {"status": 503}}},
        "models": {"paid": {"backend": "cloud", "price": P}, "free": {"backend": "local"},
                   "big": {"backend": "cloud", "price": BASE}, "broken": {"backend": "down", "price": P}},
        "routes": {"auto": {"rules": [{"name": "translate", "when": {"task": "translate"}, "then": ["free"]},
                                      {"name": "rest", "then": ["broken", "paid", "free"]}]}},
        "keys": [{"key": "sk-a", "name": "alice", "budget": {"daily": 1.0}, "role": "admin"}, {"key": "sk-b", "name": "bob"}],
        "usage": {"ledger": ledger, "baseline": "big"},
    }


def drive(url: str) -> None:
    """The same traffic, in the same order: chat, streams, a fallback past a failing target, a 404,
    and a stored Responses conversation (stored in the ledger's database)."""
    a, b = sdk(url, api_key="sk-a"), sdk(url, api_key="sk-b")
    a.chat.completions.create(model="auto", messages=HI)
    collect(a.chat.completions.create(model="auto", messages=HI, stream=True))
    b.chat.completions.create(model="auto", messages=HI, extra_headers={"x-turnout-task": "translate"})
    b.chat.completions.create(model="paid", messages=HI)
    assert post(url, {"model": "nope", "messages": HI}, headers={"authorization": "Bearer sk-b"}).status_code == 404
    r = a.responses.create(model="paid", input="hi there", store=True, max_output_tokens=64)
    r2 = a.responses.create(model="paid", input="and again", previous_response_id=r.id, max_output_tokens=64)
    assert r2.previous_response_id == r.id
    assert a.responses.retrieve(r.id).id == r.id
    with pytest.raises(Exception):  # another key cannot see it
        b.responses.retrieve(r.id)
    a.responses.delete(r2.id)


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


def get(url: str, path: str, **params: str) -> httpx.Response:
    r = httpx.get(url + path, params=params, headers={"authorization": "Bearer sk-a"}, timeout=10)
    assert r.status_code == 200, r.text
    return r


VOLATILE = ("id", "ts", "time", "request_id", "latency_ms", "ttft_ms")


def test_same_traffic_same_reports_on_sqlite_and_postgresql(postgres_url, tmp_path):
    out = {}
    for name, ledger in (("sqlite", str(tmp_path / "u.db")), ("pg", postgres_url)):
        raw = config(ledger)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        s = ServerThread(build_app(parse(raw))).start()
        try:
            drive(s.url)
            reports = [get(s.url, "/turnout/usage").json(), get(s.url, "/turnout/usage", period="today", key="bob").json()]
            export = [orjson.loads(x) for x in get(s.url, "/turnout/usage/export").content.splitlines()]
        finally:
            s.stop()  # shutdown flushes; the CLI reads the database directly
        cli_report = json.loads(cli("usage", "--config", str(path), "--json"))
        table = cli("usage", "--config", str(path)).splitlines()[1:]  # the first line has the time of asking
        exported = [orjson.loads(x) for x in cli("usage", "export", "--config", str(path)).splitlines()]
        replay = json.loads(cli("simulate", str(path), "--json"))
        for r in (*reports, cli_report):
            r["period"].pop("until")
        assert exported == export
        for row in export:
            for k in VOLATILE:
                row.pop(k)
        replay.pop("config"), replay.pop("source")
        out[name] = {"reports": reports, "cli": cli_report, "table": table, "export": export, "replay": replay}

    sq, pg = out["sqlite"], out["pg"]
    t = pg["reports"][0]["totals"]
    # 6 answered, a 404, and GET, a refused GET and DELETE of a stored response: 10 rows
    assert t["requests"] == 10 and t["answered"] == 6 and t["failed_attempts"] == 2 and t["cost_usd"] > 0
    assert {k["name"]: k["calls"] for k in pg["reports"][0]["keys"]} == {"alice": 6, "bob": 4}
    assert pg["reports"] == sq["reports"]
    assert pg["cli"] == sq["cli"] and pg["cli"]["totals"] == pg["reports"][0]["totals"]
    assert pg["table"] == sq["table"]
    assert len(pg["export"]) == 10 and pg["export"] == sq["export"]
    assert pg["replay"]["totals"]["calls"] == 6 and pg["replay"] == sq["replay"]
    with psycopg.connect(postgres_url) as c:  # stored responses live in the same database; one was deleted
        assert c.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 1
        assert c.execute("SELECT SUM(requests) FROM rollup").fetchone()[0] == 10


def test_rollup_and_report_agree_with_sqlite_over_three_days(postgres_url, tmp_path):
    """3,000 rows over three days through the writer of each dialect: reports for periods with whole
    quarter hours (read from the rollup, whose buckets each dialect computes) and ragged edges agree."""
    now = time.time()
    rnd = random.Random(7)
    batch = []
    for i in range(3000):
        target = rnd.choice(["paid", "free", None])
        batch.append((now - rnd.random() * 3 * 86400, f"r{i}", rnd.choice(["alice", "bob", None]), "auto", "auto",
                      "rest", target, {"paid": "cloud", "free": "local"}.get(target), rnd.choice([200, 200, 429]),
                      None, 0, 1, rnd.randint(1, 500), rnd.randint(1, 500), rnd.randint(0, 5), rnd.randint(0, 3),
                      rnd.randint(0, 1), rnd.random() / 1000, 5.0, None, None, None, ["paid"], [], None))
    cfg = parse(config(":memory:"))
    reports = []
    for url in (str(tmp_path / "r.db"), postgres_url):
        led = Ledger(url)
        led.open()
        for i in range(0, len(batch), 700):
            led.write(batch[i:i + 700], [("quota:backend:cloud", now - 10, 3, 30, 0.0)], True, "w1")
        assert led.conn is not None
        reports.append([usage_api.report(led.conn, cfg, since=str(s), until=str(e), key=k, now=now)
                        for s, e in [(0, now + 1), (now - 86400, now + 1), (now - 2 * 86400 + 123.4, now - 3600.5)]
                        for k in (None, "alice")])
        rolled = led.conn.execute("SELECT SUM(requests), SUM(prompt_tokens) FROM rollup").fetchone()
        assert tuple(rolled) == (3000, sum(r[12] for r in batch))
        led.close()
    sq, pg = reports
    assert pg[0]["totals"]["requests"] == 3000
    assert pg == sq


def test_schema_is_created_and_migrated_once_by_replicas_starting_together(postgres_url):
    """An older ledger (no version table, no rollup, no cache columns) is migrated: the columns are
    added, the rollup is built from its rows.
    Eight connections migrating at the same moment do it once, without an error."""
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute("CREATE TABLE requests (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                  "ts DOUBLE PRECISION NOT NULL, request_id TEXT, key TEXT, model TEXT, route TEXT, rule TEXT, "
                  "chain TEXT, attempts TEXT, target TEXT, backend TEXT, status INTEGER, error TEXT, stream INTEGER, "
                  "chunks INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER, "
                  "reasoning_tokens INTEGER, estimated INTEGER, cost_usd DOUBLE PRECISION, "
                  "latency_ms DOUBLE PRECISION, ttft_ms DOUBLE PRECISION, features TEXT)")
        c.execute("INSERT INTO requests (ts, key, target, backend, status, prompt_tokens, completion_tokens, "
                  "cached_tokens, reasoning_tokens, estimated, cost_usd) VALUES "
                  "(899.9, 'a', 'paid', 'cloud', 200, 5, 5, 0, 0, 0, 0.5), (900.0, 'a', 'paid', 'cloud', 500, 1, 0, 0, 0, 1, 0.25)")

    def start(_: int) -> int:
        db = connect(postgres_url)
        try:
            return db.execute("SELECT version FROM ledger_schema").fetchone()[0]
        finally:
            db.close()

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(start, range(8))) == {len(MIGRATIONS)}
    with psycopg.connect(postgres_url) as c:
        cols = [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns "
                                        "WHERE table_name = 'requests'")]
        assert {"cache", "saved_usd"} <= set(cols)  # columns added since: the old table gained them
        rows = c.execute("SELECT bucket, requests, ok, prompt_tokens, cost_usd, estimated FROM rollup "
                         "ORDER BY bucket").fetchall()
        assert rows == [(0, 1, 1, 5, 0.5, 0), (1, 1, 0, 1, 0.25, 1)]  # floor, not rounding: 899.9 is bucket 0
        assert c.execute("SELECT COUNT(*) FROM ledger_schema").fetchone()[0] == 1


def _wait(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "turnout exited at start"
        try:
            if httpx.get(base + "/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "turnout did not start"
        time.sleep(0.05)


def test_two_replicas_write_one_ledger_one_row_per_request(postgres_url, tmp_path):
    """Two `turnout serve` processes (as two hosts would run) on one PostgreSQL ledger, driven
    concurrently; rows are still queued when they are stopped (SIGTERM): shutdown flushes them.
    The ledger then holds exactly the requests sent — by request id — and the rollup agrees."""
    procs, bases = [], []
    try:
        for i in range(2):
            port = free_port()
            raw = config(postgres_url)
            raw["server"] = {"host": "127.0.0.1", "port": port, "log_level": "warning"}
            raw["usage"].update(flush_interval=1, batch_size=10_000)
            path = tmp_path / f"replica{i}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            procs.append(subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(path)],
                                          stderr=subprocess.DEVNULL))
            bases.append(f"http://127.0.0.1:{port}")
        for base, proc in zip(bases, procs):
            _wait(base, proc)

        sent = [f"req-{i:03d}" for i in range(40)]

        def one(i: int) -> int:
            base = bases[i % 2]
            body = {"model": "paid" if i % 2 else "free", "messages": HI, "stream": i % 4 == 0}
            key = "sk-a" if i % 3 else "sk-b"
            return post(base, body, headers={"authorization": f"Bearer {key}", "x-request-id": sent[i]}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(len(sent)))) == {200}
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its clean shutdown
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    with psycopg.connect(postgres_url) as c:
        ids = [r[0] for r in c.execute("SELECT request_id FROM requests ORDER BY request_id")]
        assert ids == sent
        assert c.execute("SELECT COUNT(DISTINCT id) FROM requests").fetchone()[0] == len(sent)
        assert c.execute("SELECT SUM(requests) FROM rollup").fetchone()[0] == len(sent)
        workers = c.execute("SELECT COUNT(DISTINCT worker) FROM counters WHERE worker != 'ledger'").fetchone()[0]
        assert workers == 2  # each replica saved its own quota and budget counters
    report = json.loads(cli("usage", "--config", str(tmp_path / "replica0.yaml"), "--json"))
    assert report["totals"]["requests"] == len(sent) and report["totals"]["ok"] == len(sent)


def test_a_password_never_reaches_the_banner_or_errors(tmp_path):
    from proxy.usage.cli import usage_lines
    from proxy.usage.db import label

    url = "postgresql://turnout:s3cret@127.0.0.1:1/nowhere"
    assert label(url) == "postgresql://turnout:***@127.0.0.1:1/nowhere"
    assert "s3cret" not in "\n".join(usage_lines(parse(config(url))))
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config(url)))
    with pytest.raises(SystemExit) as e:  # nothing listens on port 1
        cli_main(["usage", "--config", str(path)])
    assert "s3cret" not in str(e.value) and "***" in str(e.value)


def test_a_dropped_connection_is_opened_again(postgres_url, turnout):
    """The server ends the ledger's connection (a restart, a failover): the next write and the
    next report reconnect by themselves; no row is lost and no request fails."""
    url = turnout(config(postgres_url))
    client = sdk(url, api_key="sk-a")
    client.chat.completions.create(model="paid", messages=HI)
    assert get(url, "/turnout/usage").json()["totals"]["requests"] == 1
    with psycopg.connect(postgres_url, autocommit=True) as c:
        killed = c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid != pg_backend_pid()").fetchall()
    assert killed and all(k for (k,) in killed)
    client.chat.completions.create(model="paid", messages=HI)
    assert get(url, "/turnout/usage").json()["totals"]["requests"] == 2
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = current_database() AND pid != pg_backend_pid()")
    assert len(get(url, "/turnout/usage/export").content.splitlines()) == 2
