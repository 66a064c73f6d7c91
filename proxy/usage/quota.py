"""Quotas, rate limits and budgets: admitted before the upstream call, settled when it ends.

- **Quotas** (`quota:` on a backend or a target): requests and/or tokens per day, reset at a local
  hour in a time zone. A routing filter skips the target once what is left reaches the `reserve`
  (the reason shows in x-turnout-fallbacks and the dry run), and one warning per day names what
  is left and where requests go instead: ``gemini: 95 requests left today, reserve 100 — routing
  to local``. Every request sent to a backend counts (failed ones too: providers count them);
  tokens count for the target that answered.
- **Rate limits** (`rate_limit:` on a key): requests and tokens over a sliding minute. Over the
  limit the request gets 429 ``rate_limit_exceeded`` with ``retry-after`` before any routing.
- **Budgets** (`budget:` on a key, `usage.budget` overall): USD per day and per month in
  `usage.timezone`. At `alert` (default 80 %) one warning is logged per period and the budget
  shows as alerting in `spent()` (and metrics). Once spent, by `on_exceeded`: ``reject`` answers
  429 ``budget_exceeded`` saying when it resets; ``free_only`` skips every target with a price.

Admission, not tally: the key's rate limit and its `reject` budgets are checked and reserved in
one atomic `State.admit` before routing (tokens: a free upper bound of the prompt plus
`max_tokens`, else the target's `max_output_tokens`, else `DEFAULT_OUTPUT`; USD: the worst case of
those tokens over the model's targets). Each try sent to a backend then reserves, just before it
is sent, one request (and its token estimate) of the target's quotas and, for a target with a
price, its worst-case cost against `free_only` budgets; a refusal there skips the target with the
same reason the routing filter gives. When the request ends the reservations are replaced by the
real figures (`settle`), or given back if no upstream was reached (`refund`). So concurrent
requests see each other: a 100-request quota lets exactly 100 requests through in one process.
The rule of a limit is unchanged (`proxy.state.base`): it admits while what is used, reservations
included, is under it, so a request's tokens or cost can carry a counter past it by one request.

Across worker processes the counters are shared through the ledger: each process saves its own
counts (reservations included) with each flush and takes in the others' (see `proxy.usage.ledger`).
That sharing is at most one `usage.flush_interval` old, so with N workers a limit can be passed by
what the other N-1 workers admit within one interval; exact admission across processes needs a
shared `proxy.state` implementation.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable
from zoneinfo import ZoneInfo

from proxy.call import Call
from proxy.config import Budget, Config, Key, Quota, RateLimit, Target
from proxy.errors import ProxyError
from proxy.state import Amount, Ask, Hold, Limit, MemoryState, Refused, State, Window, day_bounds, month_bounds
from proxy.state.base import EPS, Row
from proxy.usage import prices, pricing

if TYPE_CHECKING:
    from proxy.routing.features import Features

__all__ = ["Accounts", "BudgetExceeded", "RateLimited", "QuotaState", "day_bounds", "month_bounds", "iso"]
log = logging.getLogger("turnout.usage")
DEFAULT_OUTPUT = 4096  # tokens reserved for an answer when neither the request nor the target bounds it


def iso(ts: float, tz: ZoneInfo | None = None) -> str:
    return datetime.fromtimestamp(ts, tz or ZoneInfo("UTC")).isoformat(timespec="seconds")


class BudgetExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


# --- quotas ------------------------------------------------------------------------------------


class QuotaState:
    """One quota's rules over its counter in the state store."""

    def __init__(self, scope: str, name: str, cfg: Quota, state: State) -> None:
        self.scope, self.name, self.cfg, self.state = scope, name, cfg, state
        self.counter = f"quota:{scope}:{name}"
        self.window = Window("day", cfg.timezone, cfg.reset_hour)
        self.limit = Limit(None if cfg.requests_per_day is None else cfg.requests_per_day - cfg.reserve,
                           None if cfg.tokens_per_day is None else cfg.tokens_per_day - cfg.reserve_tokens)
        self.warned = -1.0  # the start of the period whose reserve warning was logged
        state.declare(self.counter, self.window)

    def ask(self, tokens: int, tag: Any) -> Ask:
        return Ask(self.counter, self.window, Amount(1, tokens), self.limit, tag)

    def add(self, requests: int, tokens: int) -> None:
        """Count without a check (replays)."""
        self.state.admit([Ask(self.counter, self.window, Amount(requests, tokens))])

    def left(self) -> tuple[int | None, int | None]:
        u, q = self.state.usage(self.counter, self.window), self.cfg
        return (None if q.requests_per_day is None else max(0, q.requests_per_day - u.requests),
                None if q.tokens_per_day is None else max(0, q.tokens_per_day - u.tokens))

    def shortage(self) -> str | None:
        """What is left, when it is at or under the reserve: "95 requests left today, reserve 100"."""
        req, tok = self.left()
        if req is not None and req <= self.cfg.reserve:
            return f"{req} requests left today, reserve {self.cfg.reserve}"
        if tok is not None and tok <= self.cfg.reserve_tokens:
            return f"{tok} tokens left today, reserve {self.cfg.reserve_tokens}"
        return None

    def status(self) -> dict[str, Any]:
        req, tok = self.left()
        q, u = self.cfg, self.state.usage(self.counter, self.window)
        return {"scope": self.scope, "name": self.name, "requests_per_day": q.requests_per_day,
                "tokens_per_day": q.tokens_per_day, "requests_used": u.requests, "tokens_used": u.tokens,
                "requests_left": req, "tokens_left": tok, "reserve": q.reserve, "reserve_tokens": q.reserve_tokens,
                "in_reserve": self.shortage() is not None, "timezone": q.timezone, "reset_hour": q.reset_hour,
                "resets_at": iso(u.end, self.window.zone)}


