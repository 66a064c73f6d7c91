"""OpenAI chat completions ⇄ the Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``).

Pure functions over plain dicts, no I/O: the backend fetches http(s) images first and hands the
bytes in as `images`. The same table lives in docs/gemini.md.

Request (OpenAI → Gemini, camelCase JSON):

| OpenAI                                   | Gemini                                                        |
|------------------------------------------|---------------------------------------------------------------|
| model                                    | URL path ``/v1beta/models/{target model}:generateContent``     |
| system / developer messages (any place)  | ``systemInstruction.parts[0].text``, joined with a blank line  |
| user message, text parts                 | ``contents[] {role: "user", parts: [{text}]}``                 |
| assistant message                        | role ``model``; text part, then one ``functionCall`` part per  |
|                                          | tool call (``args`` as an object); ``reasoning_content`` dropped|
| image_url ``data:`` URL                  | ``{inlineData: {mimeType, data}}``                             |
| image_url http(s) URL                    | fetched by the backend (size cap, timeout, no private hosts),  |
|                                          | then ``inlineData``                                            |
| input_audio / file with file_data        | ``inlineData`` (audio/{format}, or the data URL's type)        |
| tool message                             | ``{functionResponse: {name, response}}`` in a ``user`` turn;   |
|                                          | name looked up from the earlier call with that tool_call_id;   |
|                                          | JSON-object content → ``response`` as is, other JSON →         |
|                                          | ``{"content": value}``, text → ``{"content": text}``;          |
|                                          | consecutive results merged into one turn                       |
| tool call id carrying ``_sig_``          | the ``thoughtSignature`` restored on that ``functionCall`` part |
| tools[].function                         | ``tools[0].functionDeclarations[] {name, description,          |
|                                          | parametersJsonSchema}``: JSON Schema kept ($defs, $ref, enums, |
|                                          | additionalProperties), unsupported keywords dropped, ``const`` |
|                                          | → ``enum``, ``oneOf`` → ``anyOf``, siblings of ``$ref``        |
|                                          | dropped, a missing top-level type → ``object``                 |
| tool call ``extra_content.google.        | the ``thoughtSignature`` too (Google's OpenAI layer's field)   |
| thought_signature``                      |                                                                |
| target option thought_signature_fallback | put on the first call of an assistant turn with no signature   |
| tool_choice auto / none / required       | ``toolConfig.functionCallingConfig.mode`` AUTO / NONE / ANY    |
| tool_choice {function: {name}}           | mode ANY + ``allowedFunctionNames: [name]``                    |
| temperature, top_p                       | ``generationConfig.temperature``, ``topP``                     |
| max_completion_tokens / max_tokens       | ``generationConfig.maxOutputTokens``                           |
| stop (string or list)                    | ``generationConfig.stopSequences``                             |
| n                                        | ``generationConfig.candidateCount``                            |
| seed                                     | ``generationConfig.seed``                                      |
| presence_penalty, frequency_penalty      | ``presencePenalty``, ``frequencyPenalty``                      |
| response_format json_object              | ``responseMimeType: application/json``                         |
| response_format json_schema              | ``responseMimeType`` + ``responseJsonSchema`` (cleaned as tools)|
| reasoning_effort                         | ``thinkingConfig``: ``includeThoughts`` + ``thinkingBudget``   |
|                                          | (none 0 … high 24576; at least 128 on 2.5 Pro), or             |
|                                          | ``thinkingLevel`` low/high for gemini-3 models                 |
| target option include_thoughts: true     | ``thinkingConfig.includeThoughts: true`` on every request      |
| logprobs: true, top_logprobs             | ``generationConfig.responseLogprobs``, ``logprobs`` (top count)|
| user, metadata, store, parallel_tool_calls, stream_options | not sent                                      |

Response (Gemini → OpenAI):

| Gemini                                   | OpenAI                                                        |
|------------------------------------------|---------------------------------------------------------------|
| candidates[i] (``index``, else position) | choices[i]; streamed chunks carry the candidate's index        |
| text parts                               | ``message.content`` / ``delta.content``                        |
| parts with ``thought: true``             | ``reasoning_content`` (never content)                          |
| functionCall parts (no id, no deltas)    | ``tool_calls``: an id minted by Turnout (the part's            |
|                                          | ``thoughtSignature`` carried inside it), arguments serialised; |
|                                          | streamed as one complete delta per call with its index         |
| finishReason STOP                        | ``stop``, or ``tool_calls`` when the answer holds calls         |
| MAX_TOKENS                               | ``length``                                                     |
| SAFETY, RECITATION, BLOCKLIST,           | ``content_filter``                                             |
| PROHIBITED_CONTENT, SPII, IMAGE_SAFETY   |                                                                |
| other reasons (OTHER, LANGUAGE, …)       | ``stop``                                                       |
| content with no ``parts`` (MAX_TOKENS)   | ``content: ""``                                                |
| promptFeedback.blockReason, no candidates| 400 ``content_filter`` error naming the reason                 |
| usageMetadata (last one in a stream:     | ``usage``: prompt = promptTokenCount (+ toolUsePromptTokenCount),|
| it is cumulative)                        | completion = candidatesTokenCount + thoughtsTokenCount,        |
|                                          | reasoning_tokens = thoughtsTokenCount,                         |
|                                          | cached_tokens = cachedContentTokenCount                        |
| modelVersion                             | ``model``                                                      |
| error ``{code, message, status, details}`` | OpenAI error; RetryInfo ``retryDelay`` → retry-after;        |
|                                          | 400 with reason API_KEY_INVALID → treated as 401 (operator's)  |
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import orjson

from translators.common import (
    Fault,
    Json,
    TranslationError,
    chunk,
    token_logprob,
    completion,
    content_text,
    max_tokens_of,
    message,
    parse_arguments,
    split_data_url,
    stop_list,
    tool_call,
    tool_call_delta,
    usage,
)

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

_SIG = "_sig_"
# JSON Schema keywords the Gemini API takes in parametersJsonSchema / responseJsonSchema
_SCHEMA_KEYS = frozenset((
    "$id", "$defs", "$ref", "$anchor", "type", "format", "title", "description", "enum", "items",
    "prefixItems", "minItems", "maxItems", "minimum", "maximum", "anyOf", "oneOf", "properties",
    "additionalProperties", "required", "propertyOrdering", "nullable",
))
_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_LEVELS = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high"}


class Blocked(Exception):
    """The prompt was blocked (promptFeedback.blockReason): no candidates to translate."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"Gemini blocked the prompt (blockReason: {reason}).")
        self.message = str(self)


