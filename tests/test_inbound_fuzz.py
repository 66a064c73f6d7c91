"""A seeded fuzz of the new front doors' translators (Responses, legacy completions, embeddings):
mutated bodies (wrong types, odd values from tests/fuzz.py) must end as the client's 400
(TranslationError or validation's InvalidRequest), never as another exception (a 500)."""

from __future__ import annotations

import copy
import random
from typing import Any, Callable, Iterator

from proxy.errors import InvalidRequest
from proxy.server import validate
from tests.fuzz import ODD
from translators import embeddings as emb
from translators.common import TranslationError
from translators.inbound import completions as cp
from translators.inbound import responses as rs

RESPONSES = {"model": "m", "instructions": "x", "input": [
    {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                 {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c", "output": "x"}],
    "tools": [{"type": "function", "name": "f", "parameters": {}}], "tool_choice": {"type": "function", "name": "f"},
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}, "reasoning": {"effort": "low"},
    "max_output_tokens": 5, "metadata": {}, "stream": True}
COMPLETIONS = {"model": "m", "prompt": ["a", "b"], "stop": "x", "max_tokens": 3, "stream": True}
EMBEDDINGS = {"model": "m", "input": ["a"], "dimensions": 3, "encoding_format": "base64"}
DONE = {"choices": [{"message": {"content": "x", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def _paths(o: Any, p: tuple = ()) -> Iterator[tuple]:
    yield p
    items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
    for k, v in items:
        yield from _paths(v, p + (k,))


def _mutants(base: dict, rnd: random.Random, n: int) -> Iterator[dict]:
    paths = [p for p in _paths(base) if p]
    for _ in range(n):
        b = copy.deepcopy(base)
        for _ in range(rnd.randint(1, 3)):
            p = rnd.choice(paths)
            o: Any = b
            try:
                for k in p[:-1]:
                    o = o[k]
                o[p[-1]] = copy.deepcopy(rnd.choice(ODD))
            except (KeyError, IndexError, TypeError):
                pass
        yield b


def _responses(b: dict) -> None:
    validate.chat_request(rs.to_chat(b))
    rs.from_chat(DONE, b)
    t = rs.StreamTranslator(b)
    t.start(), t.finish()


def test_mutated_bodies_are_400s_not_crashes():
    rnd = random.Random(18)
    cases: list[tuple[dict, Callable[[dict], Any]]] = [
        (RESPONSES, _responses),
        (COMPLETIONS, lambda b: [validate.chat_request(c) for c in cp.to_chats(b)]),
        (EMBEDDINGS, emb.parse)]
    tried = 0
    for base, run in cases:
        for body in _mutants(base, rnd, 800):
            try:
                run(body)
            except (TranslationError, InvalidRequest):
                pass
            tried += 1
    assert tried == 2400
