"""`turnout route "prompt"`: the routing decision for a prompt, printed for a person.

Builds the same chat body a client would send and asks the same `Router.explain` that serves
`POST /turnout/route`, so the command and the endpoint can never disagree.
"""

from __future__ import annotations

import argparse
import base64
import mimetypes
from pathlib import Path
from typing import Any

import orjson

from proxy.backends import create
from proxy.call import Call
from proxy.config import Config, Key
from proxy.errors import ProxyError
from proxy.routing.router import Router


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    content: Any = args.prompt
    if args.image:
        content = [{"type": "text", "text": args.prompt}]
        for path in args.image:
            data = Path(path).read_bytes()
            mime = mimetypes.guess_type(path)[0] or "image/png"
            content.append({"type": "image_url",
                            "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if args.turn == "followup":
        messages = [{"role": "user", "content": "(earlier turn)"}, {"role": "assistant", "content": "(earlier answer)"},
                    *messages]
    body: dict[str, Any] = {"model": args.model, "messages": messages}
    if args.tools:
        body["tools"] = [{"type": "function", "function": {"name": "tool", "parameters": {"type": "object"}}}]
    metadata = {k: v for k, v in (("task", args.task), ("requirement", args.requirement)) if v}
    if metadata:
        body["metadata"] = metadata
    return body


def render(x: dict[str, Any]) -> str:
    f = x["features"]
    c = f["complexity"]
    lines = [
        f"model:      {x['model']}" + (f"  (route {x['route']})" if x["route"] else ""),
        f"rule:       {x['rule']}" + (f"  (quality escalation up to {x['escalate']}x)" if x["escalate"] else ""),
        f"features:   images={f['has_images']} tools={f['has_tools']} turn={f['turn']} "
        f"prompt_tokens={'~' if f.get('prompt_tokens_estimated') else ''}{f['prompt_tokens']} task={f['task']} tier={f['tier']} requirement={f['requirement']}",
        f"complexity: {c['score']:.2f}" + "".join(f"\n              {r}" for r in c["reasons"]),
        *semantic_lines(f.get("semantic") or {}),
        "chain:",
    ]
    for t in x["chain"]:
        state = f"skipped: {t['reason']}" if t["status"] == "skipped" else "candidate"
        lines.append(f"  {t['target']:22s} {t['backend']}/{t['model']:28s} ~${t['estimated_cost_usd']:.6f}  {state}")
    if x["target"]:
        lines.append(f"-> {x['target']}  (estimated ${x['estimated_cost_usd']:.6f} assuming "
                     f"{x['estimate_assumes_output_tokens']} output tokens)")
    else:
        lines.append("-> no target can serve this request now")
    c = x.get("cache") or {}
    if c.get("applies"):
        lines.append(f"cache:      {c['action']} (ttl {c['ttl']:g}s, scope {c['scope']})")
    k = x.get("consensus")
    if k:
        lines.append(f"consensus:  {k['calls']} calls ({', '.join(k['targets'])}), agree {k['agree']:g}, "
                     f"else {k['on_disagreement']}; estimated ${k['estimated_cost_usd']:.6f} in all")
    return "\n".join(lines)


def semantic_lines(found: dict[str, Any]) -> list[str]:
    """What each semantic condition the rules reached found, with the closest examples."""
    lines = []
    for name, r in found.items():
        if "intent" in r:
            head = f"intent {r['intent']}: similarity {r['similarity']:.2f} (threshold {r['threshold']:.2f})"
        else:
            head = (f"classifier {name.split(':', 1)[1]}: p({r['label']}) = {r['probability']:.2f} "
                    f"(threshold {r['threshold']:.2f}; most likely: {r['top']})")
        lines.append(f"semantic:   {head} -> {'holds' if r['holds'] else 'does not hold'}")
        for ex in r["closest"]:
            label = f" [{ex['label']}]" if "label" in ex else ""
            lines.append(f"              {ex['similarity']:.2f}  {ex['text'][:70]!r}{label}")
    return lines


def route_command(cfg: Config, args: argparse.Namespace) -> int:
    router = Router(cfg, {name: create(b) for name, b in cfg.backends.items()})
    key = Key(key="", name="cli", tier=args.tier) if args.tier else None
    body = build_body(args)
    try:
        x = router.explain(Call(request_model=body["model"], key=key), router.features(body, {}, key))
    except ProxyError as e:
        print(f"turnout: {e.message}")
        return 1
    print(orjson.dumps(x, option=orjson.OPT_INDENT_2).decode() if args.json else render(x))
    return 0
