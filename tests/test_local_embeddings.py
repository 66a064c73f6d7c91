"""Issue 16 item 7 / issue 18 item 1: the local embedding engine (`type: semantic`) serving
``/v1/embeddings``, driven by the `openai` SDK's ``client.embeddings.create``: the real engine, no
mocked vectors (floats, base64, dimensions, token arrays, usage, fallback, its errors)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from proxy.config import ConfigError, parse
from proxy.semantic import Engine
from proxy.semantic.engine import ENGINE_ID
from proxy.usage import tokens
from tests.conftest import sdk


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


CONFIG = {
    "backends": {"vectors": {"type": "semantic"}, "down": {"type": "mock", "fail": {"status": 503}}},
    "models": {"minilm": {"backend": "vectors", "model": ENGINE_ID},
               "broken-embed": {"backend": "down", "model": "down-embed"},
               "chat": {"backend": "down", "model": "chatty"}},
    "routes": {"vectors": ["broken-embed", "minilm"]},
}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()  # an engine of the test's own, to compare Turnout's answers with


@pytest.fixture
def url(turnout):
    return turnout(CONFIG)


def test_engine_serves_embeddings_through_the_openai_sdk(url, engine):
    client = sdk(url)
    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly invoice overdue"]
    raw = client.embeddings.with_raw_response.create(model="vectors", input=texts)
    r = raw.parse()
    assert raw.headers["x-turnout-model"] == "minilm" and raw.headers["x-turnout-fallbacks"].startswith("broken-embed")
    assert r.model == ENGINE_ID and [d.index for d in r.data] == [0, 1, 2]
    expected = engine.embed(texts)
    for d, e in zip(r.data, expected):
        assert len(d.embedding) == 384 == engine.dim and d.embedding == pytest.approx(e.tolist(), abs=1e-6)
        assert abs(math.sqrt(sum(x * x for x in d.embedding)) - 1) < 1e-5
    cat, kitten, invoice = (d.embedding for d in r.data)
    assert _cos(cat, kitten) > _cos(cat, invoice) + 0.2  # meaning, not bytes
    counted = sum(len(engine.tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
    assert r.usage.prompt_tokens == counted == r.usage.total_tokens and counted > 10
    assert float(raw.headers["x-turnout-cost-usd"]) == 0  # local: free


def test_base64_dimensions_and_token_arrays(url, engine):
    client = sdk(url)
    full = engine.embed(["hello world"])[0].tolist()
    # the SDK asks for base64 by default when none is given and decodes it: float32 little-endian
    b = client.embeddings.create(model="minilm", input="hello world")
    assert b.data[0].embedding == pytest.approx(full, abs=1e-6)
    raw = httpx.post(url + "/v1/embeddings", json={"model": "minilm", "input": "hello world",
                                                    "encoding_format": "base64"}).json()
    assert isinstance(raw["data"][0]["embedding"], str)
    short = client.embeddings.create(model="minilm", input="hello world", dimensions=64, encoding_format="float")
    v = short.data[0].embedding
    assert len(v) == 64 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-5
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert v == pytest.approx([x / norm for x in full[:64]], abs=1e-5)
    t = client.embeddings.create(model="minilm", input=[tokens.encoding().encode("hello world")], encoding_format="float")
    assert t.data[0].embedding == pytest.approx(full, abs=1e-6)  # tiktoken ids decoded, then embedded


def test_errors_in_openai_shape(url):
    client = sdk(url)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="x", dimensions=385)
    assert e.value.body["param"] == "dimensions" and "384" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}])
    assert "embedding model" in e.value.message
    models = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
    assert models["minilm"]["turnout"]["serves"] == "embedding"


def test_config_of_the_semantic_type():
    cfg = parse({"backends": {"v": {"type": "semantic", "max_tokens": 64}}, "models": {"e": {"backend": "v"}}}, {})
    assert cfg.models["e"].kind == "embedding" and cfg.backends["v"].unavailable is None
    with pytest.raises(ConfigError, match="models.e.kind: a semantic backend serves embedding only"):
        parse({"backends": {"v": {"type": "semantic"}}, "models": {"e": {"backend": "v", "kind": "chat"}}}, {})
    with pytest.raises(ConfigError, match="backends.v"):
        parse({"backends": {"v": {"type": "semantic", "api_base": "x"}}}, {})


def test_bounded_window(turnout, engine):
    url = turnout({"backends": {"v": {"type": "semantic", "max_tokens": 16}}, "models": {"e": {"backend": "v"}}})
    long = " ".join(f"word{i}" for i in range(400))
    r = sdk(url).embeddings.create(model="e", input=long, encoding_format="float")
    head_tail = Engine(max_tokens=16).embed([long])[0].tolist()
    assert r.data[0].embedding == pytest.approx(head_tail, abs=1e-6)
    assert r.data[0].embedding != pytest.approx(engine.embed([long])[0].tolist(), abs=1e-3)
    assert r.usage.prompt_tokens > 400  # usage counts the whole input, as OpenAI's