class NoCandidates(Exception):
    """A non-streamed answer with neither candidates nor a block reason."""


# --- request -------------------------------------------------------------------------------------


def http_image_urls(body: Json) -> list[str]:
    """The distinct http(s) image URLs in the request, which the backend must fetch first."""
    out: list[str] = []
    for m in body.get("messages") or ():
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for p in content:
            if isinstance(p, dict) and p.get("type") == "image_url":
                iu = p.get("image_url")
                url = iu.get("url", "") if isinstance(iu, dict) else str(iu)
                if url.startswith(("http://", "https://")) and url not in out:
                    out.append(url)
    return out


def encode_signature_id(base: str, signature: str | None) -> str:
    """A tool-call id that carries Gemini's thoughtSignature (url-safe base64, no padding)."""
    if not signature:
        return base
    return base + _SIG + signature.replace("+", "-").replace("/", "_").rstrip("=")


def decode_signature_id(id: str) -> str | None:
    """The thoughtSignature carried in a tool-call id minted by `encode_signature_id`, or None."""
    i = id.find(_SIG)
    if i < 0:
        return None
    s = id[i + len(_SIG):].replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None
    return s


def _part(p: Any, images: dict[str, tuple[str, str]], param: str) -> Json | None:
    if not isinstance(p, dict):
        return None
    t = p.get("type")
    if t == "text":
        return {"text": p.get("text", "")}
    if t == "image_url":
        iu = p.get("image_url")
        url = iu.get("url", "") if isinstance(iu, dict) else str(iu)
        if url.startswith("data:"):
            mime, data = split_data_url(url)
        elif url in images:
            mime, data = images[url]
        else:
            raise TranslationError(f"Image URL at '{param}' was not fetched.", param=param,
                                   code="invalid_image_url")
        return {"inlineData": {"mimeType": mime, "data": data}}
    if t == "input_audio":
        a = p.get("input_audio") or {}
        fmt = a.get("format") or "wav"
        return {"inlineData": {"mimeType": f"audio/{'mpeg' if fmt == 'mp3' else fmt}", "data": a.get("data", "")}}
    if t == "file":
        fd = (p.get("file") or {}).get("file_data")
        if isinstance(fd, str) and fd.startswith("data:"):
            mime, data = split_data_url(fd)
            return {"inlineData": {"mimeType": mime, "data": data}}
        raise TranslationError(f"Only inline file_data (a data: URL) is supported at '{param}'.", param=param,
                               code="unsupported_content")
    return None


