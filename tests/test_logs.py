"""Issue 8: the request log line (text and JSON), request ids, warnings, nothing secret."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from proxy.config import ConfigError, parse
from proxy.observability.logs import JsonFormatter, setup

CFG = {
    "backends": {"down": {"type": "mock", "fail": {"status": 503}, "probe": {"interval": 0}},
                 "up": {"type": "mock", "probe": {"interval": 0}}},
    "models": {"down-t": {"backend": "down"}, "up-t": {"backend": "up", "price": {"input": 2, "output": 4}}},
    "routes": {"auto": {"rules": [{"name": "everything", "then": ["down-t", "up-t"]}]}},
    "routing": {"circuit": {"failures": 2, "cooldown": 30}},
    "keys": [{"key": "sk-very-secret-key-42", "name": "storybook"}],
}
AUTH = {"authorization": "Bearer sk-very-secret-key-42"}
PROMPT = "a private prompt about the dragon"


def chat(base: str, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", headers={**AUTH, **(headers or {})}, timeout=30,
                      json={"model": "auto", "messages": [{"role": "user", "content": PROMPT}], **kw})


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "turnout.access"]


def test_one_text_line_per_request_with_everything_an_operator_needs(turnout, caplog):
    caplog.set_level(logging.INFO)
    base = turnout(CFG)
    r = chat(base, {"x-request-id": "trace-abc.123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc.123"
    lines = access_lines(caplog)
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    line = lines[0].getMessage()
    assert line.startswith("trace-abc.123 key=storybook model=auto route=auto rule=everything target=up-t "
                           "fallbacks=down-t->up-t(server) retries=0 status=200 stream=False tokens=")
    fields = dict(x.split("=", 1) for x in line.split()[1:])
    prompt, completion = map(int, fields["tokens"].split("/"))
    assert prompt > 0 and completion > 0
    assert float(fields["cost"]) == pytest.approx((prompt * 2 + completion * 4) / 1e6)
    assert float(fields["ms"]) > 0 and fields["ttft_ms"] == "-"
    # an unsafe incoming id is replaced, and the new one is returned
    caplog.clear()
    r = chat(base, {"x-request-id": "bad id\twith spaces"}, stream=True)
    rid = r.headers["x-request-id"]
    assert rid.startswith("req_") and r.text.endswith("data: [DONE]\n\n")
    line = access_lines(caplog)[0].getMessage()
    assert line.startswith(rid + " ") and "stream=True" in line and "ttft_ms=-" not in line
    # a failure has its status and error code
    caplog.clear()
    r = httpx.post(base + "/v1/chat/completions", headers=AUTH, json={"model": "nope", "messages": []})
    line = access_lines(caplog)[0].getMessage()
    assert "status=400" in line or "status=404" in line
    assert " error=" in line
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "sk-very-secret-key-42" not in everything and PROMPT not in everything


def test_json_lines_and_warnings(turnout, caplog):
    caplog.set_level(logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        base = turnout(CFG)
        for _ in range(3):  # the second failure of down-t opens its circuit: a warning
            assert chat(base).status_code == 200
    finally:
        logging.getLogger().removeHandler(handler)
    records = [json.loads(x) for x in stream.getvalue().splitlines()]
    access = [x for x in records if x["logger"] == "turnout.access"]
    assert len(access) == 3
    a = access[0]
    assert a["level"] == "INFO" and a["msg"] == "request" and a["ts"].endswith("Z")
    assert a["request_id"].startswith("req_") and a["key"] == "storybook" and a["route"] == "auto"
    assert a["rule"] == "everything" and a["target"] == "up-t" and a["status"] == 200
    assert a["fallbacks"] == [{"from": "down-t", "to": "up-t", "reason": "server"}]
    assert [x["outcome"] for x in a["attempts"]] == ["502 upstream_503", "ok"] and a["attempts"][0]["ms"] >= 0
    assert a["prompt_tokens"] > 0 and a["cost_usd"] > 0 and a["ms"] > 0
    assert access[2]["fallbacks"][0]["reason"] == "circuit_open"
    warnings = [x for x in records if x["level"] == "WARNING"]
    assert any(x["logger"] == "turnout.circuit" and "circuit down opened" in x["msg"] for x in warnings)
    assert any(x["logger"] == "turnout.health" and "backend down is down" in x["msg"] for x in warnings)
    raw = stream.getvalue()
    assert "sk-very-secret-key-42" not in raw and PROMPT not in raw


def test_setup_formats(capsys):
    setup("info", "json")
    try:
        logging.getLogger("turnout.test").warning("hello %s", "there")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("turnout.test").error("failed", exc_info=True)
        logging.getLogger("httpx").info("GET https://example.invalid/?key=secret")
    finally:
        setup("info", "text")
    err = capsys.readouterr().err.splitlines()
    docs = [json.loads(x) for x in err if x.startswith("{")]
    assert docs[0]["msg"] == "hello there" and docs[0]["level"] == "WARNING" and docs[0]["logger"] == "turnout.test"
    assert "ValueError: boom" in docs[1]["exc"]
    assert not any("example.invalid" in x for x in err)  # httpx's URL lines stay out
    root = logging.getLogger()
    assert sum(getattr(h, "_turnout", False) for h in root.handlers) == 1  # set up twice, one handler
    for h in [h for h in root.handlers if getattr(h, "_turnout", False)]:
        root.removeHandler(h)


def test_log_format_is_checked():
    with pytest.raises(ConfigError, match=r"server\.log_format: expected text or json"):
        parse({"server": {"log_format": "xml"}, "backends": {"m": {"type": "mock"}}}, {})
    with pytest.raises(ConfigError, match=r"server\.metrics_key_names: expected true or false"):
        parse({"server": {"metrics_key_names": "yes"}, "backends": {"m": {"type": "mock"}}}, {})
