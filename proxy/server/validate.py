"""Check a chat completion request the way OpenAI does, before any routing or upstream call.

Each problem is an `InvalidRequest` naming the param (``messages[2].content[0].image_url``) with
OpenAI's wording and codes, so a client's error handling works unchanged against Turnout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from proxy.errors import InvalidRequest
from translators.common import TranslationError
from translators.inbound import chat as dialects

Json = dict[str, Any]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, float):
        return "a decimal"
    return _TYPE_NAMES.get(type(v), "an unknown type")


def _invalid_type(param: str, expected: str, got: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got {_type_name(got)} instead.",
                          param=param, code="invalid_type")


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> InvalidRequest:
    shown = ", ".join(f"'{a}'" for a in allowed)
    return InvalidRequest(f"Invalid value: '{value}'. Supported values are: {shown}.", param=param,
                          code="invalid_value")


def _number(body: Json, name: str, lo: float, hi: float | None, integer: bool = False) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise _invalid_type(name, "an integer" if integer else "a decimal", v)
    if v < lo:
        kind = "integer" if integer else "decimal"
        raise InvalidRequest(f"Invalid '{name}': {kind} below minimum value. Expected a value >= {lo:g}, but got {v} instead.",
                             param=name, code=f"{kind}_below_min_value")
    if hi is not None and v > hi:
        kind = "integer" if integer else "decimal"
        raise InvalidRequest(f"Invalid '{name}': {kind} above maximum value. Expected a value <= {hi:g}, but got {v} instead.",
                             param=name, code=f"{kind}_above_max_value")


def _object(part: Json, name: str, p: str) -> None:
    if not isinstance(part.get(name), dict):
        raise _missing(f"{p}.{name}") if name not in part else _invalid_type(f"{p}.{name}", "an object", part[name])


def _image_url(url: str, param: str) -> None:
    if url.startswith("data:"):
        return
    try:
        host = urlsplit(url).hostname if url.startswith(("http://", "https://")) else None
    except ValueError:
        host = None
    if not host:
        raise InvalidRequest(f"Invalid '{param}': expected a data: URL or an http(s) URL.", param=param,
                             code="invalid_image_url")


def _content(content: Any, param: str, role: str) -> None:
    if content is None:
        if role in ("assistant",):
            return
        raise _missing(param)
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid_type(param, "one of a string or array of objects", content)
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _invalid_type(p, "an object", part)
        ptype = part.get("type")
        if ptype == "text":
            if not isinstance(part.get("text"), str):
                raise _missing(f"{p}.text") if "text" not in part else _invalid_type(f"{p}.text", "a string", part["text"])
        elif ptype == "image_url":
            if role not in ("user",):
                raise InvalidRequest(f"Invalid '{p}': image parts are only allowed in user messages.", param=p,
                                     code="invalid_value")
            iu = part.get("image_url")
            if not isinstance(iu, dict) or not isinstance(iu.get("url"), str):
                raise _missing(f"{p}.image_url.url")
            _image_url(iu["url"], f"{p}.image_url.url")
            detail = iu.get("detail")
            if detail is not None and detail not in ("auto", "low", "high"):
                raise _invalid_value(f"{p}.image_url.detail", detail, ("auto", "low", "high"))
        elif ptype in ("input_audio", "file"):
            _object(part, ptype, p)
            for k, v in part[ptype].items():
                if v is not None and not isinstance(v, str):
                    raise _invalid_type(f"{p}.{ptype}.{k}", "a string", v)
        elif ptype == "refusal":
            if not isinstance(part.get("refusal"), str):
                raise _missing(f"{p}.refusal") if "refusal" not in part else _invalid_type(f"{p}.refusal", "a string", part["refusal"])
        elif ptype is None:
            raise _missing(f"{p}.type")
        else:
            raise _invalid_value(f"{p}.type", ptype, ("text", "image_url", "input_audio", "file", "refusal"))


def _messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                             param="messages", code="empty_array")
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid_type(p, "an object", m)
        role = m.get("role")
        if role is None:
            raise _missing(f"{p}.role")
        if role not in ROLES:
            raise _invalid_value(f"{p}.role", role, ROLES)
        if role == "assistant":
            if m.get("content") is None and not m.get("tool_calls") and not m.get("function_call"):
                raise _missing(f"{p}.content")
            _content(m.get("content"), f"{p}.content", role)
            tcs = m.get("tool_calls")
            if tcs is not None:
                if not isinstance(tcs, list):
                    raise _invalid_type(f"{p}.tool_calls", "an array", tcs)
                for j, tc in enumerate(tcs):
                    q = f"{p}.tool_calls[{j}]"
                    if not isinstance(tc, dict):
                        raise _invalid_type(q, "an object", tc)
                    if not isinstance(tc.get("id"), str):
                        raise _missing(f"{q}.id")
                    fn = tc.get("function")
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                        raise _missing(f"{q}.function.name")
                    if not isinstance(fn.get("arguments", ""), (str, dict)):
                        raise _invalid_type(f"{q}.function.arguments", "a string", fn.get("arguments"))
            fc = m.get("function_call")
            if fc is not None:
                if not isinstance(fc, dict):
                    raise _invalid_type(f"{p}.function_call", "an object", fc)
                if not isinstance(fc.get("name"), str):
                    raise _missing(f"{p}.function_call.name")
                if not isinstance(fc.get("arguments", ""), str):
                    raise _invalid_type(f"{p}.function_call.arguments", "a string", fc.get("arguments"))
        else:
            _content(m.get("content"), f"{p}.content", role)
        if m.get("name") is not None and not isinstance(m["name"], str):
            raise _invalid_type(f"{p}.name", "a string", m["name"])
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise _missing(f"{p}.tool_call_id")


def _tools(body: Json) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid_type("tools", "an array", tools)
        for i, t in enumerate(tools):
            p = f"tools[{i}]"
            if not isinstance(t, dict):
                raise _invalid_type(p, "an object", t)
            if t.get("type", "function") != "function":
                raise _invalid_value(f"{p}.type", t.get("type"), ("function",))
            fn = t.get("function")
            if not isinstance(fn, dict):
                raise _missing(f"{p}.function")
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                raise _missing(f"{p}.function.name")
            if fn.get("parameters") is not None:
                _schema(fn["parameters"], f"{p}.function.parameters")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _invalid_value("tool_choice", choice, ("none", "auto", "required"))
        if choice != "none" and not tools:
            raise InvalidRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                                 param="tool_choice", code=None)
        return
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest("Invalid 'tool_choice': expected 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                             param="tool_choice", code="invalid_value")
    name = fn["name"]
    if not tools or name not in {t["function"]["name"] for t in tools}:
        raise InvalidRequest(f"Invalid 'tool_choice': function '{name}' is not among the tools.", param="tool_choice",
                             code="invalid_value")


def _response_format(body: Json) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _invalid_type("response_format", "an object", fmt)
    t = fmt.get("type")
    if t not in ("text", "json_object", "json_schema"):
        raise _invalid_value("response_format.type", t, ("text", "json_object", "json_schema"))
    if t == "json_schema":
        js = fmt.get("json_schema")
        if not isinstance(js, dict):
            raise _missing("response_format.json_schema")
        if not isinstance(js.get("name"), str):
            raise _missing("response_format.json_schema.name")
        if js.get("schema") is not None:
            _schema(js["schema"], "response_format.json_schema.schema")


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _schema(schema: Any, param: str) -> None:
    """A JSON schema's structural keywords have the types translators and the mock walk over
    (``properties`` an object of schemas, ``anyOf`` an array of them …). Iterative: depth is
    already bounded by `check_depth`, but no recursion here either way."""
    stack: list[tuple[Any, str]] = [(schema, param)]
    while stack:
        s, where = stack.pop()
        if not isinstance(s, dict):
            if isinstance(s, bool) and where != param:
                continue  # true / false are valid (sub)schemas
            raise _invalid_type(where, "an object", s)
        for k in _SCHEMA_MAPS:
            v = s.get(k)
            if v is None:
                continue
            if not isinstance(v, dict):
                raise _invalid_type(f"{where}.{k}", "an object", v)
            stack += [(sub, f"{where}.{k}.{name}") for name, sub in v.items()]
        for k in _SCHEMA_LISTS:
            v = s.get(k)
            if v is None:
                continue
            if not isinstance(v, list):
                raise _invalid_type(f"{where}.{k}", "an array", v)
            stack += [(sub, f"{where}.{k}[{i}]") for i, sub in enumerate(v)]
        for k in ("items", "additionalProperties", "not"):
            v = s.get(k)
            if v is not None and not isinstance(v, bool):
                stack.append((v, f"{where}.{k}"))
        for k in ("required", "enum"):
            v = s.get(k)
            if v is not None and not isinstance(v, list):
                raise _invalid_type(f"{where}.{k}", "an array", v)
        t = s.get("type")
        if t is not None and not isinstance(t, str) and not (isinstance(t, list) and all(isinstance(x, str) for x in t)):
            raise _invalid_type(f"{where}.type", "a string or an array of strings", t)


def _legacy_functions(body: Json) -> None:
    """The deprecated ``functions`` / ``function_call`` pair, checked as tools are."""
    fns = body.get("functions")
    if fns is not None:
        if not isinstance(fns, list):
            raise _invalid_type("functions", "an array", fns)
        for i, fn in enumerate(fns):
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _missing(f"functions[{i}].name")
            if fn.get("parameters") is not None:
                _schema(fn["parameters"], f"functions[{i}].parameters")
    fc = body.get("function_call")
    if fc is not None and not isinstance(fc, str) and not (isinstance(fc, dict) and isinstance(fc.get("name"), str)):
        raise _invalid_type("function_call", "one of a string or an object with a name", fc)


def chat_request(body: Any) -> Json:
    """Raise `InvalidRequest` for the first problem in a chat completion body; return it if sound,
    with the legacy ``functions`` dialect and ``allowed_tools`` expressed as plain tools
    (`translators.inbound.chat`)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    try:
        body = dialects.normalize(body)
    except TranslationError as e:
        raise InvalidRequest(e.message, param=e.param, code=e.code) from None
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str) or not model:
        raise _invalid_type("model", "a string", model) if not isinstance(model, str) else _missing("model")
    _messages(body.get("messages"))
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "n", 1, 128, integer=True)
    _number(body, "max_tokens", 1, None, integer=True)
    _number(body, "max_completion_tokens", 1, None, integer=True)
    _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise InvalidRequest("Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                             "'top_logprobs' is used.", param="top_logprobs", code="invalid_value")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, list):
            if len(stop) > 4:
                raise InvalidRequest("Invalid 'stop': array too long. Expected an array with maximum length 4.",
                                     param="stop", code="array_above_max_length")
            if not all(isinstance(s, str) for s in stop):
                raise _invalid_type("stop", "an array of strings", stop)
        elif not isinstance(stop, str):
            raise _invalid_type("stop", "one of a string or array of strings", stop)
    for name in ("stream", "parallel_tool_calls", "logprobs", "store"):
        v = body.get(name)
        if v is not None and not isinstance(v, bool):
            raise _invalid_type(name, "a boolean", v)
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise _invalid_type("stream_options", "an object", so)
        if not body.get("stream"):
            raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                 param="stream_options", code="invalid_value")
    for name in ("user", "reasoning_effort", "service_tier"):
        v = body.get(name)
        if v is not None and not isinstance(v, str):
            raise _invalid_type(name, "a string", v)
    md = body.get("metadata")
    if md is not None:
        if not isinstance(md, dict):
            raise _invalid_type("metadata", "an object", md)
        for k, v in md.items():  # OpenAI: string values only
            if not isinstance(v, str):
                raise _invalid_type(f"metadata.{k}", "a string", v)
    _legacy_functions(body)
    _tools(body)
    _response_format(body)
    try:
        dialects.check_tool_messages(body["messages"])
    except TranslationError as e:
        raise InvalidRequest(e.message, param=e.param, code=e.code) from None
    return body
