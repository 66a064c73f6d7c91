"""``turnout simulate``: what traffic would cost under a config, against an all-API baseline.

Two sources of traffic:

- a **mix file** (YAML): requests per day, and per task its share, tokens per request and the
  routing features that matter (images, tools, turn, complexity, task, tier, requirement)::

      model: auto                # the route (or target) clients call
      requests_per_day: 2000
      days: 30                   # --days overrides
      tasks:
        - {name: chat, share: 0.6, prompt_tokens: 400, completion_tokens: 150, complexity: 0.2}
        - {name: vision, share: 0.1, has_images: true, prompt_tokens: 1200, completion_tokens: 200}
        - {name: translate, share: 0.3, task: translate, prompt_tokens: 300, completion_tokens: 300}

- a **replay of the ledger**: every answered request of the period (``--since 7d``, ``--days 7``)
  with its recorded features and tokens, sent through the other config's rules — "what would
  last week have cost with proxy.new.yaml".

Each request is routed by the config's rules as Turnout would (`Router.choose`), then the
static filters (abilities, context window) and the config's daily quotas with their reserves
(counted per simulated day in the quota's zone) pick the first target left. The same tokens are
priced at that target and at the baseline model. Backend health, circuits and budgets are not
simulated; token counts are carried over unchanged (each provider's tokenizer differs a little).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
import yaml
from zoneinfo import ZoneInfo

from proxy.cache.response import policy_of
from proxy.call import Call
from proxy.routing.complexity import Score
from proxy.config import TURNS, Config, ConfigError
from proxy.errors import ProxyError
from proxy.state import ManualClock, MemoryState
from proxy.usage.quota import Accounts, day_bounds
from proxy.routing.router import Router
from proxy.usage.db import Db
from proxy.usage.api import baseline, export_bounds, price_tokens
from proxy.usage.pricing import round_money, saving, usd


class Features:
    """The routing features of a recorded or synthetic request (what `proxy.routing.router.matches` reads)."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.has_images = bool(d.get("has_images"))
        self.has_tools = bool(d.get("has_tools"))
        self.turn = d.get("turn") or "first"
        self.prompt_tokens = int(d.get("prompt_tokens") or 0)
        self.prompt_tokens_at_most = self.prompt_tokens  # the router's free bound: here the count is known
        self.complexity = Score(float(d.get("complexity") if d.get("complexity") is not None else 0.25), ())
        self.task, self.tier, self.requirement = d.get("task"), d.get("tier"), d.get("requirement")
        self.max_tokens = d.get("max_tokens")
        self.json_schema = False
        self.logprobs = False
        self.headers: dict[str, str] = {}
        self.metadata: dict[str, Any] = {}
        self.key = None


@dataclass
class Request:
    model: str
    features: Features
    prompt: int
    completion: int
    cached: int = 0
    ts: float = 0.0
    label: str = ""  # the task (mix) or the key (replay)
    recorded_cost: float | None = None


@dataclass
class Line:
    calls: int = 0
    prompt: int = 0
    completion: int = 0
    cost: float = 0.0
    baseline: float = 0.0

    def add(self, r: Request, cost: float, base: float) -> None:
        self.calls += 1
        self.prompt += r.prompt
        self.completion += r.completion
        self.cost += cost
        self.baseline += base


