"""Prometheus metrics: `GET /metrics`, fed by an observer on every request.

Every name starts with ``turnout_`` and ends with its unit; labels come only from the config
(route, rule, target, backend), from small fixed sets (status class, reason, token kind,
locality) or, when ``server.metrics_key_names`` is on, from the proxy key's *name*. Never a
prompt, an id or a secret. See docs/observability.md for the full list and what each one means.

Several uvicorn workers (``turnout serve --workers N``): prometheus-client's multiprocess mode.
`turnout serve` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before the workers start;
each worker writes its counters and histograms there and whichever worker answers a scrape sums
them all. Gauges say how they combine (in-flight: the live sum; circuit state: the worst).
Gauges read from callbacks at scrape time (`register_gauge_source`: quota, budget, health) show
the answering worker's view, so their sources should read shared state.

Overhead: label children are cached per label tuple, so a request costs a dict lookup and an
increment per metric (measured in docs/observability.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from proxy import __version__
from proxy.call import Attempt, Call
from proxy.config import BackendConfig, Config, Target, prices, providers
from proxy.observability.stats import Stats

log = logging.getLogger("turnout.metrics")
disable_created_metrics()  # no *_created series: they double the series count and no panel uses them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# LLM calls take from tens of milliseconds (a cached local answer) to minutes (a long reasoning stream)
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
CIRCUIT_CODES = {"closed": 0, "half_open": 1, "open": 2}
NONE = "none"  # the label value when a request has no route, rule or target

# what a skipped attempt's reason says → a fixed label value
_SKIPS = (("circuit", "circuit_open"), ("no API key", "no_key"), ("unavailable", "unavailable"),
          ("unhealthy", "unhealthy"), ("context window", "context_window"), ("quota", "quota"),
          ("budget", "budget"), ("no vision", "capability"), ("no tool", "capability"),
          ("no JSON", "capability"))


def is_local(backend: BackendConfig, target: Target) -> bool:
    """Local vs cloud, for the share panels: a target is local when its backend is (the one rule,
    `providers.is_local`) and it costs nothing; a priced target of a local backend stands in for a
    cloud model (the demo's priced mocks)."""
    return providers.is_local(backend) and prices.free(target)


def reason_of(a: Attempt) -> str:
    """A low-cardinality reason for a failed, skipped or escalated attempt."""
    if a.category:
        return a.category
    if a.outcome.startswith("escalated: "):
        return "escalated"
    if a.outcome.startswith("skipped: "):
        why = a.outcome[9:]
        for needle, label in _SKIPS:
            if needle in why:
                return label
        return "skipped"
    return "error"


def transitions(attempts: list[Attempt]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]],
                                                  list[tuple[str, str]]]:
    """(fallbacks (from, to, reason), retries (target, reason), escalations (from, to)) of a call.

    A fallback is a move from a target that failed, was skipped or gave a weak answer to the next
    target of the chain; a retry is another try of the same target after a failure.
    """
    fallbacks: list[tuple[str, str, str]] = []
    retries: list[tuple[str, str]] = []
    escalations: list[tuple[str, str]] = []
    prev: Attempt | None = None
    for a in attempts:
        if prev is not None:
            if a.target != prev.target:
                reason = reason_of(prev)
                fallbacks.append((prev.target, a.target, reason))
                if reason == "escalated":
                    escalations.append((prev.target, a.target))
            elif a.seconds is not None:
                retries.append((a.target, reason_of(prev)))
        prev = None if a.outcome == "ok" else a
    return fallbacks, retries, escalations


GaugeSource = Callable[[], Iterable[tuple[Iterable[Any], float]]]


