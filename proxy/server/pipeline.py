"""The chat pipeline every front door shares: route, dispatch, account, tell the observers.

A front door (OpenAI's chat completions; later Anthropic's Messages, the Responses API, legacy
completions) turns its request into an OpenAI chat body, then calls `Pipeline.run`: the gates
(rate limits, budgets) run, the router picks a chain, the dispatcher walks it. The result is a
`Completion` (a ``chat.completion`` dict) or a `Stream` whose `payloads()` yields the JSON of
``chat.completion.chunk``s (and the usage chunk when asked) for the front door to frame in its own
wire format. `finish` records the outcome once per request, for the log line and every observer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping, Protocol, Sequence

import orjson

from proxy.cache import ResponseCache, chunks
from proxy.call import Call
from proxy.config import Config, Target
from proxy.errors import ProxyError
from proxy.observability.logs import request_line
from proxy.routing.consensus import ConsensusRunner, config_for
from proxy.routing.dispatch import Dispatcher
from proxy.routing.router import Router
from proxy.server.shutdown import Drain, stream_cut
from proxy.usage import pricing
from translators.common import usage_chunk

log = logging.getLogger("turnout")

Gate = Callable[[Call], None]  # raises a ProxyError to refuse a request before routing


class Observer(Protocol):
    """Something that watches every request (the ledger, metrics, health): `started` when a request
    arrives, `finished` once its answer or error has gone out. Both run on the request path, so they
    must be cheap: anything slow is queued and done elsewhere."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def started(self, call: Call) -> None: ...

    def finished(self, call: Call) -> None: ...


@dataclass
class Completion:
    data: dict[str, Any]


@dataclass
class Stream:
    """An opened stream: its first chunk arrived, so it belongs to the client from here on."""

    first: bytes
    rest: AsyncIterator[bytes]


def internal_error(call: Call, e: BaseException, where: str = "") -> ProxyError:
    """A bug in Turnout: the log gets the type, the client a clean 500 with the request id."""
    log.error("%s: internal error%s %s", call.request_id, where, type(e).__name__)
    log.debug("internal error", exc_info=True)
    return ProxyError(f"Internal error in Turnout (request {call.request_id}).")


