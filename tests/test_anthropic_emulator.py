"""The Anthropic emulator is faithful: the official `anthropic` SDK drives it as it drives the API,
and what it sends matches recorded Anthropic responses field for field and event for event."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.conftest import ServerThread
from tests.emulators.anthropic import Reply, build_app
from tests.conftest import RECORDED

KEY = "sk-ant-test"
MODEL = "claude-sonnet-4-6"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def server():
    app = build_app(api_key=KEY)
    s = ServerThread(app).start()
    yield app, s.url
    s.stop()


@pytest.fixture
def emu(server):
    app, url = server
    app.state.script.clear()
    app.state.requests.clear()
    app.state.headers.clear()
    return app, url, anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)


def _events(sse: str) -> list[tuple[str, dict]]:
    out = []
    for block in sse.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def _shape(events: list[tuple[str, dict]]) -> list[str]:
    """Event names with delta types, runs of the same collapsed."""
    out: list[str] = []
    for name, data in events:
        label = name
        if name == "content_block_start":
            label += ":" + data["content_block"]["type"]
        if name == "content_block_delta":
            label += ":" + data["delta"]["type"]
        if not out or out[-1] != label:
            out.append(label)
    return out


def test_text_message_matches_recorded_shape(emu):
    app, _, client = emu
    m = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert m.content[0].text == "Echo: hello there" and m.stop_reason == "end_turn"
    assert m.id.startswith("msg_") and m.usage.input_tokens == 2
    assert app.state.headers[-1]["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    raw = httpx.post(client.base_url.__str__().rstrip("/") + "/v1/messages", headers={
        "x-api-key": KEY, "anthropic-version": "2023-06-01"}, json={"model": MODEL, "max_tokens": 5, "messages": USER})
    recorded = json.loads((RECORDED / "anthropic_message_text.json").read_text())
    got = raw.json()
    assert set(got) <= set(recorded) and set(recorded) - set(got) <= {"stop_details"}
    assert set(got["usage"]) <= set(recorded["usage"])
    assert raw.headers["request-id"].startswith("req_")


def test_tool_use_message_matches_recorded(emu):
    app, url, client = emu
    app.state.script.append(Reply(blocks=[{"type": "tool_use", "name": "final_result",
                                           "input": {"city": "Mexico City", "country": "Mexico"}}]))
    tools = [{"name": "final_result", "input_schema": {"type": "object"}}]
    m = client.messages.create(model=MODEL, max_tokens=100, messages=USER, tools=tools)
    recorded = json.loads((RECORDED / "anthropic_message_tool_use.json").read_text())
    assert m.stop_reason == recorded["stop_reason"] == "tool_use"
    block = m.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_") and block.input == recorded["content"][0]["input"]
    assert set(m.to_dict()) == set(recorded)
    assert set(m.to_dict()["usage"]) == set(recorded["usage"])


def test_stream_sequence_matches_recorded_thinking_stream(emu):
    app, url, client = emu
    app.state.script.append(Reply(blocks=[{"type": "thinking", "thinking": "This is a straightforward question"},
                                          {"type": "text", "text": "Look both ways."}]))
    r = httpx.post(url + "/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                   json={"model": MODEL, "max_tokens": 2000, "messages": USER, "stream": True,
                         "thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert r.headers["content-type"].startswith("text/event-stream")
    recorded = _events((RECORDED / "anthropic_stream_thinking_text.sse").read_text())
    assert _shape(_events(r.text)) == _shape(recorded)
    first = _events(r.text)[0][1]["message"]
    assert set(first) == set(recorded[0][1]["message"]) and first["content"] == []
    last_delta = [d for n, d in _events(r.text) if n == "message_delta"][0]
    assert set(last_delta["usage"]) == set(next(d for n, d in recorded if n == "message_delta")["usage"])


def test_sdk_stream_helper_accumulates_tools_and_thinking(emu):
    app, _, client = emu
    app.state.script.append(Reply(blocks=[{"type": "thinking", "thinking": "need weather"},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}}]))
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    with client.messages.stream(model=MODEL, max_tokens=2000, messages=USER, tools=tools,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Checking."
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "need weather" and final.content[0].signature
    assert final.content[2].input == {"city": "Paris", "days": [1, 2]}
    assert final.stop_reason == "tool_use"


def test_recorded_stream_replays_through_sdk(emu):
    app, _, client = emu
    app.state.script.append(Reply(raw_sse=(RECORDED / "anthropic_stream_thinking_text.sse").read_bytes()))
    with client.messages.stream(model=MODEL, max_tokens=2000, messages=USER) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens == 282


def test_stop_sequences_and_max_tokens(emu):
    app, _, client = emu
    app.state.script.append(Reply(text="one two three four"))
    m = client.messages.create(model=MODEL, max_tokens=100, messages=USER, stop_sequences=["three"])
    assert m.content[0].text == "one two " and m.stop_reason == "stop_sequence" and m.stop_sequence == "three"
    app.state.script.append(Reply(text="one two three four"))
    m = client.messages.create(model=MODEL, max_tokens=2, messages=USER)
    assert m.content[0].text == "one two" and m.stop_reason == "max_tokens"


@pytest.mark.parametrize("status,exc", [
    (400, anthropic.BadRequestError), (401, anthropic.AuthenticationError), (403, anthropic.PermissionDeniedError),
    (404, anthropic.NotFoundError), (429, anthropic.RateLimitError), (500, anthropic.InternalServerError),
    (529, anthropic.InternalServerError),
])
def test_scripted_errors_are_what_the_sdk_expects(emu, status, exc):
    app, _, client = emu
    app.state.script.append(Reply(status=status, headers={"retry-after": "3"} if status == 429 else {}))
    with pytest.raises(exc) as e:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert e.value.status_code == status
    body = e.value.body
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == {400: "invalid_request_error", 401: "authentication_error",
                                     403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
                                     500: "api_error", 529: "overloaded_error"}[status]
    if status == 429:
        assert e.value.response.headers["retry-after"] == "3"
    if status == 529:
        assert type(e.value).__name__ == "OverloadedError" or isinstance(e.value, anthropic.APIStatusError)


def test_midstream_error_event_raises_in_sdk(emu):
    app, _, client = emu
    app.state.script.append(Reply(text="a b c d", stream_error=(4, "overloaded_error", "Overloaded")))
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as s:
            for _ in s:
                pass
    assert "Overloaded" in str(e.value)


def test_bad_key_and_missing_version(emu):
    app, url, _ = emu
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=5, messages=USER)
    r = httpx.post(url + "/v1/messages", headers={"x-api-key": KEY},
                   json={"model": MODEL, "max_tokens": 5, "messages": USER})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]


TOOLS = [{"name": "t", "input_schema": {"type": "object"}}]
USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]}
RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}


@pytest.mark.parametrize("body,fragment", [
    ({"model": MODEL, "messages": USER}, "max_tokens: Field required"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, *USER]},
     'Unexpected role "system"'),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, *USER]}, "roles must alternate"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
     "text content blocks must be non-empty"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, USE, {"role": "user", "content": "x"}], "tools": TOOLS},
     "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": "hi"}, RESULT],
      "tools": TOOLS}, "unexpected `tool_use_id`"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, USE, RESULT]}, "must define tools"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "n": 2}, "n: Extra inputs are not permitted"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "temperature": 1.5}, "temperature"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "metadata": {"x": 1}}, "metadata.x"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AAAA"}}]}]}, "media_type"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": "trailing "}]},
     "trailing whitespace"),
    ({"model": MODEL, "max_tokens": 2000, "messages": USER, "tools": TOOLS, "tool_choice": {"type": "any"},
      "thinking": {"type": "enabled", "budget_tokens": 1024}}, "tool_choice forces tool use"),
])
def test_validation_like_the_api(emu, body, fragment):
    app, url, client = emu
    with pytest.raises(anthropic.BadRequestError) as e:
        client.post("/v1/messages", body=body, cast_to=httpx.Response)
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert fragment in e.value.body["error"]["message"]
    assert app.state.requests == []


def test_valid_tool_round_trip_and_images_accepted(emu):
    app, _, client = emu
    m = client.messages.create(model=MODEL, max_tokens=5, tools=TOOLS, messages=[
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "iVBORw0KGgo="}}]},
        USE, RESULT])
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert len(app.state.requests) == 1


def test_api_versions_and_model_rules(emu):
    app, url, _ = emu
    body = {"model": MODEL, "max_tokens": 5, "messages": USER, "temperature": 0.5}
    ok = httpx.post(url + "/v1/messages", json=body, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert ok.status_code == 200
    new = httpx.post(url + "/v1/messages", json=body, headers={"authorization": f"Bearer {KEY}",
                                                               "anthropic-version": "2026-10-21"})
    assert new.status_code == 400 and new.json()["error"]["message"] == "temperature: Extra inputs are not permitted"
    both = httpx.post(url + "/v1/messages", json={**body, "top_p": 0.9},
                      headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert both.status_code == 400 and "cannot both be specified" in both.json()["error"]["message"]
    modern = httpx.post(url + "/v1/messages", json={**body, "model": "claude-opus-4-8"},
                        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert modern.status_code == 400 and "deprecated for this model" in modern.json()["error"]["message"]
    adaptive = {"model": "claude-opus-4-8", "max_tokens": 100, "messages": USER, "thinking": {"type": "adaptive"},
                "output_config": {"effort": "high"}}
    assert httpx.post(url + "/v1/messages", json=adaptive, headers={
        "x-api-key": KEY, "anthropic-version": "2023-06-01"}).status_code == 200


def test_models_endpoint(emu):
    _, _, client = emu
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids


def test_count_tokens_answers_the_sdk_and_refuses_max_tokens(emu):
    app, url, client = emu
    n = client.messages.count_tokens(model="claude-sonnet-4-5", system="Be brief.",
                                     messages=[{"role": "user", "content": "one two three"}])
    assert n.input_tokens == 5
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: Extra inputs"):
        client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}],
                                     extra_body={"max_tokens": 5})
