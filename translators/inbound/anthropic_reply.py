"""Anthropic's Messages API as a front door, answer side: OpenAI answers → Anthropic's shapes.

`to_message` turns a ``chat.completion`` into a Message; `MessageStream` turns the
``chat.completion.chunk`` payloads of Turnout's stream (bytes, one per SSE ``data:``) into the exact
event sequence the API sends (message_start, content_block_start, ping, content_block_delta…,
content_block_stop, message_delta, message_stop) and ends a failed stream with ``event: error``;
`error_status` / `error_body` give any Turnout error Anthropic's status, type and body. Pure: no
I/O, no token counting (the endpoint counts). The mapping table is in docs/inbound-anthropic.md.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

Json = dict[str, Any]

STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
               "content_filter": "refusal"}
# Turnout's status → Anthropic's (status, error type); anything else 4xx is an invalid request
ERROR_OF = {400: (400, "invalid_request_error"), 401: (401, "authentication_error"), 402: (402, "billing_error"),
            403: (403, "permission_error"), 404: (404, "not_found_error"), 413: (413, "request_too_large"),
            429: (429, "rate_limit_error"), 500: (500, "api_error"), 502: (500, "api_error"),
            503: (529, "overloaded_error"), 504: (504, "timeout_error"), 529: (529, "overloaded_error")}
OVERLOADED_CODES = ("upstream_overloaded", "upstream_529", "upstream_503")
_ID_CHARS = re.compile(r"[^A-Za-z0-9]")


def message_id(openai_id: str | None = None) -> str:
    """A ``msg_…`` id (from an OpenAI id's letters and digits, so the ledger's id shows through)."""
    tail = _ID_CHARS.sub("", (openai_id or "").removeprefix("chatcmpl-")) or uuid.uuid4().hex
    return "msg_" + tail[:40]


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASON.get(finish_reason or "stop", "end_turn")


def usage_of(u: Json | None, input_estimate: int = 0, output_estimate: int = 0) -> Json:
    """OpenAI usage → Anthropic's: input_tokens exclude cache reads (prompt_tokens include them)."""
    if not u:
        return {"input_tokens": input_estimate, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "output_tokens": output_estimate}
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    out: Json = {"input_tokens": max(0, int(u.get("prompt_tokens") or 0) - cached - written),
                 "cache_creation_input_tokens": written, "cache_read_input_tokens": cached,
                 "output_tokens": int(u.get("completion_tokens") or 0)}
    reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning:
        out["output_tokens_details"] = {"thinking_tokens": int(reasoning)}
    return out


