"""Issue 17: a translated answer that stopped on one of the client's `stop_sequences` says so
(`stop_reason: "stop_sequence"`, `stop_sequence`), streamed and not, with the `anthropic` SDK as the
client: the upstream names it (vLLM's `stop_reason`) or keeps it at the end of its text (stripped, as
Claude never includes it)."""

from __future__ import annotations

import anthropic
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from translators.inbound.anthropic_reply import MessageStream, matched_stop


def upstream() -> Starlette:
    """An OpenAI-compatible server scripted by the last user message: "keep" answers with the stop
    sequence left in the text, "name" drops it and names it in `stop_reason` (as vLLM), else neither."""
    seen: list[dict] = []

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        seen.append(body)
        how = body["messages"][-1]["content"]
        how = how if isinstance(how, str) else how[0]["text"]
        stop = (body.get("stop") or ["?"])[0]
        text = {"keep": f"Once upon a time{stop}", "name": "Once upon a time"}.get(how, "The end.")
        extra = {"stop_reason": stop} if how == "name" else {}
        base = {"id": "chatcmpl-s", "created": 1, "model": body["model"]}
        usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        if not body.get("stream"):
            return Response(orjson.dumps({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}],
                "usage": usage}), media_type="application/json")
        pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
        chunks = [{**base, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        chunks.append({**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", **extra}]})
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        data = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        return Response(data, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.seen = seen
    return app


@pytest.fixture
def client(serve, turnout):
    up = upstream()
    url = turnout({"backends": {"up": {"type": "openai", "base_url": serve(up) + "/v1"}},
                   "models": {"story": {"backend": "up", "model": "story-model"}}})
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0), up


@pytest.mark.parametrize("how", ["keep", "name"])
def test_stop_sequence_reported_streamed_and_not(client, how):
    c, up = client
    m = c.messages.create(model="story", max_tokens=50, stop_sequences=["THE END", "\n\nHuman:"],
                          messages=[{"role": "user", "content": how}])
    assert up.state.seen[-1]["stop"] == ["THE END", "\n\nHuman:"]
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "THE END"
    assert m.content[0].text == "Once upon a time"
    with c.messages.stream(model="story", max_tokens=50, stop_sequences=["THE END"],
                           messages=[{"role": "user", "content": how}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Once upon a time" and final.stop_reason == "stop_sequence" and final.stop_sequence == "THE END"


def test_an_answer_that_did_not_stop_on_one_says_end_turn(client):
    c, _ = client
    m = c.messages.create(model="story", max_tokens=50, stop_sequences=["THE END"],
                          messages=[{"role": "user", "content": "plain"}])
    assert m.stop_reason == "end_turn" and m.stop_sequence is None and m.content[0].text == "The end."
    with c.messages.stream(model="story", max_tokens=50, stop_sequences=["THE END"],
                           messages=[{"role": "user", "content": "plain"}]) as s:
        assert "".join(s.text_stream) == "The end." and s.get_final_message().stop_sequence is None


def test_matched_stop_and_held_back_text():
    assert matched_stop("abcEND", ["END"]) == ("abc", "END")
    assert matched_stop("abc", ["END"], "END") == ("abc", "END")
    assert matched_stop("abc", ["END"], "other") == ("abc", None) and matched_stop("abc", None) == ("abc", None)
    s = MessageStream(id="msg_1", model="m", stop_sequences=["END"])
    out = b"".join(s.feed({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in ("ab", "cE", "N", "D"))
    out += s.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + s.finish()
    deltas = [orjson.loads(line[6:])["delta"] for line in out.split(b"\n") if line.startswith(b"data: ")
              and b"content_block_delta" in line]
    assert "".join(d["text"] for d in deltas) == "abc"
    assert b'"stop_reason":"stop_sequence","stop_sequence":"END"' in out
