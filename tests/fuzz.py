"""Seeded mutations of valid chat bodies, for the no-5xx fuzz test (tests/test_limits_input.py).

`bodies(seed, n)` yields `n` request bodies (bytes): a valid chat body with one to three mutations
applied (a wrong type at some path, a field removed, a huge or deeply nested value, odd unicode,
a known-troublesome shape), serialised as JSON. Deterministic for a seed, so a failure reproduces.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any, Iterator

BASES: list[dict[str, Any]] = [
    {"model": "MODEL", "messages": [{"role": "user", "content": "hello"}]},
    {"model": "MODEL", "stream": True, "stream_options": {"include_usage": True},
     "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]},
    {"model": "MODEL", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}]}]},
    {"model": "MODEL", "tool_choice": "auto", "tools": [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]}}}],
     "messages": [{"role": "user", "content": "weather in Paris"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
    {"model": "MODEL", "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
     "temperature": 0.5, "top_p": 0.9, "max_tokens": 20, "stop": ["\n\n"], "n": 1, "seed": 7,
     "metadata": {"task": "chat"}, "user": "u1", "reasoning_effort": "low",
     "messages": [{"role": "developer", "content": "json only"}, {"role": "user", "content": "give json"}]},
]

ODD: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**70, -(2**70), 1e308, "", "x", "\u0000", "\ud7ff\U0001f600\u202e",
    "a\nb\r\nc", [], [None], [1, "a"], {}, {"a": 1}, {"function": "x"}, {"type": "function"},
    {"function": {"name": 3}}, {"url": "http://[::1"}, "http://[::1", "[mock:chunks=99999999999]",
    "x" * 5000, ["x"] * 300,
]
KEYS = ["model", "messages", "stream", "stream_options", "tools", "tool_choice", "response_format",
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed", "metadata",
        "user", "reasoning_effort", "logprobs", "top_logprobs", "logit_bias", "functions", "function_call",
        "parallel_tool_calls", "modalities", "audio", "prediction", "service_tier", "store",
        "presence_penalty", "frequency_penalty", "web_search_options"]
SPECIAL: list[tuple[list[Any], Any]] = [
    (["tool_choice"], {"function": "x"}),
    (["tool_choice"], {"type": "allowed_tools", "allowed_tools": []}),
    (["tool_choice"], {"type": "allowed_tools", "allowed_tools": {"tools": "x", "mode": "auto"}}),
    (["tool_choice"], {"type": "allowed_tools", "allowed_tools": {"tools": [{"function": 1}], "mode": "auto"}}),
    (["messages"], 5),
    (["tool_choice"], {"type": "function", "function": {"name": "nope"}}),
    (["metadata"], {"turnout_target": {"a": 1}}),
    (["metadata"], {"turnout_target": ["a"]}),
    (["metadata"], {"turnout_target": 5}),
    (["reasoning_effort"], 5),
    (["reasoning_effort"], {"x": 1}),
    (["messages", 0, "content"], [{"type": "input_audio", "input_audio": "x"}]),
    (["messages", 0, "content"], [{"type": "input_audio", "input_audio": {"data": 1, "format": []}}]),
    (["messages", 0, "content"], [{"type": "file", "file": []}]),
    (["messages", 0, "content"], [{"type": "file", "file": {"file_data": 5}}]),
    (["messages", 0, "content"], [{"type": "image_url", "image_url": {"url": "http://[::1"}}]),
    (["messages", 0, "content"], [{"type": "image_url", "image_url": {"url": "https://exa mple/\x00"}}]),
    (["messages", 0, "content"], [{"type": "refusal", "refusal": 3}]),
    (["messages"], [{"role": "assistant", "content": None, "function_call": "x"}]),
    (["messages"], [{"role": "assistant", "content": None, "function_call": {"name": 1, "arguments": []}}]),
    (["messages"], [{"role": "function", "content": "x"}]),
    (["messages"], [{"role": "tool", "content": "x", "tool_call_id": "c"}]),
    (["messages"], [{"role": "user", "content": "x", "name": 5}]),
    (["functions"], [{"name": "f", "parameters": "x"}]),
    (["functions"], "x"),
    (["function_call"], {"name": 5}),
    (["tools"], [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                               "properties": "x"}}}]),
    (["response_format"], {"type": "json_schema", "json_schema": {"name": "n", "schema": {"properties": []}}}),
    (["stop"], [""]),
    (["logit_bias"], {"x": "y"}),
    (["n"], 2),
    (["max_tokens"], 2**40),
    (["stream_options"], {"include_usage": "yes"}),
    (["messages", 0, "content"], "[mock:chunks=99999999999]"),
    (["messages", 0, "content"], "[mock:latency=1e9]"),
    (["messages", 0, "content"], "[mock:status=abc]"),
    (["messages", 0, "content"], "[mock:status=99999]"),
    (["messages", 0, "content"], "[mock:drop=-5]"),
    (["messages", 0, "content"], "[mock:retry_after=nan]"),
]


def _paths(v: Any, path: list[Any]) -> Iterator[list[Any]]:
    yield path
    if len(path) > 6:
        return
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, path + [k])
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, path + [i])


def _set(body: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    cur = body
    for p in path[:-1]:
        if isinstance(cur, dict) and p in cur or isinstance(cur, list) and isinstance(p, int) and p < len(cur):
            cur = cur[p]
        else:
            return body
    last = path[-1]
    if isinstance(cur, dict):
        cur[last] = value
    elif isinstance(cur, list) and isinstance(last, int) and last < len(cur):
        cur[last] = value
    return body


def _delete(body: Any, path: list[Any]) -> Any:
    if not path:
        return body
    cur = body
    for p in path[:-1]:
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            return body
    if isinstance(cur, dict):
        cur.pop(path[-1], None)
    elif isinstance(cur, list) and isinstance(path[-1], int) and path[-1] < len(cur):
        del cur[path[-1]]
    return body


def _deep(rng: random.Random, depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = [v] if rng.random() < 0.5 else {"type": "object", "properties": {"a": v}}
    return v


def _mutate(rng: random.Random, body: Any) -> Any:
    paths = list(_paths(body, []))
    kind = rng.randrange(8)
    if kind == 0:
        return _set(body, rng.choice(paths), copy.deepcopy(rng.choice(ODD)))
    if kind == 1:
        return _delete(body, rng.choice(paths[1:] or [[]]))
    if kind == 2:
        body[rng.choice(KEYS)] = copy.deepcopy(rng.choice(ODD))
        return body
    if kind == 3:
        path, value = rng.choice(SPECIAL)
        return _set(body, path, copy.deepcopy(value))
    if kind == 4:
        return _set(body, rng.choice(paths), _deep(rng, rng.choice([50, 300, 700, 1000, 1500, 5000])))
    if kind == 5:
        return _set(body, rng.choice(paths), "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(rng.randrange(1, 40)))
                    .encode("utf-8", "replace").decode("utf-8", "replace"))
    if kind == 6:
        deep = _deep(rng, rng.choice([100, 400, 900]))
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": deep}}}}]
        return body
    return _set(body, rng.choice(paths), rng.choice([2**63, -0.0, 1e-300, 10**30]))


def bodies(seed: int, n: int, models: list[str]) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(n):
        body = copy.deepcopy(rng.choice(BASES))
        body["model"] = rng.choice(models)
        for _ in range(rng.randrange(1, 3)):
            if isinstance(body, dict):
                body = _mutate(rng, body)
        try:
            yield json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        except (RecursionError, ValueError):
            continue
