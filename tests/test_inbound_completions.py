"""The legacy completions translator's shapes, validated by the `openai` SDK's own types."""

from __future__ import annotations

import orjson
import pytest
from openai.types import Completion

from proxy.mock.engine import Script, build_chunks, build_completion, replies
from translators.common import TranslationError
from translators.inbound import completions as cp


def test_prompts_to_chat_bodies():
    chats = cp.to_chats({"model": "m", "prompt": ["a", "b"], "stop": "\n", "n": 2, "temperature": 0,
                         "stream": True})
    assert [c["messages"] for c in chats] == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    assert chats[0]["max_tokens"] == 16 and chats[0]["stop"] == "\n" and chats[0]["n"] == 2
    assert chats[0]["stream_options"] == {"include_usage": True} and chats[0]["temperature"] == 0
    assert cp.to_chats({"model": "m", "prompt": "x", "max_tokens": 100})[0]["max_tokens"] == 100
    for bad, param in [({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "echo": True}, "echo"),
                       ({"prompt": [1, 2]}, "prompt"), ({}, "prompt"), ({"prompt": "x", "logprobs": 2}, "logprobs"),
                       ({"prompt": "x", "best_of": 3}, "best_of"), ({"prompt": [1, "a"]}, "prompt")]:
        with pytest.raises(TranslationError) as e:
            cp.to_chats({"model": "m", **bad})
        assert e.value.param == param


def test_completions_and_chunks_validate_with_sdk_types():
    chats = cp.to_chats({"model": "m", "prompt": ["hello there", "second"], "n": 2, "max_tokens": 3})
    done = [build_completion(c, "mock", f"c{i}", 1, replies(c, "mock", Script())) for i, c in enumerate(chats)]
    out = Completion.model_validate(cp.from_chats(done, "cmpl-1", 1))
    assert [c.index for c in out.choices] == [0, 1, 2, 3] and out.object == "text_completion"
    assert out.choices[0].text == "Hello from mock!" and out.choices[0].finish_reason == "length"
    assert out.choices[2].text == "Hello from mock!" and out.usage.prompt_tokens == sum(
        d["usage"]["prompt_tokens"] for d in done)

    chat = cp.to_chats({"model": "m", "prompt": "hi", "stream": True})[0]
    chunks = build_chunks("mock", "c", 1, replies(chat, "mock", Script()))
    outs = [cp.chunk_to_text(orjson.dumps(c), "cmpl-2", 1, prompt_index=1)[0] for c in chunks]
    outs = [o for o in outs if o]
    assert all(o["choices"][0]["finish_reason"] is None for o in outs[:-1])  # null until the last, as OpenAI
    # the SDK's type says finish_reason is never null (it does not validate what it receives)
    outs = [Completion.model_validate({**o, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"}
                                                        for c in o["choices"]]}) for o in outs]
    assert "".join(o.choices[0].text for o in outs) == "Hello from mock! You said: hi"
    assert outs[-1].choices[0].finish_reason == "stop" and {o.choices[0].index for o in outs} == {1}
    assert all(o.id == "cmpl-2" for o in outs) and len(outs) == len(chunks) - 1  # the role-only chunk says nothing
