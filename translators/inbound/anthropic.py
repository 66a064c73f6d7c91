"""Anthropic's Messages API as a front door, request side: check a Messages body as the API would
(with its wording) and turn it into Turnout's OpenAI chat body.

`validate` raises `AnthropicInvalid` (type ``invalid_request_error``, status 400) with the API's own
messages; `to_openai` builds the chat body every target's outbound translator understands. The
answer side (Message objects, the SSE event sequence, error bodies) is `anthropic_reply`. The
mapping table is in docs/inbound-anthropic.md.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from translators.common import TranslationError

Json = dict[str, Any]

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DOCUMENT_TYPES = ("application/pdf", "text/plain")
BLOCK_TAGS = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
# fields of a Messages body: checked and mapped, or (the second set) accepted and meaningful only to
# Claude itself (kept by the pass-through, not expressible for other targets)
_FIELDS = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
           "top_p", "top_k", "tools", "tool_choice", "thinking"}
_CLAUDE_ONLY = {"service_tier", "container", "mcp_servers", "output_config", "cache_control", "context_management",
                "inference_geo"}
# thinking.budget_tokens → reasoning_effort (upper bounds); adaptive thinking's effort → reasoning_effort
_BUDGET_EFFORT = ((4096, "low"), (16384, "medium"))
_ADAPTIVE_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


class AnthropicInvalid(TranslationError):
    """A request the Messages API would refuse: 400 ``invalid_request_error`` with its wording."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_request_error")


# --- validation --------------------------------------------------------------------------------


def _tag_error(where: str, tag: Any, tags: tuple[str, ...]) -> AnthropicInvalid:
    return AnthropicInvalid(f"{where}: Input tag '{tag}' found using 'type' does not match any of the expected "
                            "tags: " + ", ".join(f"'{t}'" for t in tags))


def _check_text(b: Json, where: str) -> None:
    if not isinstance(b.get("text"), str):
        raise AnthropicInvalid(f"{where}.text: Field required")
    if not b["text"]:
        raise AnthropicInvalid("messages: text content blocks must be non-empty")


def _check_source(src: Any, where: str, kinds: tuple[str, ...], document: bool = False) -> None:
    if not isinstance(src, dict):
        raise AnthropicInvalid(f"{where}.source: Field required")
    t = src.get("type")
    if t == "base64":
        if src.get("media_type") not in kinds:
            raise AnthropicInvalid(f"{where}.source.base64.media_type: Input should be "
                                   + ", ".join(f"'{k}'" for k in kinds))
        if not isinstance(src.get("data"), str) or not src["data"]:
            raise AnthropicInvalid(f"{where}.source.base64.data: Field required")
    elif t == "url":
        if not isinstance(src.get("url"), str) or not src["url"].startswith(("http://", "https://")):
            raise AnthropicInvalid(f"{where}.source.url.url: Field required")
    elif document and t == "text":
        if not isinstance(src.get("data"), str):
            raise AnthropicInvalid(f"{where}.source.text.data: Field required")
    elif document and t == "content":
        if not isinstance(src.get("content"), (str, list)):
            raise AnthropicInvalid(f"{where}.source.content.content: Field required")
    else:
        raise _tag_error(f"{where}.source", t, ("base64", "url", "text", "content") if document else ("base64", "url"))


def _check_block(b: Any, where: str, role: str) -> None:
    if not isinstance(b, dict):
        raise AnthropicInvalid(f"{where}: Input should be a valid dictionary or object")
    t = b.get("type")
    if t == "text":
        _check_text(b, where)
    elif t == "image":
        _check_source(b.get("source"), where, IMAGE_TYPES)
    elif t == "document":
        _check_source(b.get("source"), where, DOCUMENT_TYPES, document=True)
    elif t == "tool_use":
        if role != "assistant":
            raise AnthropicInvalid(f"{where}: tool_use blocks are only allowed in assistant messages")
        for k in ("id", "name"):
            if not isinstance(b.get(k), str) or not b[k]:
                raise AnthropicInvalid(f"{where}.tool_use.{k}: Field required")
        if not isinstance(b.get("input"), dict):
            raise AnthropicInvalid(f"{where}.tool_use.input: Input should be a valid dictionary")
    elif t == "tool_result":
        if role != "user":
            raise AnthropicInvalid(f"{where}: tool_result blocks are only allowed in user messages")
        if not isinstance(b.get("tool_use_id"), str):
            raise AnthropicInvalid(f"{where}.tool_result.tool_use_id: Field required")
        c = b.get("content")
        if isinstance(c, list):
            for k, inner in enumerate(c):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image", "document"):
                    raise _tag_error(f"{where}.tool_result.content.{k}", (inner or {}).get("type")
                                     if isinstance(inner, dict) else None, ("text", "image", "document"))
                _check_block(inner, f"{where}.tool_result.content.{k}", "user")
        elif c is not None and not isinstance(c, str):
            raise AnthropicInvalid(f"{where}.tool_result.content: Input should be a valid string or list")
    elif t in ("thinking", "redacted_thinking"):
        if role != "assistant":
            raise AnthropicInvalid(f"{where}: thinking blocks are only allowed in assistant messages")
    else:
        raise _tag_error(where, t, BLOCK_TAGS)


