"""Issue 17, the pure half: Anthropic Messages requests → OpenAI chat bodies, OpenAI answers →
Anthropic Messages and SSE event sequences, errors → Anthropic's bodies and statuses.

Every produced object is checked with the official SDKs' own types: requests with the `openai`
package's message params, Messages and events with the `anthropic` package's pydantic models, and a
produced event stream is served over real HTTP and accumulated by `anthropic`'s `messages.stream`.
"""

from __future__ import annotations

import base64
import json

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from translators.common import chunk, completion, message, tool_call, tool_call_delta, usage
from translators.inbound.anthropic import AnthropicInvalid, reasoning_effort, to_openai, validate
from translators.inbound.anthropic_reply import MessageStream, error_body, error_status, to_message

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
PDF = base64.b64encode(b"%PDF-1.4 tiny").decode()
OA_MESSAGES = TypeAdapter(list[ChatCompletionMessageParam])
OA_TOOLS = TypeAdapter(list[ChatCompletionToolParam])
EVENT = TypeAdapter(RawMessageStreamEvent)
ERROR = TypeAdapter(ErrorResponse)
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def body(**kw) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "hello"}], **kw}


def openai_of(b: dict) -> dict:
    out = to_openai(validate(b))
    OA_MESSAGES.validate_python(out["messages"])  # the openai SDK's own request types accept it
    if "tools" in out:
        OA_TOOLS.validate_python(out["tools"])
    return out


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("b, message", [
    ([], "Input should be a valid dictionary"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model: Field required"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
    (body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    (body(messages=[]), "messages: at least one message is required"),
    (body(messages=None), "messages: Field required"),
    (body(messages=[{"role": "system", "content": "x"}]), 'messages: Unexpected role "system"'),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role: Input should be 'user' or 'assistant'"),
    (body(messages=[{"role": "user"}]), "messages.0.content: Field required"),
    (body(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
     "messages: text content blocks must be non-empty"),
    (body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
     "messages.0.content.0: Input tag 'audio' found using 'type' does not match any of the expected tags"),
    (body(messages=[{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": PNG}}]}]),
     "messages.0.content.0.source.base64.media_type: Input should be 'image/jpeg'"),
    (body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": "no result"}], tools=[WEATHER]),
     "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    (body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}], tools=[WEATHER]),
     "messages.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9"),
    (body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}]),
     "Requests which include `tool_use` or `tool_result` blocks must define tools."),
    (body(tool_choice={"type": "auto"}), "tool_choice may only be specified while providing tools."),
    (body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "tool_choice.tool.name: Tool 'nope' not found"),
    (body(tools=[WEATHER], tool_choice={"type": "maybe"}), "tool_choice: Input tag found using 'type'"),
    (body(tools=[{**WEATHER, "input_schema": {"type": "array"}}]),
     "tools.0.custom.input_schema.type: Input should be 'object'"),
    (body(tools=[WEATHER, WEATHER]), "tools: Tool names must be unique."),
    (body(temperature=1.5), "temperature: Input should be less than or equal to 1"),
    (body(top_p="x"), "top_p: Input should be a valid number"),
    (body(metadata={"user_id": "u", "task": "x"}), "metadata.task: Extra inputs are not permitted"),
    (body(frequency_penalty=1), "frequency_penalty: Extra inputs are not permitted"),
    (body(thinking={"type": "enabled", "budget_tokens": 10}),
     "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
    (body(thinking={"type": "enabled", "budget_tokens": 2000}),
     "`max_tokens` must be greater than `thinking.budget_tokens`."),
    (body(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000}, tools=[WEATHER],
          tool_choice={"type": "any"}), "Thinking may not be enabled when tool_choice forces tool use."),
    (body(stream="yes"), "stream: Input should be a valid boolean"),
    (body(system=[{"type": "image"}]), "system.0: Input tag 'image' found"),
])
def test_validation_refuses_in_anthropics_words(b, message):
    with pytest.raises(AnthropicInvalid) as e:
        validate(b)
    assert e.value.message.startswith(message), e.value.message
    assert (e.value.status, e.value.type) == (400, "invalid_request_error")


def test_beta_requests_may_carry_fields_of_their_betas_which_other_targets_never_see():
    b = body(betas_field={"x": 1})
    with pytest.raises(AnthropicInvalid, match="betas_field: Extra inputs are not permitted"):
        validate(b)
    assert "betas_field" not in to_openai(validate(b, beta=True))


def test_count_tokens_bodies_need_no_max_tokens_and_claude_only_fields_are_accepted():
    b = body(output_config={"effort": "high"}, context_management={}, service_tier="auto")
    assert validate(b) is b
    assert validate({"model": "m", "messages": [{"role": "user", "content": "x"}]}, count_tokens=True)


# --- request → OpenAI ----------------------------------------------------------------------------


def test_plain_request_maps_every_sampling_field():
    out = openai_of(body(system="Be brief.", temperature=0.3, top_p=0.9, top_k=40, stop_sequences=["END", "\n\n"],
                         metadata={"user_id": "user-42"}, stream=True))
    assert out == {"model": "claude-sonnet-4-5", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        "max_completion_tokens": 1024, "temperature": 0.3, "top_p": 0.9, "stop": ["END", "\n\n"],
        "user": "user-42", "stream": True}


def test_system_blocks_with_cache_control_join_into_one_system_message():
    out = openai_of(body(system=[{"type": "text", "text": "You are Claude Code."},
                                 {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}}]))
    assert out["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nProject rules."}


def test_images_documents_and_text_blocks_become_parts():
    out = openai_of(body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare:"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
        {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "abc"}},
    ]}]))
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare:"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "text", "text": "Notes\n\nabc"}]}]


