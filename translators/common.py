"""Shared pieces of the OpenAI wire format, used by every translator.

Pure functions over plain dicts: reading an OpenAI request (text of a message, image parts, data
URLs) and building OpenAI responses and stream chunks (``chat.completion`` and
``chat.completion.chunk``) so each provider module only says what differs.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import orjson

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Fault:
    """An upstream's error body as every provider translator reads it (`error_from(status, body)`):
    the status to treat it as, the upstream's message, and OpenAI's type / code / param where the
    provider's own kind of error says which (None lets the gateway choose from the status)."""

    status: int
    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None


class TranslationError(ValueError):
    """The request cannot be expressed for this provider: a 400 naming the param."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# --- reading OpenAI requests -----------------------------------------------------------------------


TEXT_PART_SEPARATOR = "\n"


def content_text(content: Any) -> str:
    """The text of a message's content, whether a string or an array of parts. Several text parts
    are joined with a newline, so "hi" and "there" do not become "hithere" where a provider needs
    one string (Ollama's content, Gemini's system instruction and tool results); parts that already
    end or start with whitespace are joined as they are."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = ""
    for p in content:
        if isinstance(p, dict) and p.get("type") == "text":
            text = p.get("text", "")
            if out and text and not out[-1].isspace() and not text[0].isspace():
                out += TEXT_PART_SEPARATOR
            out += text
    return out


def image_urls(content: Any) -> list[str]:
    """URLs of the image parts in a message's content."""
    if not isinstance(content, list):
        return []
    out = []
    for p in content:
        if isinstance(p, dict) and p.get("type") == "image_url":
            iu = p.get("image_url")
            out.append(iu.get("url", "") if isinstance(iu, dict) else str(iu))
    return out


def has_images(messages: Iterable[Json]) -> bool:
    return any(image_urls(m.get("content")) for m in messages)


def parse_data_url(url: str) -> tuple[str, bytes]:
    """(media type, bytes) of a ``data:<type>;base64,<data>`` URL."""
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise TranslationError("Invalid image data URL: expected data:<media type>;base64,<data>.",
                               param="messages", code="invalid_image_url")
    media_type = head[5:-7] or "application/octet-stream"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TranslationError("Invalid image data URL: the base64 data does not decode.",
                               param="messages", code="invalid_image_url") from None
    return media_type, raw


def split_data_url(url: str) -> tuple[str, str]:
    """(media type, base64 text) of a data URL, checking that the data decodes."""
    media_type, _ = parse_data_url(url)
    return media_type, url.partition(",")[2]


def parse_arguments(arguments: Any, param: str) -> Any:
    """A tool call's `arguments` JSON string as an object; invalid JSON is the client's 400."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise TranslationError(f"Invalid JSON in tool call arguments at '{param}'.", param=param,
                               code="invalid_tool_arguments") from None


def resolve_ref(schema: Any, root: Any, depth: int = 0) -> Any:
    """A JSON schema with its local ``$ref`` (``#/$defs/X``, ``#/definitions/X``) followed, as
    pydantic and zod write nested models and enums; anything else is returned as it is."""
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and depth < 32:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return schema
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            return schema
        schema, depth = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}, depth + 1
    return schema


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def max_tokens_of(body: Json) -> int | None:
    """max_completion_tokens wins over the older max_tokens, as in OpenAI's API."""
    v = body.get("max_completion_tokens")
    return v if v is not None else body.get("max_tokens")


# --- building OpenAI responses ---------------------------------------------------------------------


def new_tool_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def tool_call(id: str, name: str, arguments: Any) -> Json:
    """An OpenAI tool call; object arguments are serialised to the JSON string OpenAI sends."""
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def usage(prompt: int, completion: int, *, cached: int | None = None, reasoning: int | None = None) -> Json:
    u: Json = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


def message(content: str | None, tool_calls: list[Json] | None = None,
            reasoning: str | None = None) -> Json:
    m: Json = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        m["tool_calls"] = tool_calls
    if reasoning:
        m["reasoning_content"] = reasoning
    return m


def completion(id: str, created: int, model: str, choices: list[Json], usage: Json | None) -> Json:
    """A ``chat.completion``; each choice is ``{"message": …, "finish_reason": …}`` (index added)."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "message": c["message"], "logprobs": c.get("logprobs"), "finish_reason": c["finish_reason"]}
            for i, c in enumerate(choices)
        ],
        "usage": usage,
    }


def chunk(id: str, created: int, model: str, delta: Json, finish_reason: str | None = None,
          index: int = 0, logprobs: Json | None = None) -> Json:
    """A ``chat.completion.chunk`` with one choice."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def token_logprob(token: str, logprob: float, top: list[Json] | None = None) -> Json:
    """One entry of OpenAI's ``choices[].logprobs.content`` (``top``: entries without their own top)."""
    out: Json = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    if top is not None:
        out["top_logprobs"] = top
    return out


def usage_chunk(id: str, created: int, model: str, usage: Json) -> Json:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, only usage."""
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage}


def tool_call_delta(index: int, id: str | None = None, name: str | None = None,
                    arguments: str = "") -> Json:
    """One entry of a chunk's ``delta.tool_calls``: id, type and name only on a call's first delta."""
    d: Json = {"index": index}
    if id is not None:
        d["id"] = id
        d["type"] = "function"
        d["function"] = {"name": name, "arguments": arguments}
    else:
        d["function"] = {"arguments": arguments}
    return d