class _Sources:
    """A collector of gauges whose values come from callbacks when Prometheus scrapes."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, tuple[str, ...], GaugeSource]] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (doc, labels, fn) in list(self.sources.items()):
            g = GaugeMetricFamily(name, doc, labels=labels)
            try:
                for values, value in fn():
                    g.add_metric([str(v) for v in values], float(value))
            except Exception as e:  # noqa: BLE001 - one broken source must not break the scrape
                log.warning("metrics source %s failed: %s", name, type(e).__name__)
                continue
            yield g


class Metrics:
    """The request observer that keeps every Prometheus metric, and the `/metrics` exposition."""

    def __init__(self, cfg: Config, circuits: dict[str, Any] | None = None, stats: Stats | None = None,
                 shared: Callable[[], dict[str, Any]] | None = None) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.key_names = cfg.server.metrics_key_names
        self.cfg, self.circuits = cfg, circuits or {}
        self.local = {name: is_local(cfg.backends[t.backend], t) for name, t in cfg.models.items()}
        self.backend_of = {name: t.backend for name, t in cfg.models.items()}
        self._sources = _Sources()
        r = self.registry = CollectorRegistry()
        k = ("key",) if self.key_names else ()
        self.requests = Counter("turnout_requests_total", "Chat requests answered, by how they were routed and "
                                "the status class the client got.",
                                ("route", "rule", "target", "locality", "status_class", "stream") + k, registry=r)
        self.duration = Histogram("turnout_request_duration_seconds", "Whole request time in Turnout, to the "
                                  "last byte of a stream.", ("route", "target", "stream"),
                                  buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("turnout_time_to_first_token_seconds", "Time from the request to the first streamed "
                              "chunk.", ("route", "target"), buckets=TTFT_BUCKETS, registry=r)
        self.upstream = Histogram("turnout_upstream_latency_seconds", "Time of each upstream attempt (to the "
                                  "first chunk for streams), by outcome: ok, escalated or an error category.",
                                  ("backend", "target", "outcome"), buckets=DURATION_BUCKETS, registry=r)
        self.errors = Counter("turnout_upstream_errors_total", "Failed upstream attempts by error category "
                              "(timeout, rate_limit, auth, server, network, client).",
                              ("backend", "category"), registry=r)
        self.tokens = Counter("turnout_tokens_total", "Tokens by kind: prompt, completion, and the parts of "
                              "them that were cached (prompt) or reasoning (completion).",
                              ("route", "target", "kind") + k, registry=r)
        self.cost = Counter("turnout_cost_usd_total", "Cost of answered requests in US dollars.",
                            ("route", "target", "locality") + k, registry=r)
        self.fallbacks = Counter("turnout_fallbacks_total", "Moves from one target of a chain to the next, "
                                 "with the reason the first one was left.", ("route", "from", "to", "reason"),
                                 registry=r)
        self.retries = Counter("turnout_retries_total", "Retries of the same target after a failure.",
                               ("backend", "target", "reason"), registry=r)
        self.escalations = Counter("turnout_escalations_total", "Quality escalations: a weak answer sent the "
                                   "request on to the next target.", ("route", "from", "to"), registry=r)
        self.cache = Counter("turnout_cache_requests_total", "Requests that met the response cache, by result: "
                             "hit, miss or bypass (no-store).", ("route", "target", "result"), registry=r)
        self.cache_saved = Counter("turnout_cache_saved_usd_total", "What cache hits would have cost as calls "
                                   "(the original answers' cost), US dollars.", ("route", "target"), registry=r)
        self.consensus = Counter("turnout_consensus_total", "Consensus requests by outcome: agree, split (no "
                                 "majority) or error.", ("route", "outcome"), registry=r)
        self.in_flight = Gauge("turnout_in_flight_requests", "Chat requests being handled now.",
                               registry=r, multiprocess_mode="livesum")
        self.circuit_state = Gauge("turnout_circuit_state", "Circuit breaker per backend: 0 closed, 1 half-open, "
                                   "2 open (the worst over workers).", ("backend",), registry=r,
                                   multiprocess_mode="max")
        self.circuit_changes = Counter("turnout_circuit_transitions_total", "Circuit breakers opening and "
                                       "closing.", ("backend", "state"), registry=r)
        self.reloads = Counter("turnout_config_reloads_total", "Config reloads (SIGHUP, POST /turnout/admin/reload) "
                               "by result: ok, invalid (rejected, the old config serves), error.", ("result",),
                               registry=r)
        self.probes = Counter("turnout_probes_total", "Background health probes by result (ok, failed, "
                              "rate_limited).", ("backend", "result"), registry=r)
        info = Gauge("turnout_build_info", "Turnout's version (always 1).", ("version",), registry=r,
                     multiprocess_mode="max")
        info.labels(__version__).set(1)
        # replicas (issue 14): which process this is, and how its shared state (Redis) fares
        self.replica = f"{socket.gethostname()}-{os.getpid()}"
        Gauge("turnout_replica_info", "This replica (hostname-pid) and where its counters and breakers live "
              "(always 1).", ("replica", "state"), registry=r, multiprocess_mode="liveall").labels(
            self.replica, "redis" if shared is not None else "memory").set(1)
        self.state_errors = Counter("turnout_state_errors_total", "Failed calls to the shared state (Redis); "
                                    "while it is unreachable each replica uses its own counters.", ("replica",),
                                    registry=r)
        if shared is not None:
            self.state_errors.labels(self.replica)  # shown as 0 from the start
            self.register_gauge_source("turnout_state_degraded", "1 while this replica cannot reach the shared "
                                       "state (Redis) and uses its own counters or refuses shared limits.",
                                       ("replica",), lambda: [((self.replica,), shared()["status"] != "ok")])
        for name in self.circuits:
            self.circuit_state.labels(name).set(0)
        self._children: dict[tuple[Any, ...], Any] = {}
        self.stats = stats  # the dashboard's recent windows, fed by the same requests
        r.register(self._sources)  # type: ignore[arg-type]

    # --- the callback registry ---------------------------------------------------------------------

    def register_gauge_source(self, name: str, documentation: str, labelnames: Iterable[str],
                              fn: GaugeSource) -> None:
        """Expose a gauge read from `fn` at each scrape: `fn()` returns ``[(label_values, value), …]``.

        For values another component owns (quota remaining, budget spent, health). A source that
        raises is logged and left out of that scrape.
        """
        if not name.startswith("turnout_"):
            raise ValueError(f"metric {name!r}: names start with turnout_")
        self._sources.sources[name] = (documentation, tuple(labelnames), fn)

    def source_rows(self, prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
        """The current values of the gauge sources whose names start with one of `prefixes`."""
        rows = []
        for family in self._sources.collect():
            if family.name.startswith(prefixes):
                rows += [{"name": family.name, "labels": s.labels, "value": s.value} for s in family.samples]
        return rows

    # --- observer ----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.stats is not None and self.stats.share_file:
            self._share_task = asyncio.create_task(self._share())

    async def _share(self) -> None:
        while True:
            await asyncio.sleep(2)
            try:
                self.stats.share()
            except OSError as e:
                log.warning("cannot share dashboard stats: %s", e)

    async def aclose(self) -> None:
        task = getattr(self, "_share_task", None)
        if task is not None:
            task.cancel()
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def started(self, call: Call) -> None:
        self.in_flight.inc()

    def finished(self, call: Call) -> None:
        self.in_flight.dec()
        child = self._child
        route, target = call.route or NONE, call.target or NONE
        locality = NONE if call.target is None else ("local" if self.local.get(call.target) else "cloud")
        stream = "true" if call.stream else "false"
        key = ((call.key.name if call.key else NONE),) if self.key_names else ()
        child(self.requests, route, call.reason or NONE, target, locality, f"{call.status // 100}xx", stream,
              *key).inc()
        if call.finished is not None:
            child(self.duration, route, target, stream).observe(call.finished - call.started)
        if call.stream and call.first_token_at is not None:
            child(self.ttft, route, target).observe(call.first_token_at - call.started)
        u = call.usage
        tokens = 0
        if u:
            prompt, completion = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
            tokens = prompt + completion
            for kind, n in (("prompt", prompt), ("completion", completion), ("cached", cached),
                            ("reasoning", reasoning)):
                if n:
                    child(self.tokens, route, target, kind, *key).inc(n)
        if call.cost_usd:
            child(self.cost, route, target, locality, *key).inc(call.cost_usd)
        if call.cache is not None:
            child(self.cache, route, target, call.cache).inc()
            if call.saved_usd:
                child(self.cache_saved, route, target).inc(call.saved_usd)
        if call.consensus is not None:
            outcome = "error" if call.status != 200 else "agree" if " agree " in call.consensus else "split"
            child(self.consensus, route, outcome).inc()
        fallbacks: list[tuple[str, str, str]] = []
        if call.attempts:
            for a in call.attempts:
                if a.seconds is None:
                    continue
                backend = self.backend_of[a.target]
                outcome = a.category or ("ok" if a.outcome == "ok" else "escalated")
                child(self.upstream, backend, a.target, outcome).observe(a.seconds)
                if a.category:
                    child(self.errors, backend, a.category).inc()
            if len(call.attempts) > 1:
                fallbacks, retries, escalations = transitions(call.attempts)
                for frm, to, reason in fallbacks:
                    child(self.fallbacks, route, frm, to, reason).inc()
                for t, reason in retries:
                    child(self.retries, self.backend_of[t], t, reason).inc()
                for frm, to in escalations:
                    child(self.escalations, route, frm, to).inc()
        if self.stats is not None:
            self.stats.record(call, locality, tokens, fallbacks)

    # --- circuits, probes --------------------------------------------------------------------------

    def rebind(self, cfg: Config, circuits: dict[str, Any]) -> None:
        """A reloaded config: labels follow it, counters go on (`server.metrics_key_names` needs a restart)."""
        self.cfg, self.circuits = cfg, circuits
        self.local = {name: is_local(cfg.backends[t.backend], t) for name, t in cfg.models.items()}
        self.backend_of = {name: t.backend for name, t in cfg.models.items()}
        for name, circuit in circuits.items():
            self.circuit_state.labels(name).set(CIRCUIT_CODES.get(circuit.state, 0))
        if self.stats is not None:
            self.stats.targets = list(cfg.models)

    def config_reloaded(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def circuit_changed(self, circuit: Any, state: str) -> None:
        self._child(self.circuit_state, circuit.name).set(CIRCUIT_CODES[state])
        self._child(self.circuit_changes, circuit.name, state).inc()

    def state_error(self) -> None:
        """A call to the shared state failed (also from its probe thread: counters are thread-safe)."""
        self.state_errors.labels(self.replica).inc()

    def probed(self, backend: str, result: str) -> None:
        self._child(self.probes, backend, result).inc()

    # --- exposition --------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        for name, circuit in self.circuits.items():  # open → half-open happens with time, not an event
            self._child(self.circuit_state, name).set(CIRCUIT_CODES[circuit.state])
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self._sources)  # type: ignore[arg-type]
        return generate_latest(registry)


def register_usage_sources(metrics: Metrics, usage: Any) -> bool:
    """Quotas and budgets (issue 7: `turnout.usage.accounts`) as gauges read at each scrape.

    ``turnout_quota_remaining`` / ``turnout_quota_limit`` {scope, name, kind: requests | tokens}
    per daily quota; ``turnout_budget_spent_usd`` / ``turnout_budget_limit_usd`` {scope, period}
    per budget (scope ``all`` or ``key:<name>``; key budgets only when key names are enabled).
    False when there is nothing to wire (no usage accounting in this build).
    """
    accounts = getattr(usage, "accounts", None)
    if accounts is None or not hasattr(accounts, "remaining") or not hasattr(accounts, "spent"):
        return False

    def quota(suffix: str) -> GaugeSource:
        def rows() -> Iterable[tuple[Iterable[Any], float]]:
            for q in accounts.remaining():
                for kind in ("requests", "tokens"):
                    v = q.get(f"{kind}_{suffix}")
                    if v is not None:
                        yield (q["scope"], q["name"], kind), v
        return rows

    def budget(field: str) -> GaugeSource:
        def rows() -> Iterable[tuple[Iterable[Any], float]]:
            for b in accounts.spent():
                if str(b["scope"]).startswith("key:") and not metrics.key_names:
                    continue
                yield (b["scope"], b["period"]), b[field]
        return rows

    metrics.register_gauge_source("turnout_quota_remaining", "Requests or tokens left today in each quota.",
                                  ("scope", "name", "kind"), quota("left"))
    metrics.register_gauge_source("turnout_quota_limit", "Requests or tokens allowed per day by each quota.",
                                  ("scope", "name", "kind"), quota("per_day"))
    metrics.register_gauge_source("turnout_budget_spent_usd", "US dollars spent in each budget's current period.",
                                  ("scope", "period"), budget("spent_usd"))
    metrics.register_gauge_source("turnout_budget_limit_usd", "Each budget's limit for its period, US dollars.",
                                  ("scope", "period"), budget("limit_usd"))
    return True
