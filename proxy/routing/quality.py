"""Cheap checks of a non-streamed answer, for rules that opt into quality escalation.

A weak answer moves the request to the next target in the chain (at most the rule's `escalate`
times): empty or refused, cut off by length, invalid JSON when JSON was asked for, or tool-call
arguments that are not valid JSON for the tool's schema. No model call: each check is a few
microseconds.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from translators.common import resolve_ref

Json = dict[str, Any]

REFUSAL = re.compile(
    r"^\s*(?:(?:i'?m|i am) (?:so |very |really |truly )?sorry|sorry|i apologi[sz]e|my apologies|unfortunately)?"
    r"[,.!]?\s*(?:but,?\s+)?"
    r"(?:i (?:can(?:'|no)?t|cannot|am (?:not able|unable) to|'m (?:not able|unable) to|won'?t(?: be able to)?"
    r"|will not|must decline|do not feel comfortable|don'?t feel comfortable)(?!\s+wait\b)|as an ai(?: language model)?,? i)",
    re.IGNORECASE)
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def schema_error(value: Any, schema: Any, path: str = "$", root: Any = None) -> str | None:
    """The first way `value` breaks a (common subset of) JSON schema, or None. Local ``$ref``s
    (``$defs``) are followed and ``anyOf`` / ``oneOf`` / ``allOf`` checked, as pydantic and zod write them."""
    root = schema if root is None else root
    schema = resolve_ref(schema, root)
    if not isinstance(schema, dict):
        return None
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            errors = [schema_error(value, s, path, root) for s in schema[key]]
            if all(errors):
                return errors[0]
    for s in schema.get("allOf") or ():
        err = schema_error(value, s, path, root)
        if err:
            return err
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} is not one of {schema['enum']}"
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t else []
    if types:
        def ok(tt: str) -> bool:
            if tt == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            if tt == "number":
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            py = _TYPES.get(tt)
            return py is None or (isinstance(value, py) and not (py is not bool and isinstance(value, bool)))
        if not any(ok(tt) for tt in types):
            return f"{path} should be {' or '.join(types)}"
    if isinstance(value, dict):
        for req in schema.get("required") or ():
            if req not in value:
                return f"{path}.{req} is required"
        props = schema.get("properties") or {}
        for k, v in value.items():
            if k in props:
                err = schema_error(v, props[k], f"{path}.{k}", root)
                if err:
                    return err
            elif schema.get("additionalProperties") is False:
                return f"{path}.{k} is not allowed"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            err = schema_error(item, schema["items"], f"{path}[{i}]", root)
            if err:
                return err
    return None


def weakness(answer: Json, body: Json) -> str | None:
    """Why this answer should be escalated, or None when it passes."""
    choice = (answer.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content = msg.get("content") or ""
    calls = msg.get("tool_calls") or []
    if choice.get("finish_reason") == "length":
        return "cut off by length"
    if not content.strip() and not calls:
        return "empty answer"
    if not calls and len(content) < 400 and REFUSAL.match(content.replace("\u2019", "'")):  # ’ as 
        return "refused"
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema") and not calls:
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            return "invalid JSON"
        if fmt == "json_schema":
            err = schema_error(doc, ((body.get("response_format") or {}).get("json_schema") or {}).get("schema"))
            if err:
                return f"JSON does not match the schema: {err}"
    tools = {t["function"]["name"]: t["function"].get("parameters") for t in body.get("tools") or ()}
    for c in calls:
        fn = c.get("function") or {}
        name = fn.get("name")
        if name not in tools:
            return f"call to unknown tool {name!r}"
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            return f"tool {name} arguments are not valid JSON"
        err = schema_error(args, tools[name])
        if err:
            return f"tool {name} arguments invalid: {err}"
    return None
