"""The in-process `State`: dicts and deques in this process, the default.

Atomic because the event loop runs one thing at a time and no method awaits. Other worker
processes' counts come in through `rebase` (the SQLite ledger carries them, see
`proxy.usage.ledger`), so across processes a limit holds only as well as that sharing is fresh:
each process admits against what it last heard from the others (at most one flush interval old).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterable, Sequence

from proxy.state.base import (FIELDS, MINUTE, Amount, Ask, Breaker, Clock, Hold, Refused, Row, SystemClock, Usage,
                              Window, over)

KV_SWEEP = 1024  # expired entries are swept when the store has grown by this many since the last sweep
KV_MAX_BYTES = 256 * 2**20  # default bound of the key-value store (keys and values), least recently used out
KV_OVERHEAD = 100  # bytes counted per entry beyond its key and value (dict slot, tuple, float)


class _Cell:
    """One counter: totals (base included) in the current period, or the events of the last minute."""

    __slots__ = ("window", "start", "end", "n", "base", "events")

    def __init__(self, window: Window) -> None:
        self.window = window
        self.start = self.end = 0.0
        self.n = [0, 0, 0.0]  # requests, tokens, usd
        self.base: tuple[int, int, float] = (0, 0, 0.0)
        self.events: deque[list[float]] = deque()  # minute windows: [time, requests, tokens, usd]

    def roll(self, now: float) -> None:
        if not self.window.calendar:
            cutoff = now - MINUTE
            ev, n = self.events, self.n
            while ev and ev[0][0] <= cutoff:
                _, r, t, u = ev.popleft()
                n[0] -= int(r)
                n[1] -= int(t)
                n[2] -= u
            return
        if now >= self.end or now < self.start:
            self.start, self.end = self.window.bounds(now)
            self.n = [0, 0, 0.0]
            self.base = (0, 0, 0.0)

    def refusal(self, ask: Ask, now: float) -> Refused | None:
        for i, name in enumerate(FIELDS):
            limit = ask.limit[i]
            if limit is None or not over(self.n[i], limit, name):
                continue
            if self.window.calendar:
                at = self.end
            else:  # when enough of the last minute's events leave the window to be under the limit
                excess, at = self.n[i] - limit, now + MINUTE
                for ev in self.events:
                    excess -= ev[i + 1]
                    at = ev[0] + MINUTE
                    if excess < 0:
                        break
            return Refused(ask, name, limit, self.n[i], at, max(0.0, at - now))
        return None

    def add(self, a: Sequence[float], sign: int = 1) -> None:
        self.n[0] += sign * int(a[0])
        self.n[1] += sign * int(a[1])
        self.n[2] += sign * a[2]


class MemoryState:
    def __init__(self, clock: Clock | None = None, kv_max_bytes: int = KV_MAX_BYTES) -> None:
        self.clock: Clock = clock or SystemClock()
        self.cells: dict[str, _Cell] = {}
        self._changes = 0
        self.breakers: dict[str, list[float | int | bool | None]] = {}  # [failures, opened_at, trial]
        self.kv: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # oldest use first
        self._kv_swept = 0
        self.kv_max_bytes = kv_max_bytes
        self.kv_bytes = 0

    # --- counters ------------------------------------------------------------------------------------

    def _cell(self, counter: str, window: Window) -> _Cell:
        c = self.cells.get(counter)
        if c is None:
            c = self.cells[counter] = _Cell(window)
        return c

    def declare(self, counter: str, window: Window) -> None:
        self._cell(counter, window)

    @property
    def changes(self) -> int:
        return self._changes

    def admit(self, asks: Sequence[Ask], hold: Hold | None = None) -> Hold | Refused:
        now = self.clock.time()
        cells = []
        for ask in asks:
            c = self._cell(ask.counter, ask.window)
            c.roll(now)
            refused = c.refusal(ask, now)
            if refused is not None:
                return refused
            cells.append(c)
        hold = hold if hold is not None else Hold()
        for ask, c in zip(asks, cells):
            hold.asks.append(ask)
            if c.window.calendar:
                c.add(ask.amount)
                hold.marks.append(c.start)
            else:
                ev = [now, *ask.amount]
                c.events.append(ev)
                c.add(ask.amount)
                hold.marks.append(ev)
        self._changes += 1
        return hold

    def settle(self, hold: Hold, actual: Sequence[Amount]) -> None:
        if hold.done:
            return
        hold.done = True
        now = self.clock.time()
        for ask, mark, real in zip(hold.asks, hold.marks, actual):
            c = self.cells[ask.counter]
            c.roll(now)
            delta = [real[i] - ask.amount[i] for i in range(3)]
            if c.window.calendar:
                if c.start == mark:  # a period that has ended keeps what it had
                    c.add(delta)
            elif c.events and mark[0] > now - MINUTE:  # still in the sliding minute
                for i in range(3):
                    mark[i + 1] += delta[i]
                c.add(delta)
        self._changes += 1

    def refund(self, hold: Hold) -> None:
        self.settle(hold, [Amount()] * len(hold.asks))

    def usage(self, counter: str, window: Window) -> Usage:
        c = self._cell(counter, window)
        now = self.clock.time()
        c.roll(now)
        r, t, u = c.n
        start, end = (c.start, c.end) if window.calendar else (now - MINUTE, now)
        return Usage(int(r), int(t), float(u), start, end)

    def snapshot(self) -> list[Row]:
        now = self.clock.time()
        out = []
        for name, c in self.cells.items():
            if c.window.calendar:
                c.roll(now)
                r, t, u = c.base
                out.append((name, c.start, int(c.n[0]) - r, int(c.n[1]) - t, c.n[2] - u))
        return out

    def rebase(self, rows: Iterable[Row]) -> set[str]:
        now = self.clock.time()
        done = set()
        for name, start, requests, tokens, usd in rows:
            c = self.cells.get(name)
            if c is None or not c.window.calendar:
                continue
            c.roll(now)
            if abs(c.start - start) < 1e-3:
                new = (int(requests), int(tokens), float(usd))
                c.add([new[i] - c.base[i] for i in range(3)])
                c.base = new
                done.add(name)
        return done

    # --- circuit breakers ------------------------------------------------------------------------------

    def _b(self, name: str) -> list[float | int | bool | None]:
        b = self.breakers.get(name)
        if b is None:
            b = self.breakers[name] = [0, None, False]
        return b

    def breaker(self, name: str) -> Breaker:
        failures, opened, trial = self._b(name)
        ago = None if opened is None else self.clock.monotonic() - float(opened)
        return Breaker(int(failures or 0), ago, bool(trial))

    def breaker_begin(self, name: str, cooldown: float) -> bool:
        b = self._b(name)
        if b[1] is None:
            return True
        if self.clock.monotonic() - float(b[1]) < cooldown or b[2]:
            return False
        b[2] = True
        return True

    def breaker_release(self, name: str) -> None:
        self._b(name)[2] = False

    def breaker_success(self, name: str) -> Breaker:
        before = self.breaker(name)
        self.breakers[name] = [0, None, False]
        return before

    def breaker_failure(self, name: str, threshold: int) -> tuple[Breaker, bool]:
        b = self._b(name)
        was_trial, b[2] = bool(b[2]), False
        b[0] = int(b[0] or 0) + 1
        opened = was_trial or (b[1] is None and b[0] >= threshold)
        if opened:
            b[1] = self.clock.monotonic()
        return self.breaker(name), opened

    def breaker_expire(self, name: str, cooldown: float) -> None:
        b = self._b(name)
        if b[1] is not None:
            b[1] = min(float(b[1]), self.clock.monotonic() - cooldown)

    # --- key-value store -------------------------------------------------------------------------------

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + KV_OVERHEAD

    def get(self, key: str) -> bytes | None:
        hit = self.kv.get(key)
        if hit is None:
            return None
        if hit[1] <= self.clock.monotonic():
            self.delete(key)
            return None
        self.kv.move_to_end(key)
        return hit[0]

    def put(self, key: str, value: bytes, ttl: float) -> None:
        """Store for `ttl` seconds; beyond `kv_max_bytes` the least recently used entries leave (a value
        larger than the whole bound is not kept)."""
        size = self._size(key, value)
        self.delete(key)
        if size > self.kv_max_bytes:
            return
        now = self.clock.monotonic()
        self.kv[key] = (value, now + ttl)
        self.kv_bytes += size
        while self.kv_bytes > self.kv_max_bytes:
            old, (v, _) = self.kv.popitem(last=False)
            self.kv_bytes -= self._size(old, v)
        if len(self.kv) >= self._kv_swept + KV_SWEEP:
            for k in [k for k, (_, exp) in self.kv.items() if exp <= now]:
                self.delete(k)
            self._kv_swept = len(self.kv)

    def delete(self, key: str) -> None:
        hit = self.kv.pop(key, None)
        if hit is not None:
            self.kv_bytes -= self._size(key, hit[0])