def tool_input(arguments: Any) -> Json:
    """A tool call's arguments as tool_use input (an object); text that is not a JSON object is kept
    under ``arguments`` rather than lost."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        v = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return v if isinstance(v, dict) else {"arguments": v}


def _reasoning(m: Json) -> str | None:
    return m.get("reasoning_content") or m.get("reasoning")


def to_message(completion: Json, *, id: str | None = None, model: str | None = None,
               input_estimate: int = 0, output_estimate: int = 0) -> Json:
    """A Message for a ``chat.completion`` (its first choice: the Messages API returns one answer)."""
    choice = (completion.get("choices") or [{}])[0]
    m = choice.get("message") or {}
    content: list[Json] = []
    thought = _reasoning(m)
    if thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = m.get("content") or (m.get("refusal") if choice.get("finish_reason") == "content_filter" else None)
    if text:
        content.append({"type": "text", "text": text})
    for tc in m.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                        "name": fn.get("name", ""), "input": tool_input(fn.get("arguments"))})
    return {"id": id or message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": model or completion.get("model") or "", "content": content,
            "stop_details": None, "stop_reason": stop_reason(choice.get("finish_reason")), "stop_sequence": None,
            "usage": usage_of(completion.get("usage"), input_estimate, output_estimate)}


# --- streams -----------------------------------------------------------------------------------


def event(type: str, data: Json) -> bytes:
    """One SSE event as the API frames it: ``event: <type>`` then ``data: <json>``."""
    return b"event: " + type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_body(type: str, message: str, request_id: str | None = None) -> Json:
    body: Json = {"type": "error", "error": {"type": type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_status(status: int, code: str | None = None) -> tuple[int, str]:
    """(Anthropic's status, error type) for a Turnout error: 502 → 500 api_error, an overloaded
    upstream or Turnout's 503 (no target can answer now) → 529 overloaded_error, 504 → timeout_error."""
    if code in OVERLOADED_CODES:
        return 529, "overloaded_error"
    if status in ERROR_OF:
        return ERROR_OF[status]
    return (status, "invalid_request_error") if 400 <= status < 500 else (500, "api_error")


class MessageStream:
    """OpenAI chunk payloads in, Anthropic SSE events out (bytes).

    ``feed(payload)`` for each chunk (message_start goes out with the first, ping after the first
    content_block_start), ``finish(usage)`` once the upstream stream has ended (closes the open block,
    message_delta, message_stop), or ``error(type, message)`` if it failed. A block opens when
    its kind changes: reasoning → thinking, content → text, each tool call → tool_use (its arguments
    as input_json_delta)."""

    def __init__(self, id: str | None = None, model: str | None = None, input_estimate: int = 0) -> None:
        self.id = id
        self.model = model
        self.input_estimate = input_estimate
        self.started = False
        self.pinged = False
        self.index = -1  # the open block's index (-1: none yet)
        self.kind: str | None = None  # "thinking" | "text" | "tool:<openai index>"
        self.finish_reason: str | None = None
        self.usage: Json | None = None
        self.output_chars = 0

    def _start(self, chunk: Json) -> list[bytes]:
        self.started = True
        self.id = self.id or message_id(chunk.get("id"))
        self.model = self.model or chunk.get("model") or ""
        u = usage_of(None, self.input_estimate)
        u["output_tokens"] = 1  # as the API: its message_start always counts the first token
        return [event("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": u}})]

    def _open(self, kind: str, block: Json, out: list[bytes]) -> None:
        self._close(out)
        self.index += 1
        self.kind = kind
        out.append(event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                 "content_block": block}))
        if not self.pinged:
            self.pinged = True
            out.append(event("ping", {"type": "ping"}))

    def _close(self, out: list[bytes]) -> None:
        if self.kind is not None:
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.kind = None

    def _delta(self, delta: Json, out: list[bytes]) -> None:
        out.append(event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                 "delta": delta}))

    def feed(self, payload: bytes | Json) -> bytes:
        chunk = orjson.loads(payload) if isinstance(payload, (bytes, bytearray, str)) else payload
        out: list[bytes] = [] if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # the Messages API has one answer
            d = choice.get("delta") or {}
            thought = _reasoning(d)
            if thought:
                if self.kind != "thinking":
                    self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
                self._delta({"type": "thinking_delta", "thinking": thought}, out)
                self.output_chars += len(thought)
            text = d.get("content") or (d.get("refusal") or None)
            if text:
                if self.kind != "text":
                    self._open("text", {"type": "text", "text": ""}, out)
                self._delta({"type": "text_delta", "text": text}, out)
                self.output_chars += len(text)
            for tc in d.get("tool_calls") or ():
                kind = f"tool:{tc.get('index', 0)}"
                fn = tc.get("function") or {}
                if tc.get("id") or (self.kind != kind and fn.get("name")):
                    self._open(kind, {"type": "tool_use", "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                                      "name": fn.get("name") or "", "input": {}}, out)
                    self._delta({"type": "input_json_delta", "partial_json": ""}, out)
                args = fn.get("arguments")
                if args and self.kind == kind:
                    self._delta({"type": "input_json_delta", "partial_json": args}, out)
                    self.output_chars += len(args)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def finish(self, usage: Json | None = None, output_estimate: int | None = None) -> bytes:
        """The end: the open block closed, message_delta (stop_reason, usage), message_stop."""
        out: list[bytes] = [] if self.started else self._start({})
        self._close(out)
        u = usage_of(usage or self.usage, self.input_estimate,
                     output_estimate if output_estimate is not None else (self.output_chars + 3) // 4)
        out.append(event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop_reason(self.finish_reason), "stop_sequence": None}, "usage": u}))
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, type: str, message: str, request_id: str | None = None) -> bytes:
        """A stream that failed after it started ends with an ``error`` event, as the API's do."""
        return event("error", error_body(type, message, request_id))
