"""Ollama's native API (``POST /api/chat``, NDJSON streaming) ⇄ OpenAI chat completions.

Pure functions over plain dicts: no I/O. The backend (`proxy.backends.ollama`) fetches http(s)
image URLs first and hands their bytes in as `fetched`, so the translation itself never opens a
connection.

Request (OpenAI → Ollama ``/api/chat``)

| OpenAI field (client)                 | Ollama field                                                   |
|---------------------------------------|----------------------------------------------------------------|
| model (route or target name)          | model = the target's upstream model (e.g. ``llama3.2:3b``)     |
| stream                                | stream (always sent explicitly: Ollama streams by default)     |
| messages[].role system / developer    | role ``system``                                                |
| messages[].role user                  | role ``user``; text parts joined into ``content``              |
| user image_url part, data: URL        | ``images``: [base64 text, the ``data:…;base64,`` prefix cut]   |
| user image_url part, http(s) URL      | fetched by the backend (size cap, timeout, SSRF fence, see     |
|                                       | ``images:`` in the backend config) → base64 in ``images``      |
| input_audio / file parts              | 400: Ollama's chat API takes no audio or files                 |
| messages[].role assistant             | role ``assistant``: content; ``reasoning_content`` → thinking  |
| assistant tool_calls[]                | tool_calls[].function {name, arguments as an OBJECT (parsed)}  |
| messages[].role tool (tool_call_id)   | role ``tool`` + ``tool_name`` = the name of the earlier        |
|                                       | assistant tool call with that id (unknown id → 400)            |
| messages[].role function (legacy)     | role ``tool`` + ``tool_name`` = its ``name``                   |
| tools[] (type function)               | tools[] {type function, function {name, description,           |
|                                       | parameters}} (parameters default to an empty object schema)    |
| tool_choice none                      | tools not sent                                                 |
| tool_choice {function: {name}}        | only that tool sent (Ollama cannot force a call)               |
| tool_choice auto / required           | tools sent (Ollama has no way to require a call)               |
| temperature, top_p, seed, stop        | options.temperature, top_p, seed, stop (a string → [string])   |
| presence_penalty, frequency_penalty   | options.presence_penalty, frequency_penalty                    |
| max_completion_tokens / max_tokens    | options.num_predict                                            |
| response_format json_object           | format ``"json"``                                              |
| response_format json_schema           | format = the schema object (no schema → ``"json"``)            |
| response_format text                  | nothing                                                        |
| reasoning_effort none / minimal       | think false                                                    |
| reasoning_effort low / medium / high  | think true                                                     |
| n > 1                                 | 400: Ollama returns one choice                                 |
| target options.keep_alive             | keep_alive (e.g. ``"30m"``, ``-1`` = forever, ``0`` = unload)  |
| target options.num_ctx                | options.num_ctx (context length the model is loaded with)      |
| target options.think                  | think (true / false / "low" / "medium" / "high"), unless the   |
|                                       | client sent reasoning_effort                                   |
| target options.options                | more Ollama options (top_k, min_p, repeat_penalty, …); the     |
|                                       | client's values win                                            |
| logprobs: true, top_logprobs          | logprobs, top_logprobs (Ollama 0.12+); its ``logprobs`` →      |
|                                       | ``choices[].logprobs.content`` (streamed on the text chunks)   |
| user,                                 | dropped (Turnout or OpenAI only)                               |
| metadata, store, parallel_tool_calls, |                                                                |
| stream_options, service_tier          |                                                                |

Backend-wide defaults for keep_alive and num_ctx may be set on the backend mapping itself; a
target's options win.

Response (Ollama → OpenAI)

| Ollama                                | OpenAI                                                         |
|---------------------------------------|----------------------------------------------------------------|
| message.content                       | message.content / delta.content                                |
| message.thinking                      | message.reasoning_content / delta.reasoning_content (never     |
|                                       | content)                                                       |
| message.tool_calls[] (object args)    | tool_calls[]: id minted by Turnout (``call_…``), type          |
|                                       | function, arguments serialised to a JSON string; streamed as   |
|                                       | one delta per call with its running index                      |
| done_reason stop                      | finish_reason stop (tool_calls when the answer had tool calls) |
| done_reason length                    | finish_reason length                                           |
| any other done_reason (load, …)       | finish_reason stop                                             |
| prompt_eval_count, eval_count         | usage.prompt_tokens, usage.completion_tokens (missing → 0)     |
| NDJSON line (done false)              | one ``chat.completion.chunk`` per kind of content in it        |
| final line (done true)                | a chunk with an empty delta and the finish_reason; usage is    |
|                                       | set on the call, the app emits the usage chunk when asked      |
| ``{"error": "…"}`` line mid-stream    | the stream ends with an OpenAI error event (502), no [DONE]    |
| HTTP 404 ``model … not found``        | 404 model_not_found naming the model and ``ollama pull <model>`` |
| other HTTP errors ``{"error": "…"}``  | as `proxy.errors.upstream_status_error` (5xx → 502, …)         |

The first chunk carries ``role: assistant``. Chunk ids and ``created`` are Turnout's (`Call`).
"""

