"""``turnout usage`` (the report as a table or JSON), ``turnout usage export`` (JSONL) and
``turnout simulate``.

They read the ledger named by the config (``usage.ledger``: a SQLite file or a PostgreSQL URL)
directly, read-only, so they work with Turnout stopped or running (rows of the last second may not be written yet); with
``--url`` they ask a running Turnout instead. Either way the numbers come from the same code as
``GET /turnout/usage``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Awaitable, Callable, TextIO, TypeVar

import orjson

from proxy.config import Config, ConfigError
from proxy.errors import TransportError
from proxy.http import HTTPClient, Response, run_sync
from proxy.usage import db
from proxy.usage.pricing import saving, usd as _usd

T = TypeVar("T")


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("usage", help="what was spent: per backend and target, calls, tokens, cost, savings; "
                                     "'usage export' writes the ledger's rows as JSONL")
    p.add_argument("action", nargs="?", choices=["show", "export"], default="show")
    p.add_argument("--config", default=None, help="config file (default: $TURNOUT_CONFIG or ./proxy.yaml)")
    p.add_argument("--ledger", default=None, help="ledger file or postgresql:// URL (default: the config's usage.ledger)")
    p.add_argument("--url", default=None, help="ask a running Turnout instead, e.g. http://127.0.0.1:4000")
    p.add_argument("--api-key", default=None, help="the proxy key for --url (default: $TURNOUT_API_KEY)")
    p.add_argument("--period", default=None, help="today, yesterday, week, month, all (default), or 24h / 7d / 30d")
    p.add_argument("--since", default=None, help="ISO date or time, Unix seconds, or an age like 7d")
    p.add_argument("--until", default=None)
    p.add_argument("--key", default=None, help="only this key's requests (its name)")
    p.add_argument("--baseline", default=None, help="the model savings are measured against (default: usage.baseline)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-o", "--output", default=None, help="export: write to this file (default: stdout)")

    p = sub.add_parser("simulate", help="the cost of N days of traffic under a config vs an all-API baseline, "
                                        "from a traffic mix file or a replay of the ledger")
    p.add_argument("config", nargs="?", default=None, help="the config to simulate (default: $TURNOUT_CONFIG or ./proxy.yaml)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mix", default=None, help="a traffic mix file (YAML): requests_per_day and tasks")
    src.add_argument("--replay", action="store_true", help="replay the ledger's requests (the default without --mix)")
    p.add_argument("--ledger", default=None, help="ledger to replay (default: the simulated config's usage.ledger)")
    p.add_argument("--days", type=float, default=None, help="mix: days to simulate (default: the file's, else 30); "
                                                            "replay: the last N days")
    p.add_argument("--since", default=None)
    p.add_argument("--until", default=None)
    p.add_argument("--key", default=None, help="replay only this key's requests")
    p.add_argument("--baseline", default=None, help="the all-API model to compare with (default: usage.baseline)")
    p.add_argument("--cache-hit-rate", type=_share, default=0.0, metavar="SHARE",
                   help="assume this share (0 to 1) of cacheable requests is answered by the response cache")
    p.add_argument("--json", action="store_true")


def _share(v: str) -> float:
    x = float(v)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {v}")
    return x


def ledger_only_config(ledger: str | None) -> Config:
    """What `turnout usage` reads a ledger with when there is no config file: no targets, no quotas,
    the default baseline; the ledger given, else $TURNOUT_LEDGER, else the default path."""
    from proxy.config import DEFAULT_LEDGER, ServerConfig

    cfg = Config(server=ServerConfig(), backends={}, models={}, routes={}, keys=[])
    cfg.usage.ledger = ledger or os.environ.get("TURNOUT_LEDGER") or DEFAULT_LEDGER
    return cfg


def usage_config(config: str | None, default: str, ledger: str | None) -> Config | None:
    """The config `turnout usage` reads the ledger with: the one named, else the default file if it
    exists, else none (the ledger alone: `turnout usage` after `turnout demo` in the same directory)."""
    if config is None and not os.path.exists(default):
        return ledger_only_config(ledger)
    return None


def _open(cfg: Config, ledger: str | None) -> db.Db:
    from proxy.usage.ledger import connect

    path = ledger or cfg.usage.ledger
    if not path:
        raise SystemExit("turnout: the config has no usage ledger (usage.ledger is off); give --ledger FILE")
    try:
        return connect(path, readonly=True)
    except (FileNotFoundError, RuntimeError, *db.errors()) as e:
        raise SystemExit(f"turnout: cannot open the usage ledger {db.label(path)} ({e}); "
                         "has Turnout run with this config?")


def _remote(args: argparse.Namespace, fn: Callable[[HTTPClient], Awaitable[T]]) -> T:
    """`fn` with a client of the running Turnout named by --url (through proxy.http, like every call out)."""
    key = args.api_key or os.environ.get("TURNOUT_API_KEY")
    return run_sync(args.url.rstrip("/"), fn, headers={"authorization": f"Bearer {key}"} if key else {},
                    timeout=60.0)


def usage_command(cfg: Config | None, args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        return _usage_command(cfg, args, out or sys.stdout)
    except TransportError as e:
        raise SystemExit(f"turnout: cannot reach Turnout at {args.url} ({type(e).__name__}: {e})") from None


def _usage_command(cfg: Config | None, args: argparse.Namespace, out: TextIO) -> int:
    from proxy.usage import api as usage_api


    params = {k: v for k, v in (("period", args.period), ("since", args.since), ("until", args.until),
                                ("key", args.key), ("baseline", args.baseline)) if v}
    if args.action == "export":
        params.pop("period", None)
        params.pop("baseline", None)
        sink = open(args.output, "wb") if args.output else out.buffer if hasattr(out, "buffer") else None
        n = 0
        try:
            if args.url:
                async def export(c: HTTPClient) -> tuple[int, str | None]:
                    rows = 0
                    async with c.stream("GET", "/turnout/usage/export", params=params) as r:
                        if r.status_code != 200:
                            await r.aread()
                            return 0, f"turnout: {r.status_code} {r.text}"
                        async for line in r.aiter_lines():
                            if line:
                                rows += 1
                                _write(sink, out, line + b"\n")
                    return rows, None

                n, failed = _remote(args, export)
                if failed:
                    raise SystemExit(failed)
            else:
                assert cfg is not None
                conn = _open(cfg, args.ledger)
                start, end = usage_api.export_bounds(cfg, args.since, args.until)
                after = 0
                while True:
                    page = usage_api.export_page(conn, after, start, end, args.key)
                    for row in page:
                        _write(sink, out, orjson.dumps(row) + b"\n")
                    n += len(page)
                    if len(page) < usage_api.PAGE:
                        break
                    after = page[-1]["id"]
        finally:
            if args.output and sink is not None:
                sink.close()
        if args.output:
            print(f"wrote {n} rows to {args.output}", file=sys.stderr)
        return 0
    if args.url:
        async def get(c: HTTPClient) -> Response:
            return await c.get("/turnout/usage", params=params)

        r = _remote(args, get)
        if r.status_code != 200:
            raise SystemExit(f"turnout: {r.status_code} {r.text}")
        data = r.json()
    else:
        assert cfg is not None
        conn = _open(cfg, args.ledger)
        try:
            data = usage_api.report(conn, cfg, period=args.period, since=args.since, until=args.until, key=args.key,
                                    baseline_model=args.baseline)
        except usage_api.ProxyError as e:
            raise SystemExit(f"turnout: {e.message}") from None
    if args.json:
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render(data) + "\n")
    return 0


def _write(sink: Any, out: TextIO, data: bytes) -> None:
    if sink is not None:
        sink.write(data)
    else:
        out.write(data.decode())


def _left(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    parts = []
    if r["requests"] is not None:
        parts.append(f"{r['requests']} req")
    if r["tokens"] is not None:
        parts.append(f"{r['tokens']} tok")
    return ", ".join(parts) + (" (reserve)" if r["in_reserve"] else "")


def render(d: dict[str, Any]) -> str:
    """The report as a table: one line per backend, its targets indented below."""
    p, t, b = d["period"], d["totals"], d["baseline"]
    lines = [f"Turnout usage: period {p['name']} ({p['since'] or 'start'} .. {p['until']}, {p['timezone']})"
             + (f", key {d['key']}" if d.get("key") else ""),
             f"baseline: {b['model']} (${b['price']['input']:g} in / ${b['price']['output']:g} out per 1M; {b['source']})",
             ""]
    head = (f"{'backend / target':24s} {'calls':>7s} {'share':>6s} {'today':>6s} {'total':>7s} {'left today':>16s} "
            f"{'prompt':>9s} {'compl.':>9s} {'cost':>10s} {'today':>10s} {'all time':>10s} {'saving':>10s}")
    lines += [head, "-" * len(head)]

    def row(name: str, e: dict[str, Any]) -> str:
        return (f"{name:24s} {e['calls']:7d} {100 * e['share']:5.1f}% {e['calls_today']:6d} {e['calls_total']:7d} "
                f"{_left(e.get('remaining_today')):>16s} {e['prompt_tokens']:9d} {e['completion_tokens']:9d} "
                f"{_usd(e['cost_usd']):>10s} {_usd(e['cost_today_usd']):>10s} {_usd(e['cost_total_usd']):>10s} "
                f"{_usd(e['savings_usd']):>10s}")

    for be in d["backends"]:
        lines.append(row(be["name"], be))
        for te in be["targets"]:
            lines.append(row("  " + te["name"], te))
    lines.append("-" * len(head))
    lines.append(f"{'total':24s} {t['calls']:7d} {'':6s} {t['calls_today']:6d} {t['calls_total']:7d} {'':16s} "
                 f"{t['prompt_tokens']:9d} {t['completion_tokens']:9d} {_usd(t['cost_usd']):>10s} "
                 f"{_usd(t['cost_today_usd']):>10s} {_usd(t['cost_total_usd']):>10s} {_usd(t['savings_usd']):>10s}")
    lines.append("")
    lines.append(f"requests: {t['requests']} ({t['ok']} ok, {t['failed']} failed, {t['estimated']} with estimated "
                 f"tokens); all on {b['model']} would have cost {_usd(t['baseline_cost_usd'])}: "
                 + saving(t['savings_usd'], t['savings_share']))
    if d["keys"]:
        lines.append("keys: " + ", ".join(f"{k['name'] or '(none)'} {k['calls']} calls {_usd(k['cost_usd'])}"
                                          for k in d["keys"]))
    c = d.get("cache") or {}
    if c.get("hits") or c.get("misses") or c.get("bypass"):
        lines.append(f"cache: {c['hits']} hits, {c['misses']} misses, {c['bypass']} bypassed, hit rate "
                     f"{100 * c['hit_rate']:.1f} %, saved {_usd(c['saved_usd'])}; "
                     + ", ".join(f"{e['route'] or '-'}/{e['target'] or '-'} {100 * e['hit_rate']:.0f} % "
                                 f"saved {_usd(e['saved_usd'])}" for e in c["by"]))
    for q in d["quotas"]:
        lim = ", ".join(x for x in (
            f"{q['requests_used']}/{q['requests_per_day']} requests" if q["requests_per_day"] else "",
            f"{q['tokens_used']}/{q['tokens_per_day']} tokens" if q["tokens_per_day"] else "") if x)
        lines.append(f"quota {q['scope']} {q['name']}: {lim} today"
                     + (" - IN RESERVE, skipped by routing" if q["in_reserve"] else "") + f"; resets {q['resets_at']}")
    for s in d["budgets"]:
        state = "EXCEEDED" if s["exceeded"] else "alert" if s["alerting"] else "ok"
        lines.append(f"budget {s['name']} {s['period']}: {_usd(s['spent_usd'])} of {_usd(s['limit_usd'])} "
                     f"({100 * s['share']:.0f} %) {state}; resets {s['resets_at']}")
    return "\n".join(lines)


def simulate_command(cfg: Config, args: argparse.Namespace, out: TextIO | None = None) -> int:
    from proxy.usage import simulate

    out = out or sys.stdout

    try:
        if args.mix:
            res = simulate.run_mix(cfg, args.mix, int(args.days) if args.days else None, args.baseline,
                                   cache_hit_rate=args.cache_hit_rate)
        else:
            conn = _open(cfg, args.ledger)
            res = simulate.replay(cfg, conn, since=args.since, until=args.until, days=args.days, key=args.key,
                                  baseline_model=args.baseline,
                                  source=f"replay of {db.label(args.ledger or cfg.usage.ledger or '')}",
                                  cache_hit_rate=args.cache_hit_rate)
    except ConfigError as e:
        print(f"turnout: invalid mix: {e}", file=sys.stderr)
        return 2
    except simulate.ProxyError as e:
        print(f"turnout: {e.message}", file=sys.stderr)
        return 2
    if args.json:
        out.write(orjson.dumps(res.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(simulate.render(res) + "\n")
    return 0


def usage_lines(cfg: Config) -> list[str]:
    """The banner's usage part: the ledger, built-in prices, quotas, rate limits and budgets."""
    from proxy.usage.api import DEFAULT_BASELINE

    u = cfg.usage
    lines = [f"usage: ledger {db.label(u.ledger) if u.ledger else 'off (counters in memory only)'}"
             + (f" (written every {u.flush_interval:g} s)" if u.ledger else "")
             + f", baseline {u.baseline or DEFAULT_BASELINE}, days start {u.reset_hour:02d}:00 {u.timezone}"]
    built = [f"{n} ({t.price_source.split('//')[-1].split('/')[0]} {t.price_source.rsplit('(', 1)[-1].rstrip(')')})"
             for n, t in cfg.models.items() if (t.price_source or "").startswith("built-in")]
    if built:
        lines.append("  built-in prices: " + ", ".join(built))

    def quota(q: Any) -> str:
        parts = [f"{q.requests_per_day} requests/day" if q.requests_per_day else "",
                 f"{q.tokens_per_day} tokens/day" if q.tokens_per_day else "",
                 f"reserve {q.reserve}" if q.reserve else "", f"reserve {q.reserve_tokens} tokens" if q.reserve_tokens else ""]
        return ", ".join(p for p in parts if p) + f", resets {q.reset_hour:02d}:00 {q.timezone}"

    def budget(b: Any) -> str:
        parts = [f"${b.daily:g}/day" if b.daily is not None else "", f"${b.monthly:g}/month" if b.monthly is not None else ""]
        return ", ".join(p for p in parts if p) + f", alert {100 * b.alert:.0f} %, then {b.on_exceeded}"

    for name, b in cfg.backends.items():
        if b.quota is not None:
            lines.append(f"  quota backend {name}: {quota(b.quota)}")
    for name, t in cfg.models.items():
        if t.quota is not None:
            lines.append(f"  quota target {name}: {quota(t.quota)}")
    if u.budget is not None:
        lines.append(f"  budget overall: {budget(u.budget)}")
    for k in cfg.keys:
        parts = []
        if k.rate_limit is not None:
            r = k.rate_limit
            parts.append(", ".join(p for p in (f"{r.requests_per_minute} requests/min" if r.requests_per_minute else "",
                                               f"{r.tokens_per_minute} tokens/min" if r.tokens_per_minute else "") if p))
        if k.budget is not None:
            parts.append("budget " + budget(k.budget))
        if parts:
            lines.append(f"  key {k.name}: " + "; ".join(parts))
    return lines
