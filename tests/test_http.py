"""The one upstream I/O boundary (`proxy.http`, issue 12 item 6): every failure is one of Turnout's
own exceptions (`proxy.errors.TransportError` and its kinds), never the library's underneath, and
no other module of Turnout talks HTTP by itself."""

from __future__ import annotations

import ast
import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConnectError, ReadError, ReadTimeout, TransportError, UpstreamTimeout
from proxy.http import HTTPClient, Timeout, run_sync
from tests.conftest import free_port

PROXY = Path(__file__).resolve().parent.parent / "proxy"


class RawServer:
    """A TCP server on 127.0.0.1 that answers each connection with `reply` bytes, then waits `hold`
    seconds and closes (a broken or stalled upstream, byte for byte)."""

    def __init__(self, reply: bytes, hold: float = 0.0) -> None:
        self.reply, self.hold = reply, hold
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(self.reply)
            self.done.wait(self.hold)
        self.sock.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def fetch(url: str, timeout: Any = 2.0, stream: bool = False) -> Any:
    async def go(c: HTTPClient) -> Any:
        if not stream:
            return await c.get("/x")
        async with c.stream("GET", "/x") as r:
            return [line async for line in r.aiter_lines()]

    return run_sync(url, go, timeout=timeout)


def test_a_refused_connection_is_a_connect_error() -> None:
    with pytest.raises(ConnectError) as e:
        fetch(f"http://127.0.0.1:{free_port()}")
    assert isinstance(e.value, TransportError) and "127.0.0.1" not in str(e.value)


def test_a_stalled_upstream_is_a_read_timeout() -> None:
    s = RawServer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab", hold=5)
    try:
        with pytest.raises(ReadTimeout) as e:
            fetch(s.url, timeout=Timeout(connect=1, read=0.3))
        assert isinstance(e.value, UpstreamTimeout) and e.value.phase == "read"
    finally:
        s.close()


def test_a_body_cut_short_is_a_read_error() -> None:
    s = RawServer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
    try:
        with pytest.raises(ReadError):
            fetch(s.url, stream=True)
    finally:
        s.close()


def test_an_answer_comes_through() -> None:
    s = RawServer(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{\"a\": [1]}\n")
    try:
        r = fetch(s.url)
        assert r.status_code == 200 and r.json() == {"a": [1]} and not r.is_redirect
    finally:
        s.close()


def test_run_sync_works_inside_a_running_loop() -> None:
    async def inside() -> Any:
        with pytest.raises(ConnectError):
            fetch(f"http://127.0.0.1:{free_port()}")
        return True

    assert asyncio.run(inside())


def test_the_exceptions_are_turnouts_own() -> None:
    for cls in (TransportError, ConnectError, ReadTimeout, ReadError):
        assert all(c.__module__ in ("proxy.errors", "builtins") for c in cls.__mro__), cls.__mro__


def test_no_other_module_talks_http_by_itself() -> None:
    """httpx and aiohttp are imported by proxy/http.py only: chat, probes, image fetches, llama.cpp
    supervision, doctor and the usage CLI's --url all go through it."""
    importers = []
    for path in PROXY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("httpx", "aiohttp", "requests", "urllib3") for n in names):
                importers.append(str(path.relative_to(PROXY)))
    assert sorted(set(importers)) == ["http.py"], importers