from __future__ import annotations

from typing import Any

import orjson

from translators.common import (
    Fault,
    TranslationError,
    completion,
    content_text,
    max_tokens_of,
    message,
    new_tool_call_id,
    parse_arguments,
    split_data_url,
    stop_list,
    token_logprob,
    tool_call,
    usage,
)

Json = dict[str, Any]

_FINISH = {"stop": "stop", "length": "length"}


# --- request ---------------------------------------------------------------------------------------


def _user(m: Json, i: int, fetched: dict[str, str] | None) -> Json:
    content = m.get("content")
    out: Json = {"role": "user", "content": content_text(content)}
    if isinstance(content, list):
        images: list[str] = []
        for j, p in enumerate(content):
            if not isinstance(p, dict):
                continue
            t = p.get("type")
            if t == "image_url":
                iu = p.get("image_url")
                url = iu.get("url", "") if isinstance(iu, dict) else str(iu)
                if url.startswith("data:"):
                    images.append(split_data_url(url)[1])
                elif fetched is not None and url in fetched:
                    images.append(fetched[url])
                else:
                    raise TranslationError(f"The image at 'messages[{i}].content[{j}]' was not fetched.",
                                           param=f"messages[{i}].content[{j}].image_url.url",
                                           code="invalid_image_url")
            elif t in ("input_audio", "file"):
                raise TranslationError(f"Ollama's chat API does not take '{t}' parts "
                                       f"(at 'messages[{i}].content[{j}]').",
                                       param=f"messages[{i}].content[{j}].type", code="unsupported_content")
        if images:
            out["images"] = images
    return out


def _assistant(m: Json, i: int, names: dict[str, str]) -> Json:
    out: Json = {"role": "assistant", "content": content_text(m.get("content"))}
    reasoning = m.get("reasoning_content") or m.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out["thinking"] = reasoning
    tcs = m.get("tool_calls")
    if tcs:
        calls = []
        for j, tc in enumerate(tcs):
            fn = tc.get("function") or {}
            name = fn.get("name", "")
            args = parse_arguments(fn.get("arguments"), f"messages[{i}].tool_calls[{j}].function.arguments")
            if not isinstance(args, dict):
                raise TranslationError(
                    f"Ollama needs tool call arguments to be a JSON object at "
                    f"'messages[{i}].tool_calls[{j}].function.arguments'.",
                    param=f"messages[{i}].tool_calls[{j}].function.arguments", code="invalid_tool_arguments")
            calls.append({"function": {"name": name, "arguments": args}})
            if isinstance(tc.get("id"), str):
                names[tc["id"]] = name
        out["tool_calls"] = calls
    elif m.get("function_call"):  # legacy single call
        fc = m["function_call"]
        args = parse_arguments(fc.get("arguments"), f"messages[{i}].function_call.arguments")
        out["tool_calls"] = [{"function": {"name": fc.get("name", ""), "arguments": args}}]
    return out


