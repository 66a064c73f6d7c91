"""OpenAI's Responses API (``/v1/responses``) in front of the chat pipeline: pure translation.

Why here: clients of the Responses API (the Agents SDK, Codex, the Vercel AI SDK's default provider,
``responses.create`` in both official SDKs) must reach any target, so a Responses request becomes an
OpenAI chat body, and the chat answer becomes a Response object or the typed event stream.

| Responses request                         | chat body                                                   |
|-------------------------------------------|-------------------------------------------------------------|
| instructions                              | a leading ``system`` message (not carried by previous_response_id) |
| input: string                             | one ``user`` message                                        |
| input: message items (role, content)      | messages; input_text/output_text → text parts, input_image → image_url (detail kept) |
| input: function_call items                | an assistant message with ``tool_calls`` (consecutive calls merged) |
| input: function_call_output items         | ``tool`` messages (tool_call_id = call_id)                  |
| input: reasoning items                    | dropped (providers take no foreign reasoning)               |
| tools: function tools                     | chat ``tools``; any other tool type is a 400                |
| tool_choice auto/none/required/function   | the chat equivalent                                         |
| tool_choice allowed_tools                 | tools narrowed to the allowed ones, tool_choice = its mode  |
| text.format json_schema / json_object     | ``response_format``                                         |
| reasoning.effort                          | ``reasoning_effort``                                        |
| max_output_tokens                         | ``max_completion_tokens``                                   |
| temperature, top_p, metadata, user, parallel_tool_calls | unchanged                                     |

Answers: ``reasoning_content`` → a reasoning item (reasoning_text), text → a message item with one
output_text part, refusal → a refusal part, tool calls → function_call items; finish_reason
``length`` → status ``incomplete`` with ``incomplete_details.reason = max_output_tokens``
(``content_filter`` likewise). Usage: prompt/completion tokens → input/output tokens with cached and
reasoning details. Every shape is checked against ``openai.types.responses`` in the tests.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from translators.common import Json, TranslationError

UNSUPPORTED = ("background", "conversation", "prompt")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- request → chat --------------------------------------------------------------------------------


def _part(p: Any, where: str) -> Json:
    if isinstance(p, str):
        return {"type": "text", "text": p}
    t = p.get("type") if isinstance(p, dict) else None
    if t in ("input_text", "output_text", "text", "refusal"):
        text = p.get("refusal" if t == "refusal" else "text")
        if not isinstance(text, str):
            raise TranslationError(f"Invalid type for '{where}.text': expected a string.", param=f"{where}.text",
                                   code="invalid_type")
        return {"type": "text", "text": text}
    if t == "input_image":
        url = p.get("image_url")
        if url is not None and not isinstance(url, str):
            raise TranslationError(f"Invalid type for '{where}.image_url': expected a string.",
                                   param=f"{where}.image_url", code="invalid_type")
        if not url:
            raise TranslationError("Turnout accepts images by image_url (a URL or data URL), not by file_id.",
                                   param=where, code="unsupported_value")
        image: Json = {"url": url}
        if p.get("detail") is not None:
            image["detail"] = p["detail"]
        return {"type": "image_url", "image_url": image}
    raise TranslationError(f"Unsupported content part type {t!r} at '{where}'.", param=where,
                           code="unsupported_value")


def _content(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError(f"'{where}' must be a string or an array of content parts.", param=where)
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts) and len(parts) == 1:
        return parts[0]["text"]
    return parts


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "\n".join(_part(p, f"{where}[{i}]").get("text", "") for i, p in enumerate(output))
    raise TranslationError(f"Invalid type for '{where}': expected a string or an array of content parts.",
                           param=where, code="invalid_type")


def input_messages(input: Any) -> list[Json]:
    """Chat messages for a Responses ``input`` (a string or a list of items)."""
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    if not isinstance(input, list):
        raise TranslationError("'input' must be a string or an array of input items.", param="input")
    out: list[Json] = []
    for i, item in enumerate(input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise TranslationError(f"'{where}' must be an object.", param=where)
        t = item.get("type", "message")
        if t == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise TranslationError(f"Invalid role {role!r} at '{where}.role'.", param=f"{where}.role")
            content = _content(item.get("content"), f"{where}.content")
            if role == "assistant" and isinstance(content, list):
                content = "".join(p.get("text", "") for p in content)
            out.append({"role": role, "content": content})
        elif t == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if not all(isinstance(v, str) and v for v in (call["id"], call["function"]["name"],
                                                          call["function"]["arguments"])):
                raise TranslationError(f"'{where}' needs call_id, name and arguments as strings.", param=where,
                                       code="invalid_value")
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            elif last and last["role"] == "assistant" and "tool_calls" not in last:
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif t == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not item["call_id"]:
                raise TranslationError(f"'{where}.call_id' is required.", param=f"{where}.call_id",
                                       code="missing_required_parameter")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": _output_text(item.get("output"), f"{where}.output")})
        elif t == "reasoning":
            continue
        else:
            raise TranslationError(f"Unsupported input item type {t!r} at '{where}': Turnout takes messages, "
                                   "function_call and function_call_output items.", param=f"{where}.type",
                                   code="unsupported_value")
    return out


def _tools(tools: Any) -> list[Json]:
    if tools is not None and not isinstance(tools, list):
        raise TranslationError("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
    out = []
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else t
            raise TranslationError(f"Unsupported tool type {kind!r} at 'tools[{i}]': Turnout offers function "
                                   "tools only.", param=f"tools[{i}].type", code="unsupported_value")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise TranslationError(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name",
                                   code="missing_required_parameter")
        fn: Json = {"name": t["name"]}
        for k in ("description", "parameters", "strict"):
            if t.get(k) is not None:
                fn[k] = t[k]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, tools: list[Json]) -> tuple[Any, list[Json]]:
    """(chat tool_choice, tools) for a Responses tool_choice."""
    if choice is None or isinstance(choice, str):
        return choice, tools
    t = choice.get("type") if isinstance(choice, dict) else None
    if t == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, tools
    if t == "allowed_tools" and isinstance(choice.get("tools"), list):
        names = {x.get("name") for x in choice["tools"] if isinstance(x, dict)}
        return choice.get("mode", "auto"), [x for x in tools if x["function"]["name"] in names]
    raise TranslationError(f"Unsupported tool_choice type {t!r}.", param="tool_choice", code="unsupported_value")


def _response_format(text: Any) -> Json | None:
    if text is not None and not isinstance(text, dict):
        raise TranslationError("Invalid type for 'text': expected an object.", param="text", code="invalid_type")
    fmt = (text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise TranslationError("Invalid type for 'text.format': expected an object.", param="text.format",
                               code="invalid_type")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        js = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": js}
    raise TranslationError(f"Unsupported text.format type {fmt.get('type')!r}.", param="text.format.type")


def to_chat(body: Json, history: list[Json] | None = None) -> Json:
    """The OpenAI chat body for a Responses request; ``history`` are the chat messages of the
    ``previous_response_id`` conversation (without its instructions)."""
    for k in UNSUPPORTED:
        if body.get(k):
            raise TranslationError(f"'{k}' is not supported by Turnout.", param=k, code="unsupported_parameter")
    if "input" not in body:
        raise TranslationError("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    messages: list[Json] = []
    if body.get("instructions"):
        if not isinstance(body["instructions"], str):
            raise TranslationError("'instructions' must be a string.", param="instructions")
        messages.append({"role": "system", "content": body["instructions"]})
    messages += list(history or []) + input_messages(body["input"])
    out: Json = {"model": body.get("model"), "messages": messages}
    tools = _tools(body.get("tools"))
    choice, tools = _tool_choice(body.get("tool_choice"), tools)
    if tools:
        out["tools"] = tools
        if choice is not None:
            out["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _response_format(body.get("text"))
    if fmt:
        out["response_format"] = fmt
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise TranslationError("Invalid type for 'reasoning': expected an object.", param="reasoning",
                               code="invalid_type")
    effort = (reasoning or {}).get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise TranslationError("Invalid type for 'reasoning.effort': expected a string.",
                                   param="reasoning.effort", code="invalid_type")
        out["reasoning_effort"] = effort
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for k in ("temperature", "top_p", "metadata", "user"):
        if body.get(k) is not None:
            out[k] = body[k]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- chat answer → Response ------------------------------------------------------------------------


def response_usage(u: Json | None) -> Json | None:
    if not u:
        return None
    inp, outp = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    reasoning = int(((u.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": outp, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(u.get("total_tokens") or inp + outp)}


def _status(finish_reason: str | None) -> tuple[str, Json | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id: str, parts: list[Json], status: str) -> Json:
    return {"id": id, "type": "message", "role": "assistant", "status": status, "content": parts}


def call_item(id: str, call_id: str, name: str, arguments: str, status: str) -> Json:
    return {"id": id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def reasoning_item(id: str, text: str) -> Json:
    return {"id": id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def skeleton(request: Json, id: str, created_at: int, model: str, status: str = "in_progress") -> Json:
    """A Response with the request's settings echoed and no output yet."""
    tools = [{"type": "function", "name": t.get("name"), "description": t.get("description"),
              "parameters": t.get("parameters"), "strict": t.get("strict", True)} for t in request.get("tools") or []]
    effort = (request.get("reasoning") or {}).get("effort") if isinstance(request.get("reasoning"), dict) else None
    return {
        "id": id, "object": "response", "created_at": created_at, "status": status, "background": False,
        "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": effort, "summary": None}, "store": bool(request.get("store", True)),
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"), "tools": tools,
        "top_p": request.get("top_p", 1.0), "truncation": request.get("truncation", "disabled"),
        "usage": None, "user": request.get("user"), "metadata": request.get("metadata") or {},
    }


