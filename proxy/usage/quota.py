"""Quotas, rate limits and budgets: counters in memory, checked on the request path in O(1).

- **Quotas** (`quota:` on a backend or a target): requests and/or tokens per day, reset at a local
  hour in a time zone. A routing filter skips the target once what is left reaches the `reserve`
  (the reason shows in x-turnout-fallbacks and the dry run), and one warning per day names what
  is left and where requests go instead: ``gemini: 95 requests left today, reserve 100 — routing
  to local``. Every request sent to a backend counts (failed ones too: providers count them);
  tokens count for the target that answered.
- **Rate limits** (`rate_limit:` on a key): requests and tokens over a sliding minute. Over the
  limit the request gets 429 ``rate_limit_exceeded`` with ``retry-after`` before any routing.
  Tokens are counted when a request finishes, so one request may overshoot the token limit.
- **Budgets** (`budget:` on a key, `usage.budget` overall): USD per day and per month in
  `usage.timezone`. At `alert` (default 80 %) one warning is logged per period and the budget
  shows as alerting in `spent()` (and metrics). Once spent, by `on_exceeded`: ``reject`` answers
  429 ``budget_exceeded`` saying when it resets; ``free_only`` skips every target with a price.

The counters are snapshotted into the ledger with each batch of rows and restored at start, so a
restart continues where the last run stopped (see `proxy.usage.ledger`). In-flight requests are counted
when they finish: up to `concurrency` requests can pass a limit at the same moment, which is what
the reserve is for.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable
from zoneinfo import ZoneInfo

from proxy.usage import prices
from proxy.call import Call
from proxy.config import Budget, Config, Key, Quota, RateLimit, Target
from proxy.errors import ProxyError

if TYPE_CHECKING:
    from proxy.routing.features import Features

log = logging.getLogger("turnout.usage")
EPS = 1e-9  # USD: sums of float costs compare equal to a limit within this


# --- periods -----------------------------------------------------------------------------------


def _at(d: Any, hour: int, tz: ZoneInfo) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=tz)


def day_bounds(now: float, tz: ZoneInfo, hour: int = 0) -> tuple[float, float]:
    """Start and end (epoch seconds) of the day containing `now` that begins at `hour` local time."""
    local = datetime.fromtimestamp(now, tz)
    start = _at(local, hour, tz)
    if local < start:
        start = _at(local.date() - timedelta(days=1), hour, tz)
    return start.timestamp(), _at(start.date() + timedelta(days=1), hour, tz).timestamp()


def month_bounds(now: float, tz: ZoneInfo, hour: int = 0) -> tuple[float, float]:
    local = datetime.fromtimestamp(now, tz)
    start = datetime(local.year, local.month, 1, hour, tzinfo=tz)
    if local < start:
        start = datetime(local.year - (local.month == 1), (local.month - 2) % 12 + 1, 1, hour, tzinfo=tz)
    end = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, hour, tzinfo=tz)
    return start.timestamp(), end.timestamp()


def iso(ts: float, tz: ZoneInfo | None = None) -> str:
    return datetime.fromtimestamp(ts, tz or ZoneInfo("UTC")).isoformat(timespec="seconds")


class Counter:
    """Requests, tokens and USD within the current period; rolls over by itself.

    `requests`, `tokens` and `usd` are the totals the checks read: this process's own counts plus
    `base`, what other worker processes (and earlier runs) saved in the ledger for the same period."""

    __slots__ = ("name", "tz", "hour", "monthly", "start", "end", "requests", "tokens", "usd", "base", "flag",
                 "flag2")

    def __init__(self, name: str, tz: str, hour: int, monthly: bool = False) -> None:
        self.name, self.tz, self.hour, self.monthly = name, ZoneInfo(tz), hour, monthly
        self.start = self.end = 0.0
        self.requests = self.tokens = 0
        self.usd = 0.0
        self.base: tuple[int, int, float] = (0, 0, 0.0)
        self.flag = self.flag2 = False  # warned / alerted in this period

    def roll(self, now: float) -> None:
        if now >= self.end or now < self.start:
            self.start, self.end = (month_bounds if self.monthly else day_bounds)(now, self.tz, self.hour)
            self.requests = self.tokens = 0
            self.usd = 0.0
            self.base = (0, 0, 0.0)
            self.flag = self.flag2 = False

    def snapshot(self) -> tuple[str, float, int, int, float]:
        """This process's own counts (the totals less the base)."""
        r, t, u = self.base
        return self.name, self.start, self.requests - r, self.tokens - t, self.usd - u

    def rebase(self, requests: int, tokens: int, usd: float) -> None:
        """Take the others' counts as the new base, keeping this process's own."""
        r, t, u = self.base
        self.requests += requests - r
        self.tokens += tokens - t
        self.usd += usd - u
        self.base = (requests, tokens, usd)


