"""Anthropic Messages API (``POST /v1/messages``, ``anthropic-version: 2023-06-01``) ⇄ OpenAI chat.

Pure functions over plain dicts: `to_request` builds the Messages body from an OpenAI chat body,
`from_response` turns a Message into a ``chat.completion``, `StreamState.feed` turns each stream
event into ``chat.completion.chunk``s, `error_from` reads an Anthropic error body (HTTP status or a
mid-stream ``event: error``; see `proxy.errors.upstream_status_error`). Default max_tokens when
neither the client nor the config gives one: `DEFAULT_MAX_TOKENS`.

The field-by-field mapping (request, response, stream, finish reasons, usage, errors) is the table
in docs/anthropic.md, each row tested in tests/test_anthropic.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from translators.common import (
    Fault,
    TranslationError,
    chunk,
    completion,
    max_tokens_of,
    message,
    parse_arguments,
    split_data_url,
    stop_list,
    tool_call,
    tool_call_delta,
    usage,
)

Json = dict[str, Any]

API_VERSION = "2023-06-01"

# the model's own output limit, used when neither the client nor the config sets max_tokens;
# first match wins (substring, so "us.anthropic.claude-…" and dated names match too)
DEFAULT_MAX_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-7", 64000), ("claude-opus-4-8", 64000), ("claude-opus-5", 64000), ("claude-sonnet-5", 64000),
    ("claude-haiku-5", 64000), ("claude-opus-4-5", 64000), ("claude-opus-4-6", 128000), ("claude-sonnet-4-6", 64000), ("claude-sonnet-4-5", 64000),
    ("claude-haiku-4-5", 64000), ("claude-opus-4-1", 32000), ("claude-opus-4", 32000),
    ("claude-sonnet-4", 64000), ("claude-3-7-sonnet", 64000), ("claude-3-5-sonnet", 8192),
    ("claude-3-5-haiku", 8192), ("claude-3-opus", 4096), ("claude-3-haiku", 4096),
    ("claude-3-sonnet", 4096),
)
FALLBACK_MAX_TOKENS = 8192

# reasoning_effort → thinking budget_tokens (the API's minimum budget is 1024), and → output_config
# effort for models that only think adaptively
THINKING_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}
EFFORTS = {"none": None, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}

# models that answer 400 to temperature / top_p / top_k ("`temperature` is deprecated for this
# model") and only take thinking {"type": "adaptive"}; others are learned by the backend from
# that 400, and `options.sampling` / `options.thinking: adaptive` say it per target
NO_SAMPLING = ("claude-opus-4-7", "claude-opus-4-8")
ADAPTIVE_THINKING = ("claude-opus-4-7", "claude-opus-4-8")

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DOCUMENT_TYPES = ("application/pdf", "text/plain")
JSON_OBJECT_TOOL = "json_object"

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}

# Anthropic error type → (HTTP status it comes with, OpenAI code when Turnout has a better one)
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


# --- request -----------------------------------------------------------------------------------


def default_max_tokens(model: str) -> int:
    for prefix, n in DEFAULT_MAX_TOKENS:
        if prefix in model:
            return n
    return FALLBACK_MAX_TOKENS


def response_tool(body: Json) -> str | None:
    """Name of the tool that carries a json_schema / json_object answer, or None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    t = fmt.get("type")
    if t == "json_schema":
        return (fmt.get("json_schema") or {}).get("name") or "json_response"
    if t == "json_object":
        return JSON_OBJECT_TOOL
    return None


def _text_block(part: Json) -> Json | None:
    text = part.get("text")
    if not text:
        return None
    b: Json = {"type": "text", "text": text}
    if part.get("cache_control"):
        b["cache_control"] = part["cache_control"]
    return b


