"""A Gemini API emulator: ``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``
(also under ``/v1``, which the google-genai SDK uses by default).

A Starlette app (run it with `tests.conftest.serve`) that checks requests the way the real API
does — the ``x-goog-api-key`` header, roles ``user``/``model`` only, well-formed parts, function
responses named and matching the preceding calls in number, thought signatures on Gemini 3 function
calls, known ``generationConfig`` fields, tool schemas — and answers with the real wire format:
``GenerateContentResponse`` JSON, or ``data: {…}\\r\\n\\r\\n`` SSE events in which candidates carry
``index`` and only the last event has ``candidatesTokenCount``. Errors are Google's
``{"error": {"code", "message", "status", "details"}}``.

Scripting: append replies to ``app.state.script`` (used first in, first out; when it is empty the
reply echoes the last user text). A reply is a dict with any of:

- ``text``, ``thought`` (a thought-summary part), ``calls`` (``[{"name", "args", "signature"}]``),
  ``finish`` (finishReason, default STOP), ``usage`` (usageMetadata to send instead of counted);
- ``candidates``: a list of such dicts for candidateCount > 1 (default: one echo per candidate);
- ``block``: a promptFeedback.blockReason (no candidates);
- ``error``: ``{"code": 429, "message": ..., "retry_delay": "7s"}`` sent as Google's error body;
- ``latency`` (seconds before answering), ``drop_after`` (cut the connection after n events),
  ``truncate_after`` (end the body cleanly after n events), ``error_after`` (send an error event
  after n events), ``events`` (raw SSE payload dicts to send as they are), ``raw`` (a whole response).

``:countTokens`` counts a request's contents as generateContent would (words; 258 per image).

Embeddings: ``:batchEmbedContents`` (what google-genai's ``embed_content`` calls; at most 100
requests, each naming the URL's model) and ``:embedContent`` answer deterministic vectors
(3072 floats for ``gemini-embedding-*``, else 768); ``outputDimensionality`` truncates them without
normalising again, as the real API does. Neither answer carries token counts.

Every request received is kept in ``app.state.requests`` as ``{"path", "query", "headers", "body"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import re
import uuid
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.emulators.vectors import vector

Json = dict[str, Any]

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_TOP = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
        "cachedContent"}
_PART_DATA = {"text", "inlineData", "functionCall", "functionResponse", "fileData", "executableCode",
              "codeExecutionResult"}
_PART_META = {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
_GEN = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
        "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
        "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities", "mediaResolution",
        "speechConfig", "enableEnhancedCivicAnswers"}
_DECL = {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema", "behavior"}
# the OpenAPI subset accepted in `parameters` / `responseSchema`
_OPENAPI = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
            "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
            "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
# JSON Schema keywords accepted in `parametersJsonSchema` / `responseJsonSchema`
_JSONSCHEMA = {"$id", "$defs", "$ref", "$anchor", "type", "format", "title", "description", "enum", "items",
               "prefixItems", "minItems", "maxItems", "minimum", "maximum", "anyOf", "oneOf", "properties",
               "additionalProperties", "required", "propertyOrdering", "nullable"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,127}")


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def error_body(code: int, message: str, details: list[Json] | None = None) -> bytes:
    err: Json = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return orjson.dumps({"error": err}, option=orjson.OPT_INDENT_2)


def _error(code: int, message: str, details: list[Json] | None = None) -> Response:
    return Response(error_body(code, message, details), status_code=code, media_type="application/json")


# --- validation ----------------------------------------------------------------------------------


def _camel(k: str) -> str:
    head, *rest = k.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _openapi_keys(s: Any) -> Any:
    if not isinstance(s, dict):
        return s
    out = {_camel(k): v for k, v in s.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {n: _openapi_keys(v) for n, v in out["properties"].items()}
    if "items" in out:
        out["items"] = _openapi_keys(out["items"])
    if isinstance(out.get("anyOf"), list):
        out["anyOf"] = [_openapi_keys(v) for v in out["anyOf"]]
    return out


def normalize(body: Any) -> Any:
    """The request with proto field names in camelCase, as the API reads them: it takes both
    ``parametersJsonSchema`` and ``parameters_json_schema`` (the google-genai SDK sends some of each)."""
    if not isinstance(body, dict):
        return body
    b = {_camel(k): v for k, v in body.items()}

    def content(c: Any) -> Any:
        if not isinstance(c, dict):
            return c
        c = {_camel(k): v for k, v in c.items()}
        if isinstance(c.get("parts"), list):
            parts = []
            for p in c["parts"]:
                if isinstance(p, dict):
                    p = {_camel(k): v for k, v in p.items()}
                    for f in ("inlineData", "functionCall", "functionResponse", "fileData"):
                        if isinstance(p.get(f), dict):
                            p[f] = {_camel(k): v for k, v in p[f].items()}
                parts.append(p)
            c["parts"] = parts
        return c

    if isinstance(b.get("contents"), list):
        b["contents"] = [content(c) for c in b["contents"]]
    if isinstance(b.get("systemInstruction"), dict):
        b["systemInstruction"] = content(b["systemInstruction"])
    if isinstance(b.get("tools"), list):
        tools = []
        for t in b["tools"]:
            if isinstance(t, dict):
                t = {_camel(k): v for k, v in t.items()}
                if isinstance(t.get("functionDeclarations"), list):
                    decls = []
                    for d in t["functionDeclarations"]:
                        if isinstance(d, dict):
                            d = {_camel(k): v for k, v in d.items()}
                            for f in ("parameters", "response"):
                                if f in d:
                                    d[f] = _openapi_keys(d[f])
                        decls.append(d)
                    t["functionDeclarations"] = decls
            tools.append(t)
        b["tools"] = tools
    if isinstance(b.get("toolConfig"), dict):
        tc = {_camel(k): v for k, v in b["toolConfig"].items()}
        if isinstance(tc.get("functionCallingConfig"), dict):
            tc["functionCallingConfig"] = {_camel(k): v for k, v in tc["functionCallingConfig"].items()}
        b["toolConfig"] = tc
    if isinstance(b.get("generationConfig"), dict):
        g = {_camel(k): v for k, v in b["generationConfig"].items()}
        if isinstance(g.get("thinkingConfig"), dict):
            g["thinkingConfig"] = {_camel(k): v for k, v in g["thinkingConfig"].items()}
        if "responseSchema" in g:
            g["responseSchema"] = _openapi_keys(g["responseSchema"])
        b["generationConfig"] = g
    return b


def _unknown(name: str, where: str) -> Invalid:
    at = f" at '{where}'" if where else ""
    return Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _only(d: Json, allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            raise _unknown(k, where)


def _check_openapi_schema(s: Any, where: str) -> None:
    if not isinstance(s, dict):
        raise Invalid(f"Invalid value at '{where}': expected a Schema object.")
    _only(s, _OPENAPI, where)
    t = s.get("type")
    if t is not None and (not isinstance(t, str) or t.upper() not in
                          ("TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL")):
        raise Invalid(f"Invalid value at '{where}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), {orjson.dumps(t).decode()}")
    if "enum" in s and str(t).upper() != "STRING":
        raise Invalid(f"* GenerateContentRequest.{where}.enum: only allowed for STRING type")
    for name, sub in (s.get("properties") or {}).items():
        _check_openapi_schema(sub, f"{where}.properties[{name}].value")
    if "items" in s:
        _check_openapi_schema(s["items"], f"{where}.items")
    for i, sub in enumerate(s.get("anyOf") or ()):
        _check_openapi_schema(sub, f"{where}.any_of[{i}]")


def _check_json_schema(s: Any, where: str, root: Json) -> None:
    if isinstance(s, bool):
        return
    if not isinstance(s, dict):
        raise Invalid(f"Invalid JSON schema at '{where}': expected an object or a boolean.")
    for k in s:
        if k not in _JSONSCHEMA:
            raise Invalid(f"Invalid JSON schema at '{where}': keyword '{k}' is not supported.")
    if "$ref" in s:
        extra = [k for k in s if not k.startswith("$")]
        if extra:
            raise Invalid(f"Invalid JSON schema at '{where}': when '$ref' is set no other properties may be "
                          f"set, got '{extra[0]}'.")
        ref = s["$ref"]
        if ref != "#":
            m = re.fullmatch(r"#/(\$defs|definitions)/(.+)", str(ref))
            if not m or m.group(2) not in (root.get("$defs") or {}):
                raise Invalid(f"Invalid JSON schema at '{where}': cannot resolve $ref '{ref}'.")
    for key in ("properties", "$defs"):
        for name, sub in (s.get(key) or {}).items():
            _check_json_schema(sub, f"{where}.{key}.{name}", root)
    for key in ("items", "additionalProperties"):
        if key in s:
            _check_json_schema(s[key], f"{where}.{key}", root)
    for key in ("anyOf", "oneOf", "prefixItems"):
        for i, sub in enumerate(s.get(key) or ()):
            _check_json_schema(sub, f"{where}.{key}[{i}]", root)


def _b64ok(s: Any) -> bool:
    """Google's JSON parser takes bytes as standard or URL-safe base64."""
    if not isinstance(s, str):
        return False
    try:
        base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_part(p: Any, role: str, where: str) -> None:
    if not isinstance(p, dict):
        raise Invalid(f"Invalid value at '{where}': expected a Part object.")
    _only(p, _PART_DATA | _PART_META, where)
    data = [k for k in p if k in _PART_DATA]
    if len(data) != 1:
        raise Invalid(f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one initialized field"
                      if not data else f"Invalid value at '{where}': oneof field 'data' is already set. Cannot set '{data[1]}'")
    kind = data[0]
    v = p[kind]
    if kind == "text" and not isinstance(v, str):
        raise Invalid(f"Invalid value at '{where}.text' (TYPE_STRING)")
    if kind == "inlineData":
        if not isinstance(v, dict):
            raise Invalid(f"Invalid value at '{where}.inline_data'")
        _only(v, {"mimeType", "data"}, f"{where}.inline_data")
        if not v.get("mimeType"):
            raise Invalid(f"* GenerateContentRequest.{where}.inline_data.mime_type: mime_type is required")
        if not _b64ok(v.get("data") or ""):
            raise Invalid(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed")
        if not v.get("data"):
            raise Invalid(f"* GenerateContentRequest.{where}.inline_data.data: data is required")
    if kind == "functionCall":
        if role != "model":
            raise Invalid("Please ensure that function call turn comes immediately after a user turn or after a "
                          "function response turn.")
        _only(v, {"name", "args", "id"}, f"{where}.function_call")
        if not v.get("name"):
            raise Invalid(f"* GenerateContentRequest.{where}.function_call.name: Name cannot be empty.")
        if "args" in v and not isinstance(v["args"], dict):
            raise Invalid(f"Invalid value at '{where}.function_call.args' (type.googleapis.com/google.protobuf.Struct)")
    if kind == "functionResponse":
        if role != "user":
            raise Invalid(f"* GenerateContentRequest.{where}.function_response: only allowed in a user turn.")
        _only(v, {"name", "response", "id", "parts", "willContinue", "scheduling"}, f"{where}.function_response")
        if not v.get("name"):
            raise Invalid(f"* GenerateContentRequest.{where}.function_response.name: Name cannot be empty.")
        if not isinstance(v.get("response"), dict):
            raise Invalid(f"Invalid value at '{where}.function_response.response' (type.googleapis.com/google.protobuf.Struct)")
    if "thoughtSignature" in p:
        if not _b64ok(p["thoughtSignature"]):
            raise Invalid(f"Invalid value at '{where}.thought_signature' (TYPE_BYTES), Base64 decoding failed")


def validate(body: Any, model: str) -> None:
    """Raise `Invalid` for what the real API refuses."""
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    _only(body, _TOP, "")
    contents = body.get("contents")
    if not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    if not isinstance(contents, list):
        raise Invalid("Invalid value at 'contents': expected a list")
    for i, c in enumerate(contents):
        where = f"contents[{i}]"
        if not isinstance(c, dict):
            raise Invalid(f"Invalid value at '{where}'")
        _only(c, {"role", "parts"}, where)
        role = c.get("role", "user")
        if role not in ("user", "model"):
            raise Invalid("Please use a valid role: user, model.")
        parts = c.get("parts")
        if not parts or not isinstance(parts, list):
            raise Invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
        for j, p in enumerate(parts):
            _check_part(p, role, f"{where}.parts[{j}]")
    # function responses answer the preceding call turn, one for one
    for i, c in enumerate(contents):
        responses = [p for p in c["parts"] if "functionResponse" in p]
        if not responses:
            continue
        prev = contents[i - 1] if i else None
        calls = [p for p in prev["parts"] if "functionCall" in p] if prev and prev.get("role") == "model" else []
        if len(calls) != len(responses):
            raise Invalid("Please ensure that the number of function response parts is equal to the number of "
                          "function call parts of the function call turn.")
    # Gemini 3: every function-call step of the current turn needs its thought signature
    if model.startswith("gemini-3"):
        start = 0
        for i, c in enumerate(contents):
            if c.get("role", "user") == "user" and any("text" in p for p in c["parts"]):
                start = i
        for i in range(start, len(contents)):
            c = contents[i]
            calls = [p for p in c["parts"] if "functionCall" in p]
            if c.get("role") == "model" and calls and not calls[0].get("thoughtSignature"):
                name = calls[0]["functionCall"]["name"]
                raise Invalid(f"Function call is missing a thought_signature in functionCall parts. This is required "
                              f"for tools to work correctly, and missing thought_signature may lead to degraded model "
                              f"performance. Additional data, function call `default_api:{name}` , position {i + 1}. "
                              f"Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")
    si = body.get("systemInstruction")
    if si is not None:
        if not isinstance(si, dict) or not si.get("parts"):
            raise Invalid("* GenerateContentRequest.system_instruction.parts: contents.parts must not be empty.")
        _only(si, {"role", "parts"}, "system_instruction")
        for j, p in enumerate(si["parts"]):
            if not isinstance(p, dict) or set(p) != {"text"}:
                raise Invalid(f"Invalid value at 'system_instruction.parts[{j}]': only text parts are allowed.")
    names: set[str] = set()
    for i, t in enumerate(body.get("tools") or ()):
        if not isinstance(t, dict):
            raise Invalid(f"Invalid value at 'tools[{i}]'")
        for j, d in enumerate(t.get("functionDeclarations") or ()):
            where = f"tools[{i}].function_declarations[{j}]"
            _only(d, _DECL, where)
            if not isinstance(d.get("name"), str) or not _NAME.fullmatch(d["name"]):
                raise Invalid(f"* GenerateContentRequest.{where}.name: [FIELD_INVALID] Invalid function name. Must "
                              "start with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores "
                              "(_), dots (.), colons (:), or dashes (-), with a maximum length of 128.")
            names.add(d["name"])
            if "parameters" in d and "parametersJsonSchema" in d:
                raise Invalid(f"* GenerateContentRequest.{where}: parameters and parameters_json_schema are mutually exclusive.")
            if "parameters" in d:
                _check_openapi_schema(d["parameters"], f"{where}.parameters")
            if "parametersJsonSchema" in d:
                s = d["parametersJsonSchema"]
                if not isinstance(s, dict) or s.get("type") != "object":
                    raise Invalid(f"* GenerateContentRequest.{where}.parameters_json_schema: the schema must describe "
                                  "an object (type: object).")
                _check_json_schema(s, f"{where}.parameters_json_schema", s)
    tc = body.get("toolConfig")
    if tc is not None:
        _only(tc, {"functionCallingConfig", "retrievalConfig"}, "tool_config")
        fcc = tc.get("functionCallingConfig") or {}
        _only(fcc, {"mode", "allowedFunctionNames"}, "tool_config.function_calling_config")
        mode = fcc.get("mode", "AUTO")
        if mode not in ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"):
            raise Invalid(f"Invalid value at 'tool_config.function_calling_config.mode' "
                          f"(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), "
                          f"{orjson.dumps(mode).decode()}")
        allowed = fcc.get("allowedFunctionNames")
        if allowed:
            if mode not in ("ANY", "VALIDATED"):
                raise Invalid("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                              "allowed_function_names can only be set when mode is ANY.")
            for n in allowed:
                if n not in names:
                    raise Invalid(f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                                  f"function '{n}' is not declared in tools.")
    g = body.get("generationConfig")
    if g is not None:
        _only(g, _GEN, "generation_config")
        if len(g.get("stopSequences") or ()) > 5:
            raise Invalid("* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences are allowed.")
        cc = g.get("candidateCount")
        if cc is not None and not (isinstance(cc, int) and 1 <= cc <= 8):
            raise Invalid("* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8.")
        t = g.get("temperature")
        if t is not None and not 0 <= t <= 2:
            raise Invalid("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0].")
        if "responseSchema" in g and "responseJsonSchema" in g:
            raise Invalid("* GenerateContentRequest.generation_config: response_schema and response_json_schema are mutually exclusive.")
        if ("responseSchema" in g or "responseJsonSchema" in g) and g.get("responseMimeType") != "application/json":
            raise Invalid("* GenerateContentRequest.generation_config.response_mime_type: must be application/json "
                          "when a response schema is set.")
        if "responseSchema" in g:
            _check_openapi_schema(g["responseSchema"], "generation_config.response_schema")
        if "responseJsonSchema" in g:
            _check_json_schema(g["responseJsonSchema"], "generation_config.response_json_schema", g["responseJsonSchema"])
        th = g.get("thinkingConfig")
        if th is not None:
            _only(th, {"includeThoughts", "thinkingBudget", "thinkingLevel"}, "generation_config.thinking_config")
            if "thinkingLevel" in th and "thinkingBudget" in th:
                raise Invalid("You can only set only one of thinking budget and thinking level.")
            if "thinkingLevel" in th and not model.startswith("gemini-3"):
                raise Invalid("Thinking level is not supported for this model.")
            if th.get("thinkingBudget") == 0 and "pro" in model:
                raise Invalid("Budget 0 is invalid. This model only works in thinking mode.")


# --- replies -------------------------------------------------------------------------------------


def _words(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def _last_user_text(body: Json) -> str:
    contents = body.get("contents") or ()
    last = contents[-1] if contents else {}
    results = [p["functionResponse"] for p in last.get("parts", ()) if "functionResponse" in p]
    if results:
        return "tool results " + " ".join(f"{r['name']}={orjson.dumps(r['response']).decode()}" for r in results)
    for c in reversed(contents):
        if c.get("role", "user") == "user":
            texts = [p["text"] for p in c["parts"] if "text" in p]
            if texts:
                return "".join(texts)
    return ""


def _prompt_tokens(body: Json) -> int:
    n = 0
    for c in body.get("contents") or ():
        for p in c["parts"]:
            if "text" in p:
                n += _words(p["text"])
            elif "inlineData" in p:
                n += 258  # what Gemini counts for an image
            elif "functionCall" in p or "functionResponse" in p:
                n += _words(orjson.dumps(p).decode())
    for p in (body.get("systemInstruction") or {}).get("parts") or ():
        n += _words(p.get("text", ""))
    return max(n, 1)


def _candidate(spec: Json, gen: Json, default_text: str) -> Json:
    """A candidate's parts and finish reason after maxOutputTokens and stopSequences."""
    text = spec.get("text", default_text if not spec.get("calls") else None)
    finish = spec.get("finish", "STOP")
    if text is not None:
        for s in gen.get("stopSequences") or ():
            if s in text:
                text = text[:text.index(s)]
        limit = gen.get("maxOutputTokens")
        pieces = re.findall(r"\s*\S+", text)
        if limit is not None and len(pieces) > limit:  # a token is a word here
            text = "".join(pieces[:limit])
            finish = "MAX_TOKENS"
    parts: list[Json] = []
    if spec.get("thought"):
        parts.append({"text": spec["thought"], "thought": True})
    if text:
        parts.append({"text": text})
    for c in spec.get("calls") or ():
        p: Json = {"functionCall": {"name": c["name"], "args": c.get("args", {})}}
        if c.get("signature"):
            p["thoughtSignature"] = c["signature"]
        parts.append(p)
    return {"parts": parts, "finish": finish}


def _plan(reply: Json, body: Json) -> list[Json]:
    gen = body.get("generationConfig") or {}
    n = gen.get("candidateCount") or 1
    echo = "Echo: " + _last_user_text(body)
    specs = reply.get("candidates") or [reply] + [{} for _ in range(n - 1)]
    return [_candidate(s, gen, echo if i == 0 else f"{echo} (candidate {i})") for i, s in enumerate(specs)]


def _usage(reply: Json, body: Json, cands: list[Json], final: bool) -> Json:
    if reply.get("usage") is not None and final:
        return reply["usage"]
    prompt = _prompt_tokens(body)
    u: Json = {"promptTokenCount": prompt}
    out = sum(_words(p.get("text", "")) if "text" in p and not p.get("thought") else
              _words(orjson.dumps(p).decode()) if "functionCall" in p else 0 for c in cands for p in c["parts"])
    thoughts = sum(_words(p["text"]) for c in cands for p in c["parts"] if p.get("thought"))
    total = prompt
    if final:
        u["candidatesTokenCount"] = out
        total += out
        if thoughts:
            u["thoughtsTokenCount"] = thoughts
            total += thoughts
    u["totalTokenCount"] = total
    u["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return u


def _response(cands: list[Json], usage: Json, model: str, rid: str, final: bool = True,
              parts_of: list[list[Json]] | None = None, finishes: list[bool] | None = None) -> Json:
    out = []
    for i, c in enumerate(cands):
        parts = c["parts"] if parts_of is None else parts_of[i]
        if parts_of is not None and not parts and not (finishes and finishes[i]):
            continue
        content: Json = {"role": "model"}
        if parts:
            content = {"parts": parts, "role": "model"}
        cand: Json = {"content": content}
        if finishes[i] if finishes is not None else final:
            cand["finishReason"] = c["finish"]
        cand["index"] = i
        out.append(cand)
    return {"candidates": out, "usageMetadata": usage, "modelVersion": model, "responseId": rid}


def _with_logprobs(resp: Json, body: Json) -> Json:
    """With ``generationConfig.responseLogprobs``: each candidate's ``logprobsResult`` for the text
    of this response (one token per word; deterministic log probabilities), ``topCandidates`` when
    ``logprobs`` (a count) is given, and ``avgLogprobs``, as the real API answers."""
    gen = body.get("generationConfig") or {}
    if not gen.get("responseLogprobs"):
        return resp
    top = gen.get("logprobs") or 0
    for c in resp.get("candidates") or ():
        text = "".join(p.get("text", "") for p in (c.get("content") or {}).get("parts") or () if not p.get("thought"))
        words = re.findall(r"\s*\S+", text)
        chosen = [{"token": w, "tokenId": 1000 + len(w), "logProbability": -0.25 * (1 + i % 3)}
                  for i, w in enumerate(words)]
        result: Json = {"chosenCandidates": chosen}
        if top:
            result["topCandidates"] = [{"candidates": [ch] + [
                {"token": f"{ch['token']}#{k}", "tokenId": 2000 + k, "logProbability": ch["logProbability"] - k}
                for k in range(1, top)]} for ch in chosen]
        c["logprobsResult"] = result
        if chosen:
            c["avgLogprobs"] = sum(ch["logProbability"] for ch in chosen) / len(chosen)
    return resp


def _pieces(parts: list[Json]) -> list[Json]:
    """The parts of one candidate as they are streamed: text a few words at a time, calls whole."""
    out: list[Json] = []
    for p in parts:
        if "text" in p:
            words = re.findall(r"\s*\S+", p["text"])
            for k in range(0, len(words), 2):
                q = dict(p)
                q["text"] = "".join(words[k:k + 2])
                out.append(q)
        else:
            out.append(p)
    return out


def _events(reply: Json, body: Json, cands: list[Json], model: str, rid: str) -> list[Json]:
    if reply.get("events") is not None:
        return reply["events"]
    streams = [_pieces(c["parts"]) for c in cands]
    steps = max(1, max(len(s) for s in streams))
    events = []
    for k in range(steps):
        last = k == steps - 1
        parts_of = [[s[k]] if k < len(s) else [] for s in streams]
        finishes = [last for _ in streams]
        if last:
            parts_of = [pp if pp else [{"text": ""}] for pp in parts_of]
        events.append(_response(cands, _usage(reply, body, cands, last), model, rid, last, parts_of, finishes))
    return events


def _count_tokens(request: Request, body: Any, model: str, api_key: str) -> Response:
    """``:countTokens``: ``{"contents"}`` or ``{"generateContentRequest": {"model", …}}`` (checked as
    generateContent checks it) → ``{"totalTokens", "promptTokensDetails"}``."""
    if (request.headers.get("x-goog-api-key") or request.query_params.get("key")) != api_key:
        return _error(400, "API key not valid. Please pass a valid API key.")
    if not isinstance(body, dict) or set(body) - {"contents", "generateContentRequest"}:
        return _error(400, "Invalid JSON payload received. Unknown name in countTokens request.")
    inner = body.get("generateContentRequest")
    if inner is not None:
        if not isinstance(inner, dict) or inner.get("model") != f"models/{model}":
            return _error(400, "generateContentRequest.model: must name the model, e.g. models/" + model)
        inner = {k: v for k, v in inner.items() if k != "model"}
    else:
        inner = {"contents": body.get("contents")}
    inner = normalize(inner)
    try:
        validate(inner, model)
    except Invalid as e:
        return _error(e.status, e.message)
    n = _prompt_tokens(inner)
    return Response(orjson.dumps({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}),
                    media_type="application/json")


_EMBED_KEYS = {"model", "content", "taskType", "title", "outputDimensionality"}
_TASKS = {"TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
          "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY"}


def _embedding(req: Any, model: str, where: str) -> Json:
    """One ``ContentEmbedding`` for an ``EmbedContentRequest``, checked like the API does."""
    if not isinstance(req, dict):
        raise Invalid(f"Invalid value at '{where}': expected an object.")
    _only(req, _EMBED_KEYS, where)
    if "model" in req and req["model"] != f"models/{model}":
        raise Invalid(f"Model name mismatch: '{where}.model' is {req['model']!r}, the URL names models/{model}.")
    if req.get("taskType") is not None and req["taskType"] not in _TASKS:
        raise Invalid(f"Invalid value at '{where}.task_type' (type.googleapis.com/google.ai.generativelanguage."
                      f"v1beta.TaskType), \"{req['taskType']}\"")
    parts = (req.get("content") or {}).get("parts") or []
    texts = [p.get("text") for p in parts if isinstance(p, dict)]
    if not parts or any(not isinstance(t, str) for t in texts):
        raise Invalid(f"* {where}.content.parts: contents.parts must not be empty and hold text.")
    text = "".join(texts)
    if not text:
        raise Invalid(f"* {where}.content.parts[0].text: the text to embed must not be empty.")
    full = 3072 if model.startswith("gemini-embedding") else 768
    dims = req.get("outputDimensionality")
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        raise Invalid(f"Invalid value at '{where}.output_dimensionality'.")
    return {"values": vector(text, full)[: dims or full]}


def _embed(method: str, model: str, body: Json) -> Response:
    try:
        if method == "embedContent":
            return Response(orjson.dumps({"embedding": _embedding(body, model, "request")}),
                            media_type="application/json")
        _only(body, {"requests"}, "request")
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            raise Invalid("* BatchEmbedContentsRequest.requests: requests must not be empty.")
        if len(reqs) > 100:
            raise Invalid("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch.")
        data = {"embeddings": [_embedding(r, model, f"requests[{i}]") for i, r in enumerate(reqs)]}
        return Response(orjson.dumps(data), media_type="application/json")
    except Invalid as e:
        return _error(e.status, e.message)


def build_gemini_emulator(api_key: str = "gemini-test-key") -> Starlette:
    """The emulator app; `app.state.script` takes scripted replies, `app.state.requests` records."""
    script: collections.deque[Json] = collections.deque()
    received: list[Json] = []

    async def handle(request: Request) -> Response:
        rest = request.path_params["rest"]
        body_bytes = await request.body()
        try:
            body = orjson.loads(body_bytes)
        except orjson.JSONDecodeError:
            body = None
        received.append({"path": request.url.path, "query": request.url.query,
                         "headers": dict(request.headers), "body": body})
        model, _, method = rest.rpartition(":")
        if method == "countTokens" and model:
            return _count_tokens(request, body, model, api_key)
        if method not in ("generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents") or not model:
            return _error(404, f"Method not found: {rest}")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            return _error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                               "Please use API Key or other form of API consumer identity to call this API.")
        if key != api_key:
            return _error(400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
        if body is None:
            return _error(400, "Invalid JSON payload received. Unexpected token.")
        if model.startswith("missing"):
            return _error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                               "generateContent. Call ListModels to see the list of available models and their "
                               "supported methods.")
        if method in ("embedContent", "batchEmbedContents"):
            return _embed(method, model, body)
        body = normalize(body)
        try:
            validate(body, model)
        except Invalid as e:
            return _error(e.status, e.message)
        reply = script.popleft() if script else {}
        if reply.get("latency"):
            await asyncio.sleep(reply["latency"])
        err = reply.get("error")
        if err:
            code = err.get("code", 500)
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": err["retry_delay"]}] \
                if err.get("retry_delay") else None
            return _error(code, err.get("message", "An internal error has occurred."), details)
        rid = uuid.uuid4().hex[:22]
        version = reply.get("model_version", model)
        stream = method == "streamGenerateContent"
        if reply.get("block"):
            blocked = {"promptFeedback": {"blockReason": reply["block"]},
                       "usageMetadata": {"promptTokenCount": _prompt_tokens(body),
                                         "totalTokenCount": _prompt_tokens(body)},
                       "modelVersion": version, "responseId": rid}
            reply = {**reply, "raw": blocked, "events": [blocked]}
        cands = _plan(reply, body)
        if not stream:
            data = reply.get("raw") or _with_logprobs(_response(cands, _usage(reply, body, cands, True), version, rid),
                                                      body)
            return Response(orjson.dumps(data, option=orjson.OPT_INDENT_2), media_type="application/json")
        events = [_with_logprobs(e, body) for e in _events(reply, body, cands, version, rid)]
        if request.query_params.get("alt") != "sse":
            return Response(b"[" + b",\r\n".join(orjson.dumps(e) for e in events) + b"]",
                            media_type="application/json")

        async def sse() -> AsyncIterator[bytes]:
            for i, e in enumerate(events):
                if reply.get("drop_after") is not None and i >= reply["drop_after"]:
                    await asyncio.sleep(0.2)  # the client reads what came first: a reset discards unread bytes
                    raise ConnectionResetError("emulated drop")  # uvicorn aborts the connection mid-body
                if reply.get("truncate_after") is not None and i >= reply["truncate_after"]:
                    return
                if reply.get("error_after") is not None and i >= reply["error_after"]:
                    yield b"data: " + orjson.dumps({"error": {"code": 503, "message": "The model is overloaded.",
                                                              "status": "UNAVAILABLE"}}) + b"\r\n\r\n"
                    return
                if i and reply.get("chunk_delay"):
                    await asyncio.sleep(reply["chunk_delay"])
                yield b"data: " + orjson.dumps(e) + b"\r\n\r\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        if request.headers.get("x-goog-api-key") != api_key:
            return _error(400, "API key not valid. Please pass a valid API key.")
        names = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview"]
        return Response(orjson.dumps({"models": [
            {"name": f"models/{n}", "displayName": n, "supportedGenerationMethods": ["generateContent", "countTokens"]}
            for n in names]}), media_type="application/json")

    app = Starlette(routes=[Route("/v1beta/models", models, methods=["GET"]),
                            Route("/v1beta/models/{rest:path}", handle, methods=["POST"]),
                            Route("/v1/models/{rest:path}", handle, methods=["POST"])])
    app.state.requests = received
    app.state.script = script
    return app
