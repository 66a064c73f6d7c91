"""Config reload without a restart: POST /turnout/admin/reload under load (zero failed requests, the
new route served, counters and pools carried over), an invalid file rejected while the old config
serves, admin keys only, and SIGHUP on a real `turnout serve` process."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from proxy.config import load
from proxy.mock.server import build_mock_upstream
from proxy.server.assembly import build_app

from .conftest import TurnoutProcess, sdk

ADMIN = {"authorization": "Bearer sk-admin"}
MSG = [{"role": "user", "content": "hello there"}]


def _config(routes: dict[str, Any], upstream: str = "http://127.0.0.1:9", total: float = 600,
            **extra: Any) -> dict[str, Any]:
    extra.setdefault("usage", {"ledger": "off"})
    return {
        "backends": {"m": {"type": "mock", "chunk_delay": 0.02, "latency": 0.05, "chunks": 12},
                     # over HTTP: a reload that changes it closes the old pool once its requests are done
                     "up": {"type": "openai", "base_url": upstream + "/v1", "timeout": {"total": total},
                            "probe": False}},
        "models": {"a": {"backend": "m"}, "b": {"backend": "m", "model": "other"},
                   "u": {"backend": "up", "model": "gpt-4o-mini"}},
        "routes": routes,
        "keys": [{"key": "sk-admin", "name": "ops", "role": "admin"}, {"key": "sk-user", "name": "app"},
                 {"key": "sk-small", "name": "small", "rate_limit": {"requests_per_minute": 2}}],
        **extra,
    }


def _write(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg))


async def _load(base: str, n: int, started: asyncio.Event) -> list[str]:
    """n requests at once, half streamed (the SDK) and half not (httpx); what went wrong with each, if anything."""
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-user", max_retries=0, timeout=60)
    plain = httpx.AsyncClient(base_url=base, headers={"authorization": "Bearer sk-user"}, timeout=60)
    running = 0

    async def one(i: int) -> str:
        nonlocal running
        running += 1
        if running >= n // 2:
            started.set()
        try:
            if i % 2:
                stream = await client.chat.completions.create(model="r", messages=MSG, stream=True)
                chunks = [c async for c in stream]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                return "" if text and chunks[-1].choices[0].finish_reason == "stop" else f"stream {i}: {text!r}"
            r = await plain.post("/v1/chat/completions", json={"model": "r", "messages": MSG})
            ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            return "" if ok else f"{i}: {r.status_code} {r.text[:200]}"
        except Exception as e:  # noqa: BLE001 - every failure is reported by the assertion
            return f"{i}: {type(e).__name__}: {e}"

    out = await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    await plain.aclose()
    return [x for x in out if x]


def test_reload_under_load_drops_nothing(serve: Any, tmp_path: Path) -> None:
    up = serve(build_mock_upstream({"chunk_delay": 0.02, "latency": 0.05, "chunks": 12}))
    path = tmp_path / "proxy.yaml"
    ledger = {"ledger": str(tmp_path / "ledger.sqlite")}  # the ledger and its writer carry over
    _write(path, _config({"r": ["u"]}, up, usage=ledger))
    app = build_app(load(str(path)))
    base = serve(app)
    before = app.state.turnout
    small = sdk(base, "sk-small")
    small.chat.completions.create(model="a", messages=MSG)
    small.chat.completions.create(model="a", messages=MSG)  # its 2 a minute are used

    # a new route; backend m unchanged, backend up changed (a new pool; the old one closes when drained)
    _write(path, _config({"r": ["u"], "r2": ["b", "a"]}, up, total=300, usage=ledger))

    async def main() -> tuple[list[str], httpx.Response]:
        started = asyncio.Event()
        load_task = asyncio.create_task(_load(base, 300, started))
        await started.wait()
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            reloaded = await c.post("/turnout/admin/reload", headers=ADMIN)
        return await load_task, reloaded

    failures, reloaded = asyncio.run(main())
    assert reloaded.status_code == 200, reloaded.text
    assert "r2" in reloaded.json()["routes"]
    assert failures == []  # 300 requests, half of them streams, in flight across the swap
    after = app.state.turnout
    assert after is not before and after.cfg.routes.keys() == {"r", "r2"}
    assert after.backends["m"] is before.backends["m"]  # unchanged backend: same object, same pool
    assert after.backends["up"] is not before.backends["up"]
    deadline = time.monotonic() + 5
    while before.backends["up"].client._session is not None:  # the old pool closes after its requests
        assert time.monotonic() < deadline, "the replaced backend's pool was never closed"
        time.sleep(0.05)
    assert after.state is before.state
    r = sdk(base, "sk-user").chat.completions.with_raw_response.create(model="r2", messages=MSG)
    assert r.headers["x-turnout-route"] == "r2" and r.headers["x-turnout-model"] == "b"
    try:  # the rate limit's counter carried over: the third request of the minute is refused
        small.chat.completions.create(model="a", messages=MSG)
        raise AssertionError("the rate limit was reset by the reload")
    except openai.RateLimitError:
        pass
    metrics = httpx.get(base + "/metrics").text
    assert 'turnout_config_reloads_total{result="ok"} 1.0' in metrics
    assert after.usage.recorder is before.usage.recorder
    usage = httpx.get(base + "/turnout/usage", headers=ADMIN).json()  # every request of both configs recorded
    assert usage["totals"]["requests"] >= 303, usage["totals"]  # 2 + 300 + 1 answered (and the refused one)


def test_invalid_config_is_rejected_and_the_old_one_serves(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    _write(path, _config({"r": ["a"]}))
    app = build_app(load(str(path)))
    base = serve(app)
    before = app.state.turnout
    _write(path, _config({"r": ["a", "nope"]}))
    r = httpx.post(base + "/turnout/admin/reload", headers=ADMIN)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_config" and "routes.r.chain[1]: unknown model target 'nope'" in err["message"]
    path.write_text("backends: [oops")  # not even YAML
    r = httpx.post(base + "/turnout/admin/reload", headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_config"
    assert app.state.turnout is before
    answer = sdk(base, "sk-user").chat.completions.create(model="r", messages=MSG)
    assert answer.choices[0].message.content
    # only admin keys may reload
    for headers, status in (({"authorization": "Bearer sk-user"}, 403), ({}, 401)):
        r = httpx.post(base + "/turnout/admin/reload", headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] in ("admin_key_required", "missing_api_key")
    metrics = httpx.get(base + "/metrics").text
    assert 'turnout_config_reloads_total{result="invalid"} 2.0' in metrics
    assert 'turnout_config_reloads_total{result="ok"}' not in metrics


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    _write(path, _config({"r": ["a"]}, server={"log_level": "warning"}))
    server = TurnoutProcess(str(path)).wait_ready()
    try:
        client = sdk(server.url, "sk-user")
        try:
            client.chat.completions.create(model="r2", messages=MSG)
            raise AssertionError("r2 exists before the reload")
        except openai.NotFoundError:
            pass
        _write(path, _config({"r": ["a"], "r2": ["b"]}, server={"log_level": "warning"}))
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                r = client.chat.completions.with_raw_response.create(model="r2", messages=MSG)
                break
            except openai.NotFoundError:
                assert time.monotonic() < deadline, "SIGHUP did not reload the config"
                time.sleep(0.1)
        assert r.headers["x-turnout-model"] == "b"
        assert server.proc.poll() is None  # the same process: reloaded, not restarted
    finally:
        server.stop()
