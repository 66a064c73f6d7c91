"""Issue 13, item 7: keys stay in their lane. A key may name only the routes and targets its
allow-lists (its own, else its tier's) allow, forced targets included; only admin keys test
providers (real, paid calls) or read other keys' usage."""

from __future__ import annotations

import httpx
import openai
import pytest

from proxy.config import ConfigError, parse
from tests.conftest import post, sdk

CFG = {
    "backends": {"local": {"type": "mock", "reply": "local"}, "cloud": {"type": "mock", "reply": "cloud"}},
    "models": {"local-3b": {"backend": "local"}, "claude-sonnet": {"backend": "cloud"}},
    "routes": {"cheap": ["local-3b"], "smart": ["claude-sonnet"]},
    "tiers": {"free": {"routes": ["cheap"], "targets": ["local-3b"]}},
    "keys": [{"key": "k-free", "name": "free-user", "tier": "free", "allow_override": True},
             {"key": "k-pro", "name": "pro-user", "tier": "pro"},
             {"key": "k-narrow", "name": "narrow", "tier": "pro", "routes": ["smart"], "targets": []},
             {"key": "k-admin", "name": "ops", "role": "admin"}],
    "usage": {"ledger": None},
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def base(turnout, tmp_path):
    return turnout({**CFG, "usage": {"ledger": str(tmp_path / "u.db")}})


def test_a_free_key_cannot_name_a_paid_target_or_route(base) -> None:
    free = sdk(base, api_key="k-free")
    assert free.chat.completions.create(model="cheap", messages=HI).choices[0].message.content == "local"
    assert free.chat.completions.create(model="local-3b", messages=HI).choices[0].message.content == "local"
    for model in ("claude-sonnet", "smart"):
        with pytest.raises(openai.NotFoundError) as info:
            free.chat.completions.create(model=model, messages=HI)
        assert info.value.code == "model_not_found"
    forced = post(base, {"model": "cheap", "messages": HI},
                  headers={"authorization": "Bearer k-free", "x-turnout-target": "claude-sonnet"})
    assert forced.status_code == 404  # overriding into a target outside the lane is refused too


def test_keys_without_lists_use_anything_and_own_lists_beat_the_tier(base) -> None:
    pro = sdk(base, api_key="k-pro")
    assert pro.chat.completions.create(model="claude-sonnet", messages=HI).choices[0].message.content == "cloud"
    narrow = sdk(base, api_key="k-narrow")
    assert narrow.chat.completions.create(model="smart", messages=HI).choices[0].message.content == "cloud"
    with pytest.raises(openai.NotFoundError):
        narrow.chat.completions.create(model="claude-sonnet", messages=HI)  # targets: [] names none directly
    with pytest.raises(openai.NotFoundError):
        narrow.chat.completions.create(model="cheap", messages=HI)


def test_only_admin_keys_test_providers_or_read_everyones_usage(base) -> None:
    def test_provider(key: str) -> httpx.Response:
        return httpx.post(base + "/turnout/providers/cloud/test", headers={"authorization": f"Bearer {key}"},
                          timeout=30)

    r = test_provider("k-pro")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    assert test_provider("k-admin").status_code == 200
    sdk(base, api_key="k-free").chat.completions.create(model="cheap", messages=HI)
    sdk(base, api_key="k-pro").chat.completions.create(model="smart", messages=HI)
    mine = httpx.get(base + "/turnout/usage", headers={"authorization": "Bearer k-pro"}, timeout=10)
    assert mine.status_code == 200 and mine.json()["key"] == "pro-user"
    other = httpx.get(base + "/turnout/usage", params={"key": "free-user"},
                      headers={"authorization": "Bearer k-pro"}, timeout=10)
    assert other.status_code == 403
    rows = httpx.get(base + "/turnout/usage/export", headers={"authorization": "Bearer k-pro"}, timeout=10)
    assert rows.status_code == 200 and b"free-user" not in rows.content  # its own rows only
    everyone = httpx.get(base + "/turnout/usage", headers={"authorization": "Bearer k-admin"}, timeout=10)
    assert {k["name"] for k in everyone.json()["keys"]} >= {"free-user", "pro-user"}


def test_allow_lists_name_real_routes_and_targets() -> None:
    with pytest.raises(ConfigError, match=r"tiers.free.targets: 'nope' is not a model target"):
        parse({**CFG, "tiers": {"free": {"targets": ["nope"]}}}, {})
    with pytest.raises(ConfigError, match=r"keys\[0\].routes: 'gone' is not a route"):
        parse({**CFG, "keys": [{"key": "k", "routes": ["gone"]}]}, {})


def test_metrics_can_require_an_admin_key(turnout) -> None:
    base = turnout({**CFG, "server": {"metrics_require_key": True}})
    assert httpx.get(base + "/metrics", timeout=10).status_code == 401
    assert httpx.get(base + "/metrics", headers={"authorization": "Bearer k-pro"}, timeout=10).status_code == 403
    r = httpx.get(base + "/metrics", headers={"authorization": "Bearer k-admin"}, timeout=10)
    assert r.status_code == 200 and "turnout_" in r.text
    assert httpx.get(turnout(CFG) + "/metrics", timeout=10).status_code == 200  # off by default


def test_provider_tests_are_ledger_rows(base) -> None:
    r = httpx.post(base + "/turnout/providers/cloud/test", headers={"authorization": "Bearer k-admin",
                                                                     "x-request-id": "probe-1"}, timeout=30)
    assert r.status_code == 200 and r.json()["ok"] is True
    rows = httpx.get(base + "/turnout/usage/export", headers={"authorization": "Bearer k-admin"}, timeout=10)
    import orjson

    row, = [orjson.loads(x) for x in rows.content.splitlines() if b"probe-1" in x]
    assert row["key"] == "ops" and row["target"] == "claude-sonnet" and row["status"] == 200
    assert row["rule"] == "provider_test" and row["prompt_tokens"] > 0


def test_models_lists_only_what_each_key_may_use(base) -> None:
    """`/v1/models` (and `/v1/models/{id}`) filtered by the key's allow-lists, as OpenAI lists only
    the models a key can use: its own lists, else its tier's, else everything."""
    def ids(key: str) -> set[str]:
        return {m.id for m in sdk(base, api_key=key).models.list()}

    assert ids("k-free") == {"cheap", "local-3b"}  # the tier's lists
    assert ids("k-narrow") == {"smart"}  # its own lists beat the tier's; targets: [] lists none
    assert ids("k-pro") == ids("k-admin") == {"cheap", "smart", "local-3b", "claude-sonnet"}
    free = sdk(base, api_key="k-free")
    assert free.models.retrieve("local-3b").id == "local-3b"
    for name in ("claude-sonnet", "smart"):
        with pytest.raises(openai.NotFoundError):
            free.models.retrieve(name)
