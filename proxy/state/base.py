"""The state protocol and the records it speaks in; calendar windows; the clock.

Counters are named (``quota:backend:gemini``, ``budget:all:day``, ``rate:key:app``) and each
holds requests, tokens and USD within a window. A request asks for several counters at once
(`State.admit`): every limit is checked and every amount reserved in one atomic step, or nothing
is reserved and `Refused` says which limit refused and when it resets. At the end the request
settles its hold with what it really used (`State.settle`), or gives it all back when it never
reached an upstream (`State.refund`).

The limit rule is the one Turnout always had: a limit admits while what is used (reservations of
requests in flight included) is under it. Requests count one by one, so a request limit is exact;
a token or USD amount is only known at the end, so one request may carry a counter past its limit
by what it used beyond its reservation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Literal, NamedTuple, Protocol, Sequence
from zoneinfo import ZoneInfo

EPS = 1e-9  # USD: sums of float costs compare equal to a limit within this
MINUTE = 60.0
Row = tuple[str, float, int, int, float]  # a counter as saved in the ledger: name, period start, requests, tokens, usd


# --- time ----------------------------------------------------------------------------------------


class Clock(Protocol):
    """Wall time for calendar windows, monotonic time for durations (circuit cool-downs, TTLs)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told: replays (`turnout simulate`) and tests, instead of sleeps."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now, self.mono = now, 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


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


@dataclass(frozen=True)
class Window:
    """`day` (from `hour` local time in `tz`), `month` (from the 1st at `hour`), or a sliding `minute`."""

    kind: Literal["day", "month", "minute"]
    tz: str = "UTC"
    hour: int = 0
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", ZoneInfo(self.tz))

    @property
    def calendar(self) -> bool:
        """Day and month windows have a start and are saved in the ledger; the sliding minute is not."""
        return self.kind != "minute"

    def bounds(self, now: float) -> tuple[float, float]:
        if self.kind == "minute":
            return now - MINUTE, now
        return (day_bounds if self.kind == "day" else month_bounds)(now, self.zone, self.hour)


# --- what is asked, held and refused ---------------------------------------------------------------


FIELDS = ("requests", "tokens", "usd")


class Amount(NamedTuple):
    requests: int = 0
    tokens: int = 0
    usd: float = 0.0


class Limit(NamedTuple):
    """Per field, the most a counter may hold (None: not limited)."""

    requests: int | None = None
    tokens: int | None = None
    usd: float | None = None


def over(used: float, limit: float | None, name: str) -> bool:
    return limit is not None and used >= limit - (EPS if name == "usd" else 0)


@dataclass(frozen=True)
class Ask:
    """One counter a request charges: the amount to reserve and the limits it must be under.
    `tag` is the caller's own label, handed back in `Refused` and kept in the `Hold`."""

    counter: str
    window: Window
    amount: Amount = Amount()
    limit: Limit = Limit()
    tag: Any = None


@dataclass
class Hold:
    """What a request has reserved: its asks in order, and per ask where the reservation sits
    (`marks`: the implementation's own, e.g. the period start it was counted in)."""

    asks: list[Ask] = field(default_factory=list)
    marks: list[Any] = field(default_factory=list)
    done: bool = False  # settled or refunded: a second settle does nothing


@dataclass(frozen=True)
class Refused:
    """The limit that refused an admission."""

    ask: Ask
    field: str  # requests | tokens | usd
    limit: float
    used: float
    resets_at: float  # epoch seconds: the end of a calendar period, or when enough leaves the sliding minute
    retry_after: float  # seconds from now until the limit would admit again


@dataclass(frozen=True)
class Usage:
    """A counter now: totals (other processes' and reservations included) and its period."""

    requests: int
    tokens: int
    usd: float
    start: float
    end: float


@dataclass(frozen=True)
class Breaker:
    """A circuit breaker's record: consecutive failures, whether it is open and since when
    (seconds, in the state's own time), whether a half-open trial is in flight."""

    failures: int = 0
    opened_ago: float | None = None
    trial: bool = False


# --- the protocol ----------------------------------------------------------------------------------


class State(Protocol):
    clock: Clock

    # counters
    def declare(self, counter: str, window: Window) -> None:
        """Make a counter known before first use (so that it is saved and restored)."""

    def admit(self, asks: Sequence[Ask], hold: Hold | None = None) -> Hold | Refused:
        """Check every limit and reserve every amount, atomically; extends `hold` when given."""

    def settle(self, hold: Hold, actual: Sequence[Amount]) -> None:
        """Replace each reservation (one per ask, in order) by what was really used."""

    def refund(self, hold: Hold) -> None:
        """Give back everything held: the request never reached an upstream."""

    def usage(self, counter: str, window: Window) -> Usage: ...

    @property
    def changes(self) -> int:
        """Grows with every change to the counters (a cheap "anything new to save?")."""

    def snapshot(self) -> list[Row]:
        """This process's own counts in the current periods of its calendar counters."""

    def rebase(self, rows: Iterable[Row]) -> set[str]:
        """Take what other processes (and earlier runs) counted for the current periods as each
        counter's base, keeping this process's own counts; returns the names taken."""

    # circuit breakers
    def breaker(self, name: str) -> Breaker: ...

    def breaker_begin(self, name: str, cooldown: float) -> bool:
        """Closed: yes. Open past its cool-down with no trial in flight: yes, as the trial. Else no."""

    def breaker_release(self, name: str) -> None:
        """A begun call never reached the backend: no trial is in flight any more."""

    def breaker_success(self, name: str) -> Breaker:
        """Close and reset; returns the record as it was before."""

    def breaker_failure(self, name: str, threshold: int) -> tuple[Breaker, bool]:
        """Count a failure; open when it was the trial or `threshold` is reached. (record, opened now)."""

    def breaker_expire(self, name: str, cooldown: float) -> None:
        """End an open breaker's cool-down now, so that the next request is its trial."""

    # key-value store with expiry (response cache, stored responses)
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl: float) -> None: ...

    def delete(self, key: str) -> None: ...
