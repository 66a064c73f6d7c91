"""CPU cost of the Anthropic front door's translation (no network): a Claude-Code-sized Messages
body validated and translated, a completion turned into a Message, and a 200-chunk stream turned
into Anthropic's events. Run: python benchmarks/inbound_anthropic.py (figures in docs/inbound-anthropic.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from translators.common import chunk, completion, message, usage  # noqa: E402
from translators.inbound.anthropic import to_openai, validate  # noqa: E402
from translators.inbound.anthropic_reply import MessageStream, to_message  # noqa: E402

TOOLS = [{"name": f"Tool{i}", "description": "Does a thing. " * 40, "input_schema": {
    "type": "object", "properties": {f"p{j}": {"type": "string", "description": "x" * 80} for j in range(6)},
    "required": ["p0"]}} for i in range(15)]
SYSTEM = [{"type": "text", "text": "You are Claude Code. " * 400, "cache_control": {"type": "ephemeral"}}]
TURNS = []
for i in range(20):
    TURNS += [{"role": "user", "content": [{"type": "text", "text": "please look at this file " * 20}]},
              {"role": "assistant", "content": [{"type": "text", "text": "Looking."},
                                                {"type": "tool_use", "id": f"toolu_{i}", "name": "Tool1",
                                                 "input": {"p0": "a" * 50}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                            "content": "line of output\n" * 40}]}]
TURNS.append({"role": "user", "content": "and now?"})
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32000, "system": SYSTEM, "tools": TOOLS, "messages": TURNS,
        "metadata": {"user_id": "u"}, "stream": True}
CHUNKS = [orjson.dumps(chunk("chatcmpl-x", 1, "m", {"content": "word "})) for _ in range(200)]
DONE = completion("chatcmpl-x", 1, "m", [{"message": message("Hello " * 100), "finish_reason": "stop"}], usage(10, 10))


def per_call(fn, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e3


def stream() -> None:
    s = MessageStream()
    for c in CHUNKS:
        s.feed(c)
    s.finish(None)


if __name__ == "__main__":
    size = len(orjson.dumps(BODY))
    print(f"request ({size // 1024} KB, {len(TURNS)} messages, {len(TOOLS)} tools): "
          f"{per_call(lambda: to_openai(validate(orjson.loads(orjson.dumps(BODY)))), 300):.3f} ms CPU")
    print(f"completion -> Message: {per_call(lambda: to_message(DONE), 5000) * 1000:.1f} us CPU")
    print(f"200-chunk stream -> events: {per_call(stream, 300):.3f} ms CPU "
          f"({per_call(stream, 300) / 200 * 1000:.1f} us per chunk)")