def _user_parts(content: Any, images: dict[str, tuple[str, str]], param: str) -> list[Json]:
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for j, p in enumerate(content or ()):
        g = _part(p, images, f"{param}[{j}]")
        if g is not None:
            parts.append(g)
    return parts


def _tool_response(content: Any) -> Json:
    text = content_text(content)
    s = text.lstrip()
    if s[:1] and s[:1] in '{["-0123456789tfn':
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return {"content": text}
        return value if isinstance(value, dict) else {"content": value}
    return {"content": text}


def clean_schema(schema: Any) -> Any:
    """A JSON Schema as the Gemini API takes it in parametersJsonSchema / responseJsonSchema.

    Keeps what it supports ($defs, $ref, enum, anyOf, additionalProperties, ...), turns ``oneOf``
    into ``anyOf`` and ``const`` into a one-value ``enum``, drops other keywords ($schema, strict,
    default, pattern, ...) and the siblings of a ``$ref`` (which the API refuses).
    """
    if isinstance(schema, list):
        return [clean_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return {k: v for k, v in schema.items() if k in ("$ref", "$defs", "$id", "$anchor")}
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        if "$ref" in all_of[0]:
            return clean_schema(all_of[0])
        return clean_schema({**all_of[0], **merged})
    out: Json = {}
    for k, v in schema.items():
        if k == "const":
            out.setdefault("enum", [v])
        elif k == "oneOf":
            out["anyOf"] = clean_schema(v)
        elif k not in _SCHEMA_KEYS:
            continue
        elif k in ("properties", "$defs"):
            out[k] = {name: clean_schema(s) for name, s in v.items()} if isinstance(v, dict) else v
        elif k in ("items", "additionalProperties", "anyOf", "prefixItems"):
            out[k] = clean_schema(v)
        else:
            out[k] = v
    return out


def _tools(body: Json) -> tuple[list[Json] | None, Json | None]:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        return None, None
    decls = []
    for t in tools:
        fn = t.get("function") or {}
        d: Json = {"name": fn["name"]}
        if fn.get("description"):
            d["description"] = fn["description"]
        params = fn.get("parameters")
        if params:
            schema = clean_schema(params)
            if "type" not in schema and "$ref" not in schema:
                schema["type"] = "object"  # OpenAI takes {"properties": ...} alone; Gemini wants the type
            d["parametersJsonSchema"] = schema
        decls.append(d)
    cfg: Json | None = None
    if choice == "none":
        cfg = {"mode": "NONE"}
    elif choice == "required":
        cfg = {"mode": "ANY"}
    elif choice == "auto":
        cfg = {"mode": "AUTO"}
    elif isinstance(choice, dict):
        cfg = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    return [{"functionDeclarations": decls}], ({"functionCallingConfig": cfg} if cfg else None)


def _generation_config(body: Json, model: str, options: Json) -> Json:
    g: Json = {}
    if body.get("temperature") is not None:
        g["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        g["topP"] = body["top_p"]
    mt = max_tokens_of(body)
    if mt is not None:
        g["maxOutputTokens"] = mt
    stops = stop_list(body.get("stop"))
    if stops:
        g["stopSequences"] = stops
    if body.get("n") not in (None, 1):
        g["candidateCount"] = body["n"]
    if body.get("seed") is not None:
        g["seed"] = body["seed"]
    if body.get("presence_penalty") is not None:
        g["presencePenalty"] = body["presence_penalty"]
    if body.get("frequency_penalty") is not None:
        g["frequencyPenalty"] = body["frequency_penalty"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        g["responseMimeType"] = "application/json"
    elif fmt.get("type") == "json_schema":
        g["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            g["responseJsonSchema"] = clean_schema(schema)
    effort = body.get("reasoning_effort")
    thinking: Json = {}
    if options.get("include_thoughts"):
        thinking["includeThoughts"] = True
    if effort is not None:
        if effort not in _BUDGETS:
            raise TranslationError(f"Invalid value: '{effort}'. Supported values are: "
                                   + ", ".join(f"'{e}'" for e in _BUDGETS) + ".",
                                   param="reasoning_effort", code="invalid_value")
        if model.startswith("gemini-3"):
            thinking["thinkingLevel"] = _LEVELS[effort]
        elif "pro" in model:  # 2.5 Pro cannot turn thinking off: 128 is its smallest budget
            thinking["thinkingBudget"] = max(128, _BUDGETS[effort])
        else:
            thinking["thinkingBudget"] = _BUDGETS[effort]
        if effort != "none":
            thinking["includeThoughts"] = True
    if thinking:
        g["thinkingConfig"] = thinking
    return g


def to_request(body: Json, model: str = "", images: dict[str, tuple[str, str]] | None = None,
               options: Json | None = None) -> Json:
    """The Gemini ``GenerateContentRequest`` for an OpenAI chat request (model goes in the URL).

    `images` maps each http(s) image URL to the (media type, base64) the backend fetched.
    `options` are the target's options (``include_thoughts``, ``thought_signature_fallback``).
    """
    images = images or {}
    options = options or {}
    system: list[str] = []
    contents: list[Json] = []
    names: dict[str, str] = {}  # tool_call_id → function name
    fallback_sig = options.get("thought_signature_fallback")
    last_kind = None  # "user" | "tool" | "model"

    def add(role: str, kind: str, parts: list[Json]) -> None:
        nonlocal last_kind
        if not parts:
            return
        if contents and last_kind == kind:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
        last_kind = kind

    for i, m in enumerate(body["messages"]):
        role = m.get("role")
        content = m.get("content")
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                system.append(text)
        elif role == "user":
            add("user", "user", _user_parts(content, images, f"{param}.content"))
        elif role == "assistant":
            parts: list[Json] = []
            text = content_text(content)
            if text:
                parts.append({"text": text})
            first_call = True
            for j, tc in enumerate(m.get("tool_calls") or ()):
                fn = tc.get("function") or {}
                args = parse_arguments(fn.get("arguments"), f"{param}.tool_calls[{j}].function.arguments")
                if not isinstance(args, dict):
                    raise TranslationError(f"Tool call arguments at '{param}.tool_calls[{j}].function.arguments' "
                                           "must be a JSON object.", param=f"{param}.tool_calls[{j}].function.arguments",
                                           code="invalid_tool_arguments")
                tid = tc.get("id") or ""
                names[tid] = fn.get("name", "")
                fc: Json = {"functionCall": {"name": fn.get("name", ""), "args": args}}
                sig = decode_signature_id(tid) or ((tc.get("extra_content") or {}).get("google") or {}).get(
                    "thought_signature")
                if not sig and first_call and fallback_sig:
                    sig = fallback_sig
                if sig:
                    fc["thoughtSignature"] = sig
                first_call = False
                parts.append(fc)
            fc_legacy = m.get("function_call")
            if fc_legacy and not m.get("tool_calls"):
                parts.append({"functionCall": {"name": fc_legacy.get("name", ""),
                                               "args": parse_arguments(fc_legacy.get("arguments"),
                                                                       f"{param}.function_call.arguments")}})
            add("model", "model", parts)
        elif role in ("tool", "function"):
            if role == "tool":
                tid = m.get("tool_call_id") or ""
                name = names.get(tid) or m.get("name")
                if not name:
                    raise TranslationError(f"'{param}.tool_call_id' does not match any earlier tool call.",
                                           param=f"{param}.tool_call_id", code="invalid_tool_call_id")
            else:
                name = m.get("name") or ""
            add("user", "tool", [{"functionResponse": {"name": name, "response": _tool_response(content)}}])
    if not contents:
        raise TranslationError("Gemini needs at least one user or assistant message besides system messages.",
                               param="messages", code="invalid_value")
    req: Json = {"contents": contents}
    if system:
        req["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    tools, tool_config = _tools(body)
    if tools:
        req["tools"] = tools
    if tool_config:
        req["toolConfig"] = tool_config
    g = _generation_config(body, model, options)
    if body.get("logprobs") is True:
        g["responseLogprobs"] = True
        if body.get("top_logprobs"):
            g["logprobs"] = body["top_logprobs"]
    if g:
        req["generationConfig"] = g
    return req


# --- response ------------------------------------------------------------------------------------


def usage_from(meta: Json | None) -> Json | None:
    """OpenAI usage from ``usageMetadata``; thoughts count as completion (reasoning) tokens."""
    if not meta:
        return None
    prompt = (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0)
    thoughts = meta.get("thoughtsTokenCount")
    completion_tokens = (meta.get("candidatesTokenCount") or 0) + (thoughts or 0)
    cached = meta.get("cachedContentTokenCount")
    return usage(prompt, completion_tokens, cached=cached if cached is not None else None,
                 reasoning=thoughts if thoughts is not None else None)


def call_id_base(id: str, candidate: int, n: int) -> str:
    """A stable tool-call id for call `n` of candidate `candidate` of the response `id`."""
    h = hashlib.blake2s(f"{id}/{candidate}/{n}".encode(), digest_size=12).hexdigest()
    return "call_" + h


def _check_blocked(resp: Json) -> None:
    if resp.get("candidates"):
        return
    fb = resp.get("promptFeedback") or {}
    reason = fb.get("blockReason")
    if reason:
        msg = fb.get("blockReasonMessage")
        raise Blocked(reason, f"Gemini blocked the prompt (blockReason: {reason})" + (f": {msg}" if msg else "."))


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    if reason is None:
        return None
    fr = FINISH.get(reason, "stop")
    return "tool_calls" if has_calls and fr == "stop" else fr


def from_response(resp: Json, id: str, created: int, model: str) -> Json:
    """An OpenAI ``chat.completion`` from a ``GenerateContentResponse``; raises `Blocked`."""
    _check_blocked(resp)
    if not resp.get("candidates"):
        raise NoCandidates("Gemini returned no candidates.")
    cands = sorted(resp.get("candidates") or (), key=lambda c: c.get("index", 0))
    choices = []
    for pos, c in enumerate(cands):
        idx = c.get("index", pos)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[Json] = []
        for p in (c.get("content") or {}).get("parts") or ():
            if "functionCall" in p:
                fc = p["functionCall"]
                cid = encode_signature_id(call_id_base(id, idx, len(calls)), p.get("thoughtSignature"))
                calls.append(tool_call(cid, fc.get("name", ""), fc.get("args") or {}))
            elif "text" in p:
                (thoughts if p.get("thought") else texts).append(p["text"])
        text = "".join(texts)
        msg = message(text if text or not calls else None, calls or None, "".join(thoughts) or None)
        choices.append({"message": msg, "finish_reason": finish_reason(c.get("finishReason") or "STOP", bool(calls)),
                        "logprobs": logprobs_from(c.get("logprobsResult"))})
    return completion(id, created, resp.get("modelVersion") or model, choices, usage_from(resp.get("usageMetadata")))


def logprobs_from(result: Json | None) -> Json | None:
    """OpenAI's ``choices[].logprobs`` from a candidate's ``logprobsResult``: each chosen token with
    the top candidates at its step (``topCandidates[i]`` goes with ``chosenCandidates[i]``)."""
    if not isinstance(result, dict):
        return None
    chosen = result.get("chosenCandidates") or []
    tops = result.get("topCandidates") or []
    content = []
    for i, c in enumerate(chosen):
        top = [token_logprob(t.get("token", ""), t.get("logProbability", 0.0))
               for t in (tops[i].get("candidates") or [] if i < len(tops) else [])]
        content.append(token_logprob(c.get("token", ""), c.get("logProbability", 0.0), top))
    return {"content": content, "refusal": None}


class StreamState:
    """Turns each streamed ``GenerateContentResponse`` into OpenAI chunks.

    Gemini sends whole function calls (no deltas, no ids) and cumulative usage: each call becomes
    one ``tool_calls`` delta with a minted id and its index; the last usageMetadata is kept.
    """

    def __init__(self, id: str, created: int, model: str) -> None:
        self.id = id
        self.created = created
        self.model = model
        self.started: set[int] = set()
        self.calls: dict[int, int] = {}  # candidate index → tool calls so far
        self.finished: set[int] = set()
        self.usage_meta: Json | None = None
        self.first = True

    @property
    def usage(self) -> Json | None:
        return usage_from(self.usage_meta)

    def _chunk(self, delta: Json, finish: str | None = None, index: int = 0) -> Json:
        return chunk(self.id, self.created, self.model, delta, finish, index)

    def feed(self, resp: Json) -> list[Json]:
        if self.first:
            self.first = False
            _check_blocked(resp)
            self.model = resp.get("modelVersion") or self.model
        if resp.get("usageMetadata"):
            self.usage_meta = resp["usageMetadata"]
        out: list[Json] = []
        for pos, c in enumerate(resp.get("candidates") or ()):
            idx = c.get("index", pos)
            parts = (c.get("content") or {}).get("parts") or ()
            if idx not in self.started:
                self.started.add(idx)
                # as OpenAI's first chunk: content "" before text, null before a tool call or reasoning
                text_first = bool(parts) and "text" in parts[0] and not parts[0].get("thought")
                out.append(self._chunk({"role": "assistant", "content": "" if text_first else None, "refusal": None},
                                       index=idx))
            for p in parts:
                if "functionCall" in p:
                    fc = p["functionCall"]
                    n = self.calls.get(idx, 0)
                    self.calls[idx] = n + 1
                    cid = encode_signature_id(call_id_base(self.id, idx, n), p.get("thoughtSignature"))
                    args = orjson.dumps(fc.get("args") or {}).decode()
                    out.append(self._chunk({"tool_calls": [tool_call_delta(n, cid, fc.get("name", ""), args)]},
                                           index=idx))
                elif p.get("text"):
                    key = "reasoning_content" if p.get("thought") else "content"
                    out.append(self._chunk({key: p["text"]}, index=idx))
            lp = logprobs_from(c.get("logprobsResult"))
            if lp is not None and lp["content"]:  # this event's tokens: on its text chunk, as OpenAI's
                text_chunk = next((x for x in reversed(out) if x["choices"][0]["index"] == idx
                                   and "content" in x["choices"][0]["delta"]), None)
                if text_chunk is not None:
                    text_chunk["choices"][0]["logprobs"] = lp
                else:
                    out.append(chunk(self.id, self.created, self.model, {}, None, idx, lp))
            reason = c.get("finishReason")
            if reason and idx not in self.finished:
                self.finished.add(idx)
                out.append(self._chunk({}, finish_reason(reason, bool(self.calls.get(idx))), idx))
        return out

    @property
    def complete(self) -> bool:
        """Whether every candidate that started also finished (a cut stream has not)."""
        return bool(self.started) and self.started <= self.finished


# --- errors --------------------------------------------------------------------------------------


def _seconds(delay: Any) -> float | None:
    if isinstance(delay, str) and delay.endswith("s"):
        try:
            return float(delay[:-1])
        except ValueError:
            return None
    return None


def error_from(status: int, body: bytes) -> Fault:
    """The fault in a Gemini error body: its message, retry delay, and as code the Gemini status name
    of a client error (FAILED_PRECONDITION, …) that OpenAI has no better code for.

    A 400 whose details say API_KEY_INVALID is the operator's key, so it is reported as 401.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):  # some proxies wrap it in a list
        err = data[0].get("error")
    if not isinstance(err, dict):
        return Fault(status, f"Gemini returned HTTP {status}.")
    message = str(err.get("message") or f"Gemini returned HTTP {status}.")
    name = err.get("status")
    retry = None
    for d in err.get("details") or ():
        if not isinstance(d, dict):
            continue
        if d.get("@type", "").endswith("google.rpc.RetryInfo"):
            retry = _seconds(d.get("retryDelay"))
        if d.get("reason") == "API_KEY_INVALID" and status == 400:
            status = 401
    code = name.lower() if isinstance(name, str) and 400 <= status < 500 and status not in (401, 403, 404, 429) \
        else None
    return Fault(status, message, code=code, retry_after=retry)