@dataclass
class Result:
    config: str
    source: str
    days: float
    baseline_model: str
    baseline_source: str
    targets: dict[str, Line] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)
    unserved: dict[str, int] = field(default_factory=dict)  # why → count
    skipped: dict[str, str] = field(default_factory=dict)  # backend → why routing skips it (e.g. no API key)
    recorded_cost: float | None = None
    total: Line = field(default_factory=Line)
    cache_hit_rate: float = 0.0  # assumed share of cacheable requests answered from the response cache
    cache_saved: float = 0.0
    consensus_requests: int = 0  # requests that asked several targets (each one a priced call)

    def as_dict(self) -> dict[str, Any]:
        t = self.total
        return round_money({
            "config": self.config, "source": self.source, "days": self.days,
            "baseline": {"model": self.baseline_model, "source": self.baseline_source, "cost_usd": t.baseline},
            "targets": [{"name": n, "backend": self.backends.get(n), "calls": ln.calls,
                         "share": ln.calls / t.calls if t.calls else 0.0, "prompt_tokens": ln.prompt,
                         "completion_tokens": ln.completion, "cost_usd": ln.cost, "baseline_cost_usd": ln.baseline}
                        for n, ln in sorted(self.targets.items(), key=lambda kv: -kv[1].calls)],
            "tasks": self.tasks, "unserved": self.unserved, "skipped_backends": self.skipped,
            "totals": {"calls": t.calls, "prompt_tokens": t.prompt, "completion_tokens": t.completion,
                       "cost_usd": t.cost, "baseline_cost_usd": t.baseline, "savings_usd": t.baseline - t.cost,
                       "savings_share": (t.baseline - t.cost) / t.baseline if t.baseline else 0.0,
                       "per_day_usd": t.cost / self.days if self.days else None},
            "recorded_cost_usd": self.recorded_cost,
            "cache": {"hit_rate": self.cache_hit_rate, "saved_usd": self.cache_saved},
            "consensus_requests": self.consensus_requests,
        })


def simulate(cfg: Config, requests: Iterable[Request], *, source: str, days: float,
             baseline_model: str | None = None, cache_hit_rate: float = 0.0) -> Result:
    """Route and price each request. A consensus rule or route prices a call to each of its targets;
    `cache_hit_rate` is the share of requests the response cache would answer for free, applied
    (as an expected value) where the config caches, or everywhere when it has no `cache:` at all."""
    base_name, base_price, base_src = baseline(cfg, baseline_model)
    router = Router(cfg, {name: None for name in cfg.backends})  # type: ignore[misc]
    clock = ManualClock()  # the replayed requests' own times
    quotas = Accounts(cfg, MemoryState(clock)).target_quotas  # fresh counters: simulated days start empty
    res = Result(config=cfg.path or "(inline)", source=source, days=days, baseline_model=base_name,
                 baseline_source=base_src, cache_hit_rate=cache_hit_rate)
    any_cache = cfg.cache is not None or any(r.cache is not None or any(x.cache is not None for x in r.rules)
                                             for r in cfg.routes.values())
    recorded = 0.0
    any_recorded = False
    for r in requests:
        if r.recorded_cost is not None:
            recorded += r.recorded_cost
            any_recorded = True
        call = Call(request_model=r.model)
        try:
            names, rule = router.choose(call, r.features)  # type: ignore[arg-type]
        except ProxyError as e:
            why = e.code or "no route"
            res.unserved[why] = res.unserved.get(why, 0) + 1
            continue
        chosen = None
        for name in names:
            t = cfg.models[name]
            unavailable = cfg.backends[t.backend].unavailable
            if unavailable:  # Turnout skips it (no API key): nothing is priced there
                res.skipped[t.backend] = unavailable
                continue
            if router._abilities(t, r.features) or router._context(t, r.features):  # type: ignore[arg-type]
                continue
            clock.now = r.ts
            if any(q.shortage() for q in quotas.get(name, ())):
                continue
            chosen = t
            break
        if chosen is None:
            res.unserved["no target left"] = res.unserved.get("no target left", 0) + 1
            continue
        for q in quotas.get(chosen.name, ()):
            q.add(1, r.prompt + r.completion)
        consensus = rule.consensus if rule is not None and rule.consensus else \
            (cfg.routes[call.route].consensus if call.route else None)
        members = [cfg.models[n] for n in consensus.targets] if consensus else [chosen]
        res.consensus_requests += consensus is not None
        cached = not any_cache or policy_of(cfg, call.route, rule).enabled
        paid = 1.0 - (cache_hit_rate if cached else 0.0)
        base = price_tokens(base_price, r.prompt, r.completion, r.cached)
        cost = 0.0
        for t in members:
            full = price_tokens(t.price, r.prompt, r.completion, r.cached)
            res.cache_saved += full * (1.0 - paid)
            res.targets.setdefault(t.name, Line()).add(r, full * paid, 0.0 if consensus and t is not members[0] else base)
            res.backends[t.name] = t.backend
            cost += full * paid
        res.total.add(r, cost, base)
        per = res.tasks.setdefault(r.label or "-", {})
        per[chosen.name] = per.get(chosen.name, 0) + 1
    res.recorded_cost = recorded if any_recorded else None
    return res