def _blocks_of(content: Any) -> list[Json]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _turns(msgs: list[Json]) -> list[tuple[str, list[Json]]]:
    """Consecutive same-role messages merged into one turn, as the API does."""
    turns: list[tuple[str, list[Json]]] = []
    for m in msgs:
        blocks = _blocks_of(m["content"])
        if turns and turns[-1][0] == m["role"]:
            turns[-1][1].extend(blocks)
        else:
            turns.append((m["role"], blocks))
    return turns


def _check_messages(msgs: Any) -> None:
    if msgs is None:
        raise AnthropicInvalid("messages: Field required")
    if not isinstance(msgs, list) or not msgs:
        raise AnthropicInvalid("messages: at least one message is required")
    for i, m in enumerate(msgs):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise AnthropicInvalid(f"{where}: Input should be a valid dictionary")
        role = m.get("role")
        if role == "system":
            raise AnthropicInvalid('messages: Unexpected role "system". The Messages API accepts a top-level '
                                   '`system` parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            raise AnthropicInvalid(f"{where}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        if content is None:
            raise AnthropicInvalid(f"{where}.content: Field required")
        if not isinstance(content, (str, list)):
            raise AnthropicInvalid(f"{where}.content: Input should be a valid list")
        if not content and not (role == "assistant" and i == len(msgs) - 1):
            raise AnthropicInvalid(f"{where}: all messages must have non-empty content except for the optional "
                                   "final assistant message")
        for j, b in enumerate(_blocks_of(content)):
            _check_block(b, f"{where}.content.{j}", role)
    pending: list[str] = []
    for i, (role, blocks) in enumerate(_turns(msgs)):
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        missing = [u for u in pending if u not in results]
        if missing:
            raise AnthropicInvalid(f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                                   f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                                   "corresponding `tool_result` block in the next message.")
        extra = [r for r in results if r not in pending]
        if extra:
            raise AnthropicInvalid(f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                                   f"{extra[0]}. Each `tool_result` block must have a corresponding `tool_use` "
                                   "block in the previous message.")
        pending = [b["id"] for b in blocks if b["type"] == "tool_use"]


def _has_tool_blocks(msgs: list[Json]) -> bool:
    return any(b["type"] in ("tool_use", "tool_result") for m in msgs for b in _blocks_of(m["content"]))


def _check_tools(tools: Any, tc: Any) -> None:
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise AnthropicInvalid("tools: Input should be a valid list")
        for j, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise AnthropicInvalid(f"tools.{j}.custom.name: Field required")
            if t["name"] in names:
                raise AnthropicInvalid("tools: Tool names must be unique.")
            names.add(t["name"])
            if t.get("type") not in (None, "custom"):
                continue  # a server tool (web_search_…, bash_…): Claude's to check
            if not _TOOL_NAME.match(t["name"]):
                raise AnthropicInvalid(f"tools.{j}.custom.name: String should match pattern "
                                       "'^[a-zA-Z0-9_-]{1,128}$'")
            schema = t.get("input_schema")
            if not isinstance(schema, dict):
                raise AnthropicInvalid(f"tools.{j}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise AnthropicInvalid(f"tools.{j}.custom.input_schema.type: Input should be 'object'")
    if tc is None:
        return
    if not tools:
        raise AnthropicInvalid("tool_choice may only be specified while providing tools.")
    if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool", "none"):
        raise AnthropicInvalid("tool_choice: Input tag found using 'type' does not match any of the expected tags: "
                               "'auto', 'any', 'tool', 'none'")
    if tc["type"] == "tool" and tc.get("name") not in names:
        raise AnthropicInvalid(f"tool_choice.tool.name: Tool '{tc.get('name')}' not found in tools")


def _check_number(body: Json, name: str, lo: float, hi: float | None) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AnthropicInvalid(f"{name}: Input should be a valid number")
    if v < lo:
        raise AnthropicInvalid(f"{name}: Input should be greater than or equal to {lo:g}")
    if hi is not None and v > hi:
        raise AnthropicInvalid(f"{name}: Input should be less than or equal to {hi:g}")


def validate(body: Any, *, count_tokens: bool = False, beta: bool = False) -> Json:
    """The body if the Messages API would accept it, else `AnthropicInvalid` in the API's words.
    `count_tokens`: the count_tokens endpoint's body (no max_tokens). `beta`: the client sent
    ``anthropic-beta``, whose features add top-level fields: unknown ones are then Claude's to judge
    (passed through to Claude targets, not sent to others)."""
    if not isinstance(body, dict):
        raise AnthropicInvalid("Input should be a valid dictionary")
    for k in body:
        if k not in _FIELDS and k not in _CLAUDE_ONLY and not beta:
            raise AnthropicInvalid(f"{k}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise AnthropicInvalid("model: Field required")
    if not count_tokens:
        if "max_tokens" not in body:
            raise AnthropicInvalid("max_tokens: Field required")
        mt = body["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise AnthropicInvalid("max_tokens: Input should be greater than or equal to 1")
    _check_messages(body.get("messages"))
    system = body.get("system")
    if isinstance(system, list):
        for j, b in enumerate(system):
            if not isinstance(b, dict) or b.get("type") != "text":
                raise _tag_error(f"system.{j}", b.get("type") if isinstance(b, dict) else None, ("text",))
            _check_text(b, f"system.{j}")
    elif system is not None and not isinstance(system, str):
        raise AnthropicInvalid("system: Input should be a valid string or list")
    tools, tc = body.get("tools"), body.get("tool_choice")
    _check_tools(tools, tc)
    if not tools and _has_tool_blocks(body["messages"]):
        raise AnthropicInvalid("Requests which include `tool_use` or `tool_result` blocks must define tools.")
    _check_number(body, "temperature", 0, 1)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "top_k", 0, None)
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise AnthropicInvalid("stop_sequences: Input should be a valid list")
    md = body.get("metadata")
    if md is not None:
        if not isinstance(md, dict):
            raise AnthropicInvalid("metadata: Input should be a valid dictionary")
        for k in md:
            if k != "user_id":
                raise AnthropicInvalid(f"metadata.{k}: Extra inputs are not permitted")
    th = body.get("thinking")
    if th is not None:
        if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled", "adaptive"):
            raise AnthropicInvalid("thinking: Input tag found using 'type' does not match any of the expected "
                                   "tags: 'enabled', 'disabled', 'adaptive'")
        if th["type"] == "enabled":
            bt = th.get("budget_tokens")
            if isinstance(bt, bool) or not isinstance(bt, int) or bt < 1024:
                raise AnthropicInvalid("thinking.enabled.budget_tokens: Input should be greater than or equal "
                                       "to 1024")
            if not count_tokens and bt >= body["max_tokens"]:
                raise AnthropicInvalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
        if th["type"] != "disabled" and isinstance(tc, dict) and tc.get("type") in ("any", "tool"):
            raise AnthropicInvalid("Thinking may not be enabled when tool_choice forces tool use.")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise AnthropicInvalid("stream: Input should be a valid boolean")
    return body


# --- Anthropic → OpenAI chat body ----------------------------------------------------------------


def _data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"


def _part(b: Json, where: str) -> Json:
    """One user-side content block as an OpenAI content part."""
    t = b["type"]
    if t == "text":
        return {"type": "text", "text": b["text"]}
    src = b["source"]
    if t == "image":
        url = src["url"] if src["type"] == "url" else _data_url(src["media_type"], src["data"])
        return {"type": "image_url", "image_url": {"url": url}}
    # a document
    title = b.get("title")
    if src["type"] == "base64":
        name = (title or "document") + (".pdf" if src["media_type"] == "application/pdf" else ".txt")
        return {"type": "file", "file": {"filename": name, "file_data": _data_url(src["media_type"], src["data"])}}
    if src["type"] == "text":
        text = src["data"]
    elif src["type"] == "content":
        c = src["content"]
        text = c if isinstance(c, str) else "\n".join(x.get("text", "") for x in c if isinstance(x, dict))
    else:
        raise AnthropicInvalid(f"{where}.source: documents by URL can only be sent to Claude targets; send the "
                               "document as base64 or text.")
    return {"type": "text", "text": f"{title}\n\n{text}" if title else text}


def _tool_result(b: Json, where: str) -> tuple[Json, list[Json]]:
    """(the OpenAI tool message, image parts that have to follow in a user message)."""
    c = b.get("content")
    texts: list[str] = []
    images: list[Json] = []
    for k, inner in enumerate(_blocks_of(c) if c else ()):
        part = _part(inner, f"{where}.content.{k}")
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
    text = "\n".join(texts)
    if b.get("is_error"):
        text = "Error: " + text if text else "Error"
    return {"role": "tool", "tool_call_id": b["tool_use_id"], "content": text}, images


def _user(blocks: list[Json], i: int) -> list[Json]:
    """A user turn: its tool_result blocks as tool messages first, then the rest as one user message."""
    out: list[Json] = []
    parts: list[Json] = []
    images: list[Json] = []
    for j, b in enumerate(blocks):
        where = f"messages.{i}.content.{j}"
        if b["type"] == "tool_result":
            msg, imgs = _tool_result(b, where)
            out.append(msg)
            images += imgs
        else:
            parts.append(_part(b, where))
    parts = images + parts
    if parts:
        simple = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts) if simple and len(parts) == 1
                    else parts})
    return out


