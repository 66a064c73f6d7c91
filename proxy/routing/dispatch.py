"""Dispatch: try a chain of targets in order until one answers.

Per target: the circuit breaker must allow the call; retryable failures (429, 5xx, timeouts,
connection errors) are retried up to the backend's `retry.attempts` with exponential backoff and
jitter, honouring an upstream retry-after up to a cap; then the next target is tried if the
failure allows a fallback. A context-length error moves on to a target with a larger window. Any
other client error goes back unchanged. A stream is opened by pulling its first chunk: until then
it may still fall back, after that it belongs to the client. Rules that opt in get quality
escalation: a weak non-streamed answer moves on to the next target, at most `escalate` times.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from contextlib import nullcontext
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from proxy.usage import pricing

from proxy.routing import quality
from proxy.backends.base import Backend, Json
from proxy.call import Attempt, Call
from proxy.config import Target
from proxy.errors import InvalidRequest, ProxyError, UpstreamError, upstream_timeout
from proxy.routing.router import Router
from translators.common import TranslationError

log = logging.getLogger("turnout.dispatch")
T = TypeVar("T")
CONTEXT_ERROR = re.compile(r"context[ _]length|context window|maximum context|too many tokens|prompt is too long"
                           r"|exceeds the (?:model'?s )?(?:maximum|context)", re.IGNORECASE)


def _outcome(e: UpstreamError) -> str:
    return f"{e.status} {e.code or e.type}"


def is_context_error(e: UpstreamError) -> bool:
    return e.code == "context_length_exceeded" or (400 <= e.status < 500 and bool(CONTEXT_ERROR.search(e.message)))


def _delay(backend: Backend, attempt: int, e: UpstreamError) -> float:
    policy = backend.cfg.retry
    if e.retry_after is not None:
        return min(e.retry_after, policy.max_retry_after)
    base = policy.backoff * (2 ** attempt)
    return base / 2 + random.random() * base / 2


def malformed(backend: str, err: Exception) -> UpstreamError:
    """A broken upstream answer (wrong JSON shape, a field missing): retryable, another target may answer."""
    return UpstreamError(f"Backend '{backend}' sent an answer Turnout could not read ({type(err).__name__}).",
                         status=502, code="upstream_malformed_response", retry=True, category="server",
                         backend=backend)


def _timeout_error(what: str, backend: str | None = None) -> UpstreamError:
    return upstream_timeout(f"{what} timed out.", backend)


class Dispatcher:
    def __init__(self, router: Router, admit: Callable[[Target, Call], str | None] | None = None) -> None:
        self.router = router
        self.backends = router.backends
        self.circuits = router.circuits
        self.balancer = router.balancer  # counts attempts in flight and their latency, for balanced groups
        # admission of one try just before it is sent (quotas, free_only budgets): None, or why it is skipped
        self.admit = admit

    async def _along(self, chain: list[Target], call: Call, attempt: Callable[[Backend, Target], Awaitable[T]],
                     check: Callable[[T], str | None] | None = None, escalate: int = 0) -> T:
        last: UpstreamError | None = None
        kept: tuple[Target, T] | None = None  # an answer that failed a quality check, kept in case
        min_window: int | None = None  # after a context-length error only larger windows are tried
        for i, target in enumerate(chain):
            if min_window is not None and target.context_window is not None and target.context_window <= min_window:
                call.attempts.append(Attempt(target.name, f"skipped: context window {target.context_window} not larger"))
                continue
            backend, circuit = self.backends[target.backend], self.circuits[target.backend]
            tries = backend.cfg.retry.attempts
            for n in range(tries):
                if not circuit.begin():
                    call.attempts.append(Attempt(target.name, f"skipped: {circuit.blocked()}"))
                    break
                why = self.admit(target, call) if self.admit is not None else None
                if why is not None:
                    circuit.release()
                    call.attempts.append(Attempt(target.name, f"skipped: {why}"))
                    break
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(target.timeout) if target.timeout else nullcontext():
                        result = await self.balancer.track(target.name, attempt(backend, target))
                except TranslationError as e:
                    circuit.release()
                    raise InvalidRequest(e.message, param=e.param, code=e.code) from None
                except TimeoutError:
                    e = _timeout_error(f"Target '{target.name}'", backend.name)
                    result = None
                except UpstreamError as err:
                    e, result = err, None
                except ProxyError:
                    circuit.release()
                    raise
                except Exception as err:  # noqa: BLE001 - an answer a backend could not read is the upstream's fault
                    log.warning("%s: target %s sent an unreadable answer (%s)", call.request_id, target.name,
                                type(err).__name__)
                    log.debug("unreadable upstream answer", exc_info=True)
                    e, result = malformed(backend.name, err), None
                else:
                    e = None
                if e is not None:
                    last = e
                    circuit.record(False, e.category)
                    call.attempts.append(Attempt(target.name, _outcome(e), e.status, time.perf_counter() - t0,
                                                 e.category))
                    log.info("%s: target %s failed: %s", call.request_id, target.name, _outcome(e))
                    if is_context_error(e):
                        min_window = target.context_window or 0
                        break
                    if e.retry and n + 1 < tries:
                        await asyncio.sleep(_delay(backend, n, e))
                        continue
                    if not e.fallback:
                        raise e
                    break
                circuit.record(True)
                weak = check(result) if check and escalate > 0 and i + 1 < len(chain) else None
                if weak:
                    escalate -= 1
                    call.discarded_cost_usd += pricing.cost(call.usage, target.price)
                    kept = (target, result)
                    call.attempts.append(Attempt(target.name, f"escalated: {weak}", seconds=time.perf_counter() - t0))
                    log.info("%s: escalating from %s: %s", call.request_id, target.name, weak)
                    break
                call.target = target.name
                call.attempts.append(Attempt(target.name, "ok", 200, time.perf_counter() - t0))
                return result
        if kept is not None:
            call.target = kept[0].name
            return kept[1]
        if last is None:
            raise UpstreamError("Every target was skipped while dispatching.", status=503, type="service_unavailable",
                                code="no_available_target")
        raise last

    async def complete(self, chain: list[Target], body: Json, call: Call, *, escalate: int = 0,
                       deadline: float | None = None) -> Json:
        """A non-streamed answer from the first target that gives one (good enough, if escalating)."""

        async def attempt(backend: Backend, target: Target) -> Json:
            answer = await backend.complete(target, body, call)
            call.usage = answer.get("usage")  # of the answer being weighed: kept, or priced as discarded
            return answer

        def check(answer: Json) -> str | None:
            return quality.weakness(answer, body)

        try:
            async with asyncio.timeout(deadline) if deadline else nullcontext():
                return await self._along(chain, call, attempt, check, escalate)
        except TimeoutError:
            raise _timeout_error(f"Route '{call.route}'") from None

    async def embed(self, chain: list[Target], req: Any, call: Call, *, decode: Callable[[list[int]], str] | None = None,
                    deadline: float | None = None) -> list[list[float]]:
        """Embedding vectors from the first target that gives them (retries and fallback as for chat)."""

        async def attempt(backend: Backend, target: Target) -> list[list[float]]:
            return await backend.embed(target, req, call, decode)

        try:
            async with asyncio.timeout(deadline) if deadline else nullcontext():
                return await self._along(chain, call, attempt)
        except TimeoutError:
            raise _timeout_error(f"Route '{call.route}'") from None

    async def open_stream(self, chain: list[Target], body: Json, call: Call, *,
                          deadline: float | None = None) -> tuple[bytes, AsyncIterator[bytes]]:
        """The first chunk and the rest of a stream from the first target that starts one."""

        async def attempt(backend: Backend, target: Target) -> tuple[bytes, AsyncIterator[bytes]]:
            agen: Any = backend.stream(target, body, call)
            try:
                # asyncio.timeout, not wait_for: the generator must run in this task throughout
                async with asyncio.timeout(backend.cfg.timeout.first_token):
                    first = await agen.__anext__()
            except TimeoutError:
                await agen.aclose()
                raise _timeout_error(f"Backend '{backend.name}' first token", backend.name) from None
            except StopAsyncIteration:
                raise UpstreamError(f"Backend '{backend.name}' sent an empty stream.", status=502,
                                    code="upstream_empty_stream", retry=True, backend=backend.name) from None
            except BaseException:
                await agen.aclose()
                raise
            call.first_token_at = time.perf_counter()
            return first, agen

        try:
            async with asyncio.timeout(deadline) if deadline else nullcontext():
                return await self._along(chain, call, attempt)
        except TimeoutError:
            raise _timeout_error(f"Route '{call.route}'") from None
