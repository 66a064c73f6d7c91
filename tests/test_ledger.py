"""Issue 7: the usage ledger — one exact row per request, streamed or not, on the mock and openai
backends, a stream cut short estimated from what was sent, rows flushed in batches and on shutdown."""

from __future__ import annotations

import sqlite3

import httpx
import orjson
import pytest

from proxy.usage import prices

from proxy.usage import tokens
from proxy.server.assembly import build_app
from proxy.config import ConfigError, parse
from proxy.mock.server import build_mock_upstream
from tests.conftest import ServerThread, collect, post, sdk

REPLY = "one two three four five"  # 5 completion tokens for the mock (words and punctuation)
HI = [{"role": "user", "content": "hi there"}]  # 3 per message + 2 words = 5 prompt tokens
PRICE = {"input": 1.0, "output": 2.0, "cached": 0.5}
COST = (5 * 1.0 + 5 * 2.0) / 1e6


def config(db: str, upstream: str | None = None, **usage) -> dict:
    backends = {"cloud": {"type": "mock", "reply": REPLY}, "local": {"type": "mock", "reply": "local says hi"}}
    models = {"paid": {"backend": "cloud", "price": PRICE}, "free": {"backend": "local"},
              "broken": {"backend": "cloud", "price": PRICE}}
    if upstream:
        backends["up"] = {"type": "openai", "base_url": upstream + "/v1", "api_key": "k"}
        models["remote"] = {"backend": "up", "model": "mock-remote", "price": PRICE}
    return {"backends": backends, "models": models,
            "routes": {"auto": {"rules": [{"name": "tools", "when": {"has_tools": True}, "then": ["free"]},
                                          {"name": "rest", "then": ["paid", "free"]}]}},
            "usage": {"ledger": db, **usage}}


def export(base: str, **params) -> list[dict]:
    r = httpx.get(base + "/turnout/usage/export", params=params, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in r.content.splitlines() if line]


@pytest.fixture
def upstream(serve):
    return serve(build_mock_upstream({"reply": REPLY}))


@pytest.mark.parametrize("model", ["paid", "remote"])
def test_non_streamed_and_streamed_rows_are_exact(turnout, upstream, tmp_path, model):
    base = turnout(config(str(tmp_path / "u.db"), upstream))
    client = sdk(base)
    r = client.chat.completions.create(model=model, messages=HI)
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 5
    text, _ = collect(client.chat.completions.create(model=model, messages=HI, stream=True,
                                                     extra_headers={"x-request-id": "stream-1"}))
    assert text == REPLY
    rows = export(base)
    assert len(rows) == 2
    for row, stream in zip(rows, (False, True)):
        assert row["stream"] is stream
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"], row["reasoning_tokens"]) == (5, 5, 0, 0)
        assert row["estimated"] is False
        assert row["cost_usd"] == pytest.approx(COST, abs=1e-15)
        assert row["status"] == 200 and row["target"] == model and row["model"] == model
        assert row["rule"] == "direct" and row["attempts"] == [{"target": model, "outcome": "ok", "status": 200}]
        assert row["latency_ms"] > 0
    assert rows[0]["ttft_ms"] is None and 0 < rows[1]["ttft_ms"] <= rows[1]["latency_ms"]
    assert rows[1]["request_id"] == "stream-1" and rows[1]["chunks"] == 7  # role + 5 words + finish
    assert rows[0]["backend"] == ("cloud" if model == "paid" else "up")


def test_headers_cost_matches_the_row(turnout, tmp_path):
    base = turnout(config(str(tmp_path / "u.db")))
    raw = sdk(base).chat.completions.with_raw_response.create(model="auto", messages=HI)
    assert float(raw.headers["x-turnout-cost-usd"]) == pytest.approx(COST)
    row, = export(base)
    assert row["route"] == "auto" and row["rule"] == "rest" and row["chain"] == ["paid", "free"]
    assert row["features"] == {"has_images": False, "has_tools": False, "turn": "first",
                               # routing needed no token count here: the provider's own count is kept
                               "prompt_tokens": row["prompt_tokens"], "complexity": row["features"]["complexity"],
                               "task": None, "tier": None, "requirement": None, "max_tokens": None}


