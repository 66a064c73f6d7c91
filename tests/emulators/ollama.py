"""An Ollama server emulator: ``/api/chat`` (NDJSON streaming and not), ``/api/tags``, ``/api/ps``,
``/api/version`` and ``/``, in Ollama's own wire format (docs/api.md and the recorded examples in
tests/fixtures/recorded/ollama_native_docs_examples.json), proven faithful with the official `ollama`
client in tests/test_ollama_emulator.py.

It validates requests the way Ollama's Go decoder would reject them (content must be a string,
images base64 without a ``data:`` prefix, tool call arguments an object, options of the right
type), and is stricter than Ollama in two ways that catch translator bugs: unknown top-level
fields and unknown option names are a 400 (Ollama ignores them silently).

Scripting: ``app.state.script`` is the default reply; ``app.state.scripts`` is a queue of one-off
scripts, each used by one ``/api/chat`` request. Script keys:

    text            str or list of pieces (a str is streamed word by word)
    thinking        str or list of pieces, streamed before the text as ``message.thinking``
    tool_calls      [{"name": ..., "arguments": {...}}], sent in one line
    tool_call_ids   true: calls carry ``id`` and ``function.index`` as newer Ollama versions do
    done_reason     "stop" (default), "length", ...
    prompt_eval_count, eval_count   token counts on the final line
    load_delay      seconds before anything (a cold model loading)
    first_token_delay  seconds more before the first line; like Ollama, headers go with that line
    line_delay      seconds between lines
    error_after     after this many lines send ``{"error": error_message}`` and end the stream
    error_message   text of that error line
    drop_after      after this many lines cut the connection
    status, error   answer this HTTP status with ``{"error": error}`` instead

``app.state.requests`` keeps every ``/api/chat`` body received; ``app.state.paths`` every path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

Json = dict[str, Any]

TOP_LEVEL = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think", "truncate",
             "shift", "logprobs", "top_logprobs"}
INT_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
               "top_k", "repeat_last_n", "mirostat"}
FLOAT_OPTIONS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                 "frequency_penalty", "mirostat_tau", "mirostat_eta"}
BOOL_OPTIONS = {"numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
                "penalize_newline"}
ROLES = ("system", "user", "assistant", "tool")


def model_entry(name: str, parameter_size: str = "3.2B", size: int = 2_019_393_189, family: str = "llama",
                quantization: str = "Q4_K_M") -> Json:
    """One model as /api/tags lists it."""
    if ":" not in name:
        name += ":latest"
    return {"name": name, "model": name, "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": size,
            "digest": (name.encode().hex() * 8)[:64],
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": parameter_size, "quantization_level": quantization}}


def _full(name: str) -> str:
    return name if ":" in name else name + ":latest"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _err(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _go_type(v: Any) -> str:
    return {str: "string", list: "array", dict: "object", bool: "bool", type(None): "null"}.get(
        type(v), "number")


def validate(body: Any, installed: set[str]) -> None:
    """Raise `Invalid` as Ollama would (status and wording), or stricter where noted."""
    if not isinstance(body, dict):
        raise Invalid("json: cannot unmarshal into Go value of type api.ChatRequest")
    unknown = sorted(set(body) - TOP_LEVEL)
    if unknown:
        raise Invalid(f"emulator: unknown field {unknown[0]!r} (Ollama would ignore it)")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model is required")
    msgs = body.get("messages")
    if msgs is not None and not isinstance(msgs, list):
        raise Invalid(f"json: cannot unmarshal {_go_type(msgs)} into Go struct field ChatRequest.messages "
                      "of type []api.Message")
    for m in msgs or []:
        if not isinstance(m, dict):
            raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.messages of type api.Message")
        if m.get("role") not in ROLES:
            raise Invalid(f"emulator: invalid role {m.get('role')!r}")
        for k in ("content", "thinking", "tool_name"):
            if k in m and not isinstance(m[k], str):
                raise Invalid(f"json: cannot unmarshal {_go_type(m[k])} into Go struct field "
                              f"ChatRequest.messages.{k} of type string")
        for img in m.get("images") or []:
            if not isinstance(img, str):
                raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.messages.images")
            try:
                base64.b64decode(img, validate=True)
            except (binascii.Error, ValueError):
                raise Invalid("illegal base64 data at input byte 4") from None
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise Invalid("emulator: tool call without function.name")
            if not isinstance(fn.get("arguments"), dict):
                raise Invalid(f"json: cannot unmarshal {_go_type(fn.get('arguments'))} into Go struct field "
                              "ToolCallFunction.messages.tool_calls.function.arguments of type "
                              "api.ToolCallFunctionArguments")
    for t in body.get("tools") or []:
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict) \
                or not isinstance(t["function"].get("name"), str):
            raise Invalid("emulator: invalid tool (expected {type: function, function: {name, parameters}})")
        if not isinstance(t["function"].get("parameters", {}), dict):
            raise Invalid("json: cannot unmarshal into Go struct field ToolFunction.tools.function.parameters")
    opts = body.get("options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise Invalid(f"json: cannot unmarshal {_go_type(opts)} into Go struct field ChatRequest.options "
                          "of type map[string]interface {}")
        for k, v in opts.items():
            if k in INT_OPTIONS:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise Invalid(f"option {k!r} must be of type integer")
            elif k in FLOAT_OPTIONS:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise Invalid(f"option {k!r} must be of type float32")
            elif k in BOOL_OPTIONS:
                if not isinstance(v, bool):
                    raise Invalid(f"option {k!r} must be of type boolean")
            elif k == "stop":
                if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                    raise Invalid("option \"stop\" must be of an array of strings")
            else:
                raise Invalid(f"emulator: unknown option {k!r} (Ollama would ignore it)")
    fmt = body.get("format")
    if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
        raise Invalid(f"invalid format: {fmt!r}")
    ka = body.get("keep_alive")
    if ka is not None and (isinstance(ka, bool) or not isinstance(ka, (str, int, float))):
        raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.keep_alive")
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in ("low", "medium", "high"):
        raise Invalid(f"invalid think value: {think!r}")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("json: cannot unmarshal into Go struct field ChatRequest.stream of type bool")
    if _full(model) not in installed:
        raise Invalid(f"model '{model}' not found", status=404)


def _pieces(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(p) for p in v]
    return re.findall(r"\S+\s*|\s+", str(v)) or [""]


def _default_text(body: Json) -> str:
    msgs = body.get("messages") or []
    if msgs and msgs[-1].get("role") == "tool":
        return f"The tool {msgs[-1].get('tool_name', '?')} said: {msgs[-1].get('content', '')}"
    last = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
    n = len(last.get("images") or [])
    return f"You said: {last.get('content', '')}" + (f" [{n} image{'s' if n != 1 else ''}]" if n else "")


def build_ollama_emulator(models: list[Json | str] | None = None, loaded: list[str] | None = None,
                          version: str = "0.12.6", script: Json | None = None) -> Starlette:
    """An app answering like an Ollama server with `models` installed and `loaded` in memory."""
    entries = [model_entry(m) if isinstance(m, str) else m for m in (models or ["llama3.2:3b"])]
    state: dict[str, Any] = {"requests": [], "paths": []}

    def installed() -> set[str]:
        return {_full(e["name"]) for e in app.state.models}

    async def chat(request: Request) -> Response:
        app.state.paths.append(request.url.path)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _err(400, "invalid character in request body")
        app.state.requests.append(body)
        s = dict(app.state.scripts.pop(0) if app.state.scripts else app.state.script)
        try:
            validate(body, installed())
        except Invalid as e:
            return _err(e.status, e.message)
        if s.get("load_delay"):
            await asyncio.sleep(s["load_delay"])
        if s.get("status"):
            return _err(int(s["status"]), s.get("error", "llama runner process has terminated: exit status 2"))
        model = body["model"]
        thinking = _pieces(s.get("thinking"))
        text = _pieces(s["text"] if "text" in s else _default_text(body))
        calls = []
        for i, c in enumerate(s.get("tool_calls") or []):
            fn: Json = {"name": c["name"], "arguments": c.get("arguments", {})}
            call: Json = {"function": fn}
            if s.get("tool_call_ids"):
                call = {"id": f"call_{i:08d}", "function": {"index": i, **fn}}
            calls.append(call)
        prompt_tokens = s.get("prompt_eval_count", 10 + sum(len(str(m.get("content", "")).split())
                                                            for m in body.get("messages") or []))
        eval_tokens = s.get("eval_count", len(thinking) + len(text) + 5 * len(calls))
        final: Json = {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                       "done_reason": s.get("done_reason", "stop"), "done": True,
                       "total_duration": 4_883_583_458, "load_duration": int((s.get("load_delay") or 0) * 1e9) or 1_334_875,
                       "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 342_546_000,
                       "eval_count": eval_tokens, "eval_duration": 4_535_599_000}
        if s.get("first_token_delay"):
            await asyncio.sleep(s["first_token_delay"])  # before the headers, as Ollama does
        if body.get("stream") is False:
            msg: Json = {"role": "assistant", "content": "".join(text)}
            if thinking:
                msg["thinking"] = "".join(thinking)
            if calls:
                msg["tool_calls"] = calls
            return Response(orjson.dumps({**final, "message": msg}), media_type="application/json; charset=utf-8")

        lines: list[Json] = []
        for p in thinking:
            lines.append({"model": model, "created_at": _now(),
                          "message": {"role": "assistant", "content": "", "thinking": p}, "done": False})
        for p in text:
            lines.append({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": p},
                          "done": False})
        if calls:
            lines.append({"model": model, "created_at": _now(),
                          "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False})
        lines.append(final)
        first = orjson.dumps(lines[0]) + b"\n"

        async def ndjson() -> AsyncIterator[bytes]:
            for i, line in enumerate(lines):
                if s.get("drop_after") is not None and i >= s["drop_after"]:
                    raise ConnectionResetError("emulated drop")  # uvicorn aborts the connection mid-body
                if s.get("error_after") is not None and i >= s["error_after"]:
                    yield orjson.dumps({"error": s.get("error_message",
                                                        "an error was encountered while running the model")}) + b"\n"
                    return
                if i and s.get("line_delay"):
                    await asyncio.sleep(s["line_delay"])
                yield first if i == 0 else orjson.dumps({**line, "created_at": _now()}) + b"\n"

        return StreamingResponse(ndjson(), media_type="application/x-ndjson")

    async def tags(request: Request) -> Response:
        app.state.paths.append(request.url.path)
        return Response(orjson.dumps({"models": app.state.models}), media_type="application/json; charset=utf-8")

    async def ps(request: Request) -> Response:
        app.state.paths.append(request.url.path)
        by_name = {_full(e["name"]): e for e in app.state.models}
        out = []
        expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
        for name in app.state.loaded:
            e = by_name.get(_full(name)) or model_entry(name)
            out.append({"name": e["name"], "model": e["model"], "size": e["size"], "digest": e["digest"],
                        "details": e["details"], "expires_at": expires, "size_vram": e["size"],
                        "context_length": 4096})
        return Response(orjson.dumps({"models": out}), media_type="application/json; charset=utf-8")

    async def version_(request: Request) -> Response:
        app.state.paths.append(request.url.path)
        return Response(orjson.dumps({"version": app.state.version}), media_type="application/json; charset=utf-8")

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    app = Starlette(routes=[
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version_, methods=["GET"]),
        Route("/", root, methods=["GET", "HEAD"]),
    ])
    app.state.requests = state["requests"]
    app.state.paths = state["paths"]
    app.state.models = entries
    app.state.loaded = list(loaded or [])
    app.state.version = version
    app.state.script = dict(script or {})
    app.state.scripts = []
    return app
