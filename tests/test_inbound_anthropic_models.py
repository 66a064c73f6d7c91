"""Issue 17: ``GET /v1/models`` in Anthropic's shape when the request carries ``anthropic-version``:
the `anthropic` SDK's ``client.models.list()`` (auto-paginating) and ``retrieve()`` work, validated
against its own ``ModelInfo`` type; errors in Anthropic's shape. Without the header, OpenAI's list."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic.types import ModelInfo

from tests.conftest import sdk

CONFIG = {
    "backends": {"m": {"type": "mock"}},
    "models": {"local": {"backend": "m", "model": "local-model", "context_window": 8192, "max_output_tokens": 1024},
               "cloud": {"backend": "m", "model": "cloud-model"},
               "vectors": {"backend": "m", "model": "mock-embed-small"}},
    "routes": {"auto": ["local", "cloud"]},
    "aliases": {"claude-sonnet-4-5": "auto", "claude-haiku-4-5-20251001": "local"},
    "keys": [{"key": "sk-turnout-1", "name": "dev"}],
}


@pytest.fixture
def url(turnout):
    return turnout(CONFIG)


def client(url: str, key: str = "sk-turnout-1") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_models_list_and_retrieve_with_the_anthropic_sdk(url):
    c = client(url)
    models = list(c.models.list())  # follows has_more / last_id across pages
    ids = [m.id for m in models]
    assert ids == ["auto", "local", "cloud", "claude-sonnet-4-5", "claude-haiku-4-5-20251001"]
    assert all(isinstance(m, ModelInfo) and m.type == "model" for m in models)
    local = models[1]
    assert local.max_input_tokens == 8192 and local.max_tokens == 1024 and "local-model" in local.display_name
    assert models[3].display_name == "claude-sonnet-4-5 → auto"
    assert len({m.created_at for m in models}) == 1
    page = c.models.list(limit=2)
    assert [m.id for m in page.data] == ["auto", "local"] and page.has_more and page.last_id == "local"
    nxt = c.models.list(limit=2, after_id="local")
    assert [m.id for m in nxt.data] == ["cloud", "claude-sonnet-4-5"] and nxt.first_id == "cloud"
    before = c.models.list(limit=2, before_id="claude-sonnet-4-5")
    assert [m.id for m in before.data] == ["local", "cloud"] and before.has_more
    one = c.models.retrieve("claude-sonnet-4-5")
    assert isinstance(one, ModelInfo) and one.id == "claude-sonnet-4-5"
    # the SDK's page helper walks every page with a small limit
    assert [m.id for m in c.models.list(limit=2)] == ids


def test_errors_in_anthropics_shape(url):
    with pytest.raises(anthropic.NotFoundError) as e:
        client(url).models.retrieve("claude-nope")
    assert e.value.body["error"]["type"] == "not_found_error" and e.value.body["type"] == "error"
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(url, "sk-wrong").models.list()
    assert e.value.body["error"]["type"] == "authentication_error"
    r = httpx.get(url + "/v1/models?limit=0", headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-turnout-1"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and "limit" in r.text
    with pytest.raises(anthropic.BadRequestError):
        client(url).models.list(after_id="unknown")


def test_without_the_header_the_list_is_openais(url):
    data = sdk(url, "sk-turnout-1").models.list().data
    assert {m.id for m in data} >= {"auto", "local", "cloud", "vectors"} and data[0].object == "model"