def _image_block(part: Json, param: str) -> Json:
    iu = part.get("image_url")
    url = iu.get("url", "") if isinstance(iu, dict) else str(iu or "")
    if url.startswith("data:"):
        media_type, data = split_data_url(url)
        if media_type == "image/jpg":
            media_type = "image/jpeg"
        if media_type not in IMAGE_TYPES:
            raise TranslationError(f"Unsupported image type '{media_type}' at '{param}': Claude takes "
                                   f"{', '.join(IMAGE_TYPES)}.", param=param, code="invalid_image_format")
        src: Json = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        src = {"type": "url", "url": url}
    else:
        raise TranslationError(f"Invalid image URL at '{param}': expected a data: URL or an http(s) URL.",
                               param=param, code="invalid_image_url")
    b: Json = {"type": "image", "source": src}
    if part.get("cache_control"):
        b["cache_control"] = part["cache_control"]
    return b


def _document_block(part: Json, param: str) -> Json:
    f = part.get("file") or {}
    data_url = f.get("file_data")
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise TranslationError(f"Unsupported file at '{param}': Claude takes files inline as a data: URL "
                               "in file.file_data (file_id is not supported).", param=param,
                               code="unsupported_content")
    media_type, data = split_data_url(data_url)
    if media_type not in DOCUMENT_TYPES:
        raise TranslationError(f"Unsupported file type '{media_type}' at '{param}': Claude takes "
                               f"{', '.join(DOCUMENT_TYPES)}.", param=param, code="unsupported_content")
    b: Json = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if f.get("filename"):
        b["title"] = f["filename"]
    return b


def _blocks(content: Any, param: str) -> list[Json]:
    """Content blocks of a user message: text, images, documents; empty text left out."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[Json] = []
    for j, part in enumerate(content):
        t = part.get("type")
        if t == "text":
            b = _text_block(part)
            if b:
                out.append(b)
        elif t == "image_url":
            out.append(_image_block(part, f"{param}[{j}].image_url"))
        elif t == "file":
            out.append(_document_block(part, f"{param}[{j}].file"))
        else:
            raise TranslationError(f"Content part type '{t}' at '{param}[{j}]' is not supported by Claude.",
                                   param=f"{param}[{j}].type", code="unsupported_content")
    return out


def _text_blocks(content: Any) -> list[Json]:
    """Text blocks of a system, assistant or tool message (other part types ignored)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            b = _text_block({"text": part.get("text") or part.get("refusal"),
                             "cache_control": part.get("cache_control")})
            if b:
                out.append(b)
    return out


def _tool_use(tc: Json, param: str) -> Json:
    fn = tc.get("function") or {}
    args = parse_arguments(fn.get("arguments"), f"{param}.function.arguments")
    if not isinstance(args, dict):
        raise TranslationError(f"Tool call arguments at '{param}.function.arguments' must be a JSON object.",
                               param=f"{param}.function.arguments", code="invalid_tool_arguments")
    return {"type": "tool_use", "id": tc["id"], "name": fn.get("name", ""), "input": args}


def _tool_result(m: Json) -> Json:
    b: Json = {"type": "tool_result", "tool_use_id": m.get("tool_call_id", "")}
    content = m.get("content")
    if isinstance(content, str):
        if content:
            b["content"] = content
    else:
        blocks = _text_blocks(content)
        if blocks:
            b["content"] = blocks
    return b


def _messages(messages: list[Json]) -> tuple[list[Json], list[Json], set[str]]:
    """(system blocks, alternating turns, names of tools used in the history)."""
    system: list[Json] = []
    turns: list[Json] = []
    used: set[str] = set()

    def add(role: str, blocks: list[Json]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            prev = turns[-1]["content"]
            if role == "user" and blocks[0]["type"] == "tool_result":
                # tool_result blocks must lead the user turn; keep them ahead of user text
                n = 0
                while n < len(prev) and prev[n]["type"] == "tool_result":
                    n += 1
                prev[n:n] = blocks
            else:
                prev.extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, m in enumerate(messages):
        role = m.get("role")
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_blocks(m.get("content")))
        elif role == "user":
            add("user", _blocks(m.get("content"), f"{param}.content"))
        elif role == "assistant":
            blocks = _text_blocks(m.get("content"))
            for j, tc in enumerate(m.get("tool_calls") or ()):
                b = _tool_use(tc, f"{param}.tool_calls[{j}]")
                used.add(b["name"])
                blocks.append(b)
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result(m)])
        else:
            raise TranslationError(f"Messages with role '{role}' are not supported by Claude; use tools and "
                                   "tool messages.", param=f"{param}.role", code="unsupported_value")
    if turns and turns[-1]["role"] == "assistant":
        # a trailing assistant turn is a prefill; the API rejects trailing whitespace in it
        last = turns[-1]["content"]
        if last[-1]["type"] == "text":
            last[-1]["text"] = last[-1]["text"].rstrip()
            if not last[-1]["text"]:
                last.pop()
                if not last:
                    turns.pop()
    return system, turns, used


