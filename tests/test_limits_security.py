"""Issue 13, item 10: nothing forged or fetched behind the operator's back.

Access-log lines escape a client's control characters (no forged lines); the image fetcher
connects to the address it checked (resolve once, connect to that IP, Host kept: no DNS
rebinding) and checks every redirect hop again.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from proxy.backends import images
from proxy.backends.images import ImageFetcher, ImagePolicy
from tests.conftest import post
from translators.common import TranslationError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_control_characters_in_client_fields_cannot_forge_log_lines(turnout, caplog) -> None:
    base = turnout({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}, "routes": {}})
    forged = "nope\n2026-01-01 00:00:00,000 INFO turnout.access: req_forged key=admin status=200\u2028x"
    caplog.set_level(logging.INFO, logger="turnout.access")
    r = post(base, {"model": forged, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    lines = [logging.Formatter("%(message)s").format(rec) for rec in caplog.records if rec.name == "turnout.access"]
    assert len(lines) == 1
    line = lines[0]
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert 'model="nope\\n2026-01-01' in line and " key=- " in line  # one key field: ours


def image_host() -> Starlette:
    async def img(request: Request) -> Response:
        request.app.state.hosts.append(request.headers.get("host"))
        return Response(PNG, media_type="image/png")

    async def redirect(request: Request) -> Response:
        return RedirectResponse(f"http://inside.test:{request.url.port}/img.png", status_code=302)

    app = Starlette(routes=[Route("/img.png", img), Route("/redirect", redirect)])
    app.state.hosts = []
    return app


@pytest.fixture
def rebinding(monkeypatch):
    """127.0.0.1 counts as public for these tests; 127.0.0.2 stands for an internal address.
    `images.test` answers 127.0.0.1 the first time and 127.0.0.2 afterwards (a rebinding DNS)."""
    monkeypatch.setattr(images, "_blocked", lambda ip: ip != "127.0.0.1")
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        if host == "images.test":
            return ["127.0.0.1"] if asked.count(host) == 1 else ["127.0.0.2"]
        if host == "inside.test":
            return ["127.0.0.2"]
        raise OSError("unknown host")

    return resolver, asked


def test_image_fetch_connects_to_the_checked_address(serve, rebinding) -> None:
    resolver, asked = rebinding
    app = image_host()
    port = serve(app).rsplit(":", 1)[1]

    async def go() -> tuple[str, bytes]:
        f = ImageFetcher(ImagePolicy(), resolver=resolver)
        try:
            return await f.fetch(f"http://images.test:{port}/img.png")
        finally:
            await f.aclose()

    media, data = asyncio.run(go())
    assert (media, data) == ("image/png", PNG)
    assert asked == ["images.test"]  # resolved once: the check and the connection used one answer
    assert app.state.hosts == [f"images.test:{port}"]  # the name kept in the Host header


def test_each_redirect_hop_is_checked_again(serve, rebinding) -> None:
    resolver, asked = rebinding
    port = serve(image_host()).rsplit(":", 1)[1]

    async def go() -> None:
        f = ImageFetcher(ImagePolicy(), resolver=resolver)
        try:
            await f.fetch(f"http://images.test:{port}/redirect")
        finally:
            await f.aclose()

    with pytest.raises(TranslationError, match="not a public address"):
        asyncio.run(go())
    assert asked == ["images.test", "inside.test"]


# --- slowloris: a request must arrive whole within server.read_timeout (proxy/server/protocol.py) ----


@pytest.fixture
def bounded_server():
    import threading
    import time

    import uvicorn

    from proxy.config import parse
    from proxy.server.assembly import build_app
    from proxy.server.protocol import BoundedReadProtocol
    from tests.conftest import free_port

    cfg = parse({"server": {"read_timeout": 0.5}, "backends": {"m": {"type": "mock"}},
                 "models": {"t": {"backend": "m"}}, "routes": {}}, {})
    port = free_port()

    class Protocol(BoundedReadProtocol):
        read_timeout = cfg.server.read_timeout

    server = uvicorn.Server(uvicorn.Config(build_app(cfg), host="127.0.0.1", port=port, loop="asyncio",
                                           http=Protocol, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(5)


def _trickle(port: int, parts: list[bytes]) -> bytes:
    """Send `parts` (then nothing more) and read what the server answers before it closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for p in parts:
            s.sendall(p)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("parts", [
    [],  # connects and says nothing
    [b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"],  # headers never finish
    [b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
     b"content-length: 500\r\n\r\n{\"model\": \"t\", "],  # body never finishes
])
def test_a_request_that_trickles_in_gets_408_and_is_closed(bounded_server, parts) -> None:
    out = _trickle(bounded_server, parts)  # returns once the server closes (the socket timeout is 5 s)
    assert out.startswith(b"HTTP/1.1 408 ")
    body = out.split(b"\r\n\r\n", 1)[1]
    assert b'"code":"request_timeout"' in body


def test_a_prompt_request_is_served_by_the_bounded_protocol(bounded_server) -> None:
    r = post(f"http://127.0.0.1:{bounded_server}", {"model": "t", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200


def test_provider_test_checks_the_body_size_before_reading_it(turnout) -> None:
    base = turnout({"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}, "routes": {}})
    port = int(base.rsplit(":", 1)[1])
    head = (b"POST /turnout/providers/m/test HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (100 * 1024) + b" " * (100 * 1024) + b"\r\n"
    out = _trickle_until_answer(port, [head, chunk])  # the body never ends: only a size check can answer
    assert out.startswith(b"HTTP/1.1 413 ")


def _trickle_until_answer(port: int, parts: list[bytes]) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for p in parts:
            s.sendall(p)
        return s.recv(65536)
