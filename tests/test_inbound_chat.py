"""The chat front door's dialects (translators/inbound/chat.py): legacy functions, allowed_tools,
orphan tool messages, text parts joined; answers in the functions dialect checked with the SDK's types."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.mock.engine import Script, build_chunks, build_completion, replies
from translators.common import TranslationError, content_text
from translators.inbound import chat

FN = {"name": "get_weather", "description": "w", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}


def test_legacy_functions_become_tools_and_answers_come_back_as_function_call():
    body = {"model": "m", "functions": [FN], "function_call": {"name": "get_weather"},
            "messages": [{"role": "user", "content": "weather?"}]}
    out = chat.normalize(body)
    assert out["tools"] == [{"type": "function", "function": FN}] and "functions" not in out
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    done = chat.legacy_answer(build_completion(out, "m", "c", 1, replies(out, "m", Script())))
    c = ChatCompletion.model_validate(done)
    assert c.choices[0].finish_reason == "function_call" and c.choices[0].message.tool_calls is None
    assert c.choices[0].message.function_call.name == "get_weather"
    assert "city" in orjson.loads(c.choices[0].message.function_call.arguments)
    chunks = [ChatCompletionChunk.model_validate_json(chat.legacy_chunk(orjson.dumps(x)))
              for x in build_chunks("m", "c", 1, replies(out, "m", Script()))]
    fcs = [x.choices[0].delta.function_call for x in chunks if x.choices[0].delta.function_call]
    assert fcs[0].name == "get_weather" and orjson.loads("".join(f.arguments for f in fcs))["city"]
    assert chunks[-1].choices[0].finish_reason == "function_call"

    # the round trip: an assistant function_call and a role "function" answer become a tool call and result
    follow = chat.normalize({"model": "m", "functions": [FN], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"role": "function", "name": "get_weather", "content": "3C"}]})
    m = follow["messages"]
    assert m[1]["tool_calls"][0]["id"] == m[2]["tool_call_id"] == "call_fn_1" and m[2]["role"] == "tool"
    chat.check_tool_messages(m)
    with pytest.raises(TranslationError):
        chat.normalize({"model": "m", "functions": [FN], "tools": [], "messages": []})


def test_allowed_tools_orphan_tool_and_text_parts():
    other = {"type": "function", "function": {**FN, "name": "other"}}
    body = {"model": "m", "messages": [], "tools": [{"type": "function", "function": FN}, other],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
                {"type": "function", "function": {"name": "other"}}]}}}
    out = chat.normalize(body)
    assert out["tools"] == [other] and out["tool_choice"] == "required"
    with pytest.raises(TranslationError) as e:
        chat.check_tool_messages([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "y"}])
    assert e.value.param == "messages.[1].role" and "preceeding message with 'tool_calls'" in e.value.message
    with pytest.raises(TranslationError) as e:
        chat.check_tool_messages([{"role": "assistant", "tool_calls": [{"id": "c1"}]},
                                  {"role": "tool", "tool_call_id": "c2", "content": "y"}])
    assert e.value.param == "messages.[1].tool_call_id"
    assert content_text([{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]) == "hi\nthere"
    assert content_text([{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]) == "hello there"