def messages(msgs: list[Json], fetched: dict[str, str] | None = None) -> list[Json]:
    """OpenAI messages as Ollama's, images inline, tool results named."""
    out: list[Json] = []
    names: dict[str, str] = {}  # tool_call_id → function name, from earlier assistant turns
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": content_text(m.get("content"))})
        elif role == "user":
            out.append(_user(m, i, fetched))
        elif role == "assistant":
            out.append(_assistant(m, i, names))
        elif role == "tool":
            tid = m.get("tool_call_id")
            name = names.get(tid) if isinstance(tid, str) else None
            if name is None:
                raise TranslationError(
                    f"Invalid parameter: 'messages[{i}].tool_call_id' ({tid!r}) does not answer a tool call "
                    f"of an earlier assistant message.", param=f"messages[{i}].tool_call_id",
                    code="invalid_tool_call_id")
            out.append({"role": "tool", "content": content_text(m.get("content")), "tool_name": name})
        elif role == "function":
            out.append({"role": "tool", "content": content_text(m.get("content")),
                        "tool_name": str(m.get("name") or "")})
    return out


def _tools(body: Json) -> list[Json] | None:
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t["function"]["name"] == wanted]
    out = []
    for t in tools:
        fn = t["function"]
        f: Json = {"name": fn["name"],
                   "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            f["description"] = fn["description"]
        out.append({"type": "function", "function": f})
    return out


def to_request(body: Json, model: str, *, stream: bool, target_options: Json | None = None,
               backend_options: Json | None = None, fetched: dict[str, str] | None = None) -> Json:
    """The ``/api/chat`` body for an OpenAI chat completion request.

    `fetched` maps each http(s) image URL in the messages to its base64 text (the backend fetched
    them); `target_options` / `backend_options` carry keep_alive, num_ctx, think and extra options.
    """
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("Ollama returns one choice per request: 'n' must be 1.", param="n",
                               code="unsupported_value")
    topt = target_options or {}
    bopt = backend_options or {}
    req: Json = {"model": model, "messages": messages(body["messages"], fetched), "stream": stream}
    tools = _tools(body)
    if tools:
        req["tools"] = tools

    options: Json = {}
    extra = topt.get("options")
    if isinstance(extra, dict):
        options.update(extra)
    num_ctx = topt.get("num_ctx", bopt.get("num_ctx"))
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    for k in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        v = body.get(k)
        if v is not None:
            options[k] = v
    stop = stop_list(body.get("stop"))
    if stop:
        options["stop"] = stop
    mt = max_tokens_of(body)
    if mt is not None:
        options["num_predict"] = mt
    if options:
        req["options"] = options

    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            req["format"] = "json"
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            req["format"] = schema if schema else "json"

    if body.get("logprobs") is True:
        req["logprobs"] = True
        if body.get("top_logprobs"):
            req["top_logprobs"] = body["top_logprobs"]

    effort = body.get("reasoning_effort")
    if effort is not None:
        req["think"] = effort not in ("none", "minimal")
    elif "think" in topt:
        req["think"] = topt["think"]

    keep_alive = topt.get("keep_alive", bopt.get("keep_alive"))
    if keep_alive is not None:
        req["keep_alive"] = keep_alive
    return req


# --- response --------------------------------------------------------------------------------------


def _openai_tool_calls(calls: list[Json] | None) -> list[Json]:
    out = []
    for c in calls or ():
        fn = c.get("function") or {}
        out.append(tool_call(new_tool_call_id(), fn.get("name", ""), fn.get("arguments") or {}))
    return out


def usage_of(data: Json) -> Json:
    return usage(data.get("prompt_eval_count") or 0, data.get("eval_count") or 0)


def finish_reason(done_reason: str | None, had_tool_calls: bool) -> str:
    if had_tool_calls:
        return "tool_calls"
    return _FINISH.get(done_reason or "stop", "stop")


def from_response(data: Json, id: str, created: int, model: str) -> Json:
    """A ``chat.completion`` from a non-streamed ``/api/chat`` answer."""
    m = data.get("message") or {}
    calls = _openai_tool_calls(m.get("tool_calls"))
    msg = message(m.get("content") or ("" if not calls else None), calls or None, m.get("thinking") or None)
    u = usage_of(data)
    return completion(id, created, model, [{"message": msg, "finish_reason": finish_reason(
        data.get("done_reason"), bool(calls)), "logprobs": logprobs_from(data.get("logprobs"))}], u)


def logprobs_from(entries: Any) -> Json | None:
    """OpenAI's ``choices[].logprobs`` from Ollama's ``logprobs`` (the same entries: token, logprob,
    bytes, top_logprobs; bytes made from the token where Ollama leaves them out)."""
    if not isinstance(entries, list):
        return None
    return {"content": [token_logprob(e.get("token", ""), e.get("logprob", 0.0),
                                      [token_logprob(t.get("token", ""), t.get("logprob", 0.0))
                                       for t in e.get("top_logprobs") or ()]) for e in entries], "refusal": None}


class StreamState:
    """NDJSON lines of a streamed ``/api/chat`` answer → ``chat.completion.chunk`` payloads (bytes).

    Each chunk is its delta framed by a prefix and suffix built once per stream, so a text line
    costs one small ``orjson.dumps``. After the ``done`` line `usage` and `finished` are set.
    """

    __slots__ = ("_head", "_tail", "_fin_head", "_role_sent", "_tool_index", "usage", "finished")

    def __init__(self, id: str, created: int, model: str) -> None:
        self._head = (b'{"id":' + orjson.dumps(id) + b',"object":"chat.completion.chunk","created":'
                      + str(int(created)).encode() + b',"model":' + orjson.dumps(model)
                      + b',"choices":[{"index":0,"delta":')
        self._tail = b',"logprobs":null,"finish_reason":null}]}'
        self._fin_head = b',"logprobs":null,"finish_reason":'
        self._role_sent = False
        self._tool_index = 0
        self.usage: Json | None = None
        self.finished = False

    def _chunk(self, delta: Json) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        return self._head + orjson.dumps(delta) + self._tail

    def feed(self, line: Json) -> list[bytes]:
        """The chunks for one parsed NDJSON line (possibly none)."""
        out: list[bytes] = []
        m = line.get("message")
        if m:
            thinking = m.get("thinking")
            if thinking:
                out.append(self._chunk({"reasoning_content": thinking}))
            content = m.get("content")
            lp = logprobs_from(line.get("logprobs"))
            if content and lp is not None:  # this line's tokens ride on its text, as OpenAI's
                c = self._chunk({"content": content})
                out.append(c[:-len(self._tail)] + b',"logprobs":' + orjson.dumps(lp) + b',"finish_reason":null}]}')
            elif content:
                out.append(self._chunk({"content": content}))
            calls = m.get("tool_calls")
            if calls:
                deltas = []
                for c in calls:
                    fn = c.get("function") or {}
                    args = fn.get("arguments")
                    deltas.append({"index": self._tool_index, "id": new_tool_call_id(), "type": "function",
                                   "function": {"name": fn.get("name", ""),
                                                "arguments": args if isinstance(args, str)
                                                else orjson.dumps(args or {}).decode()}})
                    self._tool_index += 1
                for d in deltas:  # one delta per call, each with its index
                    out.append(self._chunk({"tool_calls": [d]}))
        if line.get("done"):
            self.finished = True
            self.usage = usage_of(line)
            reason = finish_reason(line.get("done_reason"), self._tool_index > 0)
            delta = b"{}" if self._role_sent else b'{"role":"assistant","content":""}'
            self._role_sent = True
            out.append(self._head + delta + self._fin_head + b'"' + reason.encode() + b'"}]}')
        return out


def error_from(status: int, body: bytes) -> Fault:
    """The fault in Ollama's ``{"error": "…"}`` body (a generic line for anything else); a missing
    model is OpenAI's 404 model_not_found."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    message = str(err) if err else f"Ollama returned HTTP {status}"
    if is_model_not_found(status, message):
        return Fault(404, message, "invalid_request_error", "model_not_found", "model")
    return Fault(status, message)


def is_model_not_found(status: int, message: str) -> bool:
    return status == 404 and "not found" in message
