"""Anthropic's Models API shape for ``GET /v1/models`` and ``GET /v1/models/{id}``, answered when the
request carries ``anthropic-version`` (the `anthropic` SDK's ``client.models.list()`` / ``retrieve()``,
Claude Code's model picker). Pure: Turnout's model entries in, Anthropic's objects out.

| Turnout                                | Anthropic ``ModelInfo``                                        |
|----------------------------------------|----------------------------------------------------------------|
| a route, a chat target, an alias        | ``{"type": "model", "id", "display_name", "created_at"}``      |
| the server's start time                 | ``created_at`` (RFC 3339, the same on every call)              |
| a target's context_window / max output  | ``max_input_tokens`` / ``max_tokens`` (null when not declared) |
| embedding targets                       | left out (the Messages API cannot use them)                    |

The list is a page: ``limit`` (1–1000, default 20), ``after_id`` / ``before_id`` cursors, and
``{"data", "has_more", "first_id", "last_id"}`` as the API sends it; a bad ``limit`` or an unknown
cursor is the client's 400.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

from translators.common import Json, TranslationError

DEFAULT_LIMIT, MAX_LIMIT = 20, 1000


def model_info(id: str, display_name: str, created: int, max_input_tokens: int | None = None,
               max_tokens: int | None = None) -> Json:
    return {"type": "model", "id": id, "display_name": display_name,
            "created_at": datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "max_input_tokens": max_input_tokens, "max_tokens": max_tokens}


def page(models: list[Json], query: Mapping[str, str]) -> Json:
    """One page of ``models`` (ModelInfo dicts, in list order) for the query's limit and cursors."""
    raw = query.get("limit")
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise TranslationError(f"limit: must be an integer from 1 to {MAX_LIMIT}", param="limit")
    ids = [m["id"] for m in models]
    after, before = query.get("after_id"), query.get("before_id")
    for name, cursor in (("after_id", after), ("before_id", before)):
        if cursor is not None and cursor not in ids:
            raise TranslationError(f"{name}: unknown model '{cursor}'", param=name)
    if before is not None:
        end = ids.index(before)
        start = max(0, end - limit)
        data, has_more = models[start:end], start > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        data, has_more = models[start:start + limit], start + limit < len(models)
    return {"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def find(models: list[Json], id: str) -> Json | None:
    return next((m for m in models if m["id"] == id), None)


def entries(routes: Mapping[str, Any], targets: Mapping[str, Any], aliases: Mapping[str, str],
            kinds: Mapping[str, str], created: int) -> list[Json]:
    """Every name the Messages API accepts: routes, chat targets, then aliases (each saying what it maps to)."""
    out = [model_info(name, f"{name} (Turnout route)", created) for name in routes]
    out += [model_info(name, f"{name} ({t.model} on {t.backend})", created, t.context_window, t.max_output_tokens)
            for name, t in targets.items() if kinds.get(name) != "embedding"]
    out += [model_info(alias, f"{alias} → {to}", created) for alias, to in aliases.items()
            if alias not in routes and alias not in targets]
    return out
