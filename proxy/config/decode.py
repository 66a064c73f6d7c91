"""Strict conversion of plain YAML data into the schema's Structs, with errors at their full path.

msgspec does the type checking and constraints of each Struct's own fields; this module walks the
nesting itself (sections, `dict[str, Section]`, `list[Section]`) so that every error names the
whole path (`backends.claude.retry.attempts`, `keys[0].budget`) — msgspec alone would say
`$.backends[...]` — and so that an unknown key gets a suggestion from the fields that exist:
``keys[0].budget_usd_per_day: unknown field; did you mean budget?``.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Literal

import msgspec

from proxy.config.schema import ConfigError

_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)
_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "object": "a mapping", "array": "a list", "null": "nothing"}


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def unknown_field(path: str, key: str, allowed: list[str]) -> ConfigError:
    """The one message for a key that is not in the schema: its path and the nearest field."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    if not close:  # a prefix or a longer spelling (`budget_usd_per_day` → budget)
        close = [a for a in allowed if key.startswith(a) or a.startswith(key)][:1]
    hint = f"did you mean {close[0]}?" if close else f"expected one of: {', '.join(sorted(allowed))}"
    return ConfigError(f"{join(path, key)}: unknown field; {hint}")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without Annotated and None, whether None is allowed)."""
    optional = False
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(tp))
            tp = args[0] if len(args) == 1 else tp
            if len(args) == 1:
                continue
        return tp, optional


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def decode(value: Any, tp: Any, path: str, key: str | None = None) -> Any:
    """`value` as `tp`: Structs and containers of Structs here, leaves by msgspec in their Struct.
    A Struct that is a mapping's value and has a derived `name` is named by its `key`."""
    base, optional = _unwrap(tp)
    if value is None and optional:
        return None
    if _is_struct(base):
        named = key is not None and "name" in getattr(base, "derived", ())
        return struct(value, base, path, {"name": key} if named else None)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is dict and _is_struct(_unwrap(args[1])[0]):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): decode(v, args[1], join(path, k), str(k)) for k, v in value.items()}
    if origin is list and _is_struct(_unwrap(args[0])[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [decode(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def struct(value: Any, cls: type[msgspec.Struct], path: str, derived: dict[str, Any] | None = None) -> Any:
    """One Struct from a mapping: unknown keys rejected (or, for a Struct with `extra`, collected
    into that field), nested sections decoded at their path, the rest converted by msgspec."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {value!r}")
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    skip: frozenset[str] = getattr(cls, "derived", frozenset())
    allowed = [n for n, f in fields.items() if f.name not in skip]
    extra_into: str | None = getattr(cls, "extra", None)
    out: dict[str, Any] = dict(derived or {})
    rest: dict[str, Any] = {}
    for k, v in value.items():
        k = str(k)
        if k not in allowed:
            if extra_into is None:
                raise unknown_field(path, k, allowed)
            rest[k] = v
            continue
        out[k] = decode(v, fields[k].type, join(path, k))
    if extra_into is not None:
        out[extra_into] = rest
    try:
        return msgspec.convert(out, cls)
    except msgspec.ValidationError as e:
        raise ConfigError(_message(str(e), out, fields, path)) from None


def _value_at(data: Any, rel: str) -> Any:
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", rel):
        try:
            data = data[int(index)] if index else data[name]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _literals(tp: Any) -> list[str]:
    base, _ = _unwrap(tp)
    if typing.get_origin(base) is Literal:
        return [str(a) for a in typing.get_args(base)]
    return [x for a in typing.get_args(base) for x in _literals(a)]


def _described(tp: Any) -> str | None:
    """The `description` of a field's constraint (Annotated Meta), if it has one."""
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta) and meta.description:
                return meta.description
    return next(filter(None, (_described(a) for a in typing.get_args(tp)
                              if typing.get_origin(tp) in (typing.Union, types.UnionType))), None)


def _structs(tp: Any) -> list[Any]:
    base, _ = _unwrap(tp)
    return [base] if _is_struct(base) else [s for a in typing.get_args(base) for s in _structs(a)]


def _message(raw: str, data: dict[str, Any], fields: dict[str, Any], path: str) -> str:
    """msgspec's message, in Turnout's words, at the full path, with the value that was given."""
    what, rel = _AT.match(raw).groups()  # type: ignore[union-attr]
    rel = rel or ""
    where = path + rel if path else rel.lstrip(".")
    got = _value_at(data, rel)
    first = re.match(r"\.([^.\[]+)", rel)  # the field of this Struct the error is in
    ftype = fields[first[1]].type if first and first[1] in fields else None
    own = first is not None and first.end() == len(rel)  # about the field itself, not within it
    if m := re.fullmatch(r"Object contains unknown field `(.+)`", what):  # in a Struct within a union
        allowed = [f.encode_name for s in _structs(ftype) for f in msgspec.structs.fields(s)]
        return str(unknown_field(where, m[1], allowed))
    if own and (described := _described(ftype)) and what.startswith("Expected"):
        return f"{where}: expected {described}, got {got!r}"
    if m := re.fullmatch(r"Object missing required field `(.+)`", what):
        return f"{join(where, m[1])}: required"
    if m := re.fullmatch(r"Expected `str` of length >= 1", what):
        return f"{where}: expected a non-empty string, got {got!r}"
    if m := re.fullmatch(r"Expected `(\w+)` (>=|<=|>|<) (\S+)", what):
        bound = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}[m[2]]
        return f"{where}: must be {bound} {m[3]}, got {got!r}"
    if m := re.fullmatch(r"Expected `(.+?)`, got `\w+`", what):
        kinds = [_WORDS.get(k, k) for k in m[1].split(" | ") if k != "null"]
        return f"{where}: expected {' or '.join(kinds)}, got {got!r}"
    if what.startswith("Invalid enum value"):
        choices = _literals(ftype) if ftype is not None else []
        if choices:
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
            return f"{where}: expected {listed}, got {got!r}"
    return f"{where}: {what[:1].lower()}{what[1:]}"
