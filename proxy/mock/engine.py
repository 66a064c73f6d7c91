"""A deterministic fake LLM: the `mock` backend and the mock OpenAI upstream share it.

Replies depend only on the request, so demos, tests and benchmarks are repeatable:
- a text reply built from a template (``{model}``, ``{prompt}``), streamed word by word;
- with tools (and tool_choice not "none") and no tool result yet: a call to the named or first tool,
  its arguments filled from the tool's JSON schema; after a tool result: an answer quoting it;
- response_format json_object / json_schema: a JSON document (shaped by the schema);
- max_tokens cuts the reply (finish_reason "length"), stop sequences end it, n>1 gives n choices;
- embeddings: a unit vector per text, the sum of one pseudo-random vector per word (seeded by the
  word's hash), so equal texts get equal vectors and texts sharing words point the same way.

Faults are scripted per backend (``options``) or per request by a directive in the last user
message, e.g. ``[mock:status=429]``, ``[mock:status=503 retry_after=2]``, ``[mock:drop=3]`` (a
stream drops after 3 chunks), ``[mock:hang]``, ``[mock:latency=0.2]``, ``[mock:chunks=20]``.
Directives come from clients, so each value is bounded (`LIMITS`); a bad one is a 400 naming it.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.errors import InvalidRequest
from translators.common import (
    Json,
    chunk,
    completion,
    content_text,
    max_tokens_of,
    message,
    new_tool_call_id,
    resolve_ref,
    stop_list,
    tool_call,
    tool_call_delta,
    usage,
)

DEFAULT_TEMPLATE = "Hello from {model}! You said: {prompt}"
_DIRECTIVE = re.compile(r"\[mock:([^\]]*)\]")
_TOKEN = re.compile(r"\s*\S+")
_COUNT = re.compile(r"\w+|[^\w\s]")
# the values a client's directive may ask for: (low, high) per directive
LIMITS: dict[str, tuple[float, float]] = {"status": (400, 599), "drop": (0, 100_000), "chunks": (0, 20_000),
                                          "latency": (0, 600), "chunk_delay": (0, 60), "retry_after": (0, 3600)}


def _directive_value(k: str, v: str) -> float:
    """A directive's number, or a 400 naming the directive and its bounds."""
    lo, hi = LIMITS[k]
    try:
        x = float(v) if k in ("latency", "chunk_delay", "retry_after") else int(v)
    except ValueError:
        x = math.nan
    if not lo <= x <= hi:  # also false for nan
        raise InvalidRequest(f"Invalid mock directive '{k}={v[:40]}': expected a number from {lo:g} to {hi:g}.",
                             param="messages", code="invalid_mock_directive")
    return x


EMBEDDING_DIMENSIONS = 256