# --- quotas ------------------------------------------------------------------------------------


class QuotaState:
    __slots__ = ("scope", "name", "cfg", "c", "pending")

    def __init__(self, scope: str, name: str, cfg: Quota) -> None:
        self.scope, self.name, self.cfg = scope, name, cfg
        self.c = Counter(f"quota:{scope}:{name}", cfg.timezone, cfg.reset_hour)
        self.pending = False  # in reserve, warning not logged yet

    def left(self, now: float) -> tuple[int | None, int | None]:
        self.c.roll(now)
        q = self.cfg
        return (None if q.requests_per_day is None else max(0, q.requests_per_day - self.c.requests),
                None if q.tokens_per_day is None else max(0, q.tokens_per_day - self.c.tokens))

    def shortage(self, now: float) -> str | None:
        """What is left, when it is at or under the reserve: "95 requests left today, reserve 100"."""
        req, tok = self.left(now)
        if req is not None and req <= self.cfg.reserve:
            return f"{req} requests left today, reserve {self.cfg.reserve}"
        if tok is not None and tok <= self.cfg.reserve_tokens:
            return f"{tok} tokens left today, reserve {self.cfg.reserve_tokens}"
        return None

    def status(self, now: float) -> dict[str, Any]:
        req, tok = self.left(now)
        q = self.cfg
        return {"scope": self.scope, "name": self.name, "requests_per_day": q.requests_per_day,
                "tokens_per_day": q.tokens_per_day, "requests_used": self.c.requests, "tokens_used": self.c.tokens,
                "requests_left": req, "tokens_left": tok, "reserve": q.reserve, "reserve_tokens": q.reserve_tokens,
                "in_reserve": self.shortage(now) is not None, "timezone": q.timezone, "reset_hour": q.reset_hour,
                "resets_at": iso(self.c.end, self.c.tz)}


# --- budgets -----------------------------------------------------------------------------------


class BudgetExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetState:
    __slots__ = ("scope", "label", "cfg", "day", "month")

    def __init__(self, scope: str, label: str, cfg: Budget, tz: str, hour: int) -> None:
        self.scope, self.label, self.cfg = scope, label, cfg  # scope: "all" or "key:<name>"
        self.day = Counter(f"budget:{scope}:day", tz, hour) if cfg.daily is not None else None
        self.month = Counter(f"budget:{scope}:month", tz, hour, monthly=True) if cfg.monthly is not None else None

    def periods(self) -> Iterable[tuple[str, Counter, float]]:
        if self.day is not None:
            yield "daily", self.day, self.cfg.daily  # type: ignore[misc]
        if self.month is not None:
            yield "monthly", self.month, self.cfg.monthly  # type: ignore[misc]

    def exceeded(self, now: float) -> tuple[str, Counter, float] | None:
        for period, c, limit in self.periods():
            c.roll(now)
            if c.usd >= limit - EPS:
                return period, c, limit
        return None

    def add(self, usd: float, now: float) -> None:
        for period, c, limit in self.periods():
            c.roll(now)
            c.usd += usd
            if not c.flag2 and c.usd >= limit * self.cfg.alert - EPS:
                c.flag2 = True
                log.warning("budget: %s has spent $%.4f of its %s budget of $%.2f (%.0f %%, alert at %.0f %%)",
                            self.label, c.usd, period, limit, 100 * c.usd / limit if limit else 100,
                            100 * self.cfg.alert)
            if not c.flag and c.usd >= limit - EPS:
                c.flag = True
                then = "requests get 429 budget_exceeded" if self.cfg.on_exceeded == "reject" else \
                    "only free targets are used"
                log.warning("budget: %s has spent its %s budget of $%.2f; %s until %s", self.label, period, limit,
                            then, iso(c.end, c.tz))

    def status(self, now: float) -> list[dict[str, Any]]:
        out = []
        for period, c, limit in self.periods():
            c.roll(now)
            out.append({"scope": self.scope, "name": self.label, "period": period, "limit_usd": limit,
                        "spent_usd": round(c.usd, 10), "share": round(c.usd / limit, 6) if limit else 1.0,
                        "alert": self.cfg.alert, "alerting": c.usd >= limit * self.cfg.alert - EPS,
                        "exceeded": c.usd >= limit - EPS, "on_exceeded": self.cfg.on_exceeded,
                        "resets_at": iso(c.end, c.tz)})
        return out


