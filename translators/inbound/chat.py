"""The chat front door's older and newer dialects, brought to the one chat body every backend reads.

Why: real clients still send the deprecated ``functions`` / ``function_call`` (they were ignored:
the answer came back as plain text and tool rules never fired), and newer ones send
``tool_choice: {"type": "allowed_tools"}``. Both become plain ``tools`` / ``tool_choice`` here,
before routing, so every provider translator and routing rule sees one shape.

| client sends                                   | becomes                                                    |
|------------------------------------------------|------------------------------------------------------------|
| functions: [{name, description, parameters}]   | tools: [{type: function, function: {...}}], parallel_tool_calls false |
| function_call: "auto" / "none" / {name}        | tool_choice: "auto" / "none" / {type: function, function: {name}} |
| assistant message with function_call           | assistant message with one tool call (id ``call_fn_<i>``)   |
| role ``function`` message (name, content)      | role ``tool`` answering the latest call of that name        |
| tool_choice allowed_tools {mode, tools}        | tools narrowed to the allowed ones, tool_choice = mode     |

A request that used ``functions`` gets its answer back in the same dialect (`legacy_answer`,
`legacy_chunk`): ``message.function_call`` and finish_reason ``function_call``, as OpenAI does.
A ``tool`` message that answers no tool call of the assistant message before it is a 400 with
OpenAI's wording (no tool calls there: ``messages.[i].role``; another id: ``messages.[i].tool_call_id``).
"""

from __future__ import annotations

from typing import Any

import orjson

from translators.common import Json, TranslationError


def _legacy_messages(messages: list[Any]) -> list[Any]:
    out: list[Any] = []
    pending: dict[str, str] = {}  # function name → id of its latest call
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            out.append(m)  # validation names it
            continue
        if m.get("role") == "assistant" and isinstance(m.get("function_call"), dict) and not m.get("tool_calls"):
            fc = m["function_call"]
            cid = f"call_fn_{i}"
            pending[str(fc.get("name"))] = cid
            m = {k: v for k, v in m.items() if k != "function_call"}
            m["tool_calls"] = [{"id": cid, "type": "function",
                                "function": {"name": fc.get("name"), "arguments": fc.get("arguments") or "{}"}}]
        elif m.get("role") == "function":
            name = str(m.get("name"))
            m = {"role": "tool", "tool_call_id": pending.get(name, ""), "content": m.get("content") or ""}
        out.append(m)
    return out


def normalize(body: Json) -> Json:
    """The body with legacy functions and allowed_tools expressed as tools (unchanged if neither)."""
    msgs = body.get("messages") if isinstance(body.get("messages"), list) else []
    legacy = "functions" in body or "function_call" in body or any(
        isinstance(m, dict) and (m.get("role") == "function" or "function_call" in m) for m in msgs)
    choice = body.get("tool_choice")
    allowed = isinstance(choice, dict) and choice.get("type") == "allowed_tools"
    if not legacy and not allowed:
        return body
    out = dict(body)
    if legacy:
        if body.get("functions") is not None and body.get("tools") is not None:
            raise TranslationError("Use either 'tools' or the deprecated 'functions', not both.", param="functions")
        fns = out.pop("functions", None)
        if fns is not None:
            if not isinstance(fns, list) or not all(isinstance(f, dict) for f in fns):
                raise TranslationError("Invalid type for 'functions': expected an array of objects.",
                                       param="functions", code="invalid_type")
            out["tools"] = [{"type": "function", "function": f} for f in fns]
            out["parallel_tool_calls"] = False  # the functions dialect has one call per answer
        fc = out.pop("function_call", None)
        if fc is not None:
            if isinstance(fc, dict):
                out["tool_choice"] = {"type": "function", "function": {"name": fc.get("name")}}
            else:
                out["tool_choice"] = fc
        if msgs:
            out["messages"] = _legacy_messages(msgs)
    if allowed:
        spec = choice.get("allowed_tools")
        listed = spec.get("tools") if isinstance(spec, dict) else None
        if not isinstance(listed, list):
            raise TranslationError("Missing required parameter: 'tool_choice.allowed_tools.tools'.",
                                   param="tool_choice.allowed_tools.tools", code="missing_required_parameter")
        names = {(t.get("function") or {}).get("name") for t in listed
                 if isinstance(t, dict) and isinstance(t.get("function"), dict)}
        mode = spec.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise TranslationError(f"Invalid value: '{mode}'. Supported values are: 'auto' and 'required'.",
                                   param="tool_choice.allowed_tools.mode", code="invalid_value")
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        out["tools"] = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
                        and t["function"].get("name") in names]
        if not out["tools"]:
            raise TranslationError("Invalid 'tool_choice.allowed_tools.tools': none of them is among 'tools'.",
                                   param="tool_choice.allowed_tools.tools", code="invalid_value")
        out["tool_choice"] = mode
    return out


def check_tool_messages(messages: list[Json]) -> None:
    """A ``tool`` message must answer a tool call of an earlier assistant message (OpenAI's 400)."""
    open_ids: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "assistant":
            open_ids = {str(tc.get("id")) for tc in m.get("tool_calls") or [] if isinstance(tc, dict)}
        elif role == "tool":
            if not open_ids:
                raise TranslationError("Invalid parameter: messages with role 'tool' must be a response to a "
                                       "preceeding message with 'tool_calls'.", param=f"messages.[{i}].role")
            if m.get("tool_call_id") not in open_ids:
                raise TranslationError(f"Invalid parameter: 'tool_call_id' of '{m.get('tool_call_id')}' not found in "
                                       "'tool_calls' of previous message.", param=f"messages.[{i}].tool_call_id")
        elif role in ("user", "system", "developer"):
            open_ids = set()


def used_functions(body: Json) -> bool:
    """The client spoke the deprecated functions dialect (and expects its answer in it)."""
    return "functions" in body


def legacy_answer(completion: Json) -> Json:
    """A chat completion with its first tool call as ``function_call`` (finish_reason too)."""
    for ch in completion.get("choices") or []:
        msg = ch.get("message") or {}
        calls = msg.pop("tool_calls", None)
        if calls:
            fn = calls[0].get("function") or {}
            msg["function_call"] = {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}
        if ch.get("finish_reason") == "tool_calls":
            ch["finish_reason"] = "function_call"
    return completion


def legacy_chunk(payload: bytes) -> bytes:
    """A chunk payload with tool-call deltas of the first call as ``function_call`` deltas."""
    if b"tool_calls" not in payload:
        return payload
    data: Any = orjson.loads(payload)
    for ch in data.get("choices") or []:
        d = ch.get("delta") or {}
        calls = d.pop("tool_calls", None) or []
        first = [c for c in calls if c.get("index", 0) == 0]
        if first:
            fn = first[0].get("function") or {}
            fc = {"arguments": fn.get("arguments") or ""}
            if fn.get("name"):
                fc = {"name": fn["name"], **fc}
            d["function_call"] = fc
        if ch.get("finish_reason") == "tool_calls":
            ch["finish_reason"] = "function_call"
    return orjson.dumps(data)
