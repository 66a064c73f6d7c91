"""The Responses translator's shapes, validated by the `openai` SDK's own pydantic types
(openai.types.responses): request items → chat, completion → Response, chat chunks → typed events."""

from __future__ import annotations

import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from proxy.mock.engine import Script, build_chunks, build_completion, replies
from translators.common import TranslationError, chunk, usage, usage_chunk
from translators.inbound import responses as rs

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "get_weather", "description": "w", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}


def test_request_items_to_chat():
    body = {"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}, {"type": "input_text", "text": "there"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "3C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "20C"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Oslo 3C", "annotations": []}]},
        {"type": "message", "role": "developer", "content": "next"}],
        "tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low"}, "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
        "metadata": {"task": "x"}, "parallel_tool_calls": False, "stream": True}
    chat = rs.to_chat(body)
    m = chat["messages"]
    assert m[0] == {"role": "system", "content": "Be brief."}
    assert m[1]["content"][:2] == [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
    assert m[1]["content"][2] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    assert [c["id"] for c in m[2]["tool_calls"]] == ["call_1", "call_2"] and m[2]["content"] is None
    assert m[3] == {"role": "tool", "tool_call_id": "call_1", "content": "3C"}
    assert m[4]["content"] == "20C"
    assert m[5] == {"role": "assistant", "content": "Oslo 3C"} and m[6] == {"role": "developer", "content": "next"}
    assert chat["tools"][0]["function"]["name"] == "get_weather" and chat["tools"][0]["function"]["strict"] is True
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"},
                                                                              "strict": True}}
    assert chat["reasoning_effort"] == "low" and chat["max_completion_tokens"] == 50
    assert (chat["temperature"], chat["top_p"], chat["metadata"], chat["parallel_tool_calls"]) == (0.2, 0.9, {"task": "x"}, False)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_allowed_tools_and_rejections():
    other = {**TOOL, "name": "other"}
    chat = rs.to_chat({"model": "m", "input": "x", "tools": [TOOL, other],
                       "tool_choice": {"type": "allowed_tools", "mode": "required",
                                       "tools": [{"type": "function", "name": "other"}]}})
    assert [t["function"]["name"] for t in chat["tools"]] == ["other"] and chat["tool_choice"] == "required"
    for bad, param in [({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
                       ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
                       ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
                        "input[0].content[0]"),
                       ({"instructions": "x"}, "input"), ({"input": "x", "background": True}, "background")]:
        with pytest.raises(TranslationError) as e:
            rs.to_chat({"model": "m", **bad})
        assert e.value.param == param


def _mock(body, script=None):
    return replies(body, "mock-model", script or Script())


def test_completion_to_response_validates_with_sdk_types():
    req = {"model": "m", "input": "What is the weather in Oslo?", "tools": [TOOL]}
    chat = rs.to_chat(req)
    done = build_completion(chat, "mock-model", "chatcmpl-1", 1, _mock(chat))
    r = Response.model_validate(rs.from_chat(done, req))
    assert r.status == "completed" and r.output[0].type == "function_call"
    assert r.output[0].name == "get_weather" and '"city"' in r.output[0].arguments
    assert r.usage.input_tokens == done["usage"]["prompt_tokens"] and r.usage.output_tokens > 0

    completion = {"model": "m", "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "Hello wor", "reasoning_content": "think"}}],
        "usage": usage(5, 7, cached=2, reasoning=3)}
    r = Response.model_validate(rs.from_chat(completion, {"model": "m", "input": "hi", "max_output_tokens": 7}))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in r.output] == ["reasoning", "message"] and r.output_text == "Hello wor"
    assert r.output[0].content[0].text == "think" and r.output[1].status == "incomplete"
    assert (r.usage.input_tokens_details.cached_tokens, r.usage.output_tokens_details.reasoning_tokens) == (2, 3)
    assert r.max_output_tokens == 7 and r.usage.total_tokens == 12


def _stream(req, chunks):
    t = rs.StreamTranslator(req, model="m")
    events = t.start()
    for c in chunks:
        events += t.feed(orjson.dumps(c))
    events += t.finish()
    return t, [EVENTS.validate_python(e) for e in events]


def test_stream_text_events_in_order():
    req = {"model": "m", "input": "hello there", "stream": True}
    chat = rs.to_chat(req)
    chunks = build_chunks("mock-model", "c1", 1, _mock(chat)) + [usage_chunk("c1", 1, "mock-model", usage(3, 4))]
    t, events = _stream(req, chunks)
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from mock-model! You said: hello there"
    assert events[-1].response.output_text == text and events[-1].response.usage.output_tokens == 4
    ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert ids == {events[2].item.id}


def test_stream_reasoning_then_parallel_tool_calls():
    req = {"model": "m", "input": "weather?", "tools": [TOOL, {**TOOL, "name": "other"}], "stream": True}
    chat = rs.to_chat(req)
    chunks = [chunk("c", 1, "m", {"reasoning_content": "hmm"})] + build_chunks("m", "c", 1, _mock(chat))
    t, events = _stream(req, chunks)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(a.output_index, a.item.type) for a in added] == [(0, "reasoning"), (1, "function_call"), (2, "function_call")]
    args_done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(a.output_index, a.name) for a in args_done] == [(1, "get_weather"), (2, "other")]
    for a in args_done:
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta"
                         and e.item_id == a.item_id)
        assert deltas == a.arguments and orjson.loads(a.arguments)
    final = events[-1].response
    assert final.status == "completed" and [o.type for o in final.output] == ["reasoning", "function_call", "function_call"]


def test_stream_length_and_failure():
    req = {"model": "m", "input": "hello there", "max_output_tokens": 2}
    chat = rs.to_chat(req)
    _, events = _stream(req, build_chunks("m", "c", 1, _mock(chat)))
    assert events[-1].type == "response.incomplete" and events[-1].response.incomplete_details.reason == "max_output_tokens"
    t = rs.StreamTranslator(req, model="m")
    evs = t.start() + t.feed(orjson.dumps(chunk("c", 1, "m", {"content": "Hi"}))) + t.fail("upstream dropped")
    evs = [EVENTS.validate_python(e) for e in evs]
    assert [e.type for e in evs[-3:]] == ["response.output_item.done", "error", "response.failed"]
    assert evs[-1].response.error.code == "server_error" and evs[-1].response.status == "failed"
    assert rs.sse(t.start()[0]).startswith(b"event: response.created\ndata: {")


def test_output_items_continue_a_conversation():
    req = {"model": "m", "input": "weather?", "tools": [TOOL]}
    chat = rs.to_chat(req)
    r = rs.from_chat(build_completion(chat, "m", "c", 1, _mock(chat)), req)
    msgs = chat["messages"] + rs.output_messages(r["output"])
    call_id = r["output"][0]["call_id"]
    follow = rs.to_chat({"model": "m", "input": [{"type": "function_call_output", "call_id": call_id, "output": "3C"}]},
                        history=msgs)
    assert follow["messages"][1]["tool_calls"][0]["id"] == call_id
    assert follow["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": "3C"}