# --- traffic from a mix file -------------------------------------------------------------------

_TASK_FIELDS = {"name", "share", "model", "prompt_tokens", "completion_tokens", "cached_tokens", "has_images",
                "has_tools", "turn", "complexity", "task", "tier", "requirement", "max_tokens"}


def load_mix(path: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("mix: expected a mapping with requests_per_day and tasks")
    extra = sorted(set(raw) - {"model", "requests_per_day", "days", "tasks"})
    if extra:
        raise ConfigError(f"mix.{extra[0]}: unknown field (expected one of: days, model, requests_per_day, tasks)")
    rpd = raw.get("requests_per_day")
    if isinstance(rpd, bool) or not isinstance(rpd, int) or rpd < 1:
        raise ConfigError(f"mix.requests_per_day: expected a positive integer, got {rpd!r}")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError("mix.tasks: expected a non-empty list of tasks")
    for i, t in enumerate(tasks):
        w = f"mix.tasks[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{w}: expected a mapping")
        extra = sorted(set(t) - _TASK_FIELDS)
        if extra:
            raise ConfigError(f"{w}.{extra[0]}: unknown field (expected one of: {', '.join(sorted(_TASK_FIELDS))})")
        for k in ("share", "prompt_tokens", "completion_tokens"):
            v = t.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{w}.{k}: required, a number of at least 0 (got {v!r})")
        if t.get("turn") is not None and t["turn"] not in TURNS:
            raise ConfigError(f"{w}.turn: expected first or followup, got {t['turn']!r}")
    if sum(t["share"] for t in tasks) <= 0:
        raise ConfigError("mix.tasks: the shares add up to 0")
    return raw


def mix_requests(mix: dict[str, Any], days: int, start: float) -> Iterator[Request]:
    """requests_per_day × days requests, each day's tasks interleaved by share (so a quota that runs
    out mid-day is shared out as real traffic would be)."""
    tasks = mix["tasks"]
    total_share = sum(t["share"] for t in tasks)
    rpd = mix["requests_per_day"]
    counts = [round(rpd * t["share"] / total_share) for t in tasks]
    order = sorted(((j + 0.5) / n, i) for i, n in enumerate(counts) for j in range(n))
    per_day = len(order)
    for d in range(days):
        for k, (_, i) in enumerate(order):
            t = tasks[i]
            f = dict(t)
            yield Request(model=str(t.get("model") or mix.get("model") or "auto"), features=Features(f),
                          prompt=int(t["prompt_tokens"]), completion=int(t["completion_tokens"]),
                          cached=int(t.get("cached_tokens") or 0), ts=start + d * 86400 + k * 86400 / per_day,
                          label=str(t.get("name") or t.get("task") or f"task{i}"))


# --- traffic from the ledger -------------------------------------------------------------------


def ledger_requests(conn: Db, start: float, end: float, key: str | None = None) -> Iterator[Request]:
    """The answered requests of a period with their recorded features and tokens, oldest first."""
    sql = ("SELECT ts, key, model, prompt_tokens, completion_tokens, cached_tokens, cost_usd, features FROM requests "
           "WHERE ts >= ? AND ts < ? AND target IS NOT NULL AND features IS NOT NULL AND model IS NOT NULL")
    args: list[Any] = [start, end]
    if key is not None:
        sql += " AND key = ?"
        args.append(key)
    for ts, k, model, p, c, cached, cost, feats in conn.execute(sql + " ORDER BY ts", args):
        f = orjson.loads(feats)
        yield Request(model=model, features=Features(f), prompt=p or 0, completion=c or 0, cached=cached or 0,
                      ts=ts, label=k or "-", recorded_cost=cost or 0.0)