# --- budgets -----------------------------------------------------------------------------------


class Period:
    """One period (daily or monthly) of a budget: its counter, limit and the warnings logged in it."""

    def __init__(self, scope: str, kind: str, limit: float, tz: str, hour: int, state: State) -> None:
        self.kind, self.limit = ("daily" if kind == "day" else "monthly"), limit
        self.counter, self.window = f"budget:{scope}:{kind}", Window(kind, tz, hour)  # type: ignore[arg-type]
        self.alerted = self.warned = -1.0  # the period start whose alert / exceeded warning was logged
        state.declare(self.counter, self.window)


class BudgetState:
    def __init__(self, scope: str, label: str, cfg: Budget, tz: str, hour: int, state: State) -> None:
        self.scope, self.label, self.cfg, self.state = scope, label, cfg, state  # scope: "all" or "key:<name>"
        self.periods = [Period(scope, kind, limit, tz, hour, state)
                        for kind, limit in (("day", cfg.daily), ("month", cfg.monthly)) if limit is not None]

    def asks(self, usd: float) -> list[Ask]:
        return [Ask(p.counter, p.window, Amount(usd=usd), Limit(usd=p.limit), ("budget", self, p)) for p in self.periods]

    def exceeded(self) -> tuple[Period, float, float] | None:
        """The first spent period: (period, spent, end)."""
        for p in self.periods:
            u = self.state.usage(p.counter, p.window)
            if u.usd >= p.limit - EPS:
                return p, u.usd, u.end
        return None

    def warn(self, restored: bool = False) -> None:
        """Log the alert and the exceeded warning once per period (a restored count: mark them only)."""
        for p in self.periods:
            u = self.state.usage(p.counter, p.window)
            if p.alerted != u.start and u.usd >= p.limit * self.cfg.alert - EPS:
                p.alerted = u.start
                if not restored:
                    log.warning("budget: %s has spent $%.4f of its %s budget of $%.2f (%.0f %%, alert at %.0f %%)",
                                self.label, u.usd, p.kind, p.limit, 100 * u.usd / p.limit if p.limit else 100,
                                100 * self.cfg.alert)
            if p.warned != u.start and u.usd >= p.limit - EPS:
                p.warned = u.start
                if not restored:
                    then = "requests get 429 budget_exceeded" if self.cfg.on_exceeded == "reject" else \
                        "only free targets are used"
                    log.warning("budget: %s has spent its %s budget of $%.2f; %s until %s", self.label, p.kind,
                                p.limit, then, iso(u.end, p.window.zone))

    def status(self) -> list[dict[str, Any]]:
        out = []
        for p in self.periods:
            u, limit = self.state.usage(p.counter, p.window), p.limit
            out.append({"scope": self.scope, "name": self.label, "period": p.kind, "limit_usd": limit,
                        "spent_usd": round(u.usd, 10), "share": round(u.usd / limit, 6) if limit else 1.0,
                        "alert": self.cfg.alert, "alerting": u.usd >= limit * self.cfg.alert - EPS,
                        "exceeded": u.usd >= limit - EPS, "on_exceeded": self.cfg.on_exceeded,
                        "resets_at": iso(u.end, p.window.zone)})
        return out


