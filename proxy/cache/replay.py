"""Between a ``chat.completion`` and the chunks of a stream, both ways, as plain dicts and bytes.

`chunks` replays a stored completion as the ``chat.completion.chunk`` payloads a stream would have
sent (a role chunk, the content, reasoning and tool calls, the finish chunk), so a cached answer
(proxy/cache/) or a consensus answer (proxy/routing/consensus.py) reaches a streaming client as a
well-formed stream. `Accumulator` does the reverse for a stream being sent: it folds the chunks into
one completion as they pass, bounded in size, so a streamed answer can be stored once it is complete.
"""

from __future__ import annotations

from typing import Any, Iterator

import orjson

from translators.common import chunk, completion, tool_call_delta

Json = dict[str, Any]


def chunks(data: Json, id: str, created: int) -> Iterator[bytes]:
    """The payloads of a stream that says what `data` (a chat.completion) says, choice by choice."""
    model = data.get("model") or ""
    for ch in data.get("choices") or ():
        i = ch.get("index", 0)
        m = ch.get("message") or {}
        yield orjson.dumps(chunk(id, created, model, {"role": "assistant", "content": ""}, index=i))
        if m.get("reasoning_content"):
            yield orjson.dumps(chunk(id, created, model, {"reasoning_content": m["reasoning_content"]}, index=i))
        if m.get("content"):
            yield orjson.dumps(chunk(id, created, model, {"content": m["content"]}, index=i))
        if m.get("refusal"):
            yield orjson.dumps(chunk(id, created, model, {"refusal": m["refusal"]}, index=i))
        calls = m.get("tool_calls") or []
        if calls:
            deltas = [tool_call_delta(n, tc.get("id"), (tc.get("function") or {}).get("name"),
                                      (tc.get("function") or {}).get("arguments") or "") for n, tc in enumerate(calls)]
            yield orjson.dumps(chunk(id, created, model, {"tool_calls": deltas}, index=i))
        yield orjson.dumps(chunk(id, created, model, {}, ch.get("finish_reason") or "stop", index=i))


class Accumulator:
    """Folds stream chunk payloads into one completion; gives up (`full`) beyond `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.full = False
        self.model = ""
        self.choices: dict[int, Json] = {}

    def feed(self, payload: bytes) -> None:
        if self.full:
            return
        self.size += len(payload)
        if self.size > self.limit:
            self.full, self.choices = True, {}
            return
        try:
            d = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.full = True  # not a chunk we understand: never stored
            return
        self.model = d.get("model") or self.model
        for ch in d.get("choices") or ():
            c = self.choices.setdefault(ch.get("index", 0), {"content": [], "reasoning": [], "refusal": [],
                                                             "calls": {}, "finish": None})
            delta = ch.get("delta") or {}
            for k, into in (("content", "content"), ("reasoning_content", "reasoning"), ("refusal", "refusal")):
                if isinstance(delta.get(k), str):
                    c[into].append(delta[k])
            for tc in delta.get("tool_calls") or ():
                call = c["calls"].setdefault(tc.get("index", 0), {"id": None, "name": "", "arguments": []})
                fn = tc.get("function") or {}
                call["id"] = tc.get("id") or call["id"]
                call["name"] += fn.get("name") or ""
                if isinstance(fn.get("arguments"), str):
                    call["arguments"].append(fn["arguments"])
            if ch.get("finish_reason"):
                c["finish"] = ch["finish_reason"]

    def completion(self, id: str, created: int, usage: Json | None) -> Json | None:
        """The completion the stream told, or None when it was too large or a choice never finished."""
        if self.full or not self.choices:
            return None
        out = []
        for i in sorted(self.choices):
            c = self.choices[i]
            if c["finish"] is None:
                return None
            calls = [{"id": tc["id"], "type": "function", "function": {"name": tc["name"],
                                                                        "arguments": "".join(tc["arguments"])}}
                     for _, tc in sorted(c["calls"].items())]
            m: Json = {"role": "assistant", "content": "".join(c["content"]) or None,
                       "refusal": "".join(c["refusal"]) or None}
            if calls:
                m["tool_calls"] = calls
            if c["reasoning"]:
                m["reasoning_content"] = "".join(c["reasoning"])
            out.append({"message": m, "finish_reason": c["finish"]})
        return completion(id, created, self.model, out, usage)
