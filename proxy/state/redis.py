"""`RedisState`: the `State` every replica shares, in Redis (``state: {redis: {...}}`` in proxy.yaml).

Owns: exact limits across replicas, shared circuit breakers, the shared key-value store, and
what a replica does while Redis cannot be reached.

- **Admission** is one Lua script (`proxy.state.redis_scripts.ADMIT`): every asked counter is
  checked and reserved atomically in one round trip, so N replicas admit exactly what one would.
  Day and month windows (reset hour, time zone) are computed here and passed as keys and expiry;
  rate limits are sliding minutes kept in Redis. `settle` / `refund` are one more script each.
- **Reads** on the hot path (`usage` for the quota filter and the gauges, `breaker` for routing)
  come from a local mirror refreshed by one pipelined round trip when it is older than
  `REFRESH` seconds (and after every admission, from what the script returns). A circuit opened
  through one replica is therefore seen by the others within `REFRESH` (0.25 s).
  `breaker_begin` / `breaker_success` cost no round trip while the mirror says the circuit is
  closed with no failures; failures, trials and closing an open circuit are scripts.
- **The client is synchronous** (redis-py, blocking sockets with `timeout` on connect and read, no
  retries): on a local network a call is ~0.1 ms, less than an asyncio round trip costs, and the
  `State` interface stays synchronous. A call is bounded by `timeout` (default 50 ms), once.
- **Redis trouble is not an outage.** The first failed call logs one warning, counts in `errors`
  and switches this replica to a private `MemoryState` seeded with the last fleet totals it saw
  (`on_error: local`), or makes `admit` raise `StateUnavailable`, a 503 (`on_error: reject`;
  breakers, reads and the key-value store still fall back to memory). A thread pings Redis every
  `PROBE` seconds; when it answers, the next call adds what this replica counted meanwhile back
  into Redis and sharing resumes. `degraded` says why, for /ready and /turnout/providers.

The ledger does not carry counters in this mode (`snapshot` is empty, `rebase` takes nothing):
Redis holds them. A Redis restart without persistence starts the counters from zero.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.errors import ProxyError
from proxy.state import redis_scripts as lua
from proxy.state.base import MINUTE, Amount, Ask, Breaker, Clock, Hold, Refused, Row, SystemClock, Usage, Window
from proxy.state.memory import MemoryState

log = logging.getLogger("turnout.state")
REFRESH = 0.25  # seconds a mirrored read (usage, breaker) may be old
PROBE = 0.5  # seconds between pings while Redis is unreachable
TRIAL_TTL = 300.0  # a half-open trial older than this is taken as lost (its replica died)
KEEP = 2 * 86400  # a calendar counter's key outlives its period by this (reports of the day before)
T = TypeVar("T")


class StateUnavailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "shared_state_unavailable"


@dataclass(frozen=True)
class _Mark:
    """Where a Redis reservation sits: the counter's key(s) and, for a minute, the event id."""

    keys: tuple[str, ...]
    kind: str  # d | m
    start: float  # the calendar period's start (0 for a minute)
    id: str = ""


@dataclass(frozen=True)
class _LocalMark:
    """A reservation made in a fallback `MemoryState` while Redis was unreachable."""

    local: MemoryState
    mark: Any