@pytest.mark.parametrize("model", ["paid", "remote"])
def test_stream_cut_short_counts_what_was_sent_as_estimated(turnout, upstream, tmp_path, model):
    base = turnout(config(str(tmp_path / "u.db"), upstream))
    msgs = [{"role": "user", "content": "hi there [mock:drop=3]"}]
    got = []
    with httpx.stream("POST", base + "/v1/chat/completions", json={"model": model, "messages": msgs, "stream": True},
                      timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got.append(orjson.loads(line[6:]))
    assert "error" in got[-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got[:-1])
    assert text == "one two"
    row, = export(base)
    assert row["status"] == 502 and row["estimated"] is True and row["chunks"] == 3
    assert row["completion_tokens"] == tokens.count("one two") == 2
    assert row["prompt_tokens"] == tokens.count_messages(msgs)
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 1.0 + 2 * 2.0) / 1e6)


def test_failed_request_and_fallbacks_are_recorded_with_why(turnout, tmp_path):
    base = turnout(config(str(tmp_path / "u.db")))
    r = post(base, {"model": "auto", "messages": [{"role": "user", "content": "x [mock:status=503]"}]})
    status = r.status_code
    assert status >= 500
    r = post(base, {"model": "nope", "messages": HI})
    assert r.status_code == 404
    rows = export(base)
    assert len(rows) == 2
    failed, unknown = rows
    assert failed["status"] == status and failed["target"] is None and failed["cost_usd"] == 0
    assert [a["target"] for a in failed["attempts"]] == ["paid", "free"]
    assert all(a["outcome"].split()[0] == str(a["status"]) and a["status"] >= 500 for a in failed["attempts"])
    assert (failed["prompt_tokens"], failed["completion_tokens"]) == (0, 0)
    assert unknown["status"] == 404 and unknown["error"] == "model_not_found" and unknown["model"] == "nope"


