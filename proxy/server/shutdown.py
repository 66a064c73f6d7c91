"""Graceful shutdown: on SIGTERM, drain before uvicorn stops.

`Drain.begin()` (the SIGTERM handler, installed by the lifespan when running in the main thread):
`/ready` answers 503 at once and new requests are refused (503 ``shutting_down``), so a load balancer
moves traffic away; streams in flight get `server.drain_seconds` (default 30) to finish; a stream
still running then ends with an error event the `openai` SDK raises (``shutdown``), recorded as such
in the ledger, not as the client's doing — also a stream stalled waiting for its upstream: at the
deadline the task of every stream in flight is cancelled, and the pipeline turns that cancellation
into the ``shutdown`` error (`Drain.cut_off`). Then uvicorn's own SIGTERM handling runs (it closes
the sockets). A second SIGTERM skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable

from proxy.errors import ProxyError

log = logging.getLogger("turnout")


def shutting_down() -> ProxyError:
    return ProxyError("Turnout is shutting down; try again (another instance may answer).", status=503,
                      type="service_unavailable", code="shutting_down")


def stream_cut() -> ProxyError:
    return ProxyError("Turnout shut down before the stream finished.", status=503, type="service_unavailable",
                      code="shutdown")


class Drain:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self.deadline: float | None = None  # loop time after which streams in flight are ended
        self.tasks: set[asyncio.Task[Any]] = set()  # the tasks sending the streams in flight
        self._then: Callable[[], Any] | None = None

    @property
    def streams(self) -> int:
        """Streams in flight."""
        return len(self.tasks)

    def enter(self) -> None:
        """A stream starts, sent by the current task."""
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)

    def leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.discard(task)

    def cut_off(self) -> bool:
        """Whether the drain period is over (a stream's cancellation now is the shutdown's doing)."""
        return self.deadline is not None and asyncio.get_running_loop().time() >= self.deadline

    def _cut(self) -> None:
        """The drain period is over: end every stream still in flight, even one waiting for a chunk."""
        for task in list(self.tasks):
            task.cancel()

    def check_open(self) -> None:
        """Refuse a new request while draining."""
        if self.draining:
            raise shutting_down()

    def check_stream(self) -> None:
        """End a stream once the drain period is over (called per chunk: one comparison)."""
        if self.deadline is not None and asyncio.get_running_loop().time() >= self.deadline:
            raise stream_cut()

    def install(self) -> None:
        """Take SIGTERM (main thread only: uvicorn's handler is kept and called after the drain)."""
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.begin,
                                                          lambda: previous(signal.SIGTERM, None))
        except (RuntimeError, ValueError, NotImplementedError):
            return  # not the main thread (tests' in-process servers): uvicorn's handling stays as it is

    def begin(self, then: Callable[[], Any]) -> None:
        if self.draining:  # a second SIGTERM: stop now
            self.deadline = asyncio.get_running_loop().time()
            self._cut()
            then()
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.seconds
        loop.call_at(self.deadline, self._cut)
        log.warning("SIGTERM: draining (%d streams in flight, up to %gs)", self.streams, self.seconds)
        loop.create_task(self._finish(then))

    async def _finish(self, then: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        assert self.deadline is not None
        while self.streams and loop.time() < self.deadline + 1:
            await asyncio.sleep(0.05)
        then()
