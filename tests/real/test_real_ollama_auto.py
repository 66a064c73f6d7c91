"""`model: auto` and `doctor --json` against a real Ollama server (issue 21), opt-in: set
``TURNOUT_REAL_OLLAMA=http://127.0.0.1:11434`` after ``shared/tools/real-ollama.sh`` has set one up
(SmolLM2-135M installed as `smollm2`). Skipped with the reason otherwise. Assertions are on what
the server reports and on routing, never on the model's wording.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from proxy import cli
from proxy.config import parse
from proxy.server.assembly import build_app
from tests.conftest import ServerThread

URL = os.environ.get("TURNOUT_REAL_OLLAMA", "").rstrip("/")
pytestmark = pytest.mark.skipif(not URL, reason="TURNOUT_REAL_OLLAMA is not set (see shared/tools/real-ollama.sh)")


def installed() -> list[dict]:
    return httpx.get(URL + "/api/tags", timeout=5).json()["models"]


def test_doctor_json_reports_the_real_servers_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "in.yaml"
    cfg.write_text(yaml.safe_dump({"backends": {"local": {"type": "ollama", "base_url": URL}}}))
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--json", "--config", str(cfg)])
    out = json.loads(capsys.readouterr().out)
    b = out["backends"][0]
    assert b["reachable"] and {m["model"] for m in b["installed"]} == {m["model"] for m in installed()}
    sizes = {m["model"]: m["size"] for m in installed()}
    assert all(m["size_bytes"] == sizes[m["model"]] for m in b["installed"])


def test_model_auto_chooses_an_installed_model_and_serves(tmp_path: Path) -> None:
    raw = {"backends": {"local": {"type": "ollama", "base_url": URL,
                                  "timeout": {"connect": 2, "first_token": 120, "idle": 30, "total": 300}}},
           "models": {"planner": {"backend": "local", "model": "auto", "role": "planning"},
                      "executor": {"backend": "local", "model": "auto", "role": "execution"}},
           "routes": {"plan": {"rules": [{"name": "planning", "when": {"turn": "first"}, "then": ["planner"]},
                                         {"name": "execution", "when": {"turn": "followup"}, "then": ["executor"]}]}}}
    cfg = parse(raw, {})
    server = ServerThread(build_app(cfg)).start()
    try:
        names = {m["model"] for m in installed()}
        assert cfg.models["planner"].model in names and cfg.models["executor"].model in names
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.with_raw_response.create(
            model="plan", max_tokens=8, messages=[{"role": "user", "content": "Say hello."}])
        assert r.headers["x-turnout-model"] == "planner" and r.parse().usage.completion_tokens > 0
    finally:
        server.stop()
