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


def matched_stop(text: str, stops: list[str] | None, said: Any = None) -> tuple[str, str | None]:
    """(the text without the stop sequence it ended on, that sequence) for an answer that stopped:
    the one the upstream names (vLLM's ``stop_reason``), else the one the text ends with (servers
    that keep it in the text). OpenAI-shaped upstreams that drop it and say nothing leave it unknown."""
    if not stops:
        return text, None
    if isinstance(said, str) and said in stops:
        return (text[:-len(said)] if text.endswith(said) else text), said
    for s in sorted(stops, key=len, reverse=True):
        if s and text.endswith(s):
            return text[:-len(s)], s
    return text, None


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
               input_estimate: int = 0, output_estimate: int = 0, stop_sequences: list[str] | None = None) -> Json:
    """A Message for a ``chat.completion`` (its first choice: the Messages API returns one answer);
    ``stop_sequences``: the client's, to say which one the answer stopped on (`matched_stop`)."""
    choice = (completion.get("choices") or [{}])[0]
    m = choice.get("message") or {}
    content: list[Json] = []
    thought = _reasoning(m)
    if thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = m.get("content") or (m.get("refusal") if choice.get("finish_reason") == "content_filter" else None)
    reason, seq = stop_reason(choice.get("finish_reason")), None
    if reason == "end_turn" and not m.get("tool_calls"):
        text, seq = matched_stop(text or "", stop_sequences, choice.get("stop_reason"))
        reason = "stop_sequence" if seq is not None else reason
    if text:
        content.append({"type": "text", "text": text})
    for tc in m.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                        "name": fn.get("name", ""), "input": tool_input(fn.get("arguments"))})
    return {"id": id or message_id(completion.get("id")), "type": "message", "role": "assistant",
            "model": model or completion.get("model") or "", "content": content,
            "stop_details": None, "stop_reason": reason, "stop_sequence": seq,
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

    def __init__(self, id: str | None = None, model: str | None = None, input_estimate: int = 0,
                 stop_sequences: list[str] | None = None) -> None:
        self.stops = [s for s in stop_sequences or () if s]
        # text held back until it cannot be the start of a stop sequence the answer ends on
        self.hold = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.said_stop: Any = None  # the stop sequence the upstream named (vLLM's stop_reason)
        self.stop_sequence: str | None = None
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

    def _flush(self, out: list[bytes], keep: int = 0) -> None:
        """Send the held-back text but its last `keep` characters."""
        cut = max(0, len(self.pending) - keep)
        if cut:
            self._delta({"type": "text_delta", "text": self.pending[:cut]}, out)
            self.pending = self.pending[cut:]

    def _close(self, out: list[bytes]) -> None:
        if self.kind == "text":
            self._flush(out)
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
                if self.hold:
                    self.pending += text
                    self._flush(out, self.hold)
                else:
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
                self.said_stop = choice.get("stop_reason")
                if self.kind == "text" and self.hold and stop_reason(self.finish_reason) == "end_turn":
                    self.pending, self.stop_sequence = matched_stop(self.pending, self.stops, self.said_stop)
        return b"".join(out)

    def finish(self, usage: Json | None = None, output_estimate: int | None = None) -> bytes:
        """The end: the open block closed, message_delta (stop_reason, usage), message_stop."""
        out: list[bytes] = [] if self.started else self._start({})
        self._close(out)
        u = usage_of(usage or self.usage, self.input_estimate,
                     output_estimate if output_estimate is not None else (self.output_chars + 3) // 4)
        reason = "stop_sequence" if self.stop_sequence is not None else stop_reason(self.finish_reason)
        out.append(event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": reason, "stop_sequence": self.stop_sequence}, "usage": u}))
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, type: str, message: str, request_id: str | None = None) -> bytes:
        """A stream that failed after it started ends with an ``error`` event, as the API's do."""
        return event("error", error_body(type, message, request_id))