def from_chat(completion: Json, request: Json, id: str | None = None, created_at: int | None = None) -> Json:
    """The Response object for a non-streamed chat completion."""
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    output: list[Json] = []
    if msg.get("reasoning_content"):
        output.append(reasoning_item(new_id("rs"), msg["reasoning_content"]))
    parts = []
    if msg.get("content"):
        parts.append(text_part(msg["content"]))
    if msg.get("refusal"):
        parts.append({"type": "refusal", "refusal": msg["refusal"]})
    if parts:
        output.append(message_item(new_id("msg"), parts, status))
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        output.append(call_item(new_id("fc"), tc.get("id") or new_id("call"), fn.get("name", ""),
                                fn.get("arguments") or "", "completed"))
    r = skeleton(request, id or new_id("resp"), created_at or int(time.time()),
                 completion.get("model") or request.get("model", ""), status)
    r.update(output=output, incomplete_details=incomplete, usage=response_usage(completion.get("usage")),
             completed_at=int(time.time()) if status == "completed" else None)
    return r


def output_messages(output: list[Json]) -> list[Json]:
    """Chat messages for a Response's output items (to continue a stored conversation)."""
    items = [i for i in output if i.get("type") in ("message", "function_call")]
    return input_messages([{**i, "content": i.get("content") or []} if i["type"] == "message" else i
                           for i in items])