def _tools(body: Json) -> list[Json]:
    out = []
    for t in body.get("tools") or ():
        fn = t.get("function") or {}
        tool: Json = {"name": fn["name"]}
        if fn.get("description"):
            tool["description"] = fn["description"]
        schema = fn.get("parameters")
        tool["input_schema"] = schema if schema else {"type": "object", "properties": {}}
        out.append(tool)
    return out


def sampling_allowed(model: str, options: Json) -> bool:
    """Whether temperature / top_p may be sent: newer models reject them outright."""
    if options.get("sampling") is not None:
        return bool(options["sampling"])
    return not any(p in model for p in NO_SAMPLING)


def _adaptive(model: str, options: Json) -> bool:
    th = options.get("thinking")
    if th == "adaptive" or (isinstance(th, dict) and th.get("type") == "adaptive"):
        return True
    return any(p in model for p in ADAPTIVE_THINKING)


def _thinking(body: Json, model: str, options: Json) -> tuple[Json | None, str | None]:
    """(thinking config, output_config effort) asked for by reasoning_effort or the options."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise TranslationError(f"Invalid value for 'reasoning_effort': '{effort}'. Supported values are: "
                               + ", ".join(f"'{e}'" for e in EFFORTS) + ".", param="reasoning_effort",
                               code="invalid_value")
    if effort == "none":
        return None, None
    th = options.get("thinking")
    if _adaptive(model, options):
        if effort is not None:
            return {"type": "adaptive"}, EFFORTS[effort]
        return ({"type": "adaptive"}, None) if th else (None, None)
    if effort is not None:
        return {"type": "enabled", "budget_tokens": THINKING_BUDGET[effort]}, None
    if isinstance(th, dict) and th.get("type", "enabled") == "enabled":
        return {"type": "enabled", "budget_tokens": int(th.get("budget_tokens", THINKING_BUDGET["medium"]))}, None
    if isinstance(th, int) and not isinstance(th, bool) and th > 0:
        return {"type": "enabled", "budget_tokens": th}, None
    return None, None


def to_request(body: Json, model: str, *, stream: bool, max_output_tokens: int | None = None,
               options: Json | None = None, sampling: bool | None = None) -> Json:
    """The Messages API body for an OpenAI chat body. `options` are the target's and backend's
    options merged (`max_tokens` default, `thinking`, `sampling`); `sampling=False` leaves out
    temperature and top_p whatever the model table says. Raises TranslationError for what Claude
    cannot express."""
    options = options or {}
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("Claude returns one choice per request: 'n' must be 1.", param="n",
                               code="unsupported_value")
    system, turns, used = _messages(body["messages"])
    if not turns:
        raise TranslationError("The request has no user or assistant content to send (system messages "
                               "alone are not a conversation for Claude).", param="messages",
                               code="invalid_value")

    max_tokens = max_tokens_of(body)
    if max_tokens is None:
        max_tokens = max_output_tokens or options.get("max_tokens") or default_max_tokens(model)
    elif max_output_tokens:
        max_tokens = min(max_tokens, max_output_tokens)

    req: Json = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        req["system"] = system

    tools = _tools(body)
    choice = body.get("tool_choice")
    json_tool = response_tool(body)
    tc: Json | None = None
    if tools or json_tool:
        if isinstance(choice, dict):
            tc = {"type": "tool", "name": choice["function"]["name"]}
        elif choice == "required":
            tc = {"type": "any"}
        elif choice == "none":
            tc = {"type": "none"}
        elif tools:
            tc = {"type": "auto"}
        if json_tool:
            fmt = body["response_format"]
            if fmt["type"] == "json_schema":
                js = fmt["json_schema"]
                schema = js.get("schema") or {"type": "object"}
                desc = js.get("description") or "Give the answer as this tool's input, which is the response JSON."
            else:
                schema = {"type": "object", "additionalProperties": True}
                desc = "Give the answer as a JSON object, passed as this tool's input."
            if json_tool not in {t["name"] for t in tools}:
                tools.append({"name": json_tool, "description": desc, "input_schema": schema})
            if tc is None or tc["type"] == "none":
                tc = {"type": "tool", "name": json_tool}  # answer only in the format
            elif tc["type"] == "auto":
                tc = {"type": "any"}  # call a client tool, or answer in the format
        if body.get("parallel_tool_calls") is False and tc["type"] != "none":
            tc["disable_parallel_tool_use"] = True
    if used and not tools:
        # the history has tool calls but the client sent no tools: the API needs their definitions
        tools = [{"name": name, "input_schema": {"type": "object"}} for name in sorted(used)]
        tc = {"type": "none"}
    if tools:
        req["tools"] = tools
        req["tool_choice"] = tc

    thinking, effort = _thinking(body, model, options)
    if thinking and (tc and tc["type"] in ("any", "tool")):
        thinking = None  # the API refuses thinking with a forced tool
    if thinking and _open_tool_loop(turns):
        thinking = None  # it would need the signed thinking block of the last assistant turn
    if thinking and thinking["type"] == "enabled":
        budget = min(thinking["budget_tokens"], max_tokens - 1)
        thinking = {"type": "enabled", "budget_tokens": budget} if budget >= 1024 else None
    if thinking:
        req["thinking"] = thinking
        if effort:
            req["output_config"] = {"effort": effort}

    stops = [x for x in stop_list(body.get("stop")) or () if x.strip()]
    if stops:
        req["stop_sequences"] = stops  # whitespace-only ones are applied by Turnout: see local_stops
    if not thinking and (sampling if sampling is not None else sampling_allowed(model, options)):
        t = body.get("temperature")
        if t is not None:
            req["temperature"] = min(float(t), 1.0)
        elif body.get("top_p") is not None:
            req["top_p"] = body["top_p"]  # current models take one of the two, never both
    if body.get("user"):
        req["metadata"] = {"user_id": body["user"]}
    if isinstance(options.get("cache_control"), dict):
        req["cache_control"] = options["cache_control"]  # automatic prompt caching
    if stream:
        req["stream"] = True
    return req


def _open_tool_loop(turns: list[Json]) -> bool:
    for t in reversed(turns):
        if t["role"] == "assistant":
            return any(b["type"] == "tool_use" for b in t["content"])
    return False


# --- response ----------------------------------------------------------------------------------


def usage_of(u: Json | None) -> Json:
    """OpenAI usage from Anthropic usage: cache writes and reads count as prompt tokens."""
    u = u or {}
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + (u.get("cache_creation_input_tokens") or 0) + cached
    details = u.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    return usage(prompt, u.get("output_tokens") or 0, cached=cached, reasoning=thinking)


def finish_reason(stop_reason: str | None, json_mode: bool = False) -> str:
    if stop_reason == "tool_use" and json_mode:
        return "stop"
    return FINISH.get(stop_reason or "end_turn", "stop")


def local_stops(body: Json) -> tuple[str, ...]:
    """Stop sequences the API refuses ("each stop sequence must contain non-whitespace", e.g.
    a newline): Turnout cuts the text at them itself."""
    return tuple(x for x in stop_list(body.get("stop")) or () if x and not x.strip())


def _cut(text: str, stops: tuple[str, ...]) -> int:
    """Where the earliest of `stops` starts in `text`, or -1."""
    found = [i for i in (text.find(x) for x in stops) if i >= 0]
    return min(found) if found else -1


def from_response(resp: Json, id: str, created: int, json_tool: str | None = None,
                  stops: tuple[str, ...] = ()) -> Json:
    """A ``chat.completion`` from a Message (text cut at `stops`, see `local_stops`)."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[Json] = []
    answer: str | None = None
    for b in resp.get("content") or ():
        t = b.get("type")
        if t == "text":
            texts.append(b.get("text", ""))
        elif t == "tool_use":
            if json_tool and b.get("name") == json_tool:
                answer = orjson.dumps(b.get("input") or {}).decode()
            else:
                calls.append(tool_call(b["id"], b.get("name", ""), b.get("input") or {}))
        elif t == "thinking":
            thinking.append(b.get("thinking", ""))
    json_mode = answer is not None and not calls
    content = answer if answer is not None else ("".join(texts) if texts or not calls else None)
    finish = finish_reason(resp.get("stop_reason"), json_mode)
    if stops and content and answer is None:
        at = _cut(content, stops)
        if at >= 0:
            content = content[:at]
            if not calls:
                finish = "stop"
    msg = message(content, calls or None, "".join(thinking) or None)
    return completion(id, created, resp.get("model", ""), [{"message": msg, "finish_reason": finish}],
                      usage_of(resp.get("usage")))