# --- rate limits -------------------------------------------------------------------------------


class RateState:
    __slots__ = ("cfg", "times", "tokens", "token_sum")

    def __init__(self, cfg: RateLimit) -> None:
        self.cfg = cfg
        self.times: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0

    def _prune(self, now: float) -> None:
        cutoff = now - 60.0
        while self.times and self.times[0] <= cutoff:
            self.times.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.token_sum -= self.tokens.popleft()[1]

    def admit(self, now: float) -> tuple[str, float] | None:
        """None and the request counted, or (what, seconds until it would pass)."""
        self._prune(now)
        rpm, tpm = self.cfg.requests_per_minute, self.cfg.tokens_per_minute
        if rpm is not None and len(self.times) >= rpm:
            return f"{rpm} requests per minute", self.times[len(self.times) - rpm] + 60.0 - now
        if tpm is not None and self.token_sum >= tpm:
            over, wait = self.token_sum - tpm, 0.0
            for t, n in self.tokens:  # the time until enough tokens leave the window
                over -= n
                wait = t + 60.0 - now
                if over < 0:
                    break
            return f"{tpm} tokens per minute", wait
        self.times.append(now)
        return None

    def add_tokens(self, n: int, now: float) -> None:
        if self.cfg.tokens_per_minute is not None and n:
            self.tokens.append((now, n))
            self.token_sum += n


# --- all of it ---------------------------------------------------------------------------------


