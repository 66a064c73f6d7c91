"""Issue 7: `turnout simulate` — a traffic mix, and a replay of the ledger through another config."""

from __future__ import annotations

import io
import json
import sys

import pytest
import yaml

from proxy.usage import simulate
from proxy.server.assembly import build_app
from proxy.cli import main as cli_main
from proxy.config import ConfigError, load, parse
from tests.conftest import ServerThread, collect, sdk

HI = [{"role": "user", "content": "hi there"}]  # 5 prompt tokens; replies below have 5 / 3
PAID = {"input": 1.0, "output": 2.0}


def current(db: str) -> dict:
    """Today's config: everything goes to the paid target."""
    return {"backends": {"cloud": {"type": "mock", "reply": "one two three four five"},
                         "local": {"type": "mock", "reply": "uno dos tres"}},
            "models": {"paid": {"backend": "cloud", "price": PAID, "vision": True}, "free": {"backend": "local"}},
            "routes": {"auto": ["paid", "free"]},
            "usage": {"ledger": db, "baseline": "gpt-4o"}}


def proposed(db: str, quota: dict | None = None) -> dict:
    """The new config: translations and simple requests go to the free local target."""
    raw = current(db)
    raw["routes"] = {"auto": {"rules": [
        {"name": "translate", "when": {"task": "translate"}, "then": ["free"]},
        {"name": "vision", "when": {"has_images": True}, "then": ["paid"]},
        {"name": "rest", "then": ["paid", "free"]}]}}
    if quota:
        raw["backends"]["cloud"]["quota"] = quota
    return raw


def cli(*argv: str) -> str:
    out = io.StringIO()
    old, sys.stdout = sys.stdout, out
    try:
        with pytest.raises(SystemExit) as e:
            cli_main(list(argv))
    finally:
        sys.stdout = old
    assert e.value.code == 0
    return out.getvalue()


