"""Legacy ``/v1/completions`` in front of the chat pipeline: pure translation.

Why: LlamaIndex's ``OpenAILike`` and older clients still default to the legacy endpoint; every
target Turnout routes to is a chat model, so each prompt becomes one user message.

| completions request            | chat body                                                           |
|--------------------------------|---------------------------------------------------------------------|
| prompt: string                 | one chat body, one ``user`` message                                 |
| prompt: list of strings        | one chat body per prompt; choices indexed prompt × n + choice, as OpenAI |
| prompt: token arrays           | 400 (Turnout cannot detokenize for every provider)                  |
| max_tokens (default 16, as OpenAI) | max_tokens                                                      |
| stop, n, temperature, top_p, seed, presence/frequency_penalty, logit_bias, user | unchanged          |
| stream, stream_options         | stream; usage always asked upstream, sent when the client asked     |
| echo: true, suffix, logprobs, best_of > 1 | 400 naming the parameter                                 |

Answers are ``text_completion`` objects (streamed chunks share that shape: ``choices[].text``);
finish_reason ``tool_calls`` cannot happen (no tools are sent), anything but length/content_filter
reads as ``stop``.
"""

from __future__ import annotations

from typing import Any

import orjson

from translators.common import Json, TranslationError

DEFAULT_MAX_TOKENS = 16
PASSED = ("n", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user",
          "stop", "metadata")


def prompts(body: Json) -> list[str]:
    """The prompts of a completions request as strings; anything else is the client's 400."""
    p = body.get("prompt")
    if p is None:
        raise TranslationError("Missing required parameter: 'prompt'.", param="prompt",
                               code="missing_required_parameter")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        return list(p)
    if isinstance(p, list) and p and all(isinstance(x, (int, list)) for x in p):
        raise TranslationError("Token-array prompts are not supported by Turnout: send the prompt as text.",
                               param="prompt", code="unsupported_value")
    raise TranslationError("'prompt' must be a string or a non-empty array of strings.", param="prompt")


def to_chats(body: Json) -> list[Json]:
    """One OpenAI chat body per prompt."""
    if body.get("suffix") is not None:
        raise TranslationError("'suffix' (insertion) is not supported by Turnout: its targets are chat models.",
                               param="suffix", code="unsupported_parameter")
    if body.get("echo"):
        raise TranslationError("'echo: true' is not supported by Turnout.", param="echo", code="unsupported_value")
    if body.get("logprobs") is not None:
        raise TranslationError("'logprobs' is not supported on /v1/completions by Turnout.", param="logprobs",
                               code="unsupported_parameter")
    if (body.get("best_of") or 1) > 1:
        raise TranslationError("'best_of' greater than 1 is not supported by Turnout.", param="best_of",
                               code="unsupported_value")
    base: Json = {"model": body.get("model")}
    for k in PASSED:
        if body.get(k) is not None:
            base[k] = body[k]
    mt = body.get("max_tokens")
    base["max_tokens"] = DEFAULT_MAX_TOKENS if mt is None else mt
    if body.get("stream"):
        base["stream"] = True
        base["stream_options"] = {"include_usage": True}
    return [{**base, "messages": [{"role": "user", "content": p}]} for p in prompts(body)]


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return reason if reason in ("length", "content_filter") else "stop"


def add_usage(total: Json | None, u: Json | None) -> Json | None:
    if not u:
        return total
    if total is None:
        return {"prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0),
                "total_tokens": u.get("total_tokens", 0)}
    return {k: total[k] + (u.get(k) or 0) for k in total}


def from_chats(completions: list[Json], id: str, created: int, model: str | None = None) -> Json:
    """The ``text_completion`` for the chat completions of each prompt, in prompt order."""
    choices, total = [], None
    n = max((len(c.get("choices") or []) for c in completions), default=1) or 1
    for p, c in enumerate(completions):
        for ch in c.get("choices") or []:
            msg = ch.get("message") or {}
            choices.append({"text": msg.get("content") or "", "index": p * n + ch.get("index", 0),
                            "logprobs": None, "finish_reason": _finish(ch.get("finish_reason")) or "stop"})
        total = add_usage(total, c.get("usage"))
    out: Json = {"id": id, "object": "text_completion", "created": created,
                 "model": model or (completions[0].get("model") if completions else ""), "choices": choices,
                 "usage": total or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    fp = next((c["system_fingerprint"] for c in completions if c.get("system_fingerprint")), None)
    if fp:
        out["system_fingerprint"] = fp
    return out


def chunk_to_text(payload: bytes | Json, id: str, created: int, prompt_index: int = 0, n: int = 1,
                  model: str | None = None) -> tuple[Json | None, Json | None]:
    """(text_completion chunk or None, usage or None) for one chat-chunk payload; a chunk with
    nothing to say (the role-only first chunk, the usage-only last one) gives no chunk."""
    if isinstance(payload, (bytes, str)):
        payload = orjson.loads(payload)
    choices = []
    for ch in payload.get("choices") or []:
        d = ch.get("delta") or {}
        text, finish = d.get("content") or "", _finish(ch.get("finish_reason"))
        if text or finish:
            choices.append({"text": text, "index": prompt_index * n + ch.get("index", 0), "logprobs": None,
                            "finish_reason": finish})
    out = None
    if choices:
        out = {"id": id, "object": "text_completion", "created": created,
               "model": model or payload.get("model", ""), "choices": choices}
        if payload.get("system_fingerprint"):
            out["system_fingerprint"] = payload["system_fingerprint"]
    return out, payload.get("usage")


def usage_chunk(id: str, created: int, model: str, usage: Json) -> Json:
    """The last chunk of a stream with ``stream_options.include_usage``."""
    return {"id": id, "object": "text_completion", "created": created, "model": model, "choices": [],
            "usage": usage}
