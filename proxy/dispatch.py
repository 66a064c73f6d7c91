"""Dispatch: try a chain of targets in order until one answers.

Per target, retryable failures (429, 5xx, timeouts, connection errors) are retried up to the
backend's `retry.attempts` with exponential backoff and jitter, honouring an upstream retry-after
up to a cap; then the next target is tried if the failure allows a fallback. Any other error (a
client 4xx) goes back unchanged. A stream is opened by pulling its first chunk: until then it
may still fall back, after that it belongs to the client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from proxy.backends.base import Backend, Json
from proxy.call import Attempt, Call
from proxy.config import Target
from proxy.errors import InvalidRequest, UpstreamError
from translators.common import TranslationError

log = logging.getLogger("turnout.dispatch")
T = TypeVar("T")


def _outcome(e: UpstreamError) -> str:
    return f"{e.status} {e.code or e.type}"


def _delay(backend: Backend, attempt: int, e: UpstreamError) -> float:
    policy = backend.cfg.retry
    if e.retry_after is not None:
        return min(e.retry_after, policy.max_retry_after)
    base = policy.backoff * (2 ** attempt)
    return base / 2 + random.random() * base / 2


async def _along(chain: list[Target], backends: dict[str, Backend], call: Call,
                 attempt_fn: Callable[[Backend, Target], Awaitable[T]]) -> T:
    last: UpstreamError | None = None
    for target in chain:
        backend = backends[target.backend]
        tries = backend.cfg.retry.attempts
        for n in range(tries):
            try:
                result = await attempt_fn(backend, target)
            except TranslationError as e:
                raise InvalidRequest(e.message, param=e.param, code=e.code) from None
            except UpstreamError as e:
                last = e
                call.attempts.append(Attempt(target.name, _outcome(e), e.status))
                log.info("%s: target %s failed: %s", call.request_id, target.name, _outcome(e))
                if e.retry and n + 1 < tries:
                    await asyncio.sleep(_delay(backend, n, e))
                    continue
                if not e.fallback:
                    raise
                break
            call.target = target.name
            call.attempts.append(Attempt(target.name, "ok", 200))
            return result
    assert last is not None
    raise last


async def complete(chain: list[Target], backends: dict[str, Backend], body: Json, call: Call) -> Json:
    """A non-streamed answer from the first target that gives one."""

    async def attempt(backend: Backend, target: Target) -> Json:
        return await backend.complete(target, body, call)

    return await _along(chain, backends, call, attempt)


async def open_stream(chain: list[Target], backends: dict[str, Backend], body: Json,
                      call: Call) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first chunk and the rest of a stream from the first target that starts one."""

    async def attempt(backend: Backend, target: Target) -> tuple[bytes, AsyncIterator[bytes]]:
        agen = backend.stream(target, body, call)
        try:
            # asyncio.timeout, not wait_for: the generator must run in this task throughout
            async with asyncio.timeout(backend.cfg.timeout.first_token):
                first = await agen.__anext__()
        except TimeoutError:
            await agen.aclose()
            raise UpstreamError(f"Backend '{backend.name}' sent no first token in time.", status=504,
                                type="timeout", code="upstream_timeout", retry=True, category="timeout",
                                backend=backend.name) from None
        except StopAsyncIteration:
            raise UpstreamError(f"Backend '{backend.name}' sent an empty stream.", status=502,
                                code="upstream_empty_stream", retry=True, backend=backend.name) from None
        call.first_token_at = time.perf_counter()
        return first, agen

    return await _along(chain, backends, call, attempt)
