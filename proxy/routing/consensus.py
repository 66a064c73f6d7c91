"""Consensus: ask several targets the same question at once and answer with what most of them say.

A rule or route with `consensus: {targets, agree, on_disagreement, judge, timeout, similarity}`
sends a request to each target in parallel (each through the dispatcher alone: the usual filters,
retries and circuit, and its own timeout), then groups the answers: tool calls and JSON by
canonical equality, prose by normalised similarity (the larger of token-set Jaccard and difflib's
ratio on lower-cased, punctuation-free text, at least `similarity`). The largest group wins when it
holds at least `agree` of the targets (a failed member counts as a dissent); else `first` answers
with the first target's answer, `judge` asks the judge target to pick one, `error` refuses with a
502 ``no_consensus``. The call is told who agreed and who did not (``x-turnout-consensus``), and
carries the usage and cost of every member (and the judge), so the ledger sees them all.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.call import Attempt, Call
from proxy.config import Config, ConfigError, Consensus, Rule
from proxy.errors import ProxyError, UpstreamError
from proxy.routing.dispatch import Dispatcher
from proxy.routing.router import Router
from proxy.usage import pricing

try:
    from proxy import semantic as sem
except ImportError as e:  # the extra is not installed: prose is compared as text only
    sem = None  # type: ignore[assignment]
    MISSING = str(e)
else:
    MISSING = ""

Json = dict[str, Any]
MAX_PARALLEL = 8  # members asked at once; more wait their turn
_WORD = re.compile(r"[\w']+")


class NoConsensus(ProxyError):
    status = 502
    type = "server_error"
    code = "no_consensus"


@dataclass
class Member:
    target: str
    answer: Json | None = None
    error: str | None = None
    exc: UpstreamError | None = None
    call: Call | None = None


def config_for(cfg: Config, route: str | None, rule: Rule | None) -> Consensus | None:
    """The consensus a request asks for: its rule's, else its route's."""
    if rule is not None and rule.consensus is not None:
        return rule.consensus
    return cfg.routes[route].consensus if route else None


def shape(answer: Json) -> tuple[str, Any]:
    """What an answer says, in a comparable form: ("tools", canonical calls), ("json", canonical
    value) or ("text", normalised words)."""
    m = ((answer.get("choices") or [{}])[0]).get("message") or {}
    calls = m.get("tool_calls") or []
    if calls:
        out = []
        for tc in calls:
            fn = tc.get("function") or {}
            try:
                args = orjson.loads(fn.get("arguments") or "null")
            except orjson.JSONDecodeError:
                args = fn.get("arguments")
            out.append(orjson.dumps([fn.get("name"), args], option=orjson.OPT_SORT_KEYS))
        return "tools", sorted(out)
    text = (m.get("content") or "").strip()
    if text[:1] in "{[":
        try:
            return "json", orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS)
        except orjson.JSONDecodeError:
            pass
    return "text", " ".join(_WORD.findall(text.lower()))


def similar(a: tuple[str, Any], b: tuple[str, Any], threshold: float, cosine: float | None = None,
            semantic: float | None = None) -> bool:
    """Same kind and: equal (tools, JSON), or prose at least `threshold` alike as text, or (with the
    embedding engine) at least `semantic` close in meaning (`cosine` of the two answers)."""
    if a[0] != b[0]:
        return False
    if a[0] != "text":
        return bool(a[1] == b[1])
    if a[1] == b[1]:
        return True
    sa, sb = set(a[1].split()), set(b[1].split())
    jaccard = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
    if max(jaccard, difflib.SequenceMatcher(None, a[1], b[1]).ratio()) >= threshold:
        return True
    return semantic is not None and cosine is not None and cosine >= semantic


def groups(members: list[Member], threshold: float, vectors: dict[str, Any] | None = None,
           semantic: float | None = None) -> list[list[Member]]:
    """Answers grouped greedily (each joins the first group whose first answer it matches), in target
    order. `vectors`: the prose answers' unit embeddings by target, when compared by meaning too."""
    out: list[tuple[tuple[str, Any], list[Member]]] = []
    for m in members:
        if m.answer is None:
            continue
        s = shape(m.answer)
        for rep, g in out:
            cos = None
            if vectors and g[0].target in vectors and m.target in vectors:
                cos = float(vectors[g[0].target] @ vectors[m.target])
            if similar(rep, s, threshold, cos, semantic):
                g.append(m)
                break
        else:
            out.append((s, [m]))
    return [g for _, g in out]


async def embeddings(members: list[Member]) -> dict[str, Any]:
    """Unit vectors of the prose answers, from the local engine (off the event loop)."""
    prose = [(m.target, shape(m.answer)[1]) for m in members if m.answer is not None and shape(m.answer)[0] == "text"]
    if sem is None or len(prose) < 2:
        return {}
    vectors = await sem.shared().aembed([t for _, t in prose])
    return {target: vectors[i] for i, (target, _) in enumerate(prose)}


def _add_usage(total: Json | None, u: Json | None) -> Json | None:
    if not u:
        return total
    total = total or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        total[k] = (total.get(k) or 0) + (u.get(k) or 0)
    return total