class RedisState:
    def __init__(self, url: str, prefix: str = "turnout:", on_error: str = "local", timeout: float = 0.05,
                 clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.url, self.prefix, self.on_error, self.timeout = url, prefix, on_error, timeout
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                           health_check_interval=0)
        self._admit = self.client.register_script(lua.ADMIT)
        self._settle = self.client.register_script(lua.SETTLE)
        self._begin = self.client.register_script(lua.BREAKER_BEGIN)
        self._failure = self.client.register_script(lua.BREAKER_FAILURE)
        self._success = self.client.register_script(lua.BREAKER_SUCCESS)
        self._expire = self.client.register_script(lua.BREAKER_EXPIRE)
        self._merge = self.client.register_script(lua.MERGE)
        self.windows: dict[str, Window] = {}  # declared counters
        self.seen: dict[str, tuple[float, float, float, float]] = {}  # counter → (start, r, t, u), fleet-wide
        self.records: dict[str, tuple[int, float | None, float | None]] = {}  # breaker → (failures, opened, trial)
        self.trials: set[str] = set()  # breakers whose half-open trial this replica holds
        self.fresh = -1e9  # monotonic time of the last mirror refresh
        self.local = MemoryState(self.clock)  # what this replica uses while Redis is unreachable
        self.degraded: str | None = None  # why sharing is off now, or None
        self.errors = 0  # failed Redis calls, ever
        self.listeners: list[Callable[[], None]] = []  # called on each failed call (turnout_state_errors_total)
        self._back = threading.Event()  # set by the probe thread when Redis answers again
        self._closed = threading.Event()
        self._probe: threading.Thread | None = None
        self.replica = f"{os.uname().nodename}-{os.getpid()}"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def describe(self) -> dict[str, Any]:
        """For /ready and /turnout/providers: where the shared state is and whether it is shared now."""
        return {"backend": "redis", "url": public(self.url), "status": "degraded" if self.degraded else "ok", "reason": self.degraded,
                "on_error": self.on_error, "errors": self.errors}

    def close(self) -> None:
        self._closed.set()
        self.client.close()

    # --- failure and recovery --------------------------------------------------------------------

    def _run(self, fn: Callable[[], T], fallback: Callable[[], T]) -> T:
        """`fn` against Redis, or `fallback` while (or because) Redis cannot be reached."""
        if self.degraded is not None and not self._resume():
            return fallback()
        try:
            return fn()
        except (redis.RedisError, OSError) as e:
            self._fail(e)
            return fallback()

    def _error(self) -> None:
        self.errors += 1
        for f in self.listeners:
            f()

    def _fail(self, e: BaseException) -> None:
        self._error()
        if self.degraded is not None:
            return
        self.degraded = f"redis at {public(self.url)} unreachable ({type(e).__name__}: {str(e)[:120]})"
        then = ("carrying on with this replica's own counters (limits hold per replica until it is back)"
                if self.on_error == "local" else "refusing requests that need a shared limit (503)")
        log.warning("shared state: %s; %s", self.degraded, then)
        self.local = MemoryState(self.clock)  # seeded with the fleet's totals as last seen
        now = self.clock.time()
        rows: list[Row] = []
        for name, window in self.windows.items():
            self.local.declare(name, window)
            seen = self.seen.get(name)
            if window.calendar and seen is not None and seen[0] == window.bounds(now)[0]:
                rows.append((name, *seen))
        self.local.rebase(rows)
        self._back.clear()
        self._probe = threading.Thread(target=self._ping, name="turnout-state-probe", daemon=True)
        self._probe.start()

    def _ping(self) -> None:
        while not self._closed.wait(PROBE):
            try:
                self.client.ping()
            except (redis.RedisError, OSError):
                self._error()
                continue
            self._back.set()
            return

    def _resume(self) -> bool:
        """On the request path, once the probe heard Redis: add back what was counted meanwhile."""
        if not self._back.is_set():
            return False
        self._back.clear()
        now = self.clock.time()
        own = [row for row in self.local.snapshot() if any(row[2:])]
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, start, r, t, u in own:
                window = self.windows.get(name)
                if window is None or window.bounds(now)[0] != start:
                    continue  # counted in a period that has ended
                total = self.local.usage(name, window)
                self._merge(keys=[self.key("c", name, str(int(start)))],
                            args=[total.requests, total.tokens, repr(total.usd), r, t, repr(u),
                                  int(window.bounds(start)[1]) + KEEP], client=pipe)
            pipe.execute()
        except (redis.RedisError, OSError) as e:
            self._error()
            log.debug("shared state: still unreachable (%s)", type(e).__name__)
            self._probe = threading.Thread(target=self._ping, name="turnout-state-probe", daemon=True)
            self._probe.start()
            return False
        log.warning("shared state: redis reachable again; limits are shared again (%d counters merged back)",
                    len(own))
        self.degraded = None
        self.fresh = -1e9
        return True

    # --- the mirror ------------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        mono = self.clock.monotonic()
        if not force and mono - self.fresh < REFRESH:
            return
        self.fresh = mono
        now = self.clock.time()
        names = list(self.windows)
        starts = []
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            window = self.windows[name]
            start = window.bounds(now)[0] if window.calendar else 0.0
            starts.append(start)
            pipe.hmget(self.key("c", name, str(int(start))) if window.calendar else self.key("m", name, "n"),
                       "r", "t", "u")
        breakers = list(self.records)
        for name in breakers:
            pipe.hmget(self.key("b", name), "f", "o", "t")
        got = pipe.execute()
        for name, start, v in zip(names, starts, got):
            self.seen[name] = (start, *_nums(v))
        for name, v in zip(breakers, got[len(names):]):
            self._record(name, v)

    def _record(self, name: str, v: Sequence[Any]) -> tuple[int, float | None, float | None]:
        f, o, t = (_text(x) for x in v[:3])
        rec = (int(float(f or 0)), float(o) if o else None, float(t) if t else None)
        self.records[name] = rec
        return rec

    # --- counters --------------------------------------------------------------------------------

    def declare(self, counter: str, window: Window) -> None:
        self.windows[counter] = window
        self.local.declare(counter, window)

    @property
    def changes(self) -> int:
        return 0  # nothing for the ledger to save: Redis holds the counters

    def snapshot(self) -> list[Row]:
        return []

    def rebase(self, rows: Iterable[Row]) -> set[str]:
        return set()

    def admit(self, asks: Sequence[Ask], hold: Hold | None = None) -> Hold | Refused:
        return self._run(lambda: self._admit_redis(asks, hold), lambda: self._admit_local(asks, hold))

    def _admit_redis(self, asks: Sequence[Ask], hold: Hold | None) -> Hold | Refused:
        now = self.clock.time()
        keys: list[str] = []
        args: list[Any] = [repr(now), len(asks)]
        marks: list[_Mark] = []
        for ask in asks:
            w = ask.window
            self.windows.setdefault(ask.counter, w)
            if w.calendar:
                start, end = w.bounds(now)
                mark = _Mark((self.key("c", ask.counter, str(int(start))),), "d", start)
                args += ["d", int(end) + KEEP]
            else:
                mark = _Mark((self.key("m", ask.counter, "z"), self.key("m", ask.counter, "e"),
                              self.key("m", ask.counter, "n")), "m", 0.0, os.urandom(6).hex())
                args += ["m", 0]
            keys += mark.keys
            args += [*(repr(x) for x in ask.amount), *("" if x is None else repr(x) for x in ask.limit), mark.id]
            marks.append(mark)
        out = self._admit(keys=keys, args=args)
        if int(out[0]) == 0:
            i, f = int(out[1]) - 1, int(out[2]) - 1
            ask, limit, used, at = asks[i], float(out[3]), float(out[4]), float(out[5])
            if at < 0:
                at = ask.window.bounds(now)[1]
            return Refused(ask, ("requests", "tokens", "usd")[f], limit, used, at, max(0.0, at - now))
        for j, (ask, mark) in enumerate(zip(asks, marks)):
            r, t, u = (float(x) for x in out[1 + 3 * j: 4 + 3 * j])
            self.seen[ask.counter] = (mark.start, r, t, u)
        hold = hold if hold is not None else Hold()
        hold.asks += asks
        hold.marks += marks
        return hold

    def _admit_local(self, asks: Sequence[Ask], hold: Hold | None) -> Hold | Refused:
        if self.on_error == "reject":
            raise StateUnavailable("Turnout cannot reach its shared state (Redis) to check this request's limits; "
                                   "try again shortly.", headers={"retry-after": "1"})
        local = self.local
        for ask in asks:
            self.windows.setdefault(ask.counter, ask.window)
        got = local.admit(asks)
        if isinstance(got, Refused):
            return got
        hold = hold if hold is not None else Hold()
        hold.asks += got.asks
        hold.marks += [_LocalMark(local, m) for m in got.marks]
        return hold

    def settle(self, hold: Hold, actual: Sequence[Amount]) -> None:
        if hold.done:
            return
        hold.done = True
        now = self.clock.time()
        keys: list[str] = []
        args: list[Any] = [0]
        local: dict[int, tuple[MemoryState, Hold, list[Amount]]] = {}
        for ask, mark, real in zip(hold.asks, hold.marks, actual):
            if isinstance(mark, _LocalMark):
                _, h, amounts = local.setdefault(id(mark.local), (mark.local, Hold(), []))
                h.asks.append(ask)
                h.marks.append(mark.mark)
                amounts.append(real)
                continue
            if mark.kind == "d" and mark.start != ask.window.bounds(now)[0]:
                continue  # a period that has ended keeps what it had
            delta = [real[i] - ask.amount[i] for i in range(3)]
            if not any(delta):
                continue
            seen = self.seen.get(ask.counter)
            if seen is not None and seen[0] == mark.start:  # the mirror follows at once
                self.seen[ask.counter] = (seen[0], *(seen[i + 1] + delta[i] for i in range(3)))
            keys += mark.keys
            args += [mark.kind, mark.id, *(repr(float(d)) for d in delta)]
            args[0] += 1
        for mem, h, amounts in local.values():
            mem.settle(h, amounts)
        if args[0]:
            self._run(lambda: self._settle(keys=keys, args=args), lambda: None)  # lost: the reservation stays

    def refund(self, hold: Hold) -> None:
        self.settle(hold, [Amount()] * len(hold.asks))

    def usage(self, counter: str, window: Window) -> Usage:
        if counter not in self.windows:
            self.declare(counter, window)
            self.fresh = -1e9
        return self._run(lambda: self._usage(counter, window), lambda: self.local.usage(counter, window))

    def _usage(self, counter: str, window: Window) -> Usage:
        self._refresh()
        now = self.clock.time()
        start, end = window.bounds(now)
        seen = self.seen.get(counter)
        if seen is None or (window.calendar and seen[0] != start):
            return Usage(0, 0, 0.0, start, end)
        _, r, t, u = seen
        return Usage(int(round(r)), int(round(t)), u, start if window.calendar else now - MINUTE, end)

    # --- circuit breakers ------------------------------------------------------------------------

    def _view(self, rec: tuple[int, float | None, float | None]) -> Breaker:
        f, o, t = rec
        now = self.clock.time()
        return Breaker(f, None if o is None else max(0.0, now - o), t is not None and now - t < TRIAL_TTL)

    def _mirrored(self, name: str) -> tuple[int, float | None, float | None]:
        if name not in self.records:
            self.records[name] = (0, None, None)
            self._refresh(force=True)
        else:
            self._refresh()
        return self.records[name]

    def breaker(self, name: str) -> Breaker:
        return self._run(lambda: self._view(self._mirrored(name)), lambda: self.local.breaker(name))

    def breaker_begin(self, name: str, cooldown: float) -> bool:
        def shared() -> bool:
            if self._mirrored(name)[1] is None:
                return True  # closed, as far as this replica knows (at most REFRESH old): no round trip
            out = self._begin(keys=[self.key("b", name)], args=[repr(self.clock.time()), repr(cooldown), TRIAL_TTL])
            rec = self._record(name, out)
            ok = _text(out[3]) == "1"
            if ok and rec[1] is not None:
                self.trials.add(name)
            return ok
        return self._run(shared, lambda: self.local.breaker_begin(name, cooldown))

    def breaker_release(self, name: str) -> None:
        self.local.breaker_release(name)
        if name in self.trials:
            self.trials.discard(name)
            self._run(lambda: self.client.hdel(self.key("b", name), "t"), lambda: 0)

    def breaker_success(self, name: str) -> Breaker:
        def shared() -> Breaker:
            rec = self._mirrored(name)
            if rec == (0, None, None) and name not in self.trials:
                return Breaker()  # nothing to reset: no round trip
            self.trials.discard(name)
            before = self._view(self._record(name, self._success(keys=[self.key("b", name)])))
            self.records[name] = (0, None, None)
            return before
        return self._run(shared, lambda: self.local.breaker_success(name))

    def breaker_failure(self, name: str, threshold: int) -> tuple[Breaker, bool]:
        def shared() -> tuple[Breaker, bool]:
            mine = name in self.trials
            self.trials.discard(name)
            out = self._failure(keys=[self.key("b", name)],
                                args=[repr(self.clock.time()), threshold, "1" if mine else "0"])
            return self._view(self._record(name, out)), _text(out[3]) == "1"
        return self._run(shared, lambda: self.local.breaker_failure(name, threshold))

    def breaker_expire(self, name: str, cooldown: float) -> None:
        def shared() -> None:
            self._record(name, self._expire(keys=[self.key("b", name)], args=[repr(self.clock.time()), repr(cooldown)]))
        self._run(shared, lambda: self.local.breaker_expire(name, cooldown))

    # --- key-value store -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        return self._run(lambda: self.client.get(self.key("kv", key)), lambda: self.local.get(key))

    def put(self, key: str, value: bytes, ttl: float) -> None:
        ms = max(1, int(ttl * 1000))
        self._run(lambda: self.client.set(self.key("kv", key), value, px=ms), lambda: self.local.put(key, value, ttl))

    def delete(self, key: str) -> None:
        self.local.delete(key)
        self._run(lambda: self.client.delete(self.key("kv", key)), lambda: 0)


def public(url: str) -> str:
    """The URL without a password, for banners and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")).geturl()


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else ("" if x is None else str(x))


def _nums(v: Sequence[Any]) -> tuple[float, float, float]:
    r, t, u = (float(_text(x) or 0) for x in v)
    return r, t, u
