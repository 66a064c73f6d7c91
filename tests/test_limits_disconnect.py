"""Issue 13, item 5: a client that leaves is a client that left. Non-streamed, or before a stream's
first byte, the upstream work is cancelled at once and the ledger records 499 (not a billed 200,
not a 504 after the first-token timeout)."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest


def rows(base: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = httpx.get(base + "/turnout/usage/export", timeout=10)
        out = [orjson.loads(line) for line in r.content.splitlines() if line]
        if out:
            return out
        time.sleep(0.1)
    return []


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_answer_is_a_499_and_nothing_is_billed(turnout, tmp_path, stream) -> None:
    base = turnout({"backends": {"m": {"type": "mock", "timeout": {"first_token": 30}}},
                    "models": {"paid": {"backend": "m", "price": {"input": 1, "output": 1}}},
                    "routes": {}, "usage": {"ledger": str(tmp_path / "u.db"), "flush_interval": 0.05}})
    body = {"model": "paid", "stream": stream, "messages": [{"role": "user", "content": "hi [mock:latency=3]"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/chat/completions", json=body, timeout=0.3)  # the client gives up
    row, = rows(base)
    assert (row["status"], row["error"]) == (499, "client_disconnected")
    assert row["cost_usd"] == 0 and row["completion_tokens"] == 0  # not the 3 s answer nobody received