def test_no_usage_from_upstream_is_estimated_from_the_answer(serve, turnout, tmp_path):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request):
        return JSONResponse({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "alpha beta gamma"}}]})

    up = serve(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    cfg = config(str(tmp_path / "u.db"), up)
    base = turnout(cfg)
    sdk(base).chat.completions.create(model="remote", messages=HI)
    row, = export(base)
    assert row["estimated"] is True
    assert row["completion_tokens"] == tokens.count("alpha beta gamma")
    assert row["prompt_tokens"] == tokens.count_messages(HI)


def test_rows_are_flushed_within_a_second_and_on_shutdown(tmp_path):
    db = str(tmp_path / "u.db")
    s = ServerThread(build_app(parse(config(db, flush_interval=0.2)))).start()
    try:
        client = sdk(s.url)
        for _ in range(3):
            client.chat.completions.create(model="paid", messages=HI)
        import time

        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as c:
                if c.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 3:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("rows not written within the flush interval")
        client.chat.completions.create(model="paid", messages=HI)
    finally:
        s.stop()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 4
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ledger_never_stores_prompts_or_keys(turnout, tmp_path):
    db = str(tmp_path / "u.db")
    cfg = config(db)
    cfg["keys"] = [{"key": "sk-secret-key-123", "name": "app"}]
    base = turnout(cfg)
    secret = "my very private prompt text"
    sdk(base, api_key="sk-secret-key-123").chat.completions.create(
        model="paid", messages=[{"role": "user", "content": secret}])
    r = httpx.get(base + "/turnout/usage/export", headers={"authorization": "Bearer sk-secret-key-123"})
    assert r.status_code == 200 and orjson.loads(r.content.splitlines()[0])["key"] == "app"
    assert httpx.get(base + "/turnout/usage/export").status_code == 401
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"private prompt" not in raw and b"sk-secret-key-123" not in raw


def test_ledger_off(turnout):
    cfg = config("off")
    base = turnout(cfg)
    sdk(base).chat.completions.create(model="paid", messages=HI)
    r = httpx.get(base + "/turnout/usage")
    assert r.status_code == 404 and r.json()["error"]["code"] == "usage_ledger_off"


# --- prices ----------------------------------------------------------------------------------------


def test_builtin_prices_fill_unpriced_cloud_targets_only():
    raw = {"backends": {"oa": {"type": "openai", "api_key": "k"}, "claude": {"type": "anthropic", "api_key": "k"},
                        "g": {"type": "gemini", "api_key": "k"}, "local": {"type": "ollama"},
                        "vllm": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1"}},
           "models": {"mini": {"backend": "oa", "model": "gpt-4o-mini-2024-07-18"},
                      "sonnet": {"backend": "claude", "model": "claude-sonnet-4-5-20250929"},
                      "flash": {"backend": "g", "model": "gemini-2.5-flash"},
                      "lite": {"backend": "g", "model": "gemini-2.5-flash-lite"},
                      "mine": {"backend": "oa", "model": "gpt-4o", "price": {"input": 0, "output": 0}},
                      "llama": {"backend": "local", "model": "llama3.2"},
                      "vl": {"backend": "vllm", "model": "gpt-4o"},
                      "unknown": {"backend": "oa", "model": "some-new-model"}}}
    m = parse(raw).models
    assert (m["mini"].price.input, m["mini"].price.output, m["mini"].price.cached) == (0.15, 0.60, 0.075)
    assert m["mini"].price_source.startswith("built-in: https://platform.openai.com")
    assert (m["sonnet"].price.input, m["sonnet"].price.output) == (3.0, 15.0)
    assert (m["flash"].price.input, m["lite"].price.input) == (0.30, 0.10)
    assert prices.free(m["mine"]) and m["mine"].price_source == "config"
    assert prices.free(m["llama"]) and prices.free(m["vl"]) and prices.free(m["unknown"])
    for name, e in prices.TABLE.items():
        assert e.source.startswith("https://") and len(e.date) == 10, name


@pytest.mark.parametrize("usage, error", [
    ({"flush_interval": 5}, "usage.flush_interval: at most 1 second"),
    ({"baseline": "nonexistent-model"}, "usage.baseline:"),
    ({"budget": {"daily": 5, "on_exceeded": "explode"}}, "usage.budget.on_exceeded:"),
    ({"budget": {"alert": 0.5}}, "usage.budget: give daily and/or monthly"),
    ({"timezone": "Mars/Olympus"}, "usage.timezone: unknown time zone"),
    ({"bogus": 1}, "usage.bogus: unknown field"),
])
def test_usage_config_errors_name_the_field(usage, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(")):
        parse({"backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}}, "usage": usage})


@pytest.mark.parametrize("where, quota, error", [
    ("backend", {"reserve": 5}, "backends.m.quota: give requests_per_day"),
    ("backend", {"requests_per_day": 10, "reserve": 10}, "backends.m.quota.reserve: must be less"),
    ("target", {"requests_per_day": 10, "reset_hour": 24}, "models.a.quota.reset_hour: expected an hour"),
    ("target", {"tokens_per_day": 10, "timezone": "Nowhere"}, "models.a.quota.timezone: unknown time zone"),
    ("key", {"requests_per_minute": 0}, r"keys\[0\].rate_limit.requests_per_minute: must be at least 1"),
    ("keybudget", {"daily": -1}, r"keys\[0\].budget.daily: must be at least 0"),
])
def test_quota_config_errors_name_the_field(where, quota, error):
    raw = {"backends": {"m": {"type": "mock"}}, "models": {"a": {"backend": "m"}},
           "keys": [{"key": "k", "name": "k"}]}
    if where == "backend":
        raw["backends"]["m"]["quota"] = quota
    elif where == "target":
        raw["models"]["a"]["quota"] = quota
    elif where == "key":
        raw["keys"][0]["rate_limit"] = quota
    else:
        raw["keys"][0]["budget"] = quota
    with pytest.raises(ConfigError, match=error):
        parse(raw)


# --- provider backends: the provider's usage, exactly, streamed and not ------------------------------

PROVIDER_PRICE = {"input": 3.0, "output": 15.0, "cached": 0.3}


def _provider_rows(turnout, tmp_path, backend: dict, model: str) -> list[dict]:
    base = turnout({"backends": {"p": backend}, "models": {"t": {"backend": "p", "model": model,
                                                                 "price": PROVIDER_PRICE}},
                    "usage": {"ledger": str(tmp_path / "u.db")}})
    client = sdk(base)
    r = client.chat.completions.create(model="t", messages=HI)
    _, chunks = collect(client.chat.completions.create(model="t", messages=HI, stream=True,
                                                       stream_options={"include_usage": True}))
    rows = export(base)
    assert len(rows) == 2 and [x["stream"] for x in rows] == [False, True]
    for row, u in zip(rows, (r.usage, chunks[-1].usage)):  # the ledger holds what the client was told
        assert (row["prompt_tokens"], row["completion_tokens"]) == (u.prompt_tokens, u.completion_tokens)
        assert row["estimated"] is False and row["status"] == 200
    return rows


def test_anthropic_usage_with_cache_reads(turnout, serve, tmp_path):
    from tests.emulators.anthropic import Reply, build_app as build_emulator

    emu = build_emulator(api_key="sk-ant-k")
    usage = {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50}
    emu.state.script.extend([Reply(text="a b c", usage=usage), Reply(text="a b c", usage=usage)])
    rows = _provider_rows(turnout, tmp_path, {"type": "anthropic", "base_url": serve(emu), "api_key": "sk-ant-k"},
                          "claude-sonnet-4-5")
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (150, 20, 50)
        assert row["cost_usd"] == pytest.approx((100 * 3.0 + 50 * 0.3 + 20 * 15.0) / 1e6)


def test_gemini_usage_with_cached_and_thoughts(turnout, serve, tmp_path):
    from tests.emulators.gemini import build_gemini_emulator

    emu = build_gemini_emulator("g-key")
    meta = {"promptTokenCount": 100, "candidatesTokenCount": 20, "cachedContentTokenCount": 40,
            "thoughtsTokenCount": 7, "totalTokenCount": 127}
    emu.state.script.extend([{"text": "a b c", "usage": meta}, {"text": "a b c", "usage": meta}])
    rows = _provider_rows(turnout, tmp_path, {"type": "gemini", "base_url": serve(emu), "api_key": "g-key"},
                          "gemini-2.5-flash")
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"], row["reasoning_tokens"]) == \
            (100, 27, 40, 7)
        assert row["cost_usd"] == pytest.approx((60 * 3.0 + 40 * 0.3 + 27 * 15.0) / 1e6)


def test_ollama_usage(turnout, serve, tmp_path):
    from tests.emulators.ollama import build_ollama_emulator

    emu = build_ollama_emulator(["llama3.2:3b"], script={"text": "a b c", "prompt_eval_count": 100, "eval_count": 20})
    rows = _provider_rows(turnout, tmp_path, {"type": "ollama", "base_url": serve(emu)}, "llama3.2:3b")
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"]) == (100, 20)
        assert row["cost_usd"] == pytest.approx((100 * 3.0 + 20 * 15.0) / 1e6)


def test_anthropic_stream_cut_short_is_estimated(turnout, serve, tmp_path):
    from tests.emulators.anthropic import Reply, build_app as build_emulator

    emu = build_emulator(api_key="sk-ant-k")
    emu.state.script.append(Reply(text="alpha beta gamma delta epsilon", usage={"input_tokens": 100}, drop=5))
    base = turnout({"backends": {"p": {"type": "anthropic", "base_url": serve(emu), "api_key": "sk-ant-k"}},
                    "models": {"t": {"backend": "p", "model": "claude-sonnet-4-5", "price": PROVIDER_PRICE}},
                    "usage": {"ledger": str(tmp_path / "u.db")}})
    text = ""
    with httpx.stream("POST", base + "/v1/chat/completions", json={"model": "t", "messages": HI, "stream": True},
                      timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"choices"' in line:
                text += "".join(c["delta"].get("content") or "" for c in orjson.loads(line[6:])["choices"])
    assert text and text != "alpha beta gamma delta epsilon"
    row, = export(base)
    assert row["status"] != 200 and row["estimated"] is True
    # a dropped connection leaves no usage on the call (message_start's input count is not kept by the
    # backend): both counts are tiktoken estimates of what was asked and what was sent
    assert row["prompt_tokens"] == tokens.count_messages(HI) and row["completion_tokens"] == tokens.count(text)
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 3.0 + row["completion_tokens"] * 15.0) / 1e6)


def test_client_disconnect_mid_stream_counts_what_was_sent(turnout, tmp_path):
    base = turnout(config(str(tmp_path / "u.db")))
    msgs = [{"role": "user", "content": "hi [mock:chunk_delay=0.05 chunks=40]"}]
    got = []
    with httpx.stream("POST", base + "/v1/chat/completions", json={"model": "paid", "messages": msgs, "stream": True},
                      timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got.append(orjson.loads(line[6:]))
            if len(got) == 4:
                break  # the client goes away
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = export(base)
        if rows:
            break
        time.sleep(0.1)
    row, = rows
    assert row["estimated"] is True and row["stream"] is True
    assert (row["status"], row["error"]) == (499, "client_disconnected")
    assert 4 <= row["chunks"] < 40
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in got)
    assert row["completion_tokens"] >= tokens.count(sent) and row["completion_tokens"] < 40
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 1.0 + row["completion_tokens"] * 2.0) / 1e6)


def test_retention_deletes_old_rows(tmp_path):
    db = str(tmp_path / "u.db")
    s = ServerThread(build_app(parse(config(db, retention_days=30, flush_interval=0.1)))).start()
    try:
        sdk(s.url).chat.completions.create(model="paid", messages=HI)
        assert len(export(s.url)) == 1
        import time

        with sqlite3.connect(db) as c:  # an old row, as if written 31 days ago
            c.execute("INSERT INTO requests (ts, model, status) VALUES (?, 'old', 200)", (time.time() - 31 * 86400,))
        recorder = s.config.app.state.turnout.usage.recorder
        recorder.next_prune = 0  # due now: the writer prunes on its next round
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(export(s.url)) != 1:
            time.sleep(0.1)
        assert [r["model"] for r in export(s.url)] == ["paid"]
    finally:
        s.stop()


def test_a_hard_crash_loses_at_most_the_flush_interval(tmp_path):
    """kill -9 after the interval: every row is on disk, and the quota continues from them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import free_port

    db, port = str(tmp_path / "u.db"), free_port()
    raw = config(db)
    raw["server"] = {"host": "127.0.0.1", "port": port, "log_level": "warning"}
    raw["backends"]["cloud"]["quota"] = {"requests_per_day": 10, "reserve": 4}
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "proxy.yaml")]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/health", timeout=0.5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "turnout did not start"
                time.sleep(0.05)
        for _ in range(5):
            assert post(base, {"model": "auto", "messages": HI}).headers["x-turnout-model"] == "paid"
        time.sleep(1.2)  # one flush interval
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 5
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/health", timeout=0.5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "turnout did not restart"
                time.sleep(0.05)
        r = post(base, {"model": "auto", "messages": HI})  # 5 used, 5 left: one more, then the reserve
        assert r.headers["x-turnout-model"] == "paid"
        r = post(base, {"model": "auto", "messages": HI})
        assert r.headers["x-turnout-model"] == "free" and "4 requests left today" in r.headers["x-turnout-fallbacks"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