def replay(cfg: Config, conn: Db, *, since: str | None, until: str | None, days: float | None,
           key: str | None = None, baseline_model: str | None = None, source: str = "ledger",
           cache_hit_rate: float = 0.0) -> Result:
    now = time.time()
    if since is None and days is not None:
        since = f"{days}d"
    start, end = export_bounds(cfg, since, until, now)
    first = conn.execute("SELECT MIN(ts) FROM requests WHERE ts >= ? AND ts < ?", (start, end)).fetchone()[0]
    span_start = max(start, first or start)
    span = (min(end, now) - span_start) / 86400 if first is not None else 0.0
    if days is not None:
        span = float(days)
    return simulate(cfg, ledger_requests(conn, start, end, key), source=source, days=round(span, 4),
                    baseline_model=baseline_model, cache_hit_rate=cache_hit_rate)


def run_mix(cfg: Config, mix_path: str, days: int | None = None, baseline_model: str | None = None,
            cache_hit_rate: float = 0.0) -> Result:
    mix = load_mix(mix_path)
    n = int(days or mix.get("days") or 30)
    # whole days in usage.timezone, from the start of today, each day's requests spread evenly over it
    start = day_bounds(time.time(), ZoneInfo(cfg.usage.timezone), cfg.usage.reset_hour)[0]
    return simulate(cfg, mix_requests(mix, n, start), source=f"mix {mix_path}", days=n, baseline_model=baseline_model,
                    cache_hit_rate=cache_hit_rate)


# --- printing ----------------------------------------------------------------------------------


def render(res: Result) -> str:
    d = res.as_dict()
    t = d["totals"]
    lines = [f"Simulation of {res.config} over {res.days:g} days of traffic ({res.source})", ""]
    head = f"{'target':24s} {'backend':12s} {'calls':>9s} {'share':>7s} {'prompt tok':>12s} {'compl. tok':>12s} {'cost':>12s}"
    lines += [head, "-" * len(head)]
    for x in d["targets"]:
        lines.append(f"{x['name']:24s} {x['backend'] or '-':12s} {x['calls']:9d} {100 * x['share']:6.1f}% "
                     f"{x['prompt_tokens']:12d} {x['completion_tokens']:12d} {usd(x['cost_usd']):>12s}")
    lines.append("-" * len(head))
    lines.append(f"{'total':24s} {'':12s} {t['calls']:9d} {'':7s} {t['prompt_tokens']:12d} "
                 f"{t['completion_tokens']:12d} {usd(t['cost_usd']):>12s}")
    lines.append("")
    if t["per_day_usd"] is not None:
        lines.append(f"cost per day:            {usd(t['per_day_usd'])}")
    lines.append(f"all on {res.baseline_model} (baseline):  {usd(t['baseline_cost_usd'])}   [{res.baseline_source}]")
    lines.append(f"against the baseline:    {saving(t['savings_usd'], t['savings_share'])}")
    if res.recorded_cost is not None:
        diff = res.recorded_cost - t["cost_usd"]
        verdict = "the same" if abs(diff) < 5e-9 else \
            f"this config saves {usd(diff)}" if diff > 0 else f"this config costs {usd(-diff)} more"
        lines.append(f"recorded cost (ledger):  {usd(res.recorded_cost)}   ({verdict})")
    if res.cache_hit_rate:
        lines.append(f"response cache:          {100 * res.cache_hit_rate:.0f} % hits assumed, saving {usd(res.cache_saved)}")
    if res.consensus_requests:
        lines.append(f"consensus:               {res.consensus_requests} requests asked several targets (each call priced)")
    for b, why in res.skipped.items():
        lines.append(f"skipped backend {b}: {why}")
    if res.unserved:
        lines.append("not served: " + ", ".join(f"{n} ({why})" for why, n in res.unserved.items()))
    if res.tasks and res.source.startswith("mix"):
        lines += ["", "per task:"]
        for task, per in res.tasks.items():
            n = sum(per.values())
            lines.append(f"  {task:22s} " + ", ".join(f"{tg} {100 * c / n:.0f}%" for tg, c in per.items()))
    return "\n".join(lines)
