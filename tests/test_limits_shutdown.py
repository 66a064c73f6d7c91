"""Issue 13, item 11: shutdown is graceful. On SIGTERM `/ready` turns 503 at once, new requests are
refused, a stream in flight gets `server.drain_seconds` and then ends with an error event the
`openai` SDK raises; the ledger records it as shut down, not as the client's doing."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx
import openai
import pytest

from tests.test_limits_load import Turnout


def draining_turnout(db, tmp_path) -> Turnout:
    """A mock target behind a Turnout with a 1 s drain period and a ledger at `db`."""
    return Turnout({"server": {"log_level": "warning", "drain_seconds": 1},
                    "usage": {"ledger": str(db), "flush_interval": 0.05},
                    "backends": {"m": {"type": "mock"}}, "models": {"t": {"backend": "m"}}, "routes": {}}, tmp_path)


def read_in_background(url: str, content: str) -> tuple[list[str], list[BaseException], threading.Thread]:
    """A streaming SDK client in a thread, returned once its first chunk arrived: the chunks' text,
    the exception that ended it (if any) and the thread."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    got: list[str] = []
    failure: list[BaseException] = []
    first = threading.Event()

    def read() -> None:
        try:
            for c in client.chat.completions.create(model="t", stream=True,
                                                    messages=[{"role": "user", "content": content}]):
                got.append(c.choices[0].delta.content or "" if c.choices else "")
                first.set()
        except Exception as e:  # noqa: BLE001 - asserted by the caller
            failure.append(e)
        finally:
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(10)
    return got, failure, reader


def test_sigterm_drains_then_ends_streams_with_an_error_event(tmp_path) -> None:
    db = tmp_path / "u.db"
    t = draining_turnout(db, tmp_path)
    try:
        got, failure, reader = read_in_background(t.url, "long [mock:chunk_delay=0.05 chunks=400]")
        t.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(t.url + "/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "shutting_down"
        new = httpx.post(t.url + "/v1/chat/completions", timeout=5,
                         json={"model": "t", "messages": [{"role": "user", "content": "hi"}]})
        assert new.status_code == 503 and new.json()["error"]["code"] == "shutting_down"
        reader.join(30)
        assert len(failure) == 1 and isinstance(failure[0], openai.APIError), failure
        assert "shut down" in str(failure[0]) and 5 < len(got) < 400  # drained for a while, then ended
        assert t.proc.wait(20) is not None
    finally:
        t.stop()
    rows = sqlite3.connect(db).execute("SELECT status, error, stream FROM requests").fetchall()
    assert (503, "shutdown", 1) in rows and not any(r[1] == "client_disconnected" for r in rows)


def test_a_stream_stalled_past_the_drain_deadline_still_ends_with_the_error_event(tmp_path) -> None:
    """A stream waiting for its upstream's next chunk (none comes for a minute) when the drain period
    ends is ended by Turnout with the ``shutdown`` error event, not cut silently by uvicorn later."""
    db = tmp_path / "u.db"
    t = draining_turnout(db, tmp_path)
    try:
        got, failure, reader = read_in_background(t.url, "stall [mock:chunk_delay=60 chunks=5]")
        started = time.monotonic()
        t.proc.send_signal(signal.SIGTERM)
        reader.join(30)
        assert not reader.is_alive()
        assert len(failure) == 1 and isinstance(failure[0], openai.APIError), failure
        assert not isinstance(failure[0], openai.APIConnectionError), failure  # an error event, not a cut
        assert "shut down" in str(failure[0]) and len(got) == 1
        assert time.monotonic() - started < 20  # ended at the deadline, not when the next chunk would come
        assert t.proc.wait(20) is not None
    finally:
        t.stop()
    rows = sqlite3.connect(db).execute("SELECT status, error, stream FROM requests").fetchall()
    assert rows == [(503, "shutdown", 1)], rows
