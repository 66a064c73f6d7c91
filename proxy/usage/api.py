"""What was spent: ``GET /turnout/usage`` (a report), ``GET /turnout/usage/export`` (JSONL rows).

The report is computed from the ledger by `report()`, which `turnout usage` also calls on the
file, so the endpoint, the CLI and an export always agree with the rows. Per backend and per
target: calls in the period, today and all time, the share of the period's calls, tokens, cost
today / in the period / all time, what is left of its quota today, and the saving against the
baseline model (the same tokens priced at `usage.baseline`). Query parameters (and CLI options):
``period`` (today, yesterday, week, month, all, or 24h / 7d / 30d), ``since`` / ``until`` (an ISO
date or time, Unix seconds, or 7d / 24h / 30m ago) and ``key`` (a key name).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Any, AsyncIterator
from zoneinfo import ZoneInfo

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from proxy.usage import prices
from proxy.usage.pricing import round_money
from proxy.config import Config, Price
from proxy.errors import InvalidRequest, ProxyError
from proxy.usage.quota import Accounts, day_bounds, month_bounds
from proxy.usage.db import Db
from proxy.usage.ledger import BUCKET, OK, Usage, load_counters
from proxy.web.auth import Authenticator

DEFAULT_BASELINE = "gpt-4o"
PAGE = 1000
UNKNOWN = "(unknown)"  # the backend of a failed target that is not in the config
_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
PERIODS = ("today", "yesterday", "week", "month", "all")


class UsageForbidden(ProxyError):
    status = 403
    type = "permission_error"
    code = "usage_not_allowed"


class LedgerOff(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "usage_ledger_off"


# --- time --------------------------------------------------------------------------------------


def parse_time(s: str, tz: ZoneInfo, now: float, what: str = "since") -> float:
    """An ISO date / time (in `tz` when it has no offset), Unix seconds, or an age: 7d, 24h, 30m."""
    s = s.strip()
    m = _REL.match(s)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"'{what}': expected an ISO date or time, Unix seconds, or an age like 7d or 24h; "
                             f"got {s!r}.", param=what, code="invalid_time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=tz)
    return d.timestamp()


def period_bounds(cfg: Config, period: str | None, since: str | None, until: str | None,
                  now: float) -> tuple[str, float, float]:
    """(name, start, end) of the period asked for; `since` / `until` win over `period`."""
    u = cfg.usage
    tz = ZoneInfo(u.timezone)
    end = parse_time(until, tz, now, "until") if until else now + 1e-3
    if since:
        return "custom", parse_time(since, tz, now, "since"), end
    name = (period or "all").strip().lower()
    if name == "all":
        return name, 0.0, end
    if name in ("today", "yesterday", "week"):
        start, day_end = day_bounds(now, tz, u.reset_hour)
        if name == "yesterday":
            return name, start - 86400 if start - 86400 > 0 else 0.0, start
        if name == "week":
            return name, start - 6 * 86400, end
        return name, start, end
    if name == "month":
        return name, month_bounds(now, tz, u.reset_hour)[0], end
    m = _REL.match(name)
    if m:
        return name, now - float(m.group(1)) * _UNIT[m.group(2)], end
    raise InvalidRequest(f"'period': expected one of {', '.join(PERIODS)}, or an age like 7d; got {period!r}.",
                         param="period", code="invalid_period")


def iso(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


# --- the baseline ------------------------------------------------------------------------------


def baseline(cfg: Config, name: str | None = None) -> tuple[str, Price, str]:
    """The model savings are measured against: a target of the config or a model of the built-in table."""
    name = name or cfg.usage.baseline or DEFAULT_BASELINE
    t = cfg.models.get(name)
    if t is not None and not prices.free(t):
        return name, t.price, f"target {name} ({t.price_source or 'config'})"
    found = prices.lookup(t.model if t is not None else name)
    if found is None:
        raise InvalidRequest(f"Unknown baseline model {name!r}: name a priced target or a model of the built-in "
                             f"price table (e.g. {', '.join(prices.examples())}).", param="baseline")
    src = found[1] + ("" if cfg.usage.baseline or name != DEFAULT_BASELINE else "; default, set usage.baseline")
    return name, found[0], src


def price_tokens(price: Price, prompt: float, completion: float, cached: float = 0) -> float:
    cached_price = price.input if price.cached is None else price.cached
    return ((prompt - cached) * price.input + cached * cached_price + completion * price.output) / 1e6


def price_dict(p: Price) -> dict[str, Any]:
    return {"input": p.input, "output": p.output, "cached": p.cached}


# --- the report --------------------------------------------------------------------------------

_AGG = (f"SELECT backend, target, COUNT(*), COALESCE({OK}, 0), COALESCE(SUM(prompt_tokens), 0), "
        "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0), "
        "COALESCE(SUM(cost_usd), 0), COALESCE(SUM(estimated), 0) FROM requests WHERE ts >= ? AND ts < ?")


_ROLLUP = ("SELECT backend, target, SUM(requests), SUM(ok), SUM(prompt_tokens), SUM(completion_tokens), "
           "SUM(cached_tokens), SUM(reasoning_tokens), SUM(cost_usd), SUM(estimated) FROM rollup "
           "WHERE bucket >= ? AND bucket < ?")


def _raw(conn: Db, start: float, end: float, key: str | None, by: str,
         out: dict[tuple[Any, ...], list[Any]], rolled: bool = False) -> None:
    sql, args = (_ROLLUP, [int(start), int(end)]) if rolled else (_AGG, [start, end])
    if key is not None:
        sql += " AND key = ?"
        args.append(key if not rolled else key or "")
    if by != "backend, target":
        sql = sql.replace("SELECT backend, target,", f"SELECT {by}, NULL,")
    for r in conn.execute(sql + f" GROUP BY {by}", args):
        k = (r[0] or None, r[1] or None) if rolled else (r[0], r[1])
        prev = out.get(k)
        out[k] = list(r[2:]) if prev is None else [x + (y or 0) for x, y in zip(prev, r[2:])]


def _groups(conn: Db, start: float, end: float, key: str | None,
            by: str = "backend, target") -> dict[tuple[Any, ...], list[Any]]:
    """Sums per backend and target (or key) of the rows in [start, end): whole quarter hours from the
    rollup, the ragged edges from the rows (by their time index)."""

    out: dict[tuple[Any, ...], list[Any]] = {}
    b0, b1 = math.ceil(start / BUCKET), math.floor(min(end, 2 ** 40) / BUCKET)
    if b1 - b0 < 2:
        _raw(conn, start, end, key, by, out)
        return out
    _raw(conn, b0, b1, key, by, out, rolled=True)
    _raw(conn, start, b0 * BUCKET, key, by, out)
    _raw(conn, b1 * BUCKET, end, key, by, out)
    return out


def _failed_sql(db: Db) -> str:
    """The attempts that did not answer, per target (reading the attempts' JSON is the dialect's)."""
    target, outcome = db.attempt("target"), db.attempt("outcome")
    return (f"SELECT {target}, COUNT(*) FROM requests AS r, {db.each_attempt} "
            f"WHERE r.attempts IS NOT NULL AND r.ts >= ? AND r.ts < ? AND {outcome} != 'ok' "
            f"AND {outcome} NOT LIKE 'skipped%' AND NOT ({outcome} LIKE 'escalated%' AND {target} {db.same} r.target)")


def _failed(conn: Db, cfg: Config, start: float, end: float, key: str | None,
            out: dict[tuple[Any, ...], list[Any]]) -> None:
    """Add the attempts that did not answer (failed, or escalated past) to `out` as calls of their target:
    a target that failed twice made two calls, though the ledger's rows name the target that answered."""
    sql, args = _failed_sql(conn), [start, end]
    if key is not None:
        sql += " AND r.key = ?"
        args.append(key)
    for target, n in conn.execute(sql + " GROUP BY 1", args):
        m = cfg.models.get(target)
        k = (m.backend if m is not None else None, target)
        out[k] = _add(out.get(k), [n, 0, 0, 0, 0, 0, 0.0, 0, n])


