"""Proxy keys at run time: created with `turnout keys` and /turnout/admin/keys, kept hashed in the
ledger database, honoured and revoked across two Turnout processes sharing it; limits, routes,
expiry and rotation of a stored key; proxy.yaml keys keep working."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from .conftest import TurnoutProcess, sdk

ADMIN = {"authorization": "Bearer sk-admin"}
MSG = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[1]


def _config(ledger: Path, keys: bool = True) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning"},
        "backends": {"m": {"type": "mock"}},
        "models": {"a": {"backend": "m"}, "b": {"backend": "m"}},
        "routes": {"r": ["a"]},
        "keys": [{"key": "sk-admin", "name": "ops", "role": "admin"}, {"key": "sk-yaml", "name": "yaml"}] if keys else [],
        "usage": {"ledger": str(ledger), "flush_interval": 0.2},
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "proxy", "keys", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def _status(base: str, key: str, model: str = "r") -> int:
    return httpx.post(base + "/v1/chat/completions", json={"model": model, "messages": MSG},
                      headers={"authorization": f"Bearer {key}"}, timeout=30).status_code


def _until(pred: Any, timeout: float = 5.0) -> float:
    """Seconds until `pred()` holds (polling every 50 ms); fails after `timeout`."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition never held"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_two_processes_share_created_and_revoked_keys(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(_config(ledger)))
    one, two = TurnoutProcess(str(path)), TurnoutProcess(str(path))
    try:
        one.wait_ready()
        two.wait_ready()
        made = _cli("--config", str(path), "create", "--name", "app", "--tier", "free", "--rpm", "100")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert secret.startswith("tk-") and len(secret) > 30
        for server in (one, two):  # created through the CLI: both serve it, and the yaml keys still work
            assert sdk(server.url, secret).chat.completions.create(model="r", messages=MSG).choices[0].message.content
            assert _status(server.url, "sk-yaml") == 200
            assert _status(server.url, "tk-not-a-key") == 401
        # stored hashed: the secret is nowhere in the database, its hash and prefix are
        rows = sqlite3.connect(ledger).execute("SELECT hash, prefix, name FROM api_keys").fetchall()
        assert rows == [(hashlib.sha256(secret.encode()).hexdigest(), secret[:10], "app")]
        assert secret.encode() not in ledger.read_bytes()
        listed = httpx.get(two.url + "/turnout/admin/keys", headers=ADMIN).json()["data"]
        assert [(k["name"], k["prefix"], k["tier"], k["rpm"], k["status"]) for k in listed] == \
            [("app", secret[:10], "free", 100, "active")]
        assert secret not in str(listed)
        cli_list = _cli("--config", str(path), "list")
        assert secret[:10] in cli_list.stdout and secret not in cli_list.stdout
        # revoked through the admin API of one process: refused by both (each asks the table at most once a second)
        r = httpx.delete(one.url + "/turnout/admin/keys/app", headers=ADMIN)
        assert r.status_code == 200 and r.json()["status"] == "revoked"
        waits = [_until(lambda s=s: _status(s.url, secret) == 401) for s in (one, two)]
        assert all(w < 5 for w in waits)
        err = httpx.post(two.url + "/v1/chat/completions", json={"model": "r", "messages": MSG},
                         headers={"authorization": f"Bearer {secret}"}).json()["error"]
        assert err["code"] == "invalid_api_key"
    finally:
        one.stop()
        two.stop()


def test_admin_api_limits_routes_rotation_expiry(turnout: Any, tmp_path: Path) -> None:
    base = turnout(_config(tmp_path / "ledger.sqlite"))
    admin = httpx.Client(base_url=base, headers=ADMIN, timeout=30)
    r = admin.post("/turnout/admin/keys", json={"name": "team-a", "tier": "pro", "rpm": 2, "routes": ["r"]})
    assert r.status_code == 201
    made = r.json()
    secret = made["key"]
    assert made["prefix"] == secret[:10] and made["routes"] == ["r"] and made["role"] == "user" and "hash" not in made
    client = sdk(base, secret)
    r1 = client.chat.completions.with_raw_response.create(model="r", messages=MSG)
    assert r1.headers["x-turnout-model"] == "a"
    with pytest.raises(openai.NotFoundError) as e:  # its routes: r only (to this key, b does not exist)
        client.chat.completions.create(model="b", messages=MSG)
    assert e.value.body["code"] == "model_not_found"
    assert [_status(base, secret) for _ in range(3)].count(429) >= 1  # 2 a minute
    # rotation: a new secret with the same settings, the old one refused at once in this process
    rotated = admin.post("/turnout/admin/keys/team-a/rotate")
    assert rotated.status_code == 200 and rotated.json()["rpm"] == 2
    new = rotated.json()["key"]
    assert new != secret and _until(lambda: _status(base, secret) == 401) < 5
    assert _status(base, new) in (200, 429)  # the rate limit is the key name's: it carries over
    # bad requests: the admin API answers in OpenAI's error shape
    for body, param in (({"tier": "x"}, "name"), ({"name": "team-a"}, "name"), ({"name": "x", "rpm": "5"}, "rpm"),
                        ({"name": "x", "expires": "soon"}, "expires"), ({"name": "x", "bogus": 1}, "bogus")):
        r = admin.post("/turnout/admin/keys", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert admin.delete("/turnout/admin/keys/nobody").status_code == 404
    # an expired key is refused
    gone = admin.post("/turnout/admin/keys", json={"name": "old", "expires": "2020-01-01"}).json()["key"]
    assert _status(base, gone) == 401
    # only admin keys manage keys
    assert httpx.get(base + "/turnout/admin/keys", headers={"authorization": "Bearer sk-yaml"}).status_code == 403
    assert httpx.get(base + "/turnout/admin/keys", headers={"authorization": f"Bearer {new}"}).status_code == 403
    # a stored admin key may manage keys too
    boss = admin.post("/turnout/admin/keys", json={"name": "boss", "role": "admin"}).json()["key"]
    assert httpx.get(base + "/turnout/admin/keys", headers={"authorization": f"Bearer {boss}"}).status_code == 200
    assert {k["name"] for k in admin.get("/turnout/admin/keys").json()["data"]} == {"team-a", "boss"}
    assert {k["status"] for k in admin.get("/turnout/admin/keys?all=1").json()["data"]} == {"active", "revoked",
                                                                                           "expired"}


def test_an_open_proxy_stays_open_and_honours_stored_keys(turnout: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    base = turnout(_config(ledger, keys=False))  # no key in proxy.yaml: open
    made = _cli("--ledger", str(ledger), "create", "--name", "first", "--rpm", "1")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert _status(base, secret) == 200
    assert _status(base, secret) == 429  # presented, the stored key is the caller: its limit applies
    assert _status(base, "anything") == 200  # and the proxy stays open to callers without a key


def test_a_stored_keys_rate_limit_survives_a_reload(serve: Any, tmp_path: Path) -> None:
    from proxy.config import load
    from proxy.server.assembly import build_app

    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "ledger.sqlite")))
    base = serve(build_app(load(str(path))))
    secret = httpx.post(base + "/turnout/admin/keys", headers=ADMIN, json={"name": "one", "rpm": 1}).json()["key"]
    assert _status(base, secret) == 200
    assert httpx.post(base + "/turnout/admin/reload", headers=ADMIN).status_code == 200
    assert _status(base, secret) == 429  # its one request of the minute was counted before the reload