def test_tool_round_trip_history_pairs_calls_with_results():
    out = openai_of(body(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True}, messages=[
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two calls.", "signature": "c2ln"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "is_error": True,
             "content": [{"type": "text", "text": "station down"},
                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
            {"type": "text", "text": "And tomorrow?"}]}]))
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: station down"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                     {"type": "text", "text": "And tomorrow?"}]}]
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather for a city"}}]
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is False


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}})])
def test_tool_choice(choice, expected):
    assert openai_of(body(tools=[WEATHER], tool_choice=choice))["tool_choice"] == expected


def test_consecutive_turns_merge_and_empty_final_assistant_is_dropped():
    out = openai_of(body(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                   {"role": "assistant", "content": []}]))
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


@pytest.mark.parametrize("thinking, output_config, effort", [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
    ({"type": "adaptive"}, None, "medium"),
    ({"type": "adaptive"}, {"effort": "max"}, "high"),
    ({"type": "disabled"}, None, None)])
def test_thinking_becomes_reasoning_effort(thinking, output_config, effort):
    assert reasoning_effort(thinking, output_config) == effort
    out = openai_of(body(max_tokens=32000, thinking=thinking, **({"output_config": output_config} if output_config else {})))
    assert out.get("reasoning_effort") == effort


def test_what_only_claude_can_do_is_a_clear_400():
    with pytest.raises(AnthropicInvalid, match="only be used with Claude targets"):
        to_openai(validate(body(tools=[{"type": "web_search_20250305", "name": "web_search"}])))
    with pytest.raises(AnthropicInvalid, match="documents by URL"):
        to_openai(validate(body(messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}]}])))


# --- answers → Message ---------------------------------------------------------------------------


@pytest.mark.parametrize("finish, stop", [("stop", "end_turn"), ("length", "max_tokens"),
                                          ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_completion_to_message_is_a_valid_sdk_message(finish, stop):
    calls = [tool_call("call_1", "get_weather", {"city": "Paris"}), tool_call("call_2", "get_time", "not json")]
    c = completion("chatcmpl-abc123", 1, "gemini-2.5-flash", [{"message": message(
        "Here you go.", calls if finish == "tool_calls" else None, reasoning="Think first."), "finish_reason": finish}],
        usage(120, 30, cached=100, reasoning=12))
    m = to_message(c)
    parsed = Message.model_validate(m)
    assert parsed.id == "msg_abc123" and parsed.model == "gemini-2.5-flash" and parsed.role == "assistant"
    assert parsed.stop_reason == stop and parsed.stop_sequence is None
    assert parsed.content[0].type == "thinking" and parsed.content[0].thinking == "Think first."
    assert parsed.content[1].type == "text" and parsed.content[1].text == "Here you go."
    if finish == "tool_calls":
        assert [(b.id, b.name, b.input) for b in parsed.content[2:]] == [
            ("call_1", "get_weather", {"city": "Paris"}), ("call_2", "get_time", {"arguments": "not json"})]
    u = parsed.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (20, 100, 0, 30)
    assert u.output_tokens_details.thinking_tokens == 12


def test_message_without_usage_takes_the_estimates():
    m = to_message(completion("chatcmpl-x", 1, "m", [{"message": message(None), "finish_reason": "stop"}], None),
                   id="msg_given", input_estimate=7, output_estimate=0)
    parsed = Message.model_validate(m)
    assert parsed.id == "msg_given" and parsed.content == [] and parsed.usage.input_tokens == 7


# --- streams -------------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name[7:], json.loads(data[6:])))
    return out


def b(c: dict) -> bytes:
    return json.dumps(c).encode()


def tool_stream() -> list[bytes]:
    """OpenAI chunks as Turnout's stream yields them: reasoning, text, two tool calls in pieces."""
    mk = lambda delta, fin=None: b(chunk("chatcmpl-s1", 1, "qwen3", delta, fin))  # noqa: E731
    return [mk({"role": "assistant", "content": ""}), mk({"reasoning_content": "Need "}),
            mk({"reasoning_content": "weather."}), mk({"content": "Checking "}), mk({"content": "both."}),
            mk({"content": None, "tool_calls": [tool_call_delta(0, "call_p", "get_weather", "")]}),
            mk({"tool_calls": [tool_call_delta(0, arguments='{"city":')]}),
            mk({"tool_calls": [tool_call_delta(0, arguments='"Paris"}')]}),
            mk({"tool_calls": [tool_call_delta(1, "call_o", "get_weather", '{"city":"Oslo"}')]}),
            mk({}, "tool_calls")]


def run_stream(payloads: list[bytes], usage_: dict | None) -> bytes:
    s = MessageStream(input_estimate=50)
    return b"".join(s.feed(p) for p in payloads) + s.finish(usage_)


def test_stream_event_sequence_is_exact_and_every_event_an_sdk_event():
    raw = run_stream(tool_stream(), usage(60, 25, cached=10))
    events = sse_events(raw)
    for name, data in events:
        assert name == data["type"]
        if name != "ping":
            EVENT.validate_python(data)
    seq = [(n, d.get("index"), (d.get("content_block") or d.get("delta") or {}).get("type")) for n, d in events]
    assert seq == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"), ("ping", None, None),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_delta", 3, "input_json_delta"), ("content_block_stop", 3, None),
        ("message_delta", None, None), ("message_stop", None, None)]
    start = events[0][1]["message"]
    assert start["id"] == "msg_s1" and start["model"] == "qwen3" and start["usage"]["input_tokens"] == 50
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"input_tokens": 50, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 10, "output_tokens": 25}


