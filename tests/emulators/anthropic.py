"""An Anthropic Messages API emulator: ``POST /v1/messages`` and ``GET /v1/models`` over real HTTP.

It checks requests as the real API does (headers, required fields, roles and their order, content
blocks, image sources, tool_use/tool_result pairing, tools, tool_choice, thinking) and answers
with Anthropic's bodies and errors — ``{"type":"error","error":{"type","message"},"request_id"}``
with the real statuses — and its stream event sequence (message_start, content_block_start, ping,
content_block_delta…, content_block_stop, message_delta, message_stop).

``POST /v1/messages/count_tokens`` counts a Messages body (no max_tokens) as one token per word.

Scripting: ``app.state.script`` is a queue of `Reply`s, one taken per request (an empty queue
answers with ``app.state.default``, an echo unless replaced). ``app.state.requests`` keeps every accepted body and
``app.state.headers`` the headers of every request received (accepted or not).

Like the API, text is cut at ``max_tokens`` (one word = one token here; stop_reason max_tokens)
and at the first of ``stop_sequences`` found (stop_reason stop_sequence).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Json = dict[str, Any]

MODELS = ("claude-sonnet-4-6", "claude-opus-4-6", "claude-opus-4-8", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001")
API_VERSIONS = ("2023-06-01", "2023-01-01", "2026-10-21")  # 2026-10-21: what anthropic SDK 2.x sends
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_SERVER_TOOL = re.compile(r"^(web_search|web_fetch|code_execution|bash|text_editor|computer|memory)_\d{8}$")
_TOP_LEVEL = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
              "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
              "container", "mcp_servers", "output_config", "cache_control"}
_SAMPLING = ("temperature", "top_p", "top_k")
# models that reject sampling parameters and budgeted thinking (adaptive thinking only)
MODERN_MODELS = ("claude-opus-4-7", "claude-opus-4-8")
# models that take temperature or top_p but not both
ONE_OF_TEMPERATURE_TOP_P = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-opus-4-5",
                            "claude-sonnet-4-6", "claude-opus-4-6")


@dataclass
class Reply:
    """What the emulator answers to one request.

    blocks: content blocks as the API returns them: {"type":"text","text"},
      {"type":"tool_use","name","input"[,"id"]}, {"type":"thinking","thinking"[,"signature"]}.
    stop_reason: default end_turn, or tool_use when a tool_use block is present.
    usage: overrides for input_tokens, output_tokens, cache_creation_input_tokens,
      cache_read_input_tokens.
    status / error_type / message / headers: an HTTP error instead of an answer.
    latency: seconds before answering; hang: never answer.
    stream_error: (n, error_type, message): an ``event: error`` after n events of the stream.
    drop: cut the connection after n events of the stream.
    raw_sse: serve these bytes verbatim as the stream body (a recorded stream).
    """

    blocks: list[Json] | None = None
    text: str | None = None
    stop_reason: str | None = None
    usage: Json = field(default_factory=dict)
    model: str | None = None
    status: int | None = None
    error_type: str | None = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0
    hang: bool = False
    stream_error: tuple[int, str, str] | None = None
    drop: int | None = None
    raw_sse: bytes | None = None
    chunk_words: int = 1  # words per text_delta


STATUS_OF = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
             "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
             "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529}
TYPE_OF = {v: k for k, v in STATUS_OF.items()}


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type


def _rid() -> str:
    return "req_" + os.urandom(12).hex()


def error_body(type_: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": _rid()})


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(type_, message), status_code=status, media_type="application/json",
                    headers={"request-id": _rid(), **(headers or {})})


# --- validation --------------------------------------------------------------------------------


def _check_text(b: Json, where: str) -> None:
    if not isinstance(b.get("text"), str):
        raise Invalid(f"{where}.text: Field required")
    if not b["text"]:
        raise Invalid("messages: text content blocks must be non-empty")


def _check_source(src: Any, where: str, kinds: tuple[str, ...]) -> None:
    if not isinstance(src, dict):
        raise Invalid(f"{where}.source: Field required")
    t = src.get("type")
    if t == "base64":
        if src.get("media_type") not in kinds:
            raise Invalid(f"{where}.source.base64.media_type: Input should be "
                          + ", ".join(f"'{k}'" for k in kinds))
        try:
            base64.b64decode(src.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"{where}.source.base64.data: The image data is not valid base64") from None
        if not src.get("data"):
            raise Invalid(f"{where}.source.base64.data: Field required")
    elif t == "url":
        if not isinstance(src.get("url"), str) or not src["url"].startswith(("http://", "https://")):
            raise Invalid(f"{where}.source.url.url: Field required")
    else:
        raise Invalid(f"{where}.source: Input tag '{t}' found using 'type' does not match any of the expected "
                      "tags: 'base64', 'url'")


def _check_block(b: Any, where: str, role: str) -> None:
    if not isinstance(b, dict):
        raise Invalid(f"{where}: Input should be a valid dictionary or object")
    t = b.get("type")
    if t == "text":
        _check_text(b, where)
    elif t == "image":
        _check_source(b.get("source"), where, IMAGE_TYPES)
    elif t == "document":
        _check_source(b.get("source"), where, ("application/pdf", "text/plain"))
    elif t == "tool_use":
        if role != "assistant":
            raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
        for k in ("id", "name"):
            if not isinstance(b.get(k), str) or not b[k]:
                raise Invalid(f"{where}.tool_use.{k}: Field required")
        if not isinstance(b.get("input"), dict):
            raise Invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif t == "tool_result":
        if role != "user":
            raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")
        if not isinstance(b.get("tool_use_id"), str):
            raise Invalid(f"{where}.tool_result.tool_use_id: Field required")
        c = b.get("content")
        if isinstance(c, list):
            for k, inner in enumerate(c):
                _check_block(inner, f"{where}.tool_result.content.{k}", "user")
        elif c is not None and not isinstance(c, str):
            raise Invalid(f"{where}.tool_result.content: Input should be a valid string or list")
    elif t in ("thinking", "redacted_thinking"):
        if role != "assistant":
            raise Invalid(f"{where}: thinking blocks are only allowed in assistant messages")
    else:
        raise Invalid(f"{where}: Input tag '{t}' found using 'type' does not match any of the expected tags: "
                      "'text', 'image', 'document', 'tool_use', 'tool_result', 'thinking', 'redacted_thinking'")


def validate(body: Any, version: str = "2023-06-01") -> Json:
    """Raise `Invalid` as the Messages API would (for that anthropic-version); return the body if
    it is acceptable."""
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    for k in body:
        if k not in _TOP_LEVEL or (version >= "2026-10-21" and k in _SAMPLING):
            raise Invalid(f"{k}: Extra inputs are not permitted")
    model = str(body.get("model") or "")
    if any(m in model for m in MODERN_MODELS):
        for k in _SAMPLING:
            if k in body:
                raise Invalid(f"`{k}` is deprecated for this model.")
        if (body.get("thinking") or {}).get("type") == "enabled":
            raise Invalid("thinking.type.enabled is not supported for this model. Use thinking.type.adaptive "
                          "and output_config.effort to control thinking behavior.")
    if any(m in model for m in ONE_OF_TEMPERATURE_TOP_P) and "temperature" in body and "top_p" in body:
        raise Invalid("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    if "max_tokens" not in body:
        raise Invalid("max_tokens: Field required")
    mt = body["max_tokens"]
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    msgs = body.get("messages")
    if msgs is None:
        raise Invalid("messages: Field required")
    if not isinstance(msgs, list) or not msgs:
        raise Invalid("messages: at least one message is required")

    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            for j, b in enumerate(system):
                if not isinstance(b, dict) or b.get("type") != "text":
                    raise Invalid(f"system.{j}: Input tag '{(b or {}).get('type')}' found using 'type' does not "
                                  "match any of the expected tags: 'text'")
                _check_text(b, f"system.{j}")
        elif not isinstance(system, str):
            raise Invalid("system: Input should be a valid string or list")

    prev_role = None
    pending_uses: list[str] = []
    has_tool_blocks = False
    for i, m in enumerate(msgs):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise Invalid(f"{where}: Input should be a valid dictionary")
        role = m.get("role")
        if role == "system":
            raise Invalid('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                          'parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            raise Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if role == prev_role:
            raise Invalid(f'messages: roles must alternate between "user" and "assistant", but found multiple '
                          f'"{role}" roles in a row')
        content = m.get("content")
        if content is None:
            raise Invalid(f"{where}.content: Field required")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise Invalid(f"{where}.content: Input should be a valid list")
        if not blocks:
            if not (role == "assistant" and i == len(msgs) - 1):
                raise Invalid(f"{where}: all messages must have non-empty content except for the optional final "
                              "assistant message")
        for j, b in enumerate(blocks):
            _check_block(b, f"{where}.content.{j}", role)
        results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        if results:
            has_tool_blocks = True
            first_other = next((j for j, b in enumerate(blocks) if b.get("type") != "tool_result"), len(blocks))
            if any(b.get("type") == "tool_result" for b in blocks[first_other:]):
                raise Invalid(f"{where}: tool_result blocks must come before any other content in a user message")
        if pending_uses:
            missing = [u for u in pending_uses if u not in results]
            if missing:
                raise Invalid(f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                              f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                              "corresponding `tool_result` block in the next message.")
        extra = [r for r in results if r not in pending_uses]
        if extra:
            j = next(j for j, b in enumerate(blocks) if b.get("tool_use_id") == extra[0])
            raise Invalid(f"{where}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                          f"{extra[0]}. Each `tool_result` block must have a corresponding `tool_use` block in "
                          "the previous message.")
        pending_uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        if pending_uses:
            has_tool_blocks = True
        if role == "assistant" and i == len(msgs) - 1 and blocks and blocks[-1].get("type") == "text" \
                and blocks[-1]["text"] != blocks[-1]["text"].rstrip():
            raise Invalid("messages: final assistant content cannot end with trailing whitespace")
        prev_role = role

    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for j, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise Invalid(f"tools.{j}.custom.name: Field required")
            if not _TOOL_NAME.match(t["name"]):
                raise Invalid(f"tools.{j}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            if t["name"] in names:
                raise Invalid("tools: Tool names must be unique.")
            names.add(t["name"])
            if t.get("type") not in (None, "custom"):
                if not _SERVER_TOOL.match(str(t["type"])):
                    raise Invalid(f"tools.{j}: Input tag '{t['type']}' found using 'type' does not match any of "
                                  "the expected tags")
                continue  # a server tool (web_search_20250305, …): its own fields
            schema = t.get("input_schema")
            if not isinstance(schema, dict):
                raise Invalid(f"tools.{j}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise Invalid(f"tools.{j}.custom.input_schema.type: Input should be 'object'")
            for k in t:
                if k not in ("name", "description", "input_schema", "cache_control", "type"):
                    raise Invalid(f"tools.{j}.custom.{k}: Extra inputs are not permitted")
    if has_tool_blocks and not tools:
        raise Invalid("Requests which include `tool_use` or `tool_result` blocks must define tools.")
    tc = body.get("tool_choice")
    if tc is not None:
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice: Input tag found using 'type' does not match any of the expected tags: "
                          "'auto', 'any', 'tool', 'none'")
        if tc["type"] == "tool" and tc.get("name") not in names:
            raise Invalid(f"tool_choice.tool.name: Tool '{tc.get('name')}' not found in tools")
        allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if tc["type"] == "tool" else set())
        if tc["type"] == "none":
            allowed = {"type"}
        for k in tc:
            if k not in allowed:
                raise Invalid(f"tool_choice.{tc['type']}.{k}: Extra inputs are not permitted")
        if not tools:
            raise Invalid("tool_choice may only be specified while providing tools.")

    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
            raise Invalid(f"{name}: Input should be less than or equal to 1" if isinstance(v, (int, float))
                          else f"{name}: Input should be a valid number")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s.strip() for s in stops)):
        raise Invalid("stop_sequences: each stop sequence must contain non-whitespace")
    md = body.get("metadata")
    if md is not None:
        if not isinstance(md, dict):
            raise Invalid("metadata: Input should be a valid dictionary")
        for k in md:
            if k != "user_id":
                raise Invalid(f"metadata.{k}: Extra inputs are not permitted")
    th = body.get("thinking")
    if th is not None:
        if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled", "adaptive"):
            raise Invalid("thinking: Input tag found using 'type' does not match any of the expected tags: "
                          "'enabled', 'disabled', 'adaptive'")
        if th["type"] in ("enabled", "adaptive"):
            if body.get("temperature") not in (None, 1):
                raise Invalid("`temperature` may only be set to 1 when thinking is enabled.")
            if tc is not None and tc["type"] in ("any", "tool"):
                raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
        if th["type"] == "enabled":
            bt = th.get("budget_tokens")
            if not isinstance(bt, int) or bt < 1024:
                raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if bt >= mt:
                raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    oc = body.get("output_config")
    if oc is not None:
        if not isinstance(oc, dict):
            raise Invalid("output_config: Input should be a valid dictionary")
        for k in oc:
            if k not in ("effort", "format"):
                raise Invalid(f"output_config.{k}: Extra inputs are not permitted")
        if oc.get("effort") not in (None, "low", "medium", "high", "xhigh", "max"):
            raise Invalid("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    return body


# --- answers -----------------------------------------------------------------------------------


def _words(body: Json) -> int:
    n = 0
    sysp = body.get("system")
    n += len((sysp if isinstance(sysp, str) else " ".join(b.get("text", "") for b in sysp or ())).split())
    for m in body["messages"]:
        c = m["content"]
        if isinstance(c, str):
            n += len(c.split())
        else:
            for b in c:
                n += len(str(b.get("text") or b.get("content") or b.get("input") or "").split()) or 1
    return max(n, 1)


def _last_user_text(body: Json) -> str:
    for m in reversed(body["messages"]):
        if m["role"] == "user":
            c = m["content"]
            if isinstance(c, str):
                return c
            return " ".join(b["text"] for b in c if b.get("type") == "text")
    return ""


def _tool_id() -> str:
    return "toolu_01" + os.urandom(11).hex()[:22]


def build_message(body: Json, reply: Reply) -> Json:
    """The Message for a request and a scripted reply, with max_tokens and stop_sequences applied."""
    blocks = [dict(b) for b in (reply.blocks if reply.blocks is not None else
                                [{"type": "text", "text": reply.text if reply.text is not None else
                                  f"Echo: {_last_user_text(body)}"}])]
    budget = body["max_tokens"]
    stop_reason = reply.stop_reason
    stop_sequence = None
    out: list[Json] = []
    used = 0
    for b in blocks:
        if b["type"] == "text":
            text = b["text"]
            for s in body.get("stop_sequences") or ():
                at = text.find(s)
                if at >= 0:
                    text, stop_sequence, stop_reason = text[:at], s, "stop_sequence"
            words = text.split(" ")
            if used + len(words) > budget:
                text = " ".join(words[:max(0, budget - used)])
                stop_reason = "max_tokens"
            used += len(text.split(" "))
            if text:
                b = {"type": "text", "text": text}
                out.append(b)
            if stop_reason in ("stop_sequence", "max_tokens"):
                break
        elif b["type"] == "tool_use":
            out.append({"type": "tool_use", "id": b.get("id") or _tool_id(), "name": b["name"],
                        "input": b.get("input") or {}})
        elif b["type"] == "thinking":
            out.append({"type": "thinking", "thinking": b["thinking"],
                        "signature": b.get("signature") or base64.b64encode(os.urandom(24)).decode()})
        else:
            out.append(b)
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in out) else "end_turn"
    u = {"input_tokens": _words(body), "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "output_tokens": max(1, sum(len(str(b.get("text") or b.get("thinking") or b.get("input")).split())
                                     for b in out))}
    u.update(reply.usage)
    return {
        "id": "msg_01" + os.urandom(11).hex()[:22],
        "type": "message",
        "role": "assistant",
        "model": reply.model or body["model"],
        "content": out,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": u["input_tokens"],
            "cache_creation_input_tokens": u["cache_creation_input_tokens"],
            "cache_read_input_tokens": u["cache_read_input_tokens"],
            "cache_creation": {"ephemeral_5m_input_tokens": u["cache_creation_input_tokens"],
                               "ephemeral_1h_input_tokens": 0},
            "output_tokens": u["output_tokens"],
            "service_tier": "standard",
            **{k: v for k, v in reply.usage.items() if k not in _USAGE_COUNTS},
        },
    }


_USAGE_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _event(type_: str, data: Json) -> bytes:
    return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _pieces(s: str, n: int) -> list[str]:
    words = s.split(" ")
    return [" ".join(words[i:i + n]) + (" " if i + n < len(words) else "") for i in range(0, len(words), n)]


def stream_events(msg: Json, chunk_words: int = 1) -> list[bytes]:
    """The SSE events that stream `msg`, in the API's order."""
    head = {**msg, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**msg["usage"], "output_tokens": 1}}
    ev = [_event("message_start", {"type": "message_start", "message": head})]
    for i, b in enumerate(msg["content"]):
        t = b["type"]
        if t == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(b["text"], chunk_words)]
        elif t == "tool_use":
            start = {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}
            js = orjson.dumps(b["input"]).decode()
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": js[k:k + 12]} for k in range(0, len(js), 12)]
        elif t == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(b["thinking"], chunk_words)]
            deltas.append({"type": "signature_delta", "signature": b["signature"]})
        else:
            start, deltas = b, []
        ev.append(_event("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}))
        if i == 0:
            ev.append(_event("ping", {"type": "ping"}))
        ev += [_event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}) for d in deltas]
        ev.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
    u = msg["usage"]
    ev.append(_event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": msg["stop_reason"], "stop_sequence": msg["stop_sequence"]}, "usage": {
        "input_tokens": u["input_tokens"], "cache_creation_input_tokens": u["cache_creation_input_tokens"],
        "cache_read_input_tokens": u["cache_read_input_tokens"], "output_tokens": u["output_tokens"],
        **({"output_tokens_details": u["output_tokens_details"]} if "output_tokens_details" in u else {})}}))
    ev.append(_event("message_stop", {"type": "message_stop"}))
    return ev


