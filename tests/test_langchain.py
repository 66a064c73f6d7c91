"""Issue 18: LangChain as its users drive it — `ChatOpenAI(use_responses_api=True)` (text, a stream,
a tool call and its result), `OpenAIEmbeddings` and
the legacy-completions `OpenAI` LLM — against Turnout on the mock."""

from __future__ import annotations

import pytest

from proxy.mock.engine import embedding

langchain_openai = pytest.importorskip("langchain_openai")


@pytest.fixture
def url(turnout, tmp_path):
    return turnout({"backends": {"mock": {"type": "mock"}},
                    "models": {"chat": {"backend": "mock", "model": "mock-chat"},
                               "text-embedding-3-small": {"backend": "mock", "model": "mock-embed"}},
                    "usage": {"ledger": str(tmp_path / "u.db")}}) + "/v1"


def test_chat_openai_with_the_responses_api(url):
    from langchain_core.messages import ToolMessage

    llm = langchain_openai.ChatOpenAI(model="chat", base_url=url, api_key="sk-lc", use_responses_api=True,
                                      max_retries=0)
    msg = llm.invoke("hello from langchain")
    assert msg.text == "Hello from mock-chat! You said: hello from langchain"
    assert msg.usage_metadata["input_tokens"] > 0 and msg.response_metadata.get("id", "").startswith("resp_")
    assert "".join(c.text for c in llm.stream("streamed")) == "Hello from mock-chat! You said: streamed"

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return f"3C in {city}"

    with_tools = llm.bind_tools([get_weather])
    ask = [("user", "weather in Oslo?")]
    call = with_tools.invoke(ask)
    assert call.tool_calls[0]["name"] == "get_weather" and "city" in call.tool_calls[0]["args"]
    answer = with_tools.invoke([*ask, call, ToolMessage(content="3C", tool_call_id=call.tool_calls[0]["id"])])
    assert answer.text == "The tool returned: 3C"


def test_openai_embeddings_and_legacy_llm(url):
    # check_embedding_ctx_length off: LangChain would otherwise fetch tiktoken's file from the internet
    # to send token arrays (token arrays are covered with the openai SDK in tests/test_openai_apis.py)
    emb = langchain_openai.OpenAIEmbeddings(model="text-embedding-3-small", base_url=url, api_key="sk-lc",
                                            max_retries=0, check_embedding_ctx_length=False)
    vectors = emb.embed_documents(["hello world", "the cat sat"])
    assert vectors[0] == pytest.approx(embedding("hello world"), abs=1e-6)
    assert emb.embed_query("the cat sat") == pytest.approx(embedding("the cat sat"), abs=1e-6)
    llm = langchain_openai.OpenAI(model="chat", base_url=url, api_key="sk-lc", max_tokens=50, max_retries=0)
    assert llm.invoke("legacy") == "Hello from mock-chat! You said: legacy"