def rate_ask(key: str, cfg: RateLimit, tokens: int) -> Ask:
    return Ask(f"rate:key:{key}", Window("minute"), Amount(1, tokens),
               Limit(cfg.requests_per_minute, cfg.tokens_per_minute), ("rate", key))


# --- all of it ---------------------------------------------------------------------------------


class Accounts:
    """Every quota, rate limit and budget of a config, with the routing filters and gates that
    enforce them (installed only when configured, so an unconfigured proxy pays nothing)."""

    def __init__(self, cfg: Config, state: State | None = None) -> None:
        self.cfg = cfg
        self.state: State = state if state is not None else MemoryState()
        u = cfg.usage
        self.quotas: list[QuotaState] = []
        by_backend: dict[str, QuotaState] = {}
        for name, b in cfg.backends.items():
            if b.quota is not None:
                by_backend[name] = QuotaState("backend", name, b.quota, self.state)
                self.quotas.append(by_backend[name])
        self.target_quotas: dict[str, list[QuotaState]] = {}
        for name, t in cfg.models.items():
            qs = []
            if t.quota is not None:
                qs.append(QuotaState("target", name, t.quota, self.state))
                self.quotas.append(qs[-1])
            if t.backend in by_backend:
                qs.append(by_backend[t.backend])
            if qs:
                self.target_quotas[name] = qs
        self.overall = BudgetState("all", "the overall budget", u.budget, u.timezone, u.reset_hour, self.state) \
            if u.budget is not None else None
        self.key_budgets = {k.name: BudgetState(f"key:{k.name}", f"key '{k.name}'", k.budget, u.timezone,
                                                u.reset_hour, self.state) for k in cfg.keys if k.budget is not None}
        self.rates = {k.name: k.rate_limit for k in cfg.keys if k.rate_limit is not None}
        self.budgets = ([self.overall] if self.overall else []) + list(self.key_budgets.values())
        # per model name a client may ask for: its targets (for the worst-case cost) and whether any is free
        self.candidates: dict[str, list[Target]] = {name: [t] for name, t in cfg.models.items()}
        self.candidates.update({name: [cfg.models[t] for t in r.chain] for name, r in cfg.routes.items()})
        self.any_free = {name: any(prices.free(t) for t in ts) for name, ts in self.candidates.items()}
        self._warn: list[QuotaState] = []

    # --- wiring ----------------------------------------------------------------------------------

    def adopt(self, key: Key) -> None:
        """A key created at run time (proxy.usage.keystore): its rate limit and budget from now on."""
        if key.rate_limit is not None and key.name not in self.rates:
            self.rates[key.name] = key.rate_limit
        if key.budget is not None and key.name not in self.key_budgets:
            u = self.cfg.usage
            b = self.key_budgets[key.name] = BudgetState(f"key:{key.name}", f"key '{key.name}'", key.budget,
                                                         u.timezone, u.reset_hour, self.state)
            self.budgets.append(b)

    def gates(self, stored_keys: bool = False) -> list[Callable[[Call], None]]:
        """Checks before routing, only those the config needs (an unconfigured proxy pays nothing):
        the admission of the key's rate limit and `reject` budgets, then a spent `free_only` budget
        on a model with no free target. `stored_keys`: keys created at run time may bring rate
        limits and budgets (`adopt`)."""
        out: list[Callable[[Call], None]] = []
        if self.rates or any(b.cfg.on_exceeded == "reject" for b in self.budgets) or stored_keys:
            out.append(self.admit)
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

    def try_gate(self) -> Callable[[Target, Call], str | None] | None:
        """The dispatcher's admission of each try (quotas, `free_only` budgets), if the config has any."""
        if self.target_quotas or any(b.cfg.on_exceeded == "free_only" for b in self.budgets):
            return self.admit_attempt
        return None

    # --- estimates -------------------------------------------------------------------------------

    @staticmethod
    def bounds(f: Features | None, target: Target | None = None) -> tuple[int, int]:
        """The most prompt and answer tokens a request may use: a free upper bound of the prompt (its
        UTF-8 bytes), and `max_tokens`, else the target's `max_output_tokens`, else `DEFAULT_OUTPUT`."""
        if f is None:
            return 0, 0
        return f.prompt_tokens_at_most, f.max_tokens or (target.max_output_tokens if target else None) or DEFAULT_OUTPUT

    def worst_cost(self, call: Call) -> float:
        """The most the request can cost at any target of the model or route it names."""
        targets = self.candidates.get(call.request_model) or list(self.cfg.models.values())
        return max((pricing.estimate(*self.bounds(call.features, t), t.price) for t in targets), default=0.0)

    # --- the request path ------------------------------------------------------------------------

    def _budget_for(self, key: Any) -> list[BudgetState]:
        out = [self.overall] if self.overall is not None else []
        if key is not None and key.name in self.key_budgets:
            out.append(self.key_budgets[key.name])
        return out

    def admit(self, call: Call) -> None:
        """The gate: the key's rate limit and every budget of the request, checked and reserved in one step."""
        key = call.key
        asks: list[Ask] = []
        rate = self.rates.get(key.name) if key is not None else None
        if rate is not None:
            asks.append(rate_ask(key.name, rate, sum(self.bounds(call.features))))  # type: ignore[union-attr]
        budgets = [b for b in self._budget_for(key) if b.cfg.on_exceeded == "reject"]
        if budgets:
            usd = self.worst_cost(call)
            for b in budgets:
                asks += b.asks(usd)
        if not asks:
            return
        got = self.state.admit(asks, call.hold)
        if isinstance(got, Hold):
            call.hold = got
            return
        secs = max(1, math.ceil(got.retry_after))
        if got.ask.tag[0] == "rate":
            what = f"{got.limit:g} {got.field} per minute"
            raise RateLimited(f"Rate limit reached for key '{got.ask.tag[1]}': {what}. Try again in {secs} s.",
                              headers={"retry-after": str(secs), "x-ratelimit-reset": f"{secs}s"})
        _, b, p = got.ask.tag
        resets = iso(got.resets_at, p.window.zone)
        raise BudgetExceeded(
            f"Budget exceeded: {b.label} has spent ${got.used:.4f} of its {p.kind} budget of ${p.limit:.2f}. "
            f"It resets at {resets}.", headers={"retry-after": str(secs), "x-turnout-budget-resets": resets})

    def admit_attempt(self, target: Target, call: Call) -> str | None:
        """Before a try is sent: reserve one request (and its tokens) of the target's quotas and, for a
        target with a price, its cost against `free_only` budgets; or say why not (the try is skipped)."""
        qs = self.target_quotas.get(target.name, ())
        free_only = [] if prices.free(target) else \
            [b for b in self._budget_for(call.key) if b.cfg.on_exceeded == "free_only"]
        if not qs and not free_only:
            return None
        prompt, out = self.bounds(call.features, target)
        asks = [q.ask(prompt + out, ("quota", q, len(call.attempts), target.name)) for q in qs]
        for b in free_only:
            asks += b.asks(pricing.estimate(prompt, out, target.price))
        got = self.state.admit(asks, call.hold)
        if isinstance(got, Hold):
            call.hold = got
            return None
        if got.ask.tag[0] == "budget":
            _, b, p = got.ask.tag
            return f"budget: {b.label} {p.kind} budget of ${p.limit:.2f} is spent (free targets only)"
        return self._short(got.ask.tag[1], got)

    def _short(self, q: QuotaState, refused: Refused | None = None) -> str | None:
        short = q.shortage()
        if short is None and refused is not None:  # refused with more left than the reserve: say what refused
            short = f"{refused.limit:g} {refused.field} per day reached"
        if short is None:
            return None
        if q not in self._warn:
            self._warn.append(q)
        return f"quota: {short}" if q.scope == "target" else f"backend {q.name} quota: {short}"

    def quota_filter(self, target: Target, f: Features) -> str | None:
        for q in self.target_quotas.get(target.name, ()):
            why = self._short(q)
            if why:
                return why
        return None

    def budget_filter(self, target: Target, f: Features) -> str | None:
        if prices.free(target):
            return None
        for b in self._budget_for(f.key):
            if b.cfg.on_exceeded == "free_only":
                hit = b.exceeded()
                if hit:
                    return f"budget: {b.label} {hit[0].kind} budget of ${hit[0].limit:.2f} is spent (free targets only)"
        return None

    def free_only_gate(self, call: Call) -> None:
        """A spent free_only budget and a model with no free target: 429 with the reset time, not a 503."""
        if self.any_free.get(call.request_model, True):
            return
        for b in self._budget_for(call.key):
            if b.cfg.on_exceeded == "free_only":
                hit = b.exceeded()
                if hit:
                    p, spent, end = hit
                    now = self.state.clock.time()
                    raise BudgetExceeded(
                        f"Budget exceeded: {b.label} has spent ${spent:.4f} of its {p.kind} budget of ${p.limit:.2f}, "
                        f"so only free targets may be used, and '{call.request_model}' has none. "
                        f"The budget resets at {iso(end, p.window.zone)}.",
                        headers={"retry-after": str(max(1, math.ceil(end - now))),
                                 "x-turnout-budget-resets": iso(end, p.window.zone)})

    def settle(self, call: Call, tokens: int, cost: float) -> None:
        """A finished request: its reservations become the real figures (on the request path: cheap)."""
        hold = call.hold
        if hold is not None and not hold.done:
            if not any(not a.outcome.startswith("skipped") for a in call.attempts):
                self.state.refund(hold)  # no upstream was reached
            else:
                billed: set[str] = set()  # a budget's cost is settled on its first reservation, the rest on 0
                self.state.settle(hold, [self._actual(ask, call, tokens, cost, billed) for ask in hold.asks])
            for b in {id(ask.tag[1]): ask.tag[1] for ask in hold.asks if ask.tag[0] == "budget"}.values():
                b.warn()
        if self._warn:
            self._log_reserve(call)

    @staticmethod
    def _actual(ask: Ask, call: Call, tokens: int, cost: float, billed: set[str]) -> Amount:
        kind = ask.tag[0]
        if kind == "rate":
            return Amount(1, tokens)
        if kind == "budget":
            if ask.counter in billed:
                return Amount()
            billed.add(ask.counter)
            return Amount(usd=cost)
        _, _, i, target = ask.tag  # a quota: the try at attempts[i], if it was sent
        a = call.attempts[i] if i < len(call.attempts) else None
        if a is None or a.target != target or a.outcome.startswith("skipped"):
            return Amount()
        return Amount(1, tokens if a.outcome == "ok" else 0)

    def _log_reserve(self, call: Call) -> None:
        for q in self._warn:
            short = q.shortage()
            start = self.state.usage(q.counter, q.window).start
            if short is None or q.warned == start:
                continue
            q.warned = start
            skipped = any(a.outcome.startswith("skipped:") and "quota" in a.outcome for a in call.attempts)
            where = call.target if skipped and call.target else "the next target of each chain"
            log.warning("%s: %s — routing to %s", q.name, short, where)
        self._warn.clear()

    # --- persistence and reporting -----------------------------------------------------------------

    def counters(self) -> list[str]:
        """The names of the counters saved in the ledger."""
        return [q.counter for q in self.quotas] + [p.counter for b in self.budgets for p in b.periods]

    def snapshot(self) -> list[Row]:
        names = set(self.counters())
        return [row for row in self.state.snapshot() if row[0] in names]

    def restore(self, rows: list[Row]) -> set[str]:
        """Take what other processes (or earlier runs) saved for the current periods as the base of
        each counter: `rows` are (name, start, requests, tokens, usd) summed over them. Returns the
        names found. A restored budget past its alert or limit does not warn again this period."""
        done = self.state.rebase(rows)
        for b in self.budgets:
            b.warn(restored=True)
        return done

    def remaining(self) -> list[dict[str, Any]]:
        """Per quota: limits, used, left, reserve and reset time (for /turnout/usage and metrics)."""
        return [q.status() for q in self.quotas]

    def spent(self) -> list[dict[str, Any]]:
        """Per budget and period: limit, spent, share, alerting, exceeded, reset time."""
        return [s for b in self.budgets for s in b.status()]

    def alerting(self) -> list[dict[str, Any]]:
        return [s for s in self.spent() if s["alerting"]]
