"""Issue 13, item 8: open mode is safe. With no keys, Turnout refuses to listen beyond loopback
unless told, and no web page can spend through a visitor's browser: cross-origin requests,
"simple" (text/plain, form) bodies and foreign Host headers (DNS rebinding) are refused. Browser
clients the operator lists in `server.cors_origins` get their preflight answered."""

from __future__ import annotations

import httpx
import pytest

from proxy.cli import open_bind_refusal
from proxy.config import parse

MOCK = {"backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}, "routes": {}}
HI = {"model": "t", "messages": [{"role": "user", "content": "hi"}]}


def chat(base: str, headers: dict[str, str], content: bytes | None = None) -> httpx.Response:
    import json

    return httpx.post(base + "/v1/chat/completions", content=content or json.dumps(HI).encode(),
                      headers={"content-type": "application/json", **headers}, timeout=10)


def test_an_open_turnout_refuses_to_listen_beyond_loopback() -> None:
    open_cfg = parse(MOCK, {})
    assert open_bind_refusal(open_cfg, "127.0.0.1") is None
    assert "Refusing to listen on 0.0.0.0" in open_bind_refusal(open_cfg, "0.0.0.0")
    assert open_bind_refusal(parse({**MOCK, "server": {"allow_open": True}}, {}), "0.0.0.0") is None
    assert open_bind_refusal(parse({**MOCK, "keys": [{"key": "k1"}]}, {}), "0.0.0.0") is None


def test_the_cli_exits_instead_of_serving_open_on_all_interfaces(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(MOCK))
    p = subprocess.run([sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--host", "0.0.0.0",
                        "--port", "0"], cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=30)
    assert p.returncode != 0 and b"Refusing to listen on 0.0.0.0" in p.stderr


@pytest.mark.parametrize("headers, status, code", [
    ({"origin": "https://evil.example"}, 403, "origin_not_allowed"),
    ({"host": "evil.example"}, 403, "host_not_allowed"),  # a DNS-rebinding page under its own name
    ({"host": "evil.example:4000"}, 403, "host_not_allowed"),
    ({"content-type": "text/plain"}, 415, "unsupported_media_type"),  # no preflight for these
    ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
])
def test_open_mode_refuses_what_a_web_page_could_send(turnout, headers, status, code) -> None:
    base = turnout(MOCK)
    r = chat(base, headers)
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert chat(base, {}).status_code == 200  # the same request from a non-browser client is served
    assert chat(base, {"host": "localhost:1234"}).status_code == 200


def test_allowed_origins_get_cors_and_preflight(turnout) -> None:
    base = turnout({**MOCK, "server": {"cors_origins": ["https://app.example"]}})
    pre = httpx.options(base + "/v1/chat/completions", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"}, timeout=10)
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    r = chat(base, {"origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert chat(base, {"origin": "https://evil.example"}).status_code == 403


def test_with_keys_foreign_origins_get_no_cors_but_keys_still_decide(turnout) -> None:
    base = turnout({**MOCK, "keys": [{"key": "k1"}]})
    r = chat(base, {"origin": "https://evil.example", "authorization": "Bearer k1"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert chat(base, {"origin": "https://evil.example"}).status_code == 401
