"""Issue 18 against the provider emulators: the `openai` SDK's responses.create / responses.stream
(a function-calling round trip continued by previous_response_id), completions.create and
embeddings.create through Turnout to Anthropic, Gemini, Ollama and an OpenAI-compatible upstream,
asserting what each upstream received."""

from __future__ import annotations

import pytest

from proxy.config import parse
from proxy.mock.server import build_mock_upstream
from proxy.server.assembly import build_app
from tests.conftest import ServerThread, sdk
from tests.emulators.anthropic import Reply
from tests.emulators.anthropic import build_app as build_anthropic
from tests.emulators.gemini import build_gemini_emulator
from tests.emulators.ollama import build_ollama_emulator, model_entry
from tests.emulators.vectors import vector

ANTHROPIC_KEY, GEMINI_KEY = "sk-ant-secret-123", "gemini-test-key"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    emus = {"anthropic": build_anthropic(api_key=ANTHROPIC_KEY), "gemini": build_gemini_emulator(GEMINI_KEY),
            "ollama": build_ollama_emulator(models=["llama3.2:3b", model_entry("nomic-embed-text", "137M")]),
            "openai": build_mock_upstream()}
    servers = {k: ServerThread(v).start() for k, v in emus.items()}
    cfg = {
        "backends": {
            "claude": {"type": "anthropic", "base_url": servers["anthropic"].url, "api_key": ANTHROPIC_KEY},
            "gem": {"type": "gemini", "base_url": servers["gemini"].url, "api_key": GEMINI_KEY},
            "oll": {"type": "ollama", "base_url": servers["ollama"].url},
            "oai": {"type": "openai", "base_url": servers["openai"].url + "/v1", "api_key": "sk-up"},
        },
        "models": {
            "anthropic": {"backend": "claude", "model": "claude-sonnet-4-5-20250929"},
            "gemini": {"backend": "gem", "model": "gemini-2.5-flash"},
            "ollama": {"backend": "oll", "model": "llama3.2:3b"},
            "gemini-embed": {"backend": "gem", "model": "gemini-embedding-001"},
            "ollama-embed": {"backend": "oll", "model": "nomic-embed-text"},
            "openai-embed": {"backend": "oai", "model": "text-embedding-3-small"},
        },
        "usage": {"ledger": str(tmp_path_factory.mktemp("ledger") / "u.db")},
    }
    proxy = ServerThread(build_app(parse(cfg, {}))).start()
    yield emus, proxy.url
    proxy.stop()
    for s in servers.values():
        s.stop()


def _script_call(emus, provider: str) -> None:
    if provider == "anthropic":
        emus["anthropic"].state.script.append(Reply(blocks=[{"type": "tool_use", "name": "get_weather",
                                                             "input": {"city": "Oslo"}}]))
    elif provider == "gemini":
        emus["gemini"].state.script.append({"calls": [{"name": "get_weather", "args": {"city": "Oslo"}}]})
    else:
        emus["ollama"].state.scripts.append({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
                                             "text": ""})


def _received(emus, provider: str) -> dict:
    reqs = emus[provider].state.requests
    return reqs[-1]["body"] if provider == "gemini" else reqs[-1]


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
def test_responses_function_round_trip_with_previous_response_id(env, provider):
    emus, url = env
    client = sdk(url)
    _script_call(emus, provider)
    r = client.responses.create(model=provider, input="What is the weather in Oslo?", tools=[WEATHER],
                                instructions="Answer briefly.", max_output_tokens=200)
    call = r.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and '"Oslo"' in call.arguments
    sent = _received(emus, provider)
    if provider == "anthropic":
        assert sent["system"] in ("Answer briefly.", [{"type": "text", "text": "Answer briefly."}])
        assert sent["tools"][0]["name"] == "get_weather" and sent["max_tokens"] == 200
    elif provider == "gemini":
        assert sent["systemInstruction"]["parts"][0]["text"] == "Answer briefly."
        assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Answer briefly."}
        assert sent["tools"][0]["function"]["name"] == "get_weather"

    follow = client.responses.create(model=provider, previous_response_id=r.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "3C"}])
    assert follow.previous_response_id == r.id and follow.output_text
    sent = _received(emus, provider)
    if provider == "anthropic":
        use = sent["messages"][1]["content"][-1]
        result = sent["messages"][2]["content"][0]
        assert use["type"] == "tool_use" and result["type"] == "tool_result" and result["tool_use_id"] == use["id"]
        assert "3C" in str(result["content"])
        assert "system" not in sent  # instructions are not carried over by previous_response_id, as OpenAI
    elif provider == "gemini":
        parts = sent["contents"][-1]["parts"]
        assert parts[0]["functionResponse"]["name"] == "get_weather"
        assert sent["contents"][1]["parts"][-1]["functionCall"]["args"] == {"city": "Oslo"}
    else:
        assert sent["messages"][-1]["role"] == "tool" and sent["messages"][-1]["content"] == "3C"
        assert sent["messages"][-2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
def test_responses_stream_text(env, provider):
    emus, url = env
    client = sdk(url)
    with client.responses.stream(model=provider, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "hello"}, {"type": "input_text", "text": "there"}]}]) as s:
        events = list(s)
        final = s.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and deltas == final.output_text and final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage is not None and final.usage.input_tokens > 0
    sent = _received(emus, provider)
    if provider == "ollama":  # one string: the parts joined with a newline, not "hellothere"
        assert sent["messages"][-1]["content"] == "hello\nthere"
    retrieved = client.responses.retrieve(final.id)
    assert retrieved.output_text == final.output_text


def test_completions_on_anthropic(env):
    emus, url = env
    client = sdk(url)
    c = client.completions.create(model="anthropic", prompt="Say hi", stop=["END"])
    assert c.choices[0].text == "Echo: Say hi" and c.object == "text_completion"
    sent = _received(emus, "anthropic")
    assert sent["messages"][0]["content"] in ("Say hi", [{"type": "text", "text": "Say hi"}])
    assert sent["max_tokens"] == 16 and sent["stop_sequences"] == ["END"]  # OpenAI's default max_tokens


def test_embeddings_on_gemini_ollama_and_openai(env):
    emus, url = env
    client = sdk(url)
    r = client.embeddings.create(model="gemini-embed", input=["alpha", "beta"], dimensions=8)
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8 and r.usage.prompt_tokens > 0
    sent = _received(emus, "gemini")
    assert [q["content"]["parts"][0]["text"] for q in sent["requests"]] == ["alpha", "beta"]
    assert sent["requests"][0]["outputDimensionality"] == 8
    assert emus["gemini"].state.requests[-1]["path"].endswith("/models/gemini-embedding-001:batchEmbedContents")

    r = client.embeddings.create(model="ollama-embed", input="why is the sky blue?")
    assert r.data[0].embedding == pytest.approx(vector("why is the sky blue?", 768), abs=1e-6)
    assert r.usage.prompt_tokens == 5 and _received(emus, "ollama") == {"model": "nomic-embed-text",
                                                                         "input": ["why is the sky blue?"]}

    r = client.embeddings.create(model="openai-embed", input=[[15339, 1917]])
    got = emus["openai"].state.requests[-1]
    assert got["input"] == [[15339, 1917]] and got["model"] == "text-embedding-3-small"  # token arrays passed through
    assert got["encoding_format"] == "float" and len(r.data[0].embedding) == 256