def _assistant(blocks: list[Json]) -> Json:
    """An assistant turn: text joined, tool_use as tool_calls; thinking is the model's own and dropped."""
    text = "".join(b["text"] for b in blocks if b["type"] == "text")
    calls = [{"id": b["id"], "type": "function", "function": {"name": b["name"],
                                                             "arguments": orjson.dumps(b["input"]).decode()}}
             for b in blocks if b["type"] == "tool_use"]
    m: Json = {"role": "assistant", "content": text or None}
    if calls:
        m["tool_calls"] = calls
    return m


def _system(system: Any) -> list[Json]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    return [{"role": "system", "content": "\n\n".join(b["text"] for b in system)}]


def _tools(tools: list[Json]) -> list[Json]:
    out = []
    for j, t in enumerate(tools):
        if t.get("type") not in (None, "custom"):
            raise AnthropicInvalid(f"tools.{j}: the server tool '{t.get('type')}' runs on Anthropic's side and can "
                                   "only be used with Claude targets.")
        fn: Json = {"name": t["name"], "parameters": t["input_schema"]}
        if t.get("description"):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: Json) -> Any:
    t = tc["type"]
    if t == "tool":
        return {"type": "function", "function": {"name": tc["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[t]


def reasoning_effort(thinking: Any, output_config: Any = None) -> str | None:
    """thinking → OpenAI's reasoning_effort: a budget by size, adaptive by its effort (medium if none)."""
    if not isinstance(thinking, dict):
        return None
    if thinking.get("type") == "enabled":
        bt = thinking.get("budget_tokens") or 0
        return next((e for limit, e in _BUDGET_EFFORT if bt < limit), "high")
    if thinking.get("type") == "adaptive":
        effort = (output_config or {}).get("effort") if isinstance(output_config, dict) else None
        return _ADAPTIVE_EFFORT.get(effort or "medium", "medium")
    return None


def _claude_only_block(b: Json) -> bool:
    return b.get("type") == "document" and (b.get("source") or {}).get("type") == "url"


def without_claude_only(body: Json) -> Json:
    """A copy without what only Claude can take (server tools, documents by URL), for routing a
    request whose Claude-only parts `to_openai` refused: only Claude targets may then answer it."""
    out = dict(body)
    if body.get("tools"):
        out["tools"] = [t for t in body["tools"] if t.get("type") in (None, "custom")]
        names = {t["name"] for t in out["tools"]}
        tc = body.get("tool_choice")
        if not out["tools"]:
            out.pop("tools")
            out.pop("tool_choice", None)
        elif isinstance(tc, dict) and tc.get("type") == "tool" and tc.get("name") not in names:
            out["tool_choice"] = {"type": "auto"}
    msgs = []
    for m in body["messages"]:
        c = m["content"]
        if isinstance(c, list) and any(_claude_only_block(b) for b in c):
            c = [b for b in c if not _claude_only_block(b)] or "(a document)"
        msgs.append({**m, "content": c})
    out["messages"] = msgs
    return out


def to_openai(body: Json) -> Json:
    """The OpenAI chat body for a validated Messages body (see the table in docs/inbound-anthropic.md)."""
    msgs = _system(body.get("system"))
    for i, (role, blocks) in enumerate(_turns(body["messages"])):
        if role == "user":
            msgs += _user(blocks, i)
        else:
            m = _assistant(blocks)
            if m["content"] is not None or "tool_calls" in m:
                msgs.append(m)
    out: Json = {"model": body["model"], "messages": msgs}
    if "max_tokens" in body:
        out["max_completion_tokens"] = body["max_tokens"]
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            out[k] = body[k]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        tc = body.get("tool_choice")
        if tc is not None:
            out["tool_choice"] = _tool_choice(tc)
            if tc.get("disable_parallel_tool_use"):
                out["parallel_tool_calls"] = False
    effort = reasoning_effort(body.get("thinking"), body.get("output_config"))
    if effort:
        out["reasoning_effort"] = effort
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = str(user)
    if body.get("stream"):
        out["stream"] = True  # usage comes on the call (every backend asks its upstream for it)
    return out