# --- chat chunks → Response events -----------------------------------------------------------------


def sse(event: Json) -> bytes:
    """One Responses stream event as SSE (``event:`` line, then the data)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class StreamTranslator:
    """Chat-chunk payloads in, Responses stream events out, in OpenAI's order: created, in_progress,
    then per output item added → (part added → deltas → done → part done) → item done, then
    completed / incomplete (or failed). ``response`` is the final Response once finished."""

    def __init__(self, request: Json, id: str | None = None, created_at: int | None = None,
                 model: str | None = None) -> None:
        self.request = request
        self.response = skeleton(request, id or new_id("resp"), created_at or int(time.time()),
                                 model or request.get("model", ""))
        self.seq = 0
        self.open: Json | None = None  # the item being streamed: {"kind", "item", "index", "text"}
        self.calls: dict[int, Json] = {}  # chat tool-call index → open function_call state
        self.finish_reason: str | None = None
        self.usage: Json | None = None

    def _ev(self, type: str, **fields: Any) -> Json:
        e = {"type": type, "sequence_number": self.seq, **fields}
        self.seq += 1
        return e

    def start(self) -> list[Json]:
        snap = dict(self.response)
        return [self._ev("response.created", response=snap), self._ev("response.in_progress", response=snap)]

    def _add(self, item: Json) -> tuple[int, Json]:
        index = len(self.response["output"])
        self.response["output"].append(item)
        return index, self._ev("response.output_item.added", output_index=index, item=dict(item))

    def _open_text(self, kind: str) -> list[Json]:
        if self.open and self.open["kind"] == kind:
            return []
        events = self._close()
        if kind == "reasoning":
            item, part = {"id": new_id("rs"), "type": "reasoning", "summary": []}, {"type": "reasoning_text", "text": ""}
        else:
            item, part = message_item(new_id("msg"), [], "in_progress"), text_part("")
        index, added = self._add(item)
        self.open = {"kind": kind, "item": item, "index": index, "text": ""}
        return events + [added, self._ev("response.content_part.added", item_id=item["id"], output_index=index,
                                         content_index=0, part=part)]

    def _close(self) -> list[Json]:
        o, self.open = self.open, None
        if not o:
            return []
        item, index, text = o["item"], o["index"], o["text"]
        if o["kind"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            done = self._ev("response.reasoning_text.done", item_id=item["id"], output_index=index,
                            content_index=0, text=text)
            item["content"] = [part]
        else:
            part = text_part(text)
            done = self._ev("response.output_text.done", item_id=item["id"], output_index=index,
                            content_index=0, text=text, logprobs=[])
            item["content"] = [part]
            item["status"] = _status(self.finish_reason)[0]
        return [done, self._ev("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part),
                self._ev("response.output_item.done", output_index=index, item=dict(item))]

    def _close_call(self, state: Json) -> list[Json]:
        item = state["item"]
        item["status"] = "completed"
        return [self._ev("response.function_call_arguments.done", item_id=item["id"], output_index=state["index"],
                         name=item["name"], arguments=item["arguments"]),
                self._ev("response.output_item.done", output_index=state["index"], item=dict(item))]

    def _close_calls(self) -> list[Json]:
        events = [e for s in self.calls.values() if not s.get("done") for e in self._close_call(s)]
        for s in self.calls.values():
            s["done"] = True
        return events

    def feed(self, payload: bytes | Json) -> list[Json]:
        """Events for one chat chunk (its SSE data payload, or the parsed dict)."""
        if isinstance(payload, (bytes, str)):
            if payload.strip() in (b"[DONE]", "[DONE]"):
                return []
            payload = orjson.loads(payload)
        if payload.get("usage"):
            self.usage = payload["usage"]
        if payload.get("model"):
            self.response["model"] = payload["model"]
        events: list[Json] = []
        for ch in payload.get("choices") or []:
            if ch.get("index", 0) != 0:
                continue
            d = ch.get("delta") or {}
            for kind, key in (("reasoning", "reasoning_content"), ("message", "content")):
                if d.get(key):
                    events += self._close_calls() + self._open_text(kind)
                    o = self.open
                    o["text"] += d[key]
                    etype = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
                    extra = {} if kind == "reasoning" else {"logprobs": []}
                    events.append(self._ev(etype, item_id=o["item"]["id"], output_index=o["index"],
                                           content_index=0, delta=d[key], **extra))
            for tc in d.get("tool_calls") or []:
                events += self._close()
                i = tc.get("index", 0)
                fn = tc.get("function") or {}
                state = self.calls.get(i)
                if state is None:
                    events += self._close_calls()
                    item = call_item(new_id("fc"), tc.get("id") or new_id("call"), fn.get("name") or "", "",
                                     "in_progress")
                    index, added = self._add(item)
                    state = self.calls[i] = {"item": item, "index": index}
                    events.append(added)
                if fn.get("arguments"):
                    state["item"]["arguments"] += fn["arguments"]
                    events.append(self._ev("response.function_call_arguments.delta", item_id=state["item"]["id"],
                                           output_index=state["index"], delta=fn["arguments"]))
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]
        return events

    def finish(self) -> list[Json]:
        """The closing events once the chat stream ended: open items done, then completed/incomplete."""
        events = self._close() + self._close_calls()
        status, incomplete = _status(self.finish_reason)
        self.response.update(status=status, incomplete_details=incomplete, usage=response_usage(self.usage),
                             completed_at=int(time.time()) if status == "completed" else None)
        etype = "response.completed" if status == "completed" else "response.incomplete"
        return events + [self._ev(etype, response=self.response)]

    def fail(self, message: str, code: str = "server_error") -> list[Json]:
        """The events when the upstream stream failed: an ``error`` event, then ``response.failed``."""
        events = self._close() + self._close_calls()
        self.response.update(status="failed", error={"code": code, "message": message})
        return events + [self._ev("error", code=code, message=message, param=None),
                         self._ev("response.failed", response=self.response)]
