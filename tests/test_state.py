"""The state store and the circuit breaker on a fake clock: calendar windows (reset hour, time zone,
DST, month rollover), the sliding minute, atomic multi-counter admission, settle, refund, sharing
through snapshots, breaker transitions and the key-value store's expiry. No sleeps."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from proxy.config import CircuitPolicy
from proxy.routing.circuit import Circuit
from proxy.state import Amount, Ask, Hold, Limit, ManualClock, MemoryState, Refused, Window

LA = ZoneInfo("America/Los_Angeles")


def at(*args: int, tz: ZoneInfo = LA) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def admitted(got: Hold | Refused) -> Hold:
    assert isinstance(got, Hold), got
    return got


# --- calendar windows --------------------------------------------------------------------------


def test_day_window_resets_at_its_hour_in_its_zone():
    clock = ManualClock(at(2026, 11, 22, 6, 59))
    s, day = MemoryState(clock), Window("day", "America/Los_Angeles", 7)
    ask = Ask("q", day, Amount(1), Limit(requests=2))
    admitted(s.admit([ask]))
    admitted(s.admit([ask]))
    refused = s.admit([ask])
    assert isinstance(refused, Refused) and refused.field == "requests" and refused.used == 2
    assert refused.resets_at == at(2026, 11, 22, 7)  # 07:00 Pacific, one minute away
    assert refused.retry_after == pytest.approx(60)
    clock.now = at(2026, 11, 22, 7, 0)
    assert s.usage("q", day).requests == 0
    admitted(s.admit([ask]))
    assert s.usage("q", day).end == at(2026, 11, 23, 7)


def test_day_across_the_dst_change_is_25_hours():
    clock = ManualClock(at(2026, 11, 1, 5))  # before the reset hour: the day began yesterday at 7
    s, day = MemoryState(clock), Window("day", "America/Los_Angeles", 7)
    u = s.usage("q", day)
    assert (u.start, u.end) == (at(2026, 10, 31, 7), at(2026, 11, 1, 7))
    assert u.end - u.start == 25 * 3600


def test_the_same_instant_is_a_different_day_in_another_zone():
    clock = ManualClock(datetime(2026, 3, 10, 7, 30, tzinfo=ZoneInfo("UTC")).timestamp())  # 00:30 Pacific
    s = MemoryState(clock)
    utc, la = Window("day"), Window("day", "America/Los_Angeles")
    s.admit([Ask("u", utc, Amount(1)), Ask("l", la, Amount(1))])
    clock.advance(3600)  # 08:30 UTC, 01:30 Pacific: both still in their days
    assert s.usage("u", utc).requests == 1 and s.usage("l", la).requests == 1
    clock.now = datetime(2026, 3, 11, 0, 30, tzinfo=ZoneInfo("UTC")).timestamp()  # a new UTC day; 17:30 Pacific
    assert s.usage("u", utc).requests == 0 and s.usage("l", la).requests == 1


def test_month_rolls_over_at_the_first_at_its_hour_and_across_the_year():
    clock = ManualClock(at(2026, 12, 31, 23, 0))
    s, month = MemoryState(clock), Window("month", "America/Los_Angeles", 1)
    admitted(s.admit([Ask("b", month, Amount(usd=3.0), Limit(usd=5.0))]))
    u = s.usage("b", month)
    assert (u.start, u.end) == (at(2026, 12, 1, 1), at(2027, 1, 1, 1))
    clock.now = at(2027, 1, 1, 0, 59)  # before the reset hour: still December
    assert s.usage("b", month).usd == 3.0
    clock.now = at(2027, 1, 1, 1, 0)
    u = s.usage("b", month)
    assert u.usd == 0.0 and (u.start, u.end) == (at(2027, 1, 1, 1), at(2027, 2, 1, 1))


# --- the sliding minute ------------------------------------------------------------------------


def test_sliding_minute_admits_again_as_requests_leave_it():
    clock = ManualClock()
    s, minute = MemoryState(clock), Window("minute")
    ask = Ask("r", minute, Amount(1), Limit(requests=2))
    admitted(s.admit([ask]))
    clock.advance(20)
    admitted(s.admit([ask]))
    clock.advance(10)
    refused = s.admit([ask])
    assert isinstance(refused, Refused) and refused.retry_after == pytest.approx(30)  # the first leaves at 60 s
    clock.advance(30)
    admitted(s.admit([ask]))  # the first left
    refused = s.admit([ask])
    assert isinstance(refused, Refused) and refused.retry_after == pytest.approx(20)


def test_sliding_minute_tokens_wait_until_enough_leave():
    clock = ManualClock()
    s, minute = MemoryState(clock), Window("minute")
    for n in (40, 40, 40):  # 120 tokens against 100: two must leave before it is under
        admitted(s.admit([Ask("t", minute, Amount(0, n))]))
        clock.advance(10)
    refused = s.admit([Ask("t", minute, Amount(0, 1), Limit(tokens=100))])
    assert isinstance(refused, Refused) and refused.field == "tokens"
    assert refused.retry_after == pytest.approx(30)  # t=0 and t=10 events leave at 60 and 70; now is 30


def test_settle_in_the_minute_replaces_the_reservation_at_its_time():
    clock = ManualClock()
    s, minute = MemoryState(clock), Window("minute")
    hold = admitted(s.admit([Ask("t", minute, Amount(1, 500), Limit(tokens=600))]))
    clock.advance(5)
    s.settle(hold, [Amount(1, 30)])
    assert s.usage("t", minute).tokens == 30
    clock.advance(56)  # 61 s after admission: it left with its settled amount
    assert s.usage("t", minute).tokens == 0 and s.usage("t", minute).requests == 0


# --- admission, settle, refund -------------------------------------------------------------------


def test_admission_is_all_or_nothing_and_names_the_limit_that_refused():
    clock = ManualClock()
    s, day, minute = MemoryState(clock), Window("day"), Window("minute")
    admitted(s.admit([Ask("budget", day, Amount(usd=0.9))]))
    asks = [Ask("rate", minute, Amount(1, 10), Limit(requests=5), tag="rate"),
            Ask("budget", day, Amount(usd=0.2), Limit(usd=1.0), tag="budget"),
            Ask("quota", day, Amount(1), Limit(requests=10), tag="quota")]
    assert isinstance(s.admit(asks), Hold)  # 0.9 < 1.0: admitted; the budget now holds 1.1
    before = (s.usage("rate", minute), s.usage("quota", day))
    refused = s.admit(asks)
    assert isinstance(refused, Refused) and refused.ask.tag == "budget" and refused.field == "usd"
    assert refused.used == pytest.approx(1.1) and refused.resets_at == s.usage("budget", day).end
    assert (s.usage("rate", minute), s.usage("quota", day)) == before  # nothing of a refused admission stays


def test_settle_and_refund():
    clock = ManualClock()
    s, day = MemoryState(clock), Window("day")
    asks = [Ask("q", day, Amount(1, 1000)), Ask("b", day, Amount(usd=0.5))]
    hold = admitted(s.admit(asks))
    assert s.usage("q", day).tokens == 1000 and s.usage("b", day).usd == 0.5
    s.settle(hold, [Amount(1, 12), Amount(usd=0.001)])
    assert (s.usage("q", day).requests, s.usage("q", day).tokens) == (1, 12)
    assert s.usage("b", day).usd == pytest.approx(0.001)
    s.settle(hold, [Amount(1, 99), Amount(usd=9.0)])  # settled once only
    assert s.usage("q", day).tokens == 12
    hold = admitted(s.admit(asks))
    s.refund(hold)
    assert (s.usage("q", day).requests, s.usage("q", day).tokens) == (1, 12)


def test_a_reservation_from_an_ended_period_does_not_leak_into_the_next():
    clock = ManualClock(at(2026, 5, 1, 23, 59, 59, tz=ZoneInfo("UTC")))
    s, day = MemoryState(clock), Window("day")
    hold = admitted(s.admit([Ask("q", day, Amount(1, 1000))]))
    clock.advance(2)  # a new day
    s.settle(hold, [Amount(1, 10)])
    assert s.usage("q", day).requests == 0 and s.usage("q", day).tokens == 0


def test_extending_a_hold_and_sharing_counts_between_processes():
    clock = ManualClock()
    a, b, day = MemoryState(clock), MemoryState(clock), Window("day")
    for s in (a, b):
        s.declare("q", day)
    hold = admitted(a.admit([Ask("q", day, Amount(1))]))
    hold = admitted(a.admit([Ask("q", day, Amount(1))], hold))  # a second try of the same request
    assert len(hold.asks) == 2
    changes = a.changes
    (name, start, r, t, u), = a.snapshot()  # in-flight reservations are shared too
    assert (name, r) == ("q", 2) and a.changes == changes
    assert b.rebase([(name, start, r, t, u)]) == {"q"}
    admitted(b.admit([Ask("q", day, Amount(1))]))
    assert b.usage("q", day).requests == 3 and b.snapshot()[0][2] == 1  # its own count stays its own
    assert isinstance(b.admit([Ask("q", day, Amount(1), Limit(requests=3))]), Refused)
    assert b.rebase([(name, start - 86400, 50, 0, 0.0)]) == set()  # another period's count is not taken


# --- circuit breaker -----------------------------------------------------------------------------


def breaker(failures: int = 3, cooldown: float = 30) -> tuple[Circuit, ManualClock, list[str]]:
    clock = ManualClock()
    c = Circuit("cloud", CircuitPolicy(failures=failures, cooldown=cooldown), MemoryState(clock))
    events: list[str] = []
    c.listeners.append(lambda circuit, state: events.append(state))
    return c, clock, events


def test_circuit_opens_after_n_consecutive_counted_failures():
    c, clock, events = breaker()
    for _ in range(2):
        assert c.begin()
        c.record(False, "server")
    c.record(False, "rate_limit")  # not counted: a rate limit is not a broken backend
    c.record(False, "client")
    assert c.state == "closed" and c.failures == 2
    c.record(True)  # a success resets the streak
    for _ in range(3):
        assert c.begin()
        c.record(False, "timeout")
    assert c.state == "open" and events == ["open"]
    assert not c.begin() and c.blocked() == "circuit open after 3 failures (trial in 30s)"
    clock.advance(20)
    assert c.blocked() == "circuit open after 3 failures (trial in 10s)"


def test_half_open_lets_one_trial_through_and_success_closes():
    c, clock, events = breaker()
    for _ in range(3):
        c.record(False, "network")
    clock.advance(30)
    assert c.state == "half_open" and c.blocked() is None
    assert c.begin()  # the trial
    assert c.trial and not c.begin() and c.blocked() == "circuit half-open, trial request in flight"
    c.record(True)
    assert c.state == "closed" and c.failures == 0 and not c.trial and events == ["open", "closed"]
    assert c.begin() and c.begin()


def test_a_failed_trial_opens_again_at_once_and_a_released_trial_frees_the_slot():
    c, clock, events = breaker(failures=5)
    for _ in range(5):
        c.record(False, "server")
    clock.advance(30)
    assert c.begin()
    c.release()  # never reached the backend (could not be translated)
    assert not c.trial and c.begin()
    c.record(False, "server")  # the trial failed: open again for a whole cool-down
    assert c.state == "open" and events == ["open", "open"]
    clock.advance(29)
    assert c.state == "open"
    c.expire()  # a probe saw it answer: the next request is the trial
    assert c.state == "half_open" and c.begin()


# --- key-value store ---------------------------------------------------------------------------


def test_key_value_store_expires_entries():
    clock = ManualClock()
    s = MemoryState(clock)
    s.put("a", b"1", ttl=10)
    s.put("b", b"2", ttl=60)
    assert s.get("a") == b"1" and s.get("missing") is None
    clock.advance(10)
    assert s.get("a") is None and s.get("b") == b"2"
    s.delete("b")
    assert s.get("b") is None