class StreamState:
    """Anthropic stream events → OpenAI chunks, one event at a time.

    `feed(type, data)` returns the chunks to send for one event; `usage` holds the OpenAI usage so
    far, `done` turns true at message_stop. An ``error`` event raises `StreamError`.
    """

    __slots__ = ("id", "created", "model", "json_tool", "started", "blocks", "tools", "u", "done",
                 "json_mode", "stop_reason", "stops", "hold", "held", "cut")

    def __init__(self, id: str, created: int, model: str, json_tool: str | None = None,
                 stops: tuple[str, ...] = ()) -> None:
        self.id = id
        self.created = created
        self.model = model
        self.json_tool = json_tool
        self.started = False
        self.blocks: dict[int, tuple[str, int]] = {}  # block index → (kind, tool call index)
        self.tools = 0
        self.u: Json = {}
        self.done = False
        self.json_mode = False
        self.stop_reason: str | None = None
        self.stops = stops  # applied here (see local_stops): text is held back by len(stop) - 1
        self.hold = max(map(len, stops)) - 1 if stops else 0
        self.held = ""
        self.cut = False

    @property
    def usage(self) -> Json:
        return usage_of(self.u)

    def _chunk(self, delta: Json, finish: str | None = None) -> Json:
        return chunk(self.id, self.created, self.model, delta, finish)

    def _start(self, out: list[Json], content: str | None = "") -> None:
        """The first chunk carries the role, as OpenAI's does: content "" before text, null before
        a tool call or reasoning (so a tool-call-only answer accumulates to content null)."""
        if not self.started:
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": content, "refusal": None}))

    def feed(self, type: str, data: Json) -> list[Json]:
        out: list[Json] = []
        if type == "content_block_delta":
            kind, ti = self.blocks.get(data.get("index"), ("", 0))
            d = data.get("delta") or {}
            dt = d.get("type")
            if dt == "text_delta":
                if d.get("text"):
                    self._text(d["text"], out)
            elif dt == "input_json_delta":
                pj = d.get("partial_json")
                if pj:
                    if kind == "json":
                        out.append(self._chunk({"content": pj}))
                    elif kind == "tool":
                        out.append(self._chunk({"tool_calls": [tool_call_delta(ti, arguments=pj)]}))
            elif dt == "thinking_delta":
                if d.get("thinking"):
                    out.append(self._chunk({"reasoning_content": d["thinking"]}))
            return out
        if type == "content_block_start":
            b = data.get("content_block") or {}
            bt = b.get("type")
            idx = data.get("index")
            json_block = bt == "tool_use" and self.json_tool is not None and b.get("name") == self.json_tool
            self._start(out, "" if bt == "text" or json_block else None)
            if bt == "tool_use":
                if self.json_tool and b.get("name") == self.json_tool:
                    self.blocks[idx] = ("json", 0)
                    self.json_mode = True
                    if b.get("input"):
                        out.append(self._chunk({"content": orjson.dumps(b["input"]).decode()}))
                else:
                    ti = self.tools
                    self.tools += 1
                    self.blocks[idx] = ("tool", ti)
                    args = orjson.dumps(b["input"]).decode() if b.get("input") else ""
                    delta = tool_call_delta(ti, b.get("id", ""), b.get("name", ""), args)
                    if len(out) == 1:  # the role chunk: OpenAI sends the first tool call in it
                        out[0]["choices"][0]["delta"]["tool_calls"] = [delta]
                    else:
                        out.append(self._chunk({"tool_calls": [delta]}))
            elif bt == "text":
                self.blocks[idx] = ("text", 0)
                if b.get("text"):
                    self._text(b["text"], out)
            elif bt == "thinking":
                self.blocks[idx] = ("thinking", 0)
                if b.get("thinking"):
                    out.append(self._chunk({"reasoning_content": b["thinking"]}))
            return out
        if type == "message_start":
            m = data.get("message") or {}
            self.u.update(m.get("usage") or {})
            if m.get("model"):
                self.model = m["model"]
            return out
        if type == "message_delta":
            self.u.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            self.stop_reason = (data.get("delta") or {}).get("stop_reason")
            self._start(out, None)
            self._flush(out)
            json_mode = self.json_mode and self.tools == 0
            finish = "stop" if self.cut and not self.tools else finish_reason(self.stop_reason, json_mode)
            out.append(self._chunk({}, finish))
            return out
        if type == "message_stop":
            self.done = True
            return out
        if type == "error":
            raise StreamError(*error_fields(data))
        if type == "content_block_stop":
            self._flush(out)
        return out  # ping, unknown future events

    def _text(self, text: str, out: list[Json]) -> None:
        if not self.stops:
            out.append(self._chunk({"content": text}))
            return
        if self.cut:
            return
        buf = self.held + text
        at = _cut(buf, self.stops)
        if at >= 0:
            self.cut = True
            emit, self.held = buf[:at], ""
        else:
            keep = min(self.hold, len(buf))
            emit, self.held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        if emit:
            out.append(self._chunk({"content": emit}))

    def _flush(self, out: list[Json]) -> None:
        if self.held:
            out.append(self._chunk({"content": self.held}))
            self.held = ""