class Accounts:
    """Every quota, rate limit and budget of a config, with the routing filters and gates that
    enforce them (installed only when configured, so an unconfigured proxy pays nothing)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        u = cfg.usage
        self.quotas: list[QuotaState] = []
        by_backend: dict[str, QuotaState] = {}
        for name, b in cfg.backends.items():
            if b.quota is not None:
                by_backend[name] = QuotaState("backend", name, b.quota)
                self.quotas.append(by_backend[name])
        self.target_quotas: dict[str, list[QuotaState]] = {}
        for name, t in cfg.models.items():
            qs = []
            if t.quota is not None:
                qs.append(QuotaState("target", name, t.quota))
                self.quotas.append(qs[-1])
            if t.backend in by_backend:
                qs.append(by_backend[t.backend])
            if qs:
                self.target_quotas[name] = qs
        self.overall = BudgetState("all", "the overall budget", u.budget, u.timezone, u.reset_hour) \
            if u.budget is not None else None
        self.key_budgets = {k.name: BudgetState(f"key:{k.name}", f"key '{k.name}'", k.budget, u.timezone,
                                                u.reset_hour) for k in cfg.keys if k.budget is not None}
        self.rates = {k.name: RateState(k.rate_limit) for k in cfg.keys if k.rate_limit is not None}
        self.budgets = ([self.overall] if self.overall else []) + list(self.key_budgets.values())
        # per model name a client may ask for: can any of its targets be free?
        self.any_free = {name: prices.free(t) for name, t in cfg.models.items()}
        self.any_free.update({name: any(prices.free(cfg.models[t]) for t in r.chain) for name, r in cfg.routes.items()})
        self._warn: list[QuotaState] = []

    # --- wiring ----------------------------------------------------------------------------------

    def adopt(self, key: Key) -> None:
        """A key created at run time (proxy.usage.keystore): its rate limit and budget from now on."""
        if key.rate_limit is not None and key.name not in self.rates:
            self.rates[key.name] = RateState(key.rate_limit)
        if key.budget is not None and key.name not in self.key_budgets:
            u = self.cfg.usage
            b = self.key_budgets[key.name] = BudgetState(f"key:{key.name}", f"key '{key.name}'", key.budget,
                                                         u.timezone, u.reset_hour)
            self.budgets.append(b)

    def gates(self, stored_keys: bool = False) -> list[Callable[[Call], None]]:
        """Checks before routing, only those the config needs (an unconfigured proxy pays nothing);
        `stored_keys`: keys created at run time may bring rate limits and budgets (`adopt`)."""
        out: list[Callable[[Call], None]] = []
        if self.rates or stored_keys:
            out.append(self.rate_gate)
        if any(b.cfg.on_exceeded == "reject" for b in self.budgets) or stored_keys:
            out.append(self.budget_gate)
        if any(b.cfg.on_exceeded == "free_only" for b in self.budgets):
            out.append(self.free_only_gate)
        return out

    def filters(self) -> list[Callable[[Target, Features], str | None]]:
        """Routing filters: quotas at their reserve, budgets spent down to free targets only."""
        out: list[Callable[[Target, Features], str | None]] = []
        if self.target_quotas:
            out.append(self.quota_filter)
        if any(b.cfg.on_exceeded == "free_only" for b in self.budgets):
            out.append(self.budget_filter)
        return out

    # --- the request path ------------------------------------------------------------------------

    def quota_filter(self, target: Target, f: Features) -> str | None:
        qs = self.target_quotas.get(target.name)
        if qs is None:
            return None
        now = time.time()
        for q in qs:
            short = q.shortage(now)
            if short:
                if not q.c.flag and not q.pending:
                    q.pending = True
                    self._warn.append(q)
                where = "quota" if q.scope == "target" else f"backend {q.name} quota"
                return f"{where}: {short}"
        return None

    def _budget_for(self, key: Any) -> list[BudgetState]:
        out = [self.overall] if self.overall is not None else []
        if key is not None and key.name in self.key_budgets:
            out.append(self.key_budgets[key.name])
        return out

    def budget_filter(self, target: Target, f: Features) -> str | None:
        if prices.free(target):
            return None
        now = time.time()
        for b in self._budget_for(f.key):
            if b.cfg.on_exceeded == "free_only":
                hit = b.exceeded(now)
                if hit:
                    return f"budget: {b.label} {hit[0]} budget of ${hit[2]:.2f} is spent (free targets only)"
        return None

    def free_only_gate(self, call: Call) -> None:
        """A spent free_only budget and a model with no free target: 429 with the reset time, not a 503."""
        if self.any_free.get(call.request_model, True):
            return
        now = time.time()
        for b in self._budget_for(call.key):
            if b.cfg.on_exceeded == "free_only":
                hit = b.exceeded(now)
                if hit:
                    period, c, limit = hit
                    raise BudgetExceeded(
                        f"Budget exceeded: {b.label} has spent ${c.usd:.4f} of its {period} budget of ${limit:.2f}, "
                        f"so only free targets may be used, and '{call.request_model}' has none. "
                        f"The budget resets at {iso(c.end, c.tz)}.",
                        headers={"retry-after": str(max(1, math.ceil(c.end - now))),
                                 "x-turnout-budget-resets": iso(c.end, c.tz)})

    def budget_gate(self, call: Call) -> None:
        now = time.time()
        for b in self._budget_for(call.key):
            if b.cfg.on_exceeded != "reject":
                continue
            hit = b.exceeded(now)
            if hit:
                period, c, limit = hit
                wait = max(1, math.ceil(c.end - now))
                raise BudgetExceeded(
                    f"Budget exceeded: {b.label} has spent ${c.usd:.4f} of its {period} budget of ${limit:.2f}. "
                    f"It resets at {iso(c.end, c.tz)}.",
                    headers={"retry-after": str(wait), "x-turnout-budget-resets": iso(c.end, c.tz)})

    def rate_gate(self, call: Call) -> None:
        key = call.key
        r = self.rates.get(key.name) if key is not None else None
        if r is None:
            return
        hit = r.admit(time.time())
        if hit:
            what, wait = hit
            secs = max(1, math.ceil(wait))
            raise RateLimited(f"Rate limit reached for key '{key.name}': {what}. Try again in {secs} s.",
                              headers={"retry-after": str(secs), "x-ratelimit-reset": f"{secs}s"})

    def record(self, call: Call, tokens: int, cost: float) -> None:
        """Count a finished request (on the request path: a few dict and attribute operations)."""
        now = time.time()
        if self.target_quotas:
            for a in call.attempts:
                qs = self.target_quotas.get(a.target)
                if qs is not None and not a.outcome.startswith("skipped"):
                    for q in qs:
                        q.c.roll(now)
                        q.c.requests += 1
                        if a.outcome == "ok":
                            q.c.tokens += tokens
            if self._warn:
                self._log_reserve(call)
        if cost and self.budgets:
            for b in self._budget_for(call.key):
                b.add(cost, now)
        if self.rates and call.key is not None and tokens:
            r = self.rates.get(call.key.name)
            if r is not None:
                r.add_tokens(tokens, now)

    def _log_reserve(self, call: Call) -> None:
        now = time.time()
        for q in self._warn:
            q.pending = False
            short = q.shortage(now)
            if short is None or q.c.flag:
                continue
            q.c.flag = True
            skipped = any(a.outcome.startswith("skipped:") and "quota" in a.outcome for a in call.attempts)
            where = call.target if skipped and call.target else "the next target of each chain"
            log.warning("%s: %s — routing to %s", q.name, short, where)
        self._warn.clear()

    # --- persistence and reporting -----------------------------------------------------------------

    def counters(self) -> list[Counter]:
        out = [q.c for q in self.quotas]
        for b in self.budgets:
            out += [c for _, c, _ in b.periods()]
        return out

    def snapshot(self) -> list[tuple[str, float, int, int, float]]:
        now = time.time()
        out = []
        for c in self.counters():
            c.roll(now)
            out.append(c.snapshot())
        return out

    def restore(self, rows: Iterable[tuple[str, float, int, int, float]]) -> set[str]:
        """Take what other processes (or earlier runs) saved for the current periods as the base of
        each counter: `rows` are (name, start, requests, tokens, usd) summed over them. Returns the
        names found."""
        now = time.time()
        by_name = {c.name: c for c in self.counters()}
        done = set()
        for name, start, requests, tokens, usd in rows:
            c = by_name.get(name)
            if c is None:
                continue
            c.roll(now)
            if abs(c.start - start) < 1e-3:
                c.rebase(int(requests), int(tokens), float(usd))
                done.add(name)
        for b in self.budgets:  # a restored budget past its alert or limit does not warn again this period
            for period, c, limit in b.periods():
                c.flag2 = c.usd >= limit * b.cfg.alert - EPS
                c.flag = c.usd >= limit - EPS
        return done

    def remaining(self) -> list[dict[str, Any]]:
        """Per quota: limits, used, left, reserve and reset time (for /turnout/usage and metrics)."""
        now = time.time()
        return [q.status(now) for q in self.quotas]

    def spent(self) -> list[dict[str, Any]]:
        """Per budget and period: limit, spent, share, alerting, exceeded, reset time."""
        now = time.time()
        return [s for b in self.budgets for s in b.status(now)]

    def alerting(self) -> list[dict[str, Any]]:
        return [s for s in self.spent() if s["alerting"]]
