"""Shared fixtures: real uvicorn servers on 127.0.0.1, Turnout built from a config dict, the
official `openai` SDK as the client.

`serve(app)` runs any ASGI app (Turnout, an upstream emulator) in a background thread with its own
event loop and returns its base URL; every test talks real HTTP over loopback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest
import uvicorn

from proxy.server.assembly import build_app
from proxy.config import parse


# recorded provider responses (copied from the project's shared material; sources in SOURCES.json)
RECORDED = Path(__file__).resolve().parent / "fixtures" / "recorded"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server in a thread: real sockets, started and stopped by the test."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="asyncio", http="httptools",
                                     log_level="warning", access_log=False, lifespan="on",
                                     timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """serve(app) → base URL of a real HTTP server running `app`; stopped after the test."""
    servers: list[ServerThread] = []

    def start(app: Any, port: int | None = None) -> str:
        s = ServerThread(app, port).start()
        servers.append(s)
        return s.url

    yield start
    for s in reversed(servers):
        s.stop()


@pytest.fixture
def turnout(serve: Callable[[Any], str]) -> Callable[..., str]:
    """turnout(config_dict, env={}, clock=None) → base URL of Turnout serving that config (a
    `proxy.state.ManualClock` as `clock` moves its counters and breakers without sleeping)."""

    def start(raw: dict[str, Any], env: dict[str, str] | None = None, clock: Any = None) -> str:
        cfg = parse(raw, env or {})
        return serve(build_app(cfg, clock))

    return start


def sdk(base_url: str, api_key: str = "sk-test", **kw: Any) -> openai.OpenAI:
    """The official OpenAI client pointed at a Turnout base URL, with SDK retries off."""
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, **kw)


def post(base_url: str, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    """A raw POST to /v1/chat/completions (for what the SDK would refuse to send)."""
    content = body if isinstance(body, (bytes, str)) else None
    return httpx.post(base_url + "/v1/chat/completions", content=content, json=None if content else body,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=30, **kw)


def collect(stream: Any) -> tuple[str, list[Any]]:
    """Text and chunks of an SDK stream."""
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class TurnoutProcess:
    """`turnout serve --config FILE --port N` as a real process (signals, several processes sharing a
    ledger); `start()` waits until it answers /health (bounded), `stop()` terminates it."""

    def __init__(self, config: str, port: int | None = None) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", config, "--port",
                                      str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30) -> "TurnoutProcess":
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("turnout serve did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (tests/pgdb.py): skipped without a server, except in CI."""
    from tests.pgdb import database

    with database() as url:
        yield url
