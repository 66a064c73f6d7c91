"""Issue 18: JavaScript clients against Turnout — openai-node (responses, streams, previous_response_id,
completions, embeddings) and the Vercel AI SDK's default `openai(model)` provider (the Responses API:
text, a stream, a tool round trip), run by node from tests/node/clients.mjs.

The packages are pinned in tests/node/package.json and installed there by npm on first use. Outside
CI a machine without node or npm skips with the reason; in CI (``CI`` set) their absence fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from proxy.mock.engine import embedding

NODE_DIR = Path(__file__).parent / "node"


def _node_ready() -> str | None:
    """Why node clients cannot run here, or None once their packages are installed."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are not installed"
    if not (NODE_DIR / "node_modules" / "@ai-sdk" / "openai").exists():
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return f"npm install failed: {r.stderr.strip()[-300:]}"
    return None


def test_openai_node_and_vercel_ai_sdk(turnout, tmp_path):
    why = _node_ready()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"node clients must run in CI: {why}")
        pytest.skip(why)
    url = turnout({"backends": {"mock": {"type": "mock"}},
                   "models": {"chat": {"backend": "mock", "model": "mock-chat"},
                              "embed": {"backend": "mock", "model": "mock-embed"}},
                   "usage": {"ledger": str(tmp_path / "u.db")}})
    r = subprocess.run(["node", "clients.mjs", url], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["responses_text"] == "Hello from mock-chat! You said: hello from node"
    assert out["previous_response_id"].startswith("resp_")
    assert out["stream_types"][0] == "response.created" and out["stream_types"][-1] == "response.completed"
    assert out["stream_text"] == "Hello from mock-chat! You said: stream from node"
    assert out["completion"] == "Hello from mock-chat! You said: legacy"
    assert out["embedding_lengths"] == [256, 256]
    assert out["embedding_first"] == pytest.approx(embedding("a")[:3], abs=1e-6)  # base64 float32, decoded by node
    assert out["ai_text"] == "Hello from mock-chat! You said: hello from the AI SDK"
    assert out["ai_stream"] == "Hello from mock-chat! You said: stream from the AI SDK"
    assert out["ai_tool_calls"] == ["get_weather"] and out["ai_tool_text"] == "The tool returned: 3C in weather in Oslo?"