_CACHE = ("SELECT route, target, " + ", ".join(f"SUM(CASE WHEN cache = '{c}' THEN 1 ELSE 0 END)"
                                              for c in ("hit", "miss", "bypass")) + ", "
          "COALESCE(SUM(saved_usd), 0) FROM requests WHERE cache IS NOT NULL AND ts >= ? AND ts < ?")


def cache_report(conn: Db, start: float, end: float, key: str | None) -> dict[str, Any]:
    """The response cache in a period: hits, misses, bypasses, the hit rate and what hits saved, in all
    and per route and target (a hit rate counts the requests that looked: hits and misses)."""
    sql, args = _CACHE, [start, end]
    if key is not None:
        sql, args = sql + " AND key = ?", [*args, key]
    rows = conn.execute(sql + " GROUP BY route, target ORDER BY route, target", args).fetchall()

    def entry(hits: int, misses: int, bypass: int, saved: float) -> dict[str, Any]:
        return {"hits": hits, "misses": misses, "bypass": bypass,
                "hit_rate": round(hits / (hits + misses), 6) if hits + misses else 0.0, "saved_usd": saved}

    by = [{"route": r, "target": t, **entry(int(h or 0), int(m or 0), int(b or 0), float(v or 0))}
          for r, t, h, m, b, v in rows]
    total = entry(*(sum(e[k] for e in by) for k in ("hits", "misses", "bypass", "saved_usd")))
    return {**total, "by": by}


