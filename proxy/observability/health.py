"""Provider health: background probes plus what real traffic shows, per backend and overall.

Each backend is probed every `probe.interval` seconds (30 by default; 0 turns it off) with a
cheap call: listing its models (`probe.method: models`, free) or a one-token chat request
(`method: chat`, for servers without a models endpoint; it costs tokens). Every real attempt
also counts (passive health): its latency, success or error category.

A backend is
- **unavailable** when it cannot be used as configured (no API key): not probed, not counted;
- **down** when its circuit breaker is open, or `probe.down_after` probes in a row failed;
- **degraded** when its circuit is half-open, the last attempt or probe failed, or under 90 %
  of the attempts of the last 5 minutes succeeded (rate limits count as failures here);
- **healthy** otherwise (never with no success at all among the window's attempts, however few).
The system is **healthy** when every usable backend is, **critical** when none is up (healthy or
degraded), **degraded** in between.

Routing: a backend that is down because its probes fail is skipped (reason ``unhealthy: …``), as
the circuit breaker already skips one whose real traffic fails. Recovery is the probe's job: a
successful probe clears the probe failures, so the backend is back in rotation at once; if its
circuit is open, a successful chat probe (or test request) closes it, and a successful models
probe ends its cool-down early, so that the next real request is the half-open trial that closes
it (listing models does not prove that chat works). Without probes (interval 0) only the circuit
breaker gates routing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from proxy.backends.base import Backend
from proxy.call import Call
from proxy.routing.circuit import COUNTED, Circuit
from proxy.config import ProbePolicy, Target
from proxy.errors import UpstreamError

log = logging.getLogger("turnout.health")
WINDOW = 300.0  # seconds of passive results behind the success rate and latency
DEGRADED_BELOW = 0.9  # success rate under which a backend is degraded
MIN_SAMPLES = 5  # attempts in the window before the success rate counts
SEVERITY = {"healthy": 0, "degraded": 1, "down": 2, "unavailable": 3}
SYSTEM_SEVERITY = {"healthy": 0, "degraded": 1, "critical": 2}
PROBE_PROMPT = "Reply with one word: ok"


@dataclass
class BackendHealth:
    name: str
    type: str
    policy: ProbePolicy
    window: deque[tuple[float, bool, float]] = field(default_factory=deque)  # (monotonic, ok, seconds)
    window_ok: int = 0
    consecutive_failures: int = 0  # counted failures (server, timeout, network, auth) in a row
    probe_failures: int = 0  # failed probes in a row
    attempts: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by category, since start
    last_ok: float | None = None  # wall time
    last_error: dict[str, Any] | None = None
    last_probe: dict[str, Any] | None = None
    probes: int = 0
    probes_ok: int = 0
    state: str = "healthy"
    reason: str | None = None
    since: float = field(default_factory=time.time)  # when `state` began
    up_since: float | None = field(default_factory=time.time)  # when it last stopped being down

    def add(self, ok: bool, seconds: float | None) -> None:
        now = time.monotonic()
        w = self.window
        w.append((now, ok, seconds or 0.0))
        self.window_ok += ok
        while w and (now - w[0][0] > WINDOW or len(w) > 1000):
            self.window_ok -= w.popleft()[1]

    def success_rate(self) -> float | None:
        return self.window_ok / len(self.window) if self.window else None

    def latency_ms(self) -> dict[str, float] | None:
        xs = sorted(s for _, ok, s in self.window if ok and s)
        if not xs:
            return None
        return {"p50": round(xs[len(xs) // 2] * 1000, 1), "p95": round(xs[min(len(xs) - 1, int(len(xs) * 0.95))] * 1000, 1)}

    def failure(self, category: str, status: int | None, code: str | None, probe: bool) -> None:
        self.errors[category] = self.errors.get(category, 0) + 1
        self.last_error = {"at": time.time(), "category": category, "status": status, "code": code,
                           "source": "probe" if probe else "traffic"}


class Health:
    """The observer that keeps every backend's health, the probe loop, and the routing filter."""

    def __init__(self, models: dict[str, Target], backends: dict[str, Backend], circuits: dict[str, Circuit],
                 metrics: Any = None, shared: Callable[[], dict[str, Any]] | None = None) -> None:
        self.models = models
        self.shared = shared  # the shared state's condition (Redis reachable or not); None: in-process state
        self.clients = backends
        self.metrics = metrics
        self.circuits = circuits
        self.backend_of = {name: t.backend for name, t in models.items()}
        self.backends = {name: BackendHealth(name, b.cfg.type, b.cfg.probe) for name, b in backends.items()}
        self.tasks: list[asyncio.Task[None]] = []
        for name in self.backends:
            self.assess(name, quiet=True)
        if metrics is not None:
            metrics.register_gauge_source(
                "turnout_backend_health", "Backend health: 0 healthy, 1 degraded, 2 down, 3 unavailable.",
                ("backend",), lambda: [((n,), SEVERITY[self.assess(n)]) for n in self.backends])
            metrics.register_gauge_source(
                "turnout_system_health", "Overall health: 0 healthy, 1 degraded, 2 critical.", (),
                lambda: [((), SYSTEM_SEVERITY[self.system()[0]])])
            metrics.register_gauge_source(
                "turnout_backend_success_ratio", "Share of a backend's attempts that succeeded in the last 5 "
                "minutes.", ("backend",),
                lambda: [((n, ), r) for n, h in self.backends.items() if (r := h.success_rate()) is not None])
            metrics.register_gauge_source(
                "turnout_backend_consecutive_failures", "Failed attempts and probes in a row.", ("backend",),
                lambda: [((n,), h.consecutive_failures) for n, h in self.backends.items()])

    # --- observer ----------------------------------------------------------------------------------

    def circuit_changed(self, circuit: Circuit, state: str) -> None:
        """A breaker opened, half-opened or closed: the backend's state may have changed."""
        self.assess(circuit.name)

    async def start(self) -> None:
        for name, h in self.backends.items():
            backend = self.clients[name]
            if h.policy.interval > 0 and not backend.unavailable:
                self.tasks.append(asyncio.create_task(self._loop(name), name=f"probe {name}"))

    async def aclose(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.tasks.clear()

    def started(self, call: Call) -> None:
        pass

    def finished(self, call: Call) -> None:
        touched: list[str] = []
        for a in call.attempts:
            if a.seconds is None:
                continue
            name = self.backend_of[a.target]
            h = self.backends[name]
            h.attempts += 1
            cat = a.category
            if cat is None or cat == "client":  # an answer, or the client's own mistake: the backend works
                h.add(True, a.seconds)
                h.consecutive_failures = 0
                h.last_ok = time.time()
                if cat:  # still worth seeing: a 404 for a misnamed model is the operator's to fix
                    h.errors[cat] = h.errors.get(cat, 0) + 1
            else:
                h.add(False, a.seconds)
                h.failures += 1
                h.failure(cat, a.status, a.outcome.split(" ", 1)[-1] if a.status else None, probe=False)
                if cat in COUNTED:
                    h.consecutive_failures += 1
            if name not in touched:
                touched.append(name)
        for name in touched:
            self.assess(name)

    # --- probes ------------------------------------------------------------------------------------

    async def _loop(self, name: str) -> None:
        interval = self.backends[name].policy.interval
        await asyncio.sleep(random.random() * min(interval, 1.0))  # spread workers and backends
        while True:
            try:
                await self.probe(name)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a probe bug must not end the loop
                log.warning("probe of %s failed unexpectedly: %s", name, type(e).__name__)
            await asyncio.sleep(interval)

    def probe_target(self, name: str, model: str | None = None) -> Target | None:
        """The target a chat probe or test uses: the one asked for, or the backend's first."""
        models = self.models
        if model:
            t = models.get(model)
            return t if t is not None and t.backend == name else None
        want = self.backends[name].policy.model
        if want:
            return models[want]
        return next((t for t in models.values() if t.backend == name), None)

    async def chat(self, name: str, target: Target, timeout: float) -> tuple[dict[str, Any], Call]:
        """One minimal real chat request to `target` (no routing, no observers)."""
        backend = self.clients[name]
        call = Call(request_model=target.name, request_id=f"probe-{name}")
        body = {"model": target.name, "messages": [{"role": "user", "content": PROBE_PROMPT}], "max_tokens": 1}
        async with asyncio.timeout(timeout):
            answer = await backend.complete(target, body, call)
        call.usage = answer.get("usage")
        return answer, call

    async def probe(self, name: str) -> dict[str, Any]:
        """Probe one backend now and record the result."""
        h = self.backends[name]
        backend = self.clients[name]
        t0 = time.perf_counter()
        result, category, status = "ok", None, None
        try:
            if h.policy.method == "chat":
                target = self.probe_target(name)
                if target is None:
                    raise UpstreamError("no model target uses this backend", category="client")
                await self.chat(name, target, h.policy.timeout)
            else:
                async with asyncio.timeout(h.policy.timeout):
                    await backend.list_models()
        except TimeoutError:
            result, category = "failed", "timeout"
        except UpstreamError as e:
            status = e.status
            if e.category == "rate_limit":
                result, category = "rate_limited", "rate_limit"
            elif e.category == "client" and h.policy.method == "models":
                pass  # reachable; it just has no models endpoint
            else:
                result, category = "failed", e.category
        except Exception as e:  # noqa: BLE001
            result, category = "failed", "network"
            log.debug("probe of %s: %s", name, type(e).__name__)
        seconds = time.perf_counter() - t0
        self.record_probe(name, result, category, status, seconds, chat=h.policy.method == "chat")
        return {"result": result, "category": category, "status": status, "ms": round(seconds * 1000, 1)}

    def record_probe(self, name: str, result: str, category: str | None, status: int | None,
                     seconds: float, chat: bool = False) -> None:
        """Record a probe's (or a test request's) result: `chat` when it was a real chat request."""
        h = self.backends[name]
        h.probes += 1
        h.last_probe = {"at": time.time(), "result": result, "category": category, "ms": round(seconds * 1000, 1)}
        if result == "ok":
            h.probes_ok += 1
            h.probe_failures = 0
            if chat or h.last_error is None or h.last_error["source"] == "probe":
                h.consecutive_failures = 0  # a models probe does not vouch for chat requests that failed
            h.last_ok = time.time()
            circuit = self.circuits[name]
            if circuit.opened and not circuit.trial:
                if chat:
                    circuit.record(True)  # it answered a real request: back in rotation
                else:
                    # reachable again: end the cool-down now, so that one trial request decides
                    circuit.expire()
        elif result == "failed":
            h.probe_failures += 1
            if category in COUNTED:
                h.consecutive_failures += 1
            h.failure(category or "network", status, None, probe=True)
        if self.metrics is not None:
            self.metrics.probed(name, result)
        self.assess(name)

    # --- state -------------------------------------------------------------------------------------

    def _state(self, name: str) -> tuple[str, str | None]:
        h = self.backends[name]
        unavailable = self.clients[name].unavailable
        if unavailable:
            return "unavailable", unavailable
        circuit = self.circuits[name]
        cstate = circuit.state
        if cstate == "open":
            return "down", f"circuit open after {circuit.failures} failures"
        if h.policy.interval > 0 and h.probe_failures >= h.policy.down_after:
            return "down", f"{h.probe_failures} probes failed in a row ({(h.last_error or {}).get('category')})"
        if cstate == "half_open":
            return "degraded", "circuit half-open: a trial request decides"
        if h.consecutive_failures:
            return "degraded", (f"{h.consecutive_failures} failure(s) in a row "
                                f"({(h.last_error or {}).get('category')})")
        if h.probe_failures:
            return "degraded", "the last probe failed"
        rate = h.success_rate()
        if rate is not None and rate < DEGRADED_BELOW and (len(h.window) >= MIN_SAMPLES or rate == 0):
            # a few samples do not make a rate, but none of them succeeding is never healthy
            return "degraded", f"{rate:.0%} of {len(h.window)} attempts succeeded in the last 5 minutes"
        return "healthy", None

    def assess(self, name: str, quiet: bool = False) -> str:
        """The backend's state now; a change is logged (down and recovery as warnings)."""
        h = self.backends[name]
        state, reason = self._state(name)
        h.reason = reason
        if state != h.state:
            old, h.state, h.since = h.state, state, time.time()
            if state in ("down", "unavailable"):
                h.up_since = None
            elif h.up_since is None:
                h.up_since = time.time()
            if not quiet:
                level = logging.INFO if state == "degraded" else logging.WARNING
                if state == "healthy" and old == "degraded":
                    level = logging.INFO
                log.log(level, "backend %s is %s (was %s)%s", name, state, old, f": {reason}" if reason else "")
        return state

    def system(self) -> tuple[str, str | None]:
        """Overall: the backends' states, and a shared state (Redis) that cannot be reached (degraded)."""
        state, reason = self._system()
        shared = self.shared() if self.shared is not None else None
        if shared is not None and shared["status"] != "ok" and state != "critical":
            why = f"shared state {shared['status']}: {shared['reason']}"
            return "degraded", why if reason is None else f"{reason}; {why}"
        return state, reason

    def _system(self) -> tuple[str, str | None]:
        states = {n: self.assess(n) for n in self.backends}
        usable = [n for n, s in states.items() if s != "unavailable"]
        if not usable:
            return "critical", "no backend is usable (check the API keys)"
        up = [n for n in usable if states[n] in ("healthy", "degraded")]
        if not up:
            return "critical", "every backend is down"
        bad = [n for n in usable if states[n] != "healthy"]
        if not bad:
            return "healthy", None
        return "degraded", ", ".join(f"{n} {states[n]}" for n in bad)

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness (`GET /ready`): each backend "usable" or why not, and whether any is. A backend is
        usable when it can be used as configured (a key), is not down, and did not fail its last probe
        (a local server that refuses connections is not ready, though one probe does not make it down)."""
        out: dict[str, str] = {}
        for name, h in self.backends.items():
            state = self.assess(name)
            probe = h.last_probe or {}
            if state == "unavailable":
                out[name] = h.reason or "unavailable"
            elif state == "down":
                out[name] = f"down: {h.reason}"
            elif probe.get("result") == "failed":
                out[name] = f"not answering: the last probe failed ({probe.get('category')})"
            else:
                out[name] = "usable"
        return any(v == "usable" for v in out.values()), out

    def filter(self, target: Target, features: Any) -> str | None:
        """The routing filter: skip a backend whose probes say it is down."""
        h = self.backends[target.backend]
        if h.policy.interval > 0 and h.probe_failures >= h.policy.down_after:
            return f"unhealthy: {h.probe_failures} probes failed in a row"
        return None

    def describe(self, name: str) -> dict[str, Any]:
        h = self.backends[name]
        state = self.assess(name)
        rate = h.success_rate()
        circuit = self.circuits[name]
        return {
            "state": state, "reason": h.reason, "since": h.since,
            "up_since": h.up_since, "uptime_seconds": round(time.time() - h.up_since, 1) if h.up_since else 0,
            "probe_uptime": round(h.probes_ok / h.probes, 4) if h.probes else None,
            "success_rate": None if rate is None else round(rate, 4),
            "window_attempts": len(h.window), "latency_ms": h.latency_ms(),
            "consecutive_failures": h.consecutive_failures, "probe_failures": h.probe_failures,
            "attempts": h.attempts, "failures": h.failures, "errors": dict(h.errors),
            "last_ok": h.last_ok, "last_error": h.last_error, "last_probe": h.last_probe,
            "probe": {"interval": h.policy.interval, "method": h.policy.method, "down_after": h.policy.down_after},
            "circuit": {"state": circuit.state, "failures": circuit.failures},
        }
