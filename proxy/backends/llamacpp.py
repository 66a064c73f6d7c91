"""`type: llamacpp`: a local GGUF model served by llama.cpp's server, which Turnout starts and supervises.

    backends:
      local:
        type: llamacpp
        model_path: smollm2          # a cached model (`turnout models fetch smollm2`) or a .gguf path
        n_ctx: 4096                  # context size, shared by the slots
        threads: 4                   # CPU threads (default: all cores, at most 8)
        parallel: 1                  # requests decoded at once (slots)
        concurrency: 16              # requests open to the server at once; more wait, then fail over
        startup_timeout: 120         # seconds for the model to load and /health to answer
        embedding: false             # true: also serve /v1/embeddings (llama.cpp's --embedding mode)
        pooling: mean                # with embedding: mean | cls | last (default: the model's own)

Requests go through the OpenAI-compatible path (`proxy.backends.openai`): llama.cpp's server speaks
that API itself. What this module adds is the process: `start()` launches
``python -m proxy.local.llamacpp_server`` (needs the `turnout[local]` extra, i.e. `xllamacpp`) as a child in
its own process group on a free loopback port and waits for /health; a supervisor task watches it
and restarts it with exponential backoff when it exits or stops answering /health. While it is
down the backend is `unavailable` (routing skips it, /ready shows why) and every transition is
logged. `aclose()` stops it (SIGTERM, then SIGKILL); if Turnout dies without closing, the child
dies with it (PR_SET_PDEATHSIG on Linux, a parent watchdog everywhere, an atexit hook).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import time
from typing import AsyncIterator, Callable


from proxy.local import models as model_cache
from proxy.backends import openai
from proxy.backends.base import Json
from proxy.call import Call
from proxy.config import BackendConfig, ConfigError, Target
from proxy.config.providers import LlamacppOptions
from proxy.errors import TransportError, UpstreamError
from proxy.http import HTTPClient
from proxy.local.llamacpp_server import Child, make_workdir, sweep_workdirs
from translators import embeddings as emb

log = logging.getLogger("turnout.llamacpp")

class Backend(openai.Backend):
    type = "llamacpp"
    default_base_url = "http://127.0.0.1:0/v1"  # replaced by the child's real address once it serves

    def __init__(self, cfg: BackendConfig) -> None:
        super().__init__(cfg)
        where = f"backends.{cfg.name}"
        # the options' names and types were checked against providers.LlamacppOptions at load
        o = LlamacppOptions(**cfg.options)
        if cfg.base_url:
            raise ConfigError(f"{where}.base_url: a llamacpp backend runs its own server; to use a llama.cpp "
                              "server that is already running, use type: openai with its base_url")
        spec = o.model_path
        self.model_spec = spec
        self.model_file = model_cache.resolve(spec)
        self.n_ctx = o.n_ctx
        self.threads = o.threads or min(os.cpu_count() or 2, 8)
        self.parallel = o.parallel
        # requests Turnout has open to the server at once; the rest wait here (within the first-token
        # timeout, then fall back), so the server always has an HTTP thread free to answer /health
        self.concurrency = o.concurrency or max(16, self.parallel)
        self.startup_timeout = o.startup_timeout
        self.restart = o.restart
        self.backoff = o.restart_backoff
        self.backoff_max = o.restart_backoff_max
        self.health_interval = o.health_interval
        self.log_file = o.log_file
        self.verbose = o.verbose
        self.alias = o.alias or (spec if spec in model_cache.KNOWN else self.model_file.stem)
        self.embedding = o.embedding
        self.pooling = o.pooling

        self.child: Child | None = None
        self._slots = asyncio.Semaphore(self.concurrency)
        self.restarts = 0  # times the server was started again after it died
        self._workdir: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._state: str | None = "not started"  # None while serving; why not, otherwise

    # --- state -----------------------------------------------------------------------------------

    def _static_problem(self) -> str | None:
        """What stops the server from starting at all (a missing model or xllamacpp)."""
        if not self.model_file.is_file():
            if self.model_spec in model_cache.KNOWN:
                return (f"model {self.model_spec!r} is not in the cache {model_cache.cache_dir()} "
                        f"(run: turnout models fetch {self.model_spec})")
            return f"model file not found: {self.model_file}"
        if importlib.util.find_spec("xllamacpp") is None:
            return "xllamacpp is not installed (pip install 'turnout[local]')"
        return None

    @property
    def unavailable(self) -> str | None:
        if self.cfg.unavailable:
            return self.cfg.unavailable
        if self._supervisor is None and self.child is None:
            # not started (the banner, check-config) or never startable
            return self._static_problem() if self._state == "not started" else self._state
        return self._state

    @property
    def pid(self) -> int | None:
        """The llama.cpp server process while one is running."""
        return self.child.pid if self.child is not None and self.child.poll() is None else None

    def describe(self) -> str:
        where = self.child.url if self.child is not None and self.child.url else "managed, loopback"
        return f"{self.name} ({self.type}, {self.model_file.name}, {where})"

    # --- requests: the OpenAI-compatible path, at most `concurrency` at once -----------------------

    async def _slot(self) -> None:
        try:
            async with asyncio.timeout(self.cfg.timeout.first_token):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamError(f"Backend '{self.name}' is busy (all {self.concurrency} request slots in use).",
                                status=503, type="service_unavailable", code="upstream_busy", retry=False,
                                fallback=True, category="server", backend=self.name) from None

    async def complete(self, target: Target, body: Json, call: Call) -> Json:
        await self._slot()
        try:
            return await super().complete(target, body, call)
        finally:
            self._slots.release()

    async def stream(self, target: Target, body: Json, call: Call) -> AsyncIterator[bytes]:
        await self._slot()
        try:
            async for payload in super().stream(target, body, call):
                yield payload
        finally:
            self._slots.release()

    # token arrays from OpenAI clients are tiktoken's ids, not this model's: they are decoded to text first
    embed_takes_tokens = False

    async def embed(self, target: Target, req: emb.EmbedRequest, call: Call,
                    decode: Callable[[list[int]], str] | None = None) -> list[list[float]]:
        if not self.embedding:
            raise UpstreamError(f"Backend '{self.name}' runs llama.cpp without embeddings (set embedding: true "
                                "on the backend).", status=400, type="invalid_request_error",
                                code="unsupported_capability", param="model", fallback=True, category="client",
                                backend=self.name)
        await self._slot()
        try:
            return await super().embed(target, req, call, decode)
        finally:
            self._slots.release()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        problem = self._static_problem()
        if problem:
            self._state = problem
            log.error("backend %s: cannot start llama.cpp's server: %s", self.name, problem)
            return
        await asyncio.to_thread(sweep_workdirs)  # what a killed Turnout could not clean up
        self._workdir = make_workdir(self.name)
        first = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first), name=f"llamacpp-{self.name}")
        await first  # the first launch has succeeded or failed (the supervisor goes on either way)

    async def aclose(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self._stop_child()
        self._state = "stopped"
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        await super().aclose()

    async def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while child.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if child.poll() is None:
            log.warning("backend %s: llama.cpp server pid %d ignored SIGTERM; killing it", self.name, child.pid)
            child.signal(signal.SIGKILL)
            await asyncio.to_thread(child.stop, 0)  # reap it
        log.info("backend %s: llama.cpp server pid %d stopped", self.name, child.pid)

    async def _launch(self) -> str | None:
        """Start a child and wait until /health answers; None on success, else why it failed."""
        problem = self._static_problem()
        if problem:
            return problem
        log_path = self.log_file or os.path.join(self._workdir, "server.log")
        child = Child.spawn(str(self.model_file), n_ctx=self.n_ctx, threads=self.threads, parallel=self.parallel,
                            http_threads=self.concurrency + 4, alias=self.alias, verbose=self.verbose,
                            workdir=self._workdir, log_path=log_path, embedding=self.embedding,
                            pooling=self.pooling)
        self.child = child
        log.info("backend %s: starting llama.cpp server pid %d for %s (log: %s)", self.name, child.pid,
                 self.model_file, log_path)
        started = time.monotonic()
        deadline = started + self.startup_timeout
        probe = HTTPClient(timeout=2.0)
        try:
            while True:
                rc = child.poll()
                if rc is not None:
                    tail = child.log_tail()
                    log.warning("backend %s: llama.cpp server exited with code %s while starting%s", self.name,
                                rc, "; last output:\n" + tail if tail else "")
                    return f"llama.cpp server exited with code {rc} while starting"
                url = child.read_ready()
                if url is not None and await self._healthy(probe, url):
                    break
                if time.monotonic() > deadline:
                    await self._stop_child()
                    return f"llama.cpp server did not become healthy within {self.startup_timeout:g}s"
                await asyncio.sleep(0.05)
        finally:
            await probe.aclose()
        self.base_url = url + "/v1"
        self.client.base_url = self.base_url
        log.info("backend %s: llama.cpp server pid %d ready at %s in %.1fs", self.name, child.pid, url,
                 time.monotonic() - started)
        return None

    @staticmethod
    async def _healthy(probe: HTTPClient, url: str) -> bool:
        try:
            r = await probe.get(url + "/health")
        except TransportError:
            return False
        return r.status_code == 200

    async def _watch(self) -> str:
        """Wait while the child serves; return why it stopped serving (it is no longer running)."""
        child = self.child
        assert child is not None and child.url is not None
        misses = 0
        next_probe = time.monotonic() + self.health_interval
        probe = HTTPClient(timeout=max(2.0, self.health_interval))
        try:
            while True:
                rc = child.poll()
                if rc is not None:
                    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                    killed = rc in (-signal.SIGKILL, -signal.SIGTERM)  # its last output says nothing then
                    tail = "" if killed else child.log_tail(8)
                    log.warning("backend %s: llama.cpp server pid %d %s%s", self.name, child.pid, how,
                                "; last output:\n" + tail if tail else "")
                    return f"llama.cpp server {how}"
                if time.monotonic() >= next_probe:
                    misses = 0 if await self._healthy(probe, child.url) else misses + 1
                    next_probe = time.monotonic() + self.health_interval
                    if misses >= 3:
                        log.warning("backend %s: llama.cpp server pid %d failed 3 health checks; restarting it",
                                    self.name, child.pid)
                        await self._stop_child()
                        return "llama.cpp server stopped answering /health"
                await asyncio.sleep(0.1)
        finally:
            await probe.aclose()

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        failures = 0  # consecutive failed launches or short-lived servers, for the backoff
        try:
            while not self._closing:
                self._state = "llama.cpp server is starting" if not self.restarts else \
                    f"llama.cpp server is restarting (restart {self.restarts})"
                why = await self._launch()
                if why is None:
                    self._state = None
                    if not first.done():
                        first.set_result(None)
                    up_since = time.monotonic()
                    why = await self._watch()
                    if time.monotonic() - up_since > 60:
                        failures = 0  # it served for a while: start the backoff over
                if not first.done():
                    first.set_result(None)
                if self._closing:
                    return
                failures += 1
                if not self.restart:
                    self._state = f"{why} (restart: false)"
                    log.error("backend %s: %s; not restarting it (restart: false)", self.name, why)
                    return
                delay = min(self.backoff * 2 ** (failures - 1), self.backoff_max)
                self._state = f"{why}; restarting in {delay:.1f}s"
                log.warning("backend %s: %s; restarting in %.1fs (attempt %d)", self.name, why, delay, failures)
                await asyncio.sleep(delay)
                self.restarts += 1
        except Exception as e:  # a bug here must not pass silently: the backend stays down, visibly
            self._state = f"llama.cpp supervisor failed ({type(e).__name__})"
            log.exception("backend %s: supervisor failed", self.name)
            await self._stop_child()
        finally:
            if not first.done():
                first.set_result(None)