@pytest.fixture
def ledger(tmp_path):
    """A ledger of 6 requests under the current config: 4 translations, 2 others (one streamed)."""
    db = str(tmp_path / "usage.db")
    s = ServerThread(build_app(parse(current(db)))).start()
    client = sdk(s.url)
    for _ in range(4):
        client.chat.completions.create(model="auto", messages=HI, extra_headers={"x-turnout-task": "translate"})
    client.chat.completions.create(model="auto", messages=HI)
    collect(client.chat.completions.create(model="auto", messages=HI, stream=True))
    s.stop()
    for name, raw in (("current.yaml", current(db)), ("new.yaml", proposed(db))):
        (tmp_path / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return db, tmp_path


def test_replaying_the_same_config_reproduces_the_recorded_cost(ledger):
    db, d = ledger
    res = json.loads(cli("simulate", str(d / "current.yaml"), "--replay", "--json"))
    t = res["totals"]
    assert t["calls"] == 6 and t["prompt_tokens"] == 30 and t["completion_tokens"] == 30
    assert t["cost_usd"] == pytest.approx(6 * 15 / 1e6) == pytest.approx(res["recorded_cost_usd"])
    assert res["baseline"]["model"] == "gpt-4o"
    assert t["baseline_cost_usd"] == pytest.approx((30 * 2.5 + 30 * 10.0) / 1e6)
    usage = json.loads(cli("usage", "--config", str(d / "current.yaml"), "--json"))
    assert usage["totals"]["cost_usd"] == pytest.approx(t["cost_usd"])  # simulation agrees with the ledger


def test_replay_through_another_config(ledger):
    db, d = ledger
    res = json.loads(cli("simulate", str(d / "new.yaml"), "--json", "--days", "7"))
    by = {x["name"]: x for x in res["targets"]}
    assert by["free"]["calls"] == 4 and by["free"]["cost_usd"] == 0
    assert by["paid"]["calls"] == 2 and by["paid"]["cost_usd"] == pytest.approx(2 * 15 / 1e6)
    assert res["recorded_cost_usd"] == pytest.approx(6 * 15 / 1e6)
    assert res["totals"]["savings_usd"] == pytest.approx(res["totals"]["baseline_cost_usd"] - 2 * 15 / 1e6)
    text = cli("simulate", str(d / "new.yaml"))
    assert "free" in text and "paid" in text and "this config saves $6e-05" in text
    assert "all on gpt-4o (baseline)" in text


def test_replay_honours_quotas_per_day(ledger):
    db, d = ledger
    cfg = parse(proposed(db, quota={"requests_per_day": 3, "reserve": 1}))
    import sqlite3

    with sqlite3.connect(db) as conn:
        res = simulate.replay(cfg, conn, since=None, until=None, days=None).as_dict()
    by = {x["name"]: x["calls"] for x in res["targets"]}
    assert by == {"free": 4, "paid": 2}  # 2 paid calls leave 1 = the reserve: nothing else would have gone there


def test_mix_file(tmp_path):
    mix = {"model": "auto", "requests_per_day": 100, "days": 3, "tasks": [
        {"name": "chat", "share": 0.6, "prompt_tokens": 1000, "completion_tokens": 200},
        {"name": "translate", "share": 0.3, "task": "translate", "prompt_tokens": 300, "completion_tokens": 300},
        {"name": "photos", "share": 0.1, "has_images": True, "prompt_tokens": 1500, "completion_tokens": 100}]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(mix))
    cfg = parse(proposed(str(tmp_path / "u.db"), quota={"requests_per_day": 50}))
    res = simulate.run_mix(cfg, str(tmp_path / "mix.yaml")).as_dict()
    by = {x["name"]: x for x in res["targets"]}
    # per day: 60 chat + 10 photos want paid, the quota allows 50: 40 chat overflow to free (photos have no fallback)
    assert res["totals"]["calls"] + sum(res["unserved"].values()) == 300
    assert by["paid"]["calls"] == 150
    served_photos = sum(v for k, v in res["tasks"]["photos"].items())
    assert by["free"]["calls"] == 300 - 150 - (30 - served_photos)
    assert by["paid"]["cost_usd"] == pytest.approx(
        sum(p * 1.0 + c * 2.0 for p, c in [(1000, 200)] * (150 - served_photos) + [(1500, 100)] * served_photos) / 1e6)
    assert res["days"] == 3 and res["totals"]["per_day_usd"] == pytest.approx(res["totals"]["cost_usd"] / 3)
    out = cli("simulate", str(tmp_path / "cfg.yaml"), "--mix", str(tmp_path / "mix.yaml"), "--days", "1") \
        if (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(proposed(str(tmp_path / "u.db")), sort_keys=False)) else ""
    assert "per task:" in out and "translate" in out and "free 100%" in out


def test_mix_without_quota_is_exact(tmp_path):
    mix = {"requests_per_day": 10, "tasks": [
        {"name": "chat", "share": 0.5, "prompt_tokens": 100, "completion_tokens": 50},
        {"name": "translate", "share": 0.5, "task": "translate", "prompt_tokens": 100, "completion_tokens": 50}]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(mix))
    cfg = parse(proposed(str(tmp_path / "u.db")))
    res = simulate.run_mix(cfg, str(tmp_path / "mix.yaml"), days=2).as_dict()
    by = {x["name"]: x for x in res["targets"]}
    assert by["paid"]["calls"] == by["free"]["calls"] == 10
    assert res["totals"]["cost_usd"] == pytest.approx(10 * (100 * 1.0 + 50 * 2.0) / 1e6)
    assert res["totals"]["baseline_cost_usd"] == pytest.approx(20 * (100 * 2.5 + 50 * 10.0) / 1e6)


@pytest.mark.parametrize("mix, error", [
    ({"tasks": []}, "mix.requests_per_day"),
    ({"requests_per_day": 10, "tasks": [{"share": 1, "prompt_tokens": 1}]}, r"mix.tasks\[0\].completion_tokens"),
    ({"requests_per_day": 10, "tasks": [{"share": 1, "prompt_tokens": 1, "completion_tokens": 1, "colour": 1}]},
     r"mix.tasks\[0\].colour: unknown field"),
    ({"requests_per_day": 10, "tasks": [{"share": 1, "prompt_tokens": 1, "completion_tokens": 1, "turn": "third"}]},
     r"mix.tasks\[0\].turn"),
])
def test_mix_errors_name_the_field(tmp_path, mix, error):
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(mix))
    with pytest.raises(ConfigError, match=error):
        simulate.load_mix(str(tmp_path / "mix.yaml"))