class StreamError(Exception):
    """An ``event: error`` in the stream: (status it stands for, message, Anthropic error type)."""

    def __init__(self, status: int, message: str, type: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type


# --- errors ------------------------------------------------------------------------------------


def error_fields(data: Any, status: int | None = None) -> tuple[int, str, str | None]:
    """(status, message, Anthropic error type) from a parsed error body or error event."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        etype = err.get("type")
        msg = str(err.get("message") or etype or "upstream error")
        return status or ERROR_STATUS.get(etype, 500), msg, etype
    return status or 500, f"upstream returned HTTP {status or 500}", None


def error_from(status: int, body: bytes) -> Fault:
    """The fault in an Anthropic error response, with OpenAI's type and code for its kind."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    _, msg, etype = error_fields(data, status)
    return Fault(status, msg, *openai_error_kind(status, etype))


def openai_error_kind(status: int, etype: str | None) -> tuple[str | None, str | None]:
    """(OpenAI type, code) for an Anthropic error; None lets `upstream_status_error` choose."""
    if etype == "overloaded_error" or status == 529:
        return "upstream_error", "upstream_overloaded"
    if etype == "request_too_large" or status == 413:
        return "invalid_request_error", "request_too_large"
    if etype == "invalid_request_error":
        return "invalid_request_error", None
    if etype == "not_found_error":
        return "invalid_request_error", "model_not_found"
    return None, None