def _authorized(request: Request, api_key: str | None) -> bool:
    """x-api-key, or an Authorization bearer (what the 2.x SDK sends), as the API takes either."""
    key = request.headers.get("x-api-key")
    if not key:
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth[:7].lower() == "bearer " else ""
    return bool(key) and (api_key is None or key == api_key)


def build_app(api_key: str | None = "sk-ant-test") -> Starlette:
    """The emulator. `api_key` is the x-api-key it accepts (None accepts any non-empty key)."""
    script: list[Reply] = []
    received: list[Json] = []
    headers_seen: list[dict[str, str]] = []

    async def messages(request: Request) -> Response:
        headers_seen.append(dict(request.headers))
        if not _authorized(request, api_key):
            return error_response(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if not version:
            return error_response(400, "invalid_request_error", "anthropic-version: header is required")
        if version not in API_VERSIONS:
            return error_response(400, "invalid_request_error", f"anthropic-version: '{version}' is not a valid version")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error_response(400, "invalid_request_error", "Content-Type must be application/json")
        try:
            body = validate(orjson.loads(await request.body()), version)
        except orjson.JSONDecodeError:
            return error_response(400, "invalid_request_error", "There was an issue with the format of your "
                                  "request: the body is not valid JSON")
        except Invalid as e:
            return error_response(e.status, e.type, e.message)
        received.append(body)
        reply = script.pop(0) if script else request.app.state.default
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.latency:
            await asyncio.sleep(reply.latency)
        if reply.status:
            etype = reply.error_type or TYPE_OF.get(reply.status, "api_error")
            return error_response(reply.status, etype, reply.message or {
                "overloaded_error": "Overloaded", "api_error": "Internal server error",
                "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
                "not_found_error": f"model: {body['model']}", "permission_error":
                "Your API key does not have permission to use the specified resource.",
                "authentication_error": "invalid x-api-key"}.get(etype, "Bad request"), reply.headers)
        if body.get("model") not in MODELS and not str(body.get("model")).startswith("claude"):
            return error_response(404, "not_found_error", f"model: {body['model']}")
        if reply.raw_sse is not None and body.get("stream"):
            return StreamingResponse(iter([reply.raw_sse]), media_type="text/event-stream",
                                     headers={"request-id": _rid()})
        msg = build_message(body, reply)
        if not body.get("stream"):
            return Response(orjson.dumps(msg), media_type="application/json", headers={"request-id": _rid()})
        events = stream_events(msg, reply.chunk_words)

        async def gen() -> AsyncIterator[bytes]:
            for i, e in enumerate(events):
                if reply.stream_error is not None and i == reply.stream_error[0]:
                    _, etype, message = reply.stream_error
                    yield _event("error", {"type": "error", "error": {"type": etype, "message": message},
                                           "request_id": _rid()})
                    return
                if reply.drop is not None and i >= reply.drop:
                    raise ConnectionResetError("emulator drop")  # uvicorn aborts the connection mid-body
                yield e
                await asyncio.sleep(0)

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"request-id": _rid()})

    async def count_tokens(request: Request) -> Response:
        """POST /v1/messages/count_tokens: the Messages body without max_tokens; one word = one token."""
        headers_seen.append(dict(request.headers))
        if not _authorized(request, api_key):
            return error_response(401, "authentication_error", "invalid x-api-key")
        try:
            body = orjson.loads(await request.body())
            if isinstance(body, dict) and "max_tokens" in body:
                raise Invalid("max_tokens: Extra inputs are not permitted")
            body = validate({**body, "max_tokens": 1} if isinstance(body, dict) else body)
        except orjson.JSONDecodeError:
            return error_response(400, "invalid_request_error", "the body is not valid JSON")
        except Invalid as e:
            return error_response(e.status, e.type, e.message)
        body.pop("max_tokens")
        received.append(body)
        tools = len(orjson.dumps(body.get("tools")).split()) if body.get("tools") else 0
        return Response(orjson.dumps({"input_tokens": _words(body) + tools}), media_type="application/json")

    async def models(request: Request) -> Response:
        headers_seen.append(dict(request.headers))
        if not _authorized(request, api_key):
            return error_response(401, "authentication_error", "invalid x-api-key")
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"} for m in MODELS]
        return Response(orjson.dumps({"data": data, "has_more": False, "first_id": MODELS[0],
                                      "last_id": MODELS[-1]}), media_type="application/json")

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]),
                            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"])])
    app.state.script = script
    app.state.default = Reply()  # the answer when the script is empty
    app.state.requests = received
    app.state.headers = headers_seen
    return app