def _entry(row: list[Any] | None, today: list[Any] | None, total: list[Any] | None, period_calls: int,
           base: Price) -> dict[str, Any]:
    n, ok, p, c, cached, reasoning, cost, est, failed = _pad(row)
    b = price_tokens(base, p, c, cached)
    return {
        "calls": n, "share": round(n / period_calls, 6) if period_calls else 0.0, "ok": ok, "estimated": est,
        "failed_attempts": failed,
        "calls_today": today[0] if today else 0, "calls_total": total[0] if total else 0,
        "prompt_tokens": p, "completion_tokens": c, "cached_tokens": cached, "reasoning_tokens": reasoning,
        "cost_usd": cost, "cost_today_usd": today[6] if today else 0.0, "cost_total_usd": total[6] if total else 0.0,
        "baseline_cost_usd": b, "savings_usd": b - cost,
    }


def _pad(row: list[Any] | None) -> list[Any]:
    """A row of sums with its failed-attempts count (0 for the ledger's own rows)."""
    row = row or [0, 0, 0, 0, 0, 0, 0.0, 0]
    return row if len(row) == 9 else [*row, 0]


def _add(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
    if a is None:
        return b
    if b is None:
        return a
    return [x + y for x, y in zip(_pad(a), _pad(b))]


def _left(q: dict[str, Any] | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {"requests": q["requests_left"], "tokens": q["tokens_left"], "reserve": q["reserve"],
            "in_reserve": q["in_reserve"], "resets_at": q["resets_at"]}


def report(conn: Db, cfg: Config, *, period: str | None = None, since: str | None = None,
           until: str | None = None, key: str | None = None, accounts: Accounts | None = None,
           baseline_model: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The usage report from a ledger connection. `accounts` gives live quota and budget counters;
    without it they are read from the ledger's saved counters."""
    now = time.time() if now is None else now
    tz = ZoneInfo(cfg.usage.timezone)
    name, start, end = period_bounds(cfg, period, since, until, now)
    day_start, day_end = day_bounds(now, tz, cfg.usage.reset_hour)
    if accounts is None:
        accounts = Accounts(cfg)
        load_counters(conn, accounts)
    base_name, base, base_src = baseline(cfg, baseline_model)

    per = _groups(conn, start, end, key)
    today = _groups(conn, day_start, day_end, key)
    total = _groups(conn, 0.0, now + 1e-3, key)
    answered = sum(v[0] for (b, t), v in per.items() if t is not None)
    rows_today, rows_total = sum(v[0] for v in today.values()), sum(v[0] for v in total.values())
    for (s0, s1), out in (((start, end), per), ((day_start, day_end), today), ((0.0, now + 1e-3), total)):
        _failed(conn, cfg, s0, s1, key, out)
    quotas = accounts.remaining()
    qby = {(q["scope"], q["name"]): q for q in quotas}
    calls = sum(v[0] for (b, t), v in per.items() if t is not None)

    backends: dict[str, dict[str, Any]] = {}
    names = list(cfg.backends) + sorted({b or UNKNOWN for (b, t) in (*per, *total) if t and b not in cfg.backends})
    for bname in names:
        bk = None if bname == UNKNOWN else bname  # failed attempts of a target no longer in the config
        keys = [(b, t) for (b, t) in {**total, **per} if b == bk and t is not None]
        tnames = [t for t, m in cfg.models.items() if m.backend == bname]
        tnames += sorted({t for _, t in keys if t not in tnames})
        brow = btoday = btotal = None
        targets = []
        for t in tnames:
            r, td, tt = per.get((bk, t)), today.get((bk, t)), total.get((bk, t))
            brow, btoday, btotal = _add(brow, r), _add(btoday, td), _add(btotal, tt)
            m = cfg.models.get(t)
            e = {"name": t, "model": m.model if m else None, **_entry(r, td, tt, calls, base),
                 "remaining_today": _left(qby.get(("target", t))),
                 "price": price_dict(m.price) if m else None, "price_source": m.price_source if m else None}
            targets.append(e)
        bc = cfg.backends.get(bname)
        backends[bname] = {"name": bname, "type": bc.type if bc else None,
                           **_entry(brow, btoday, btotal, calls, base),
                           "remaining_today": _left(qby.get(("backend", bname))), "targets": targets}

    allrow = None
    for v in per.values():
        allrow = _add(allrow, v)
    n, ok, p, c, cached, reasoning, cost, est, failed = _pad(allrow)
    n -= failed  # requests are the ledger's rows; failed attempts are calls within them
    b = price_tokens(base, p, c, cached)
    totals = {
        "requests": n, "ok": ok, "failed": n - ok, "answered": answered, "estimated": est,
        "calls": calls, "failed_attempts": failed,
        "prompt_tokens": p, "completion_tokens": c, "cached_tokens": cached, "reasoning_tokens": reasoning,
        "cost_usd": cost, "baseline_cost_usd": b, "savings_usd": b - cost,
        "savings_share": round((b - cost) / b, 6) if b else 0.0,
        "calls_today": sum(v[0] for (_, tg), v in today.items() if tg is not None),
        "calls_total": sum(v[0] for (_, tg), v in total.items() if tg is not None),
        "requests_today": rows_today, "requests_total": rows_total,
        "cost_today_usd": sum(v[6] for v in today.values()), "cost_total_usd": sum(v[6] for v in total.values()),
    }
    keys_out = []
    for (k, _), v in sorted(_groups(conn, start, end, key, by="key").items(), key=lambda kv: str(kv[0][0])):
        keys_out.append({"name": k, "calls": v[0], "ok": v[1], "prompt_tokens": v[2], "completion_tokens": v[3],
                         "cost_usd": v[6]})
    return round_money({
        "object": "turnout.usage",
        "period": {"name": name, "since": iso(start, tz) if start else None, "until": iso(min(end, now), tz),
                   "timezone": cfg.usage.timezone},
        "today": {"since": iso(day_start, tz), "until": iso(day_end, tz)},
        "key": key,
        "baseline": {"model": base_name, "price": price_dict(base), "source": base_src},
        "totals": totals,
        "backends": list(backends.values()),
        "keys": keys_out,
        "quotas": quotas,
        "budgets": accounts.spent(),
        "cache": cache_report(conn, start, end, key),
    })


# --- export ------------------------------------------------------------------------------------

_EXPORT = ("SELECT id, ts, request_id, key, model, route, rule, chain, attempts, target, backend, status, error, "
           "stream, chunks, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, estimated, cost_usd, "
           "latency_ms, ttft_ms, features FROM requests WHERE id > ? AND ts >= ? AND ts < ?")


def export_page(conn: Db, after: int, start: float, end: float, key: str | None,
                limit: int = PAGE) -> list[dict[str, Any]]:
    sql, args = _EXPORT, [after, start, end]
    if key is not None:
        sql += " AND key = ?"
        args.append(key)
    out = []
    for r in conn.execute(sql + " ORDER BY id LIMIT ?", [*args, limit]):
        (id_, ts, rid, k, model, route, rule, chain, attempts, target, backend, status, error, stream, chunks,
         p, c, cached, reasoning, est, cost, lat, ttft, feats) = r
        out.append({
            "id": id_, "time": datetime.fromtimestamp(ts, ZoneInfo("UTC")).isoformat(timespec="milliseconds"),
            "ts": ts, "request_id": rid, "key": k, "model": model, "route": route, "rule": rule,
            "chain": orjson.loads(chain) if chain else [], "attempts": orjson.loads(attempts) if attempts else [],
            "target": target, "backend": backend, "status": status, "error": error, "stream": bool(stream),
            "chunks": chunks, "prompt_tokens": p, "completion_tokens": c, "cached_tokens": cached,
            "reasoning_tokens": reasoning, "estimated": bool(est), "cost_usd": cost, "latency_ms": lat,
            "ttft_ms": ttft, "features": orjson.loads(feats) if feats else None,
        })
    return out


def export_bounds(cfg: Config, since: str | None, until: str | None, now: float | None = None) -> tuple[float, float]:
    now = time.time() if now is None else now
    tz = ZoneInfo(cfg.usage.timezone)
    return (parse_time(since, tz, now, "since") if since else 0.0,
            parse_time(until, tz, now, "until") if until else float("inf"))


# --- endpoints ---------------------------------------------------------------------------------


def routes(cfg: Config, auth: Authenticator, usage: Usage) -> list[Route]:
    """The usage endpoints over one ledger (404 ledger_off when there is none)."""

    def ledger_or_404() -> Any:
        if usage.ledger is None:
            raise LedgerOff("The usage ledger is off (usage.ledger in the config); quotas and budgets are "
                            "counted in memory only.")
        return usage

    def key_filter(request: Request) -> tuple[str | None, bool]:
        """The key name to filter by, and whether the caller may only see its own usage."""
        key = auth.authenticate(request.headers)
        asked = request.query_params.get("key")
        if key is not None and (key.usage == "own" or key.role != "admin"):
            if asked not in (None, key.name):
                raise UsageForbidden(f"This key may only see its own usage (key={key.name}).", param="key")
            return key.name, True
        return asked, False

    async def usage_report(request: Request) -> Response:
        key, own = key_filter(request)
        usage = ledger_or_404()
        q = request.query_params
        data = await usage.query(report, cfg, period=q.get("period"), since=q.get("since"),
                                 until=q.get("until"), key=key, accounts=usage.accounts,
                                 baseline_model=q.get("baseline"))
        if own:  # other keys' budgets are not this key's business
            data["budgets"] = [b for b in data["budgets"] if b["scope"] in ("all", f"key:{key}")]
        return Response(orjson.dumps(data), media_type="application/json")

    async def usage_export(request: Request) -> Response:
        key, _ = key_filter(request)  # a user key exports its own rows only
        usage = ledger_or_404()
        q = request.query_params
        start, end = export_bounds(cfg, q.get("since"), q.get("until"))
        await usage.recorder.flush()
        first = await usage.ledger.run(lambda: export_page(usage.ledger.conn, 0, start, end, key))

        async def lines() -> AsyncIterator[bytes]:
            page = first
            while page:
                yield b"".join(orjson.dumps(r) + b"\n" for r in page)
                if len(page) < PAGE:
                    return
                after = page[-1]["id"]
                page = await usage.ledger.run(lambda: export_page(usage.ledger.conn, after, start, end, key))

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"content-disposition": 'inline; filename="turnout-usage.jsonl"'})

    return [Route("/turnout/usage", usage_report, methods=["GET"]),
            Route("/turnout/usage/export", usage_export, methods=["GET"])]