def test_stream_accumulates_with_the_sdks_own_accumulator():
    snapshot, bufs = None, {}
    for name, data in sse_events(run_stream(tool_stream(), usage(60, 25))):
        if name != "ping":
            snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=bufs)
    assert [blk.type for blk in snapshot.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert snapshot.content[0].thinking == "Need weather." and snapshot.content[1].text == "Checking both."
    assert [blk.input for blk in snapshot.content[2:]] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert snapshot.stop_reason == "tool_use" and snapshot.usage.output_tokens == 25


def test_stream_without_usage_or_content_still_closes_properly():
    s = MessageStream(id="msg_fixed", model="m")
    raw = s.feed(b(chunk("c", 1, "up", {"role": "assistant", "content": ""}))) + s.feed(
        b(chunk("c", 1, "up", {"content": "Hi"}, "length"))) + s.finish(None)
    events = sse_events(raw)
    assert events[0][1]["message"]["id"] == "msg_fixed" and events[0][1]["message"]["model"] == "m"
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens" and events[-2][1]["usage"]["output_tokens"] == 1
    assert MessageStream().finish(None).count(b"event: message_start") == 1  # nothing streamed: still well formed


def _sse_app(raw: bytes, status: int = 200, headers: dict | None = None) -> Starlette:
    async def messages(request: Request) -> Response:
        return Response(raw, status_code=status, headers=headers,
                        media_type="text/event-stream" if status == 200 else "application/json")
    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def test_the_sdk_streams_a_translated_stream_over_http(serve):
    url = serve(_sse_app(run_stream(tool_stream(), usage(60, 25))))
    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with client.messages.stream(model="x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as st:
        texts = list(st.text_stream)
        final = st.get_final_message()
    assert "".join(texts) == "Checking both."
    assert [blk.type for blk in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[3].input == {"city": "Oslo"} and final.stop_reason == "tool_use"


def test_a_stream_that_fails_ends_with_an_error_event_the_sdk_raises(serve):
    s = MessageStream()
    raw = s.feed(b(chunk("c", 1, "up", {"content": "partial"}))) + s.error("overloaded_error", "Overloaded")
    assert sse_events(raw)[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    url = serve(_sse_app(raw))
    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        with client.messages.stream(model="x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as st:
            st.until_done()


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, code, expected", [
    (400, "invalid_json", (400, "invalid_request_error")), (401, "invalid_api_key", (401, "authentication_error")),
    (403, None, (403, "permission_error")), (404, "model_not_found", (404, "not_found_error")),
    (413, "request_too_large", (413, "request_too_large")), (429, "rate_limit_exceeded", (429, "rate_limit_error")),
    (500, None, (500, "api_error")), (502, "upstream_500", (500, "api_error")),
    (502, "upstream_overloaded", (529, "overloaded_error")), (503, "no_target", (529, "overloaded_error")),
    (504, "upstream_timeout", (504, "timeout_error")), (405, "method_not_allowed", (405, "invalid_request_error"))])
def test_error_status_mapping(status, code, expected):
    assert error_status(status, code) == expected
    if expected[1] != "request_too_large":  # in the API's docs, not in the SDK's union of error objects
        ERROR.validate_python(error_body(expected[1], "m", "req_1"))


@pytest.mark.parametrize("status, cls", [(400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
                                         (404, anthropic.NotFoundError), (429, anthropic.RateLimitError),
                                         (529, anthropic.OverloadedError)])
def test_the_sdk_raises_its_own_error_classes_for_these_bodies(serve, status, cls):
    etype = error_status(status)[1]
    url = serve(_sse_app(json.dumps(error_body(etype, "nope")).encode(), status, {"retry-after": "3"}))
    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(cls) as e:
        client.messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"] == {"type": etype, "message": "nope"}