class ConsensusRunner:
    def __init__(self, cfg: Config, router: Router, dispatcher: Dispatcher) -> None:
        self.cfg = cfg
        self.router = router
        self.dispatcher = dispatcher
        wants = [n for n, r in cfg.routes.items() for c in (r.consensus, *(x.consensus for x in r.rules))
                 if c is not None and c.semantic is not None]
        if wants and sem is None:
            raise ConfigError(f"routes.{wants[0]}: consensus.semantic needs the embedding engine: "
                              f"pip install 'turnout[semantic]' ({MISSING})")

    async def _ask(self, call: Call, target: str, body: Json, timeout: float | None, gate: asyncio.Semaphore) -> Member:
        m = Member(target, call=Call(request_model=target, key=call.key, request_id=call.request_id))
        t = self.cfg.models[target]
        why = self.router.skip_reason(t, call.features)
        if why:
            m.error = f"skipped: {why}"
            m.call.attempts.append(Attempt(target, m.error))
            return m
        async with gate:
            try:
                m.answer = await self.dispatcher.complete([t], body, m.call, deadline=timeout)
            except UpstreamError as e:
                m.error, m.exc = f"{e.status} {e.code or e.type}", e
        return m

    async def run(self, call: Call, body: Json, c: Consensus) -> Json:
        """The agreed answer (or the configured fallback); the call gets the target, usage, cost,
        every member's attempts and the consensus header. Raises NoConsensus or the members' error."""
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        gate = asyncio.Semaphore(MAX_PARALLEL)
        members = list(await asyncio.gather(*(self._ask(call, t, body, c.timeout, gate) for t in c.targets)))
        cost, usage = 0.0, None
        call.attempts = [a for m in members for a in m.call.attempts]  # each member counts against its target
        call.chain = list(c.targets)
        for m in members:
            if m.answer is not None:
                cost += pricing.of_call(m.call, self.cfg.models[m.target].price)
                usage = _add_usage(usage, m.call.usage)
        n = len(members)
        vectors = await embeddings(members) if c.semantic is not None else None
        gs = sorted(groups(members, c.similarity, vectors, c.semantic), key=len, reverse=True)  # stable: ties keep target order
        failed = [f"{m.target} ({m.error})" for m in members if m.answer is None]
        if not gs:  # nobody answered: the first member's error (a client error stays one)
            call.consensus = f"0/{n} answered; dissent: " + ", ".join(failed)
            first = next((m.exc for m in members if m.exc is not None), None)
            raise first if first is not None else NoConsensus(f"No consensus target could be asked: {', '.join(failed)}.")
        best = gs[0]
        dissent = [m.target for g in gs[1:] for m in g] + failed
        tail = f"; dissent: {', '.join(dissent)}" if dissent else ""
        chosen: Member
        if len(best) / n >= c.agree - 1e-9:
            chosen = best[0]
            call.consensus = f"{len(best)}/{n} agree ({', '.join(m.target for m in best)}){tail}"
        else:
            reason = f"no agreement: {len(best)}/{n} at most, {c.agree:g} needed"
            answered = [m for m in members if m.answer is not None]
            if c.on_disagreement == "error":
                call.consensus = reason + tail
                call.usage, call.cost_usd = usage, cost
                raise NoConsensus(f"The consensus targets did not agree ({reason}; answers from "
                                  f"{', '.join(m.target for m in answered)}).")
            if c.on_disagreement == "judge" and c.judge is not None:
                chosen, judge_cost, judge_usage = await self._judge(call, body, answered, c)
                cost += judge_cost
                usage = _add_usage(usage, judge_usage)
                call.consensus = f"{reason}; judge {c.judge} chose {chosen.target}{tail}"
            else:
                chosen = answered[0]
                call.consensus = f"{reason}; first: {chosen.target}{tail}"
        assert chosen.answer is not None and chosen.call is not None
        call.target, call.upstream_model = chosen.target, chosen.call.upstream_model
        call.usage, call.cost_usd = usage, cost
        answer = dict(chosen.answer)
        answer["id"], answer["created"] = call.id, call.created
        if usage is not None:
            answer["usage"] = chosen.answer.get("usage")  # the client sees the chosen answer's own usage
        return answer

    async def _judge(self, call: Call, body: Json, answered: list[Member], c: Consensus) -> tuple[Member, float, Json | None]:
        """Ask the judge which answer is best; its reply's first number picks (else the first answer)."""
        assert c.judge is not None
        question = next((m.get("content") for m in reversed(body.get("messages") or [])
                         if m.get("role") == "user" and isinstance(m.get("content"), str)), "")
        listing = "\n\n".join(f"Answer {i + 1}:\n{orjson.dumps((m.answer or {}).get('choices', [{}])[0].get('message')).decode()}"
                              for i, m in enumerate(answered))
        jbody = {"model": c.judge, "messages": [
            {"role": "system", "content": "Several assistants answered the same request. Reply with the number of "
                                          "the best answer only."},
            {"role": "user", "content": f"Request:\n{question}\n\n{listing}"}], "max_tokens": 8}
        jcall = Call(request_model=c.judge, key=call.key, request_id=call.request_id)
        t = self.cfg.models[c.judge]
        try:
            verdict = await self.dispatcher.complete([t], jbody, jcall, deadline=c.timeout)
        except UpstreamError:
            call.attempts += jcall.attempts
            return answered[0], 0.0, None
        call.attempts += jcall.attempts
        text = ((verdict.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        pick = next((int(d) for d in re.findall(r"\d+", text) if 1 <= int(d) <= len(answered)), 1)
        return answered[pick - 1], pricing.of_call(jcall, t.price), jcall.usage
