"""OpenAI-compatible upstreams (OpenAI, vLLM, llama.cpp's server, Ollama's /v1): nearly a pass-through.

| OpenAI field (client)         | upstream field                                              |
|-------------------------------|-------------------------------------------------------------|
| model (route or target name)  | model = the target's upstream model name                    |
| stream                        | stream (unchanged)                                          |
| stream_options.include_usage  | always true upstream, so usage is counted; Turnout emits the |
|                               | usage chunk to the client only when the client asked for it  |
| metadata                      | dropped (Turnout's own; OpenAI rejects it without `store`)   |
| every other field             | unchanged                                                   |

Responses and chunks pass through as bytes; only a chunk that carries `usage` is parsed.
Finish reasons are OpenAI's own. Error statuses map as in `proxy.errors.upstream_status_error`:
429 → 429 (retry-after kept), 5xx → 502, 408/504 → 504, 401/403 → 502 (the operator's key),
other 4xx unchanged with the upstream's message, type, param and code.
"""

from __future__ import annotations

from typing import Any

import orjson

from translators.common import Fault

Json = dict[str, Any]

_DROP = ("metadata",)


def to_request(body: Json, model: str, *, stream: bool) -> Json:
    """The upstream body: the client's, with the target's model and usage always requested."""
    out = {k: v for k, v in body.items() if k not in _DROP}
    out["model"] = model
    if stream:
        opts = dict(out.get("stream_options") or {})
        opts["include_usage"] = True
        out["stream_options"] = opts
    else:
        out.pop("stream_options", None)
    return out


def chunk_usage(payload: bytes) -> tuple[Json | None, bool]:
    """(usage, is_usage_only) for one SSE data payload; cheap for the common chunk without usage."""
    if b'"usage":{' not in payload and b'"usage": {' not in payload:
        return None, False
    data = orjson.loads(payload)
    return data.get("usage"), not data.get("choices")


def error_from(status: int, body: bytes) -> Fault:
    """The fault in an upstream error body, OpenAI-shaped or not."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return Fault(status, str(err.get("message") or f"upstream returned {status}"), err.get("type"),
                     None if code is None else str(code), err.get("param"))
    if isinstance(err, str):  # llama.cpp and Ollama's /v1 sometimes send {"error": "..."}
        return Fault(status, err)
    return Fault(status, f"upstream returned HTTP {status}")
