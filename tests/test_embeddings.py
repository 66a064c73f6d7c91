"""Embeddings: the pure translation (translators/embeddings.py) checked against the `openai` SDK's
types, and the Gemini and Ollama emulators' embedding endpoints proven by the providers' own SDKs
(google-genai ``models.embed_content``, ollama ``Client.embed``), then driven with the translator's
bodies over real HTTP."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import ollama
import pytest
from google import genai
from google.genai import errors, types
from openai.types import CreateEmbeddingResponse

from proxy.mock.engine import embedding
from tests.emulators.gemini import build_gemini_emulator
from tests.emulators.ollama import build_ollama_emulator, model_entry
from tests.emulators.vectors import vector
from translators import embeddings as emb
from translators.common import TranslationError

KEY = "gemini-test-key"


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_parse_inputs_and_rejections():
    assert emb.parse({"input": "hi"}).inputs == ["hi"]
    r = emb.parse({"input": [[1, 2], [3]], "dimensions": 8, "encoding_format": "base64"})
    assert r.tokens and r.inputs == [[1, 2], [3]] and r.dimensions == 8
    assert emb.parse({"input": [5, 6, 7]}).inputs == [[5, 6, 7]]
    assert r.texts(lambda t: "-".join(map(str, t))) == ["1-2", "3"]
    with pytest.raises(TranslationError):
        r.texts()
    for bad, param in [({}, "input"), ({"input": []}, "input"), ({"input": [""]}, "input"),
                       ({"input": [1, "a"]}, "input"), ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
                       ({"input": "x", "dimensions": 0}, "dimensions"), ({"input": ["a"] * 2049}, "input")]:
        with pytest.raises(TranslationError) as e:
            emb.parse(bad)
        assert e.value.param == param
    assert [len(b) for b in emb.batches(list(range(250)), emb.BATCH["gemini"])] == [100, 100, 50]


def test_response_float_base64_and_dimensions():
    v = embedding("the cat sat", 16)
    assert abs(_norm(v) - 1) < 1e-9 and embedding("the cat sat", 16) == v
    out = CreateEmbeddingResponse.model_validate(emb.response([v, v], "m", 7, emb.parse({"input": ["a", "b"]})))
    assert [d.index for d in out.data] == [0, 1] and out.data[0].embedding == v and out.usage.prompt_tokens == 7
    b64 = emb.response([v], "m", 1, emb.parse({"input": "a", "encoding_format": "base64", "dimensions": 4}))
    raw = base64.b64decode(b64["data"][0]["embedding"])
    floats = struct.unpack("<4f", raw)  # float32 little-endian, as OpenAI
    assert len(raw) == 16 and abs(_norm(floats) - 1) < 1e-6  # cut to 4 and normalised again
    assert emb.decode_base64(b64["data"][0]["embedding"]) == list(floats)


@pytest.fixture
def gemini(serve):
    app = build_gemini_emulator(KEY)
    return app, serve(app)


def test_gemini_emulator_with_google_genai_sdk(gemini):
    app, url = gemini
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)))
    r = client.models.embed_content(model="gemini-embedding-001", contents=["hello", "world"],
                                    config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT",
                                                                    output_dimensionality=8))
    assert [e.values for e in r.embeddings] == [vector("hello", 3072)[:8], vector("world", 3072)[:8]]
    sent = app.state.requests[-1]
    assert sent["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent["body"]["requests"][1] == {"content": {"parts": [{"text": "world"}], "role": "user"},
                                           "model": "models/gemini-embedding-001", "taskType": "RETRIEVAL_DOCUMENT",
                                           "outputDimensionality": 8}
    assert len(client.models.embed_content(model="text-embedding-004", contents="x").embeddings[0].values) == 768
    with pytest.raises(errors.ClientError) as e:
        client.models.embed_content(model="gemini-embedding-001", contents="x",
                                    config=types.EmbedContentConfig(task_type="NOPE"))
    assert e.value.code == 400


def test_gemini_translator_against_emulator(gemini):
    app, url = gemini
    req = emb.parse({"input": [f"text {i}" for i in range(130)], "dimensions": 16})
    vectors = []
    for batch in emb.batches(req.texts(), emb.BATCH["gemini"]):
        r = httpx.post(f"{url}/v1beta/models/gemini-embedding-001:batchEmbedContents",
                       json=emb.gemini_request(req, "gemini-embedding-001", batch), headers={"x-goog-api-key": KEY})
        assert r.status_code == 200, r.text
        vectors += emb.gemini_vectors(r.json())[0]
    out = emb.response(vectors, "gemini-embedding-001", 0, req)
    assert len(out["data"]) == 130 and len(app.state.requests) == 2
    assert out["data"][129]["embedding"] == emb.fit(vector("text 129", 3072)[:16], 16)
    assert abs(_norm(out["data"][0]["embedding"]) - 1) < 1e-9
    r = httpx.post(f"{url}/v1beta/models/gemini-embedding-001:embedContent",
                   json={"content": {"parts": [{"text": "one"}]}}, headers={"x-goog-api-key": KEY})
    assert emb.gemini_vectors(r.json())[0] == [vector("one", 3072)]
    r = httpx.post(f"{url}/v1beta/models/gemini-embedding-001:batchEmbedContents",
                   json={"requests": [{"content": {"parts": [{"text": "a"}]}}] * 101}, headers={"x-goog-api-key": KEY})
    assert r.status_code == 400 and "at most 100" in r.json()["error"]["message"]


@pytest.fixture
def oll(serve):
    app = build_ollama_emulator(models=["llama3.2:3b", model_entry("nomic-embed-text", "137M", 274_302_450, "nomic-bert")])
    return app, serve(app)


def test_ollama_emulator_with_ollama_client_and_translator(oll):
    app, url = oll
    client = ollama.Client(host=url)
    r = client.embed(model="nomic-embed-text", input=["why is the sky blue?", "why is grass green?"])
    assert r.embeddings[0] == pytest.approx(vector("why is the sky blue?", 768)) and len(r.embeddings) == 2
    assert r.prompt_eval_count == 9 and app.state.requests[-1]["input"][1] == "why is grass green?"
    r = client.embed(model="nomic-embed-text", input="x", dimensions=32)
    assert len(r.embeddings[0]) == 32 and abs(_norm(r.embeddings[0]) - 1) < 1e-6
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="missing-embed", input="x")
    assert e.value.status_code == 404

    req = emb.parse({"input": ["a b", "c"], "dimensions": 8})
    resp = httpx.post(f"{url}/api/embed", json=emb.ollama_request(req, "nomic-embed-text", req.texts()))
    vectors, tokens = emb.ollama_vectors(resp.json())
    assert tokens == 3 and len(vectors) == 2 and len(vectors[0]) == 8
    assert app.state.requests[-1] == {"model": "nomic-embed-text", "input": ["a b", "c"], "dimensions": 8}
