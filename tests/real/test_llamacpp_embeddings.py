"""Issue 18 item 1: llama.cpp's embeddings through the managed `llamacpp` backend (`embedding: true`
starts its server in embedding mode), driven by the `openai` SDK: floats, base64, dimensions, token
arrays (tiktoken ids decoded to text, since llama.cpp's ids are its own), compared with what the
server itself answers; chat still served by the same backend."""

from __future__ import annotations

import asyncio
import math
from typing import Iterator

import httpx
import pytest

from proxy.backends import create
from proxy.call import Call
from proxy.config import parse
from proxy.errors import UpstreamError
from proxy.usage import tokens
from tests.conftest import sdk
from tests.real.conftest import MODEL, SIMPLE, Turnout, local_backend
from translators import embeddings as emb


@pytest.fixture(scope="module")
def emb_turnout(gguf) -> Iterator[Turnout]:
    t = Turnout({"backends": {"local": local_backend(embedding=True, pooling="mean")},
                 "models": {"smol-embed": {"backend": "local", "model": MODEL, "kind": "embedding"},
                            "smol": {"backend": "local", "model": MODEL}}})
    try:
        yield t
    finally:
        t.stop()


def _direct(t: Turnout, text: str) -> list[float]:
    """What llama.cpp's own server answers for `text` (Turnout's child, asked without Turnout)."""
    base = t.backend("local").base_url
    r = httpx.post(base + "/embeddings", json={"model": MODEL, "input": [text], "encoding_format": "float"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["embedding"]


def test_llamacpp_embeddings_through_the_openai_sdk(emb_turnout):
    client = sdk(emb_turnout.url)
    raw = client.embeddings.with_raw_response.create(model="smol-embed", input=["hello world", "a red fox"],
                                                      encoding_format="float")
    r = raw.parse()
    assert raw.headers["x-turnout-model"] == "smol-embed" and len(r.data) == 2
    direct = _direct(emb_turnout, "hello world")
    assert len(r.data[0].embedding) == len(direct) > 100
    assert r.data[0].embedding == pytest.approx(direct, abs=1e-4)
    assert r.data[1].embedding != pytest.approx(direct, abs=1e-3)
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens

    # token arrays (cl100k ids, as LangChain's OpenAIEmbeddings sends) with dimensions, in the SDK's
    # default base64 encoding
    ids = tokens.encoding().encode("hello world")
    v = client.embeddings.create(model="smol-embed", input=[ids], dimensions=32).data[0].embedding
    norm = math.sqrt(sum(x * x for x in direct[:32]))
    assert len(v) == 32 and v == pytest.approx([x / norm for x in direct[:32]], abs=1e-4)
    # the same backend still answers chat
    c = client.chat.completions.create(model="smol", messages=SIMPLE, max_tokens=2, temperature=0)
    assert c.choices[0].message.content and c.usage.completion_tokens <= 2


def test_llamacpp_without_embedding_mode_says_how_to_turn_it_on():
    cfg = parse({"backends": {"local": local_backend()},
                 "models": {"smol-embed": {"backend": "local", "model": MODEL, "kind": "embedding"}}}, {})
    backend = create(cfg.backends["local"])  # not started: the check comes before any request
    with pytest.raises(UpstreamError) as e:
        asyncio.run(backend.embed(cfg.models["smol-embed"], emb.parse({"input": "x"}), Call("smol-embed")))
    assert e.value.status == 400 and e.value.code == "unsupported_capability" and "embedding: true" in e.value.message
    assert e.value.fallback  # a chain goes on to its next target
