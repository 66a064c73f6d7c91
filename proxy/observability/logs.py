"""Logging: the one line per request (logger ``turnout.access``) and the text or JSON format.

Text (default)::

    2026-11-22 01:30:00,123 INFO turnout.access: req_ab12 key=app model=auto route=auto rule=complex
    target=cloud-smart fallbacks=flaky-cloud->cloud-smart(server) status=200 stream=False tokens=12/40
    cost=0.00063600 ms=212.4 ttft_ms=-

JSON (``server.log_format: json``): every record is one JSON object per line, with ``ts``,
``level``, ``logger`` and ``msg``; a request line adds its fields (``request_id``, ``route``,
``rule``, ``target``, ``fallbacks`` as from/to/reason objects, ``attempts``, ``status``, ``tokens``,
``cost_usd``, ``ms``…). Nothing secret is written: the key's configured *name* only, never the key,
no prompts, no upstream error bodies (only our own outcome wording: status and code).

Warnings that operators watch come from their own loggers: ``turnout.circuit`` (a circuit opens
or closes), ``turnout.health`` (a backend goes down or recovers) and the quota and budget code.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from proxy.call import Call
from proxy.observability.metrics import transitions

access = logging.getLogger("turnout.access")
_MAX_FIELD = 200  # a client's string (the model it asked for) is cut to this many characters in a line
_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _text(v: Any) -> str:
    """A field for the text line: '-' when empty; quoted and escaped (JSON string rules) when it
    holds a space, a quote, '=' or a control character, so a client's value cannot end the line,
    start a forged one or pose as another field."""
    if v is None or v == "":
        return "-"
    s = str(v)
    if len(s) > _MAX_FIELD:
        s = s[:_MAX_FIELD] + "…"
    if s.isprintable() and not any(c in s for c in ' "='):
        return s
    return orjson.dumps(s).decode().translate(_BREAKS)


class _Line:
    """A request line, rendered as text only if a text handler asks (JSON handlers read `fields`)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        f = self.fields
        fb = ",".join(f"{x['from']}->{x['to']}({x['reason']})" for x in f["fallbacks"]) or "-"
        cost = "-" if f["cost_usd"] is None else f"{f['cost_usd']:.8f}"
        ttft = "-" if f["ttft_ms"] is None else f"{f['ttft_ms']:.1f}"
        return (f"{f['request_id']} key={_text(f['key'])} model={_text(f['model'])} route={_text(f['route'])} "
                f"rule={_text(f['rule'])} target={_text(f['target'])} fallbacks={_text(fb)} retries={f['retries']} "
                f"status={f['status']} stream={f['stream']} tokens={f['prompt_tokens']}/{f['completion_tokens']} "
                f"cost={cost} ms={f['ms']:.1f} ttft_ms={ttft}" + (f" error={f['error']}" if f["error"] else ""))


def request_fields(call: Call) -> dict[str, Any]:
    u = call.usage or {}
    fallbacks, retries, _ = transitions(call.attempts) if len(call.attempts) > 1 else ([], [], [])
    end = call.finished or time.perf_counter()
    return {
        "request_id": call.request_id, "key": call.key.name if call.key else None,
        "model": call.request_model[:_MAX_FIELD] or None, "route": call.route, "rule": call.reason, "target": call.target,
        "fallbacks": [{"from": f, "to": t, "reason": r} for f, t, r in fallbacks], "retries": len(retries),
        "attempts": [{"target": a.target, "outcome": a.outcome, "status": a.status,
                      "ms": None if a.seconds is None else round(a.seconds * 1000, 1)} for a in call.attempts],
        "status": call.status, "stream": call.stream, "error": call.error,
        "prompt_tokens": u.get("prompt_tokens", 0), "completion_tokens": u.get("completion_tokens", 0),
        "cost_usd": call.cost_usd, "ms": round((end - call.started) * 1000, 1),
        "ttft_ms": round((call.first_token_at - call.started) * 1000, 1) if call.first_token_at else None,
    }


def request_line(call: Call) -> None:
    """Log the finished request at INFO on ``turnout.access``."""
    if access.isEnabledFor(logging.INFO):
        access.info("%s", _Line(request_fields(call)))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name,
        }
        line = record.args[0] if isinstance(record.args, tuple) and len(record.args) == 1 else None
        if isinstance(line, _Line):
            out["msg"] = "request"
            out.update(line.fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger: text lines or JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_turnout", False):
            root.removeHandler(h)
    handler._turnout = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; URLs may carry provider details we keep out of logs
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