class Pipeline:
    def __init__(self, cfg: Config, router: Router, dispatcher: Dispatcher, gates: Sequence[Gate],
                 observers: Sequence[Observer], cache: ResponseCache | None = None,
                 consensus: ConsensusRunner | None = None) -> None:
        self.cfg = cfg
        self.cache = cache  # None: no route caches answers
        self.consensus = consensus  # None: no rule or route asks several targets
        self.router = router
        self.dispatcher = dispatcher
        self.gates = tuple(gates)
        self.observers = tuple(observers)
        self.drain = Drain(cfg.server.drain_seconds)  # graceful shutdown: proxy/server/shutdown.py

    def new_call(self, request_id: str, api: str = "chat") -> Call:
        """The record of a request that just arrived; observers learn of it at once."""
        call = Call(request_model="", request_id=request_id)
        if not call.request_id:
            call.request_id = "req_" + call.id[9:]
        for o in self.observers:
            o.started(call)
        return call

    async def run(self, call: Call, body: dict[str, Any], headers: Mapping[str, str], *,
                  restrict: Callable[[Call, list[Target]], list[Target]] | None = None) -> Completion | Stream:
        """Route and dispatch a checked OpenAI chat body. Raises ProxyError; the caller then `finish`es.
        `restrict`: a front door's own narrowing of the chain (e.g. Claude targets only), after filters."""
        self.drain.check_open()
        call.request_model = body["model"]
        call.stream = bool(body.get("stream"))
        call.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        features = call.features = self.router.features(body, headers, call.key)
        for gate in self.gates:
            gate(call)
        await self.router.prepare(features)  # a route that routes by meaning: embed off the event loop
        chain, rule = self.router.plan(call, features)
        if restrict is not None:
            chain = restrict(call, chain)
        cache = self.cache
        if cache is not None:
            hit = cache.lookup(call, body, headers, rule)
            if hit is not None:
                return self._replay(call, hit) if call.stream else Completion(hit)
        deadline = self.cfg.routes[call.route].timeout if call.route else None
        consensus = config_for(self.cfg, call.route, rule) if self.consensus is not None else None
        if consensus is not None and self.consensus is not None:  # several targets, the majority's answer
            data = await self.consensus.run(call, body, consensus)
            if cache is not None and call.cache_plan is not None:
                cache.store(call, data)
                call.cache_plan = None
            return self._replay(call, data) if call.stream else Completion(data)
        if call.stream:
            first, rest = await self.dispatcher.open_stream(chain, body, call, deadline=deadline)
            return Stream(first, rest)
        data = await self.dispatcher.complete(chain, body, call, escalate=rule.escalate if rule else 0,
                                              deadline=deadline)
        call.cost_usd = pricing.of_call(call, self.cfg.models[call.target].price)
        if cache is not None and call.cache_plan is not None:
            cache.store(call, data)
        return Completion(data)

    @staticmethod
    def _replay(call: Call, data: dict[str, Any]) -> Stream:
        """A complete answer (from the cache, or decided by consensus) as an opened stream."""
        payloads = chunks(data, call.id, call.created)

        async def rest() -> AsyncIterator[bytes]:
            for p in payloads:
                yield p

        call.first_token_at = time.perf_counter()
        return Stream(next(payloads), rest())

    async def embed(self, call: Call, req: Any, body: dict[str, Any], headers: Mapping[str, str],
                    decode: Callable[[list[int]], str] | None = None) -> list[list[float]]:
        """Route and dispatch an embeddings request (`translators.embeddings.EmbedRequest`) to an
        embedding target: the same gates, filters, retries and fallback as chat; the ledger and
        metrics see it as a request with prompt tokens only. Raises ProxyError; the caller `finish`es."""
        call.request_model = body["model"]
        text = "" if req.tokens else " ".join(req.inputs)
        probe = {"model": body["model"], "messages": [{"role": "user", "content": text}],
                 "metadata": body.get("metadata") or {}}
        features = call.features = self.router.features(probe, headers, call.key)
        features.kind = "embedding"
        for gate in self.gates:
            gate(call)
        await self.router.prepare(features)
        chain, _ = self.router.plan(call, features)
        deadline = self.cfg.routes[call.route].timeout if call.route else None
        vectors = await self.dispatcher.embed(chain, req, call, decode=decode, deadline=deadline)
        call.cost_usd = pricing.cost(call.usage, self.cfg.models[call.target].price)
        return vectors

    async def payloads(self, call: Call, stream: Stream) -> AsyncIterator[bytes]:
        """The stream's chunk payloads, then the usage chunk if the client asked for it.

        A failure after the start is raised as a ProxyError for the front door to frame (OpenAI: an
        error event and no [DONE]); a client that leaves is recorded as 499. `finish` runs at the end.
        """
        status, error = 200, None
        rest = stream.rest
        plan = call.cache_plan  # a miss to store once complete: its chunks are folded as they pass
        drain = self.drain
        drain.enter()
        try:
            yield stream.first
            call.record_sent(stream.first)  # counted (a bounded sample kept) for the ledger's estimate
            if plan is not None:
                plan.feed(stream.first)
            async for payload in rest:
                drain.check_stream()
                call.record_sent(payload)
                if plan is not None:
                    plan.feed(payload)
                yield payload
            if call.include_usage and call.usage is not None:
                model = call.upstream_model or self.cfg.models[call.target].model
                yield orjson.dumps(usage_chunk(call.id, call.created, model, call.usage))
        except ProxyError as e:
            status, error = e.status, e
            raise
        except (GeneratorExit, asyncio.CancelledError) as e:
            if drain.cut_off():  # the drain period ended it (proxy/server/shutdown.py), not the client
                error = stream_cut()
                status = error.status
                if isinstance(e, asyncio.CancelledError):
                    asyncio.current_task().uncancel()  # type: ignore[union-attr] - the cancel was ours
                    raise error from None  # framed by the front door as its error event
                raise
            status = 499  # the client went away mid-stream (nginx's "client closed request")
            call.error = "client_disconnected"
            raise
        except Exception as e:  # noqa: BLE001
            status = 500
            raise internal_error(call, e, " in stream") from None
        finally:
            drain.leave()
            await rest.aclose()
            if call.usage is not None and call.cache != "hit" and call.consensus is None:
                call.cost_usd = pricing.of_call(call, self.cfg.models[call.target].price)
            if plan is not None and status == 200 and self.cache is not None:
                self.cache.store(call)
            self.finish(call, status, error)

    def finish(self, call: Call, status: int, error: ProxyError | None = None) -> None:
        """Record the outcome on the call, log it, tell the observers."""
        call.status = status
        call.finished = time.perf_counter()
        if error is not None:
            call.error = error.code or error.type
        for o in self.observers:
            o.finished(call)
        request_line(call)  # the access log line: proxy/observability/logs.py