@dataclass
class Script:
    """What the fake does for one request: timing, faults and reply shape."""

    latency: float = 0.0  # seconds before the first byte
    chunk_delay: float = 0.0  # seconds between streamed chunks
    status: int | None = None  # fail with this HTTP status before anything is sent
    message: str = "mock failure"
    retry_after: float | None = None
    drop: int | None = None  # a stream drops after this many chunks
    hang: bool = False  # never answer
    chunks: int | None = None  # pad the reply to this many streamed content chunks
    template: str = DEFAULT_TEMPLATE
    times: int | None = None  # backend-level faults: only the first N requests fail
    force_reply: bool = False  # answer with the template even when JSON or a tool call was asked
    tool_arguments: str | None = None  # send these (possibly broken) arguments in tool calls
    directives: bool = True  # obey [mock:…] directives in messages (off: a healthy peer in fault tests)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "Script":
        s = cls()
        for k in ("latency", "chunk_delay", "retry_after"):
            if options.get(k) is not None:
                setattr(s, k, float(options[k]))
        fail = options.get("fail") or {}
        s.status = fail.get("status")
        s.message = fail.get("message", s.message)
        s.drop = fail.get("drop")
        s.hang = bool(fail.get("hang", False))
        s.times = fail.get("times")
        if fail.get("retry_after") is not None:
            s.retry_after = float(fail["retry_after"])
        if options.get("reply"):
            s.template = str(options["reply"])
        if options.get("chunks"):
            s.chunks = int(options["chunks"])
        s.force_reply = bool(options.get("force_reply", False))
        s.directives = bool(options.get("directives", True))
        if options.get("tool_arguments") is not None:
            s.tool_arguments = str(options["tool_arguments"])
        return s

    def with_directives(self, body: Json) -> "Script":
        """A copy with the per-request ``[mock:…]`` directives of the last user message applied."""
        text = last_user_text(body.get("messages") or [])
        if not self.directives or "[mock:" not in text:
            return self
        s = Script(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        for m in _DIRECTIVE.finditer(text):
            for item in m.group(1).split():
                k, _, v = item.partition("=")
                if k == "hang":
                    s.hang, s.times = True, None
                elif k in LIMITS:
                    setattr(s, k, _directive_value(k, v))
                    if k in ("status", "drop"):
                        s.times = None
                elif k == "message":
                    s.message = v.replace("_", " ")
        return s


def last_user_text(messages: list[Json]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: words and punctuation marks."""
    return len(_COUNT.findall(text))


def prompt_tokens(body: Json) -> int:
    n = 0
    for m in body.get("messages") or []:
        n += 3 + count_tokens(content_text(m.get("content")))
        for tc in m.get("tool_calls") or ():
            n += count_tokens(str(tc.get("function", {}).get("arguments", "")))
    return n


@dataclass
class Reply:
    """One choice of the fake's answer, before it is shaped as a response or a stream."""

    text: str | None = None
    tool_calls: list[Json] = field(default_factory=list)
    finish_reason: str = "stop"
    tokens: list[str] = field(default_factory=list)


def _sample(schema: Any, text: str, depth: int = 0, root: Any = None) -> Any:
    """A value that satisfies a (simple) JSON schema, deterministic for the same prompt; local
    ``$ref``s (pydantic's and zod's ``$defs``) are followed, ``anyOf`` takes its first non-null branch."""
    root = schema if root is None else root
    schema = resolve_ref(schema, root)
    if not isinstance(schema, dict) or depth > 6:
        return text
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            branches = [b for b in schema[key] if resolve_ref(b, root).get("type") != "null"] or schema[key]
            return _sample(branches[0], text, depth + 1, root)
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _sample(v, text, depth + 1, root) for k, v in props.items()}
    if t == "array":
        return [_sample(schema.get("items") or {"type": "string"}, text, depth + 1, root)]
    if t == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if t == "number":
        return float(schema.get("minimum", 1.5))
    if t == "boolean":
        return True
    if t == "null":
        return None
    return text[:60] or "example"


def replies(body: Json, model: str, script: Script) -> list[Reply]:
    """The fake's answer: one Reply per choice (``n``)."""
    messages = body.get("messages") or []
    prompt = last_user_text(messages)
    prompt = _DIRECTIVE.sub("", prompt).strip()
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    last = messages[-1] if messages else {}
    out: list[Reply] = []
    for i in range(int(body.get("n") or 1)):
        r = Reply()
        if tools and choice != "none" and last.get("role") != "tool" and not script.force_reply:
            names = [t["function"]["name"] for t in tools]
            name = choice["function"]["name"] if isinstance(choice, dict) else names[0]
            fn = next(t["function"] for t in tools if t["function"]["name"] == name)
            args = script.tool_arguments or _sample(fn.get("parameters") or {"type": "object"}, prompt)
            calls = [tool_call(new_tool_call_id(), name, args)]
            if body.get("parallel_tool_calls", True) is not False and len(names) > 1 and choice in (None, "auto", "required"):
                fn2 = tools[1]["function"]
                calls.append(tool_call(new_tool_call_id(), fn2["name"], _sample(fn2.get("parameters") or {}, prompt)))
            r.tool_calls, r.finish_reason = calls, "tool_calls"
            out.append(r)
            continue
        if last.get("role") == "tool":
            text = f"The tool returned: {content_text(last.get('content'))}"
        else:
            fmt = {} if script.force_reply else body.get("response_format") or {}
            if fmt.get("type") == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema") or {}
                text = orjson.dumps(_sample(schema, prompt)).decode()
            elif fmt.get("type") == "json_object":
                text = orjson.dumps({"model": model, "echo": prompt}).decode()
            else:
                text = script.template.format(model=model, prompt=prompt)
            if i:
                text = f"({i + 1}) {text}"
        tokens = _TOKEN.findall(text)
        if script.chunks and len(tokens) < script.chunks:
            tokens += [" more"] * (script.chunks - len(tokens))
        for s in stop_list(body.get("stop")) or ():
            joined = "".join(tokens)
            if s and s in joined:
                cut = joined[: joined.index(s)]
                tokens = _TOKEN.findall(cut) or ([cut] if cut else [])
        limit = max_tokens_of(body)
        if limit is not None and len(tokens) > limit:
            tokens, r.finish_reason = tokens[:limit], "length"
        r.tokens, r.text = tokens, "".join(tokens)
        out.append(r)
    return out


def completion_tokens(rs: list[Reply]) -> int:
    return sum(len(r.tokens) + sum(count_tokens(c["function"]["arguments"]) + 3 for c in r.tool_calls) for r in rs)


def usage_of(body: Json, rs: list[Reply]) -> Json:
    return usage(prompt_tokens(body), completion_tokens(rs))


def build_completion(body: Json, model: str, id: str, created: int, rs: list[Reply]) -> Json:
    choices = [{"message": message(r.text if not r.tool_calls else None, r.tool_calls or None),
                "finish_reason": r.finish_reason} for r in rs]
    return completion(id, created, model, choices, usage_of(body, rs))


def build_chunks(model: str, id: str, created: int, rs: list[Reply]) -> list[Json]:
    """The stream's chunks in OpenAI's order: role first, then content or tool-call deltas, then
    the finish reason, per choice."""
    out: list[Json] = []
    for i, r in enumerate(rs):
        # as OpenAI's first chunk: content "" before text, null before tool calls
        out.append(chunk(id, created, model, {"role": "assistant", "content": None if r.tool_calls else "",
                                              "refusal": None}, index=i))
        for t in r.tokens:
            out.append(chunk(id, created, model, {"content": t}, index=i))
        for j, c in enumerate(r.tool_calls):
            fn = c["function"]
            out.append(chunk(id, created, model, {"tool_calls": [tool_call_delta(j, c["id"], fn["name"])]}, index=i))
            args = fn["arguments"]
            step = max(1, len(args) // 3 + 1)
            for k in range(0, len(args), step):
                out.append(chunk(id, created, model, {"tool_calls": [tool_call_delta(j, arguments=args[k:k + step])]}, index=i))
        out.append(chunk(id, created, model, {}, r.finish_reason, index=i))
    return out


def embedding(text: str, dimensions: int | None = None) -> list[float]:
    """A deterministic unit vector for `text` (bag of words: shared words, similar vectors)."""
    n = dimensions or EMBEDDING_DIMENSIONS
    v = [0.0] * n
    for word in re.findall(r"\w+", text.lower()) or [text]:
        rng = random.Random(int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little"))
        for i in range(n):
            v[i] += rng.gauss(0.0, 1.0)
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]
