"""Issue 18 item 6: stored responses configurable (`responses: {store, ttl_days}`), and an explicit
`store: true` with storage off answered with a clear 400, through the `openai` SDK."""

from __future__ import annotations

import sqlite3

import openai
import pytest

from proxy.config import ConfigError, parse
from tests.conftest import sdk


def config(ledger: str | None = None, **responses) -> dict:
    cfg: dict = {"backends": {"mock": {"type": "mock"}}, "models": {"chat": {"backend": "mock", "model": "mock-chat"}}}
    if ledger:
        cfg["usage"] = {"ledger": ledger}
    if responses:
        cfg["responses"] = responses
    return cfg


def test_ttl_days_sets_the_expiry_of_stored_responses(turnout, tmp_path):
    db = tmp_path / "u.db"
    client = sdk(turnout(config(str(db), ttl_days=2)))
    r = client.responses.create(model="chat", input="hi", store=True)
    assert r.store is True and client.responses.retrieve(r.id).id == r.id
    with sqlite3.connect(db) as c:
        created, expires = c.execute("SELECT created, expires FROM responses WHERE id = ?", (r.id,)).fetchone()
    assert expires - created == pytest.approx(2 * 86400)


def test_explicit_store_true_without_storage_is_a_400(turnout, tmp_path):
    for cfg, why in ((config(), "usage.ledger"), (config(str(tmp_path / "u.db"), store=False), "responses.store")):
        client = sdk(turnout(cfg))
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="chat", input="hi", store=True)
        assert e.value.code == "storage_disabled" and e.value.param == "store" and why in e.value.message
        # not asking (the default) or store: false is answered, unstored
        assert client.responses.create(model="chat", input="hi").store is False
        assert client.responses.create(model="chat", input="hi", store=False).store is False


def test_responses_config_is_checked():
    assert parse(config(), {}).responses.ttl_days == 30
    with pytest.raises(ConfigError, match="responses.ttl_days"):
        parse(config(ttl_days=0), {})
    with pytest.raises(ConfigError, match="responses.keep"):
        parse(config(keep=True), {})
