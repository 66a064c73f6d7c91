"""Issue 9, 1 and "done when": the `llamacpp` backend runs llama.cpp's server as a supervised child.

It waits for health, restarts the server when it dies (with backoff, shown in /ready and the log),
stops it when Turnout stops, and the server never outlives Turnout, even when Turnout is killed.
`turnout demo --local` answers the openai SDK with real tokens. Misconfiguration is caught at start.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.backends import create
from proxy.config import ConfigError, parse
from proxy.local.llamacpp_server import sweep_workdirs
from tests.conftest import free_port, sdk
from tests.real.conftest import LONG, SIMPLE, Turnout, local_backend


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def ready(url: str) -> dict:
    return httpx.get(url + "/ready", timeout=5).json()["backends"]


FALLBACK_MOCK = {"type": "mock", "reply": "mock says {prompt}"}


def config(**options) -> dict:
    return {"backends": {"local": local_backend(**options), "cloud": FALLBACK_MOCK},
            "models": {"local-model": {"backend": "local", "model": "smollm2"},
                       "cloud-model": {"backend": "cloud", "model": "mock"}},
            "routes": {"auto": ["local-model", "cloud-model"]}}


def test_server_is_started_healthy_and_gone_after_turnout_stops(gguf):
    t = Turnout(config())
    try:
        backend = t.backend("local")
        pid = backend.pid
        assert pid and alive(pid) and pid != os.getpid()
        assert ready(t.url)["local"] == "usable"
        assert backend.base_url.startswith("http://127.0.0.1:") and httpx.get(
            backend.base_url[:-3] + "/health", timeout=5).status_code == 200
        raw = sdk(t.url).chat.completions.with_raw_response.create(model="auto", messages=SIMPLE, max_tokens=4)
        assert raw.headers["x-turnout-model"] == "local-model" and raw.parse().usage.completion_tokens > 0
    finally:
        t.stop()
    assert not alive(pid), "llama.cpp's server outlived Turnout"
    assert backend.unavailable == "stopped"


def test_killed_server_is_restarted_with_backoff(gguf, caplog):
    caplog.set_level(logging.INFO, logger="turnout.llamacpp")
    t = Turnout(config(restart_backoff=2.0))  # a window wide enough to watch it down, even on a busy machine
    try:
        backend = t.backend("local")
        first = backend.pid
        os.kill(first, signal.SIGKILL)
        seen: list[str] = []
        assert wait_until(lambda: seen.append(ready(t.url)["local"]) or seen[-1] != "usable", 5)
        assert "killed by signal 9" in seen[-1] and "restarting in" in seen[-1]
        # while it is down, the route skips it and the next target answers
        raw = sdk(t.url).chat.completions.with_raw_response.create(model="auto", messages=SIMPLE, max_tokens=4)
        assert raw.headers["x-turnout-model"] == "cloud-model"
        assert "local-model" in raw.headers["x-turnout-fallbacks"]
        assert wait_until(lambda: ready(t.url)["local"] == "usable", 60, 0.1)
        second = backend.pid
        assert second and second != first and alive(second) and not alive(first)
        assert backend.restarts == 1
        raw = sdk(t.url).chat.completions.with_raw_response.create(model="auto", messages=SIMPLE, max_tokens=4)
        assert raw.headers["x-turnout-model"] == "local-model"
    finally:
        t.stop()
    assert not alive(second)
    messages = [r.getMessage() for r in caplog.records if r.name == "turnout.llamacpp"]
    assert any(f"pid {first} was killed by signal 9" in m for m in messages)
    assert any("restarting in 2.0s" in m for m in messages)
    assert any(f"pid {second} ready" in m for m in messages)


def test_restart_false_leaves_it_down(gguf):
    t = Turnout(config(restart=False))
    try:
        pid = t.backend("local").pid
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: ready(t.url)["local"] != "usable", 5)
        time.sleep(0.3)
        state = ready(t.url)["local"]
        assert "killed by signal 9" in state and "restart: false" in state
        assert t.backend("local").pid is None
    finally:
        t.stop()


def test_a_file_llamacpp_cannot_load_is_reported_and_retried(tmp_path, gguf, caplog):
    caplog.set_level(logging.INFO, logger="turnout.llamacpp")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    raw = config(restart_backoff=0.2)
    raw["backends"]["local"]["model_path"] = str(bad)
    t = Turnout(raw)  # Turnout starts anyway; the backend is down and says why
    try:
        assert wait_until(lambda: "while starting" in ready(t.url)["local"], 10)
        r = sdk(t.url).chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
        assert r.headers["x-turnout-model"] == "cloud-model"
        assert wait_until(lambda: t.backend("local").restarts >= 2, 15, 0.1)  # retried with backoff
    finally:
        t.stop()
    failures = [r.getMessage() for r in caplog.records if "while starting" in r.getMessage()]
    assert any("exited with code" in m for m in failures)
    assert any("failed to load model" in m for m in failures)  # llama.cpp's own error, from the child's log


def test_missing_model_file_makes_the_backend_unavailable(tmp_path):
    # no xllamacpp or model needed: this runs everywhere
    raw = config()
    raw["backends"]["local"]["model_path"] = str(tmp_path / "nope.gguf")
    t = Turnout(raw)
    try:
        assert ready(t.url)["local"] == f"model file not found: {tmp_path / 'nope.gguf'}"
        r = sdk(t.url).chat.completions.with_raw_response.create(model="auto", messages=SIMPLE)
        assert r.headers["x-turnout-model"] == "cloud-model"
        assert "model file not found" in r.headers["x-turnout-fallbacks"]
    finally:
        t.stop()


def test_an_uncached_model_name_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNOUT_MODELS", str(tmp_path))
    b = create(parse(config(), {}).backends["local"])
    assert "turnout models fetch smollm2" in b.unavailable


@pytest.mark.parametrize("options, message", [
    ({"model_path": None}, "backends.local.model_path: required"),
    ({"n_ctx": "big"}, "backends.local.n_ctx: expected an integer"),
    ({"threads": 0}, "backends.local.threads: must be at least 1, got 0"),
    ({"restart": "yes"}, "backends.local.restart: expected true or false"),
    ({"modelpath": "x"}, "backends.local.modelpath: unknown field"),
    ({"base_url": "http://127.0.0.1:8080"}, "backends.local.base_url: a llamacpp backend runs its own server"),
])
def test_bad_options_are_config_errors(options, message, tmp_path):
    raw = config(**options)
    raw["backends"]["local"] = {k: v for k, v in raw["backends"]["local"].items() if v is not None}
    with pytest.raises(ConfigError) as e:
        create(parse(raw, {}).backends["local"])
    assert str(e.value).startswith(message)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "check-config", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr


# --- as a user runs it: the CLI in its own process ---------------------------------------------------


def start_cli(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, 120, 0.1), log.read_text()
    return proc, url


def child_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if "llama.cpp server pid" in line and " ready at " in line:
            return int(line.split("server pid ")[1].split()[0])
    raise AssertionError("no 'llama.cpp server pid N ready' line in the log:\n" + log.read_text())


def test_demo_local_answers_the_sdk_with_real_tokens_and_stops_its_server(gguf, tmp_path):
    log = tmp_path / "demo.log"
    proc, url = start_cli(["demo", "--local"], log)
    try:
        pid = child_pid(log)
        assert alive(pid)
        client = sdk(url)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE, max_tokens=12)
        r = raw.parse()
        assert raw.headers["x-turnout-model"] == "local-model" and raw.headers["x-turnout-route"] == "auto"
        assert r.model == "smollm2" and r.choices[0].message.content.strip()
        assert 0 < r.usage.completion_tokens <= 12
        chunks = list(client.chat.completions.create(model="local", messages=LONG, max_tokens=6, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[0].model == "smollm2"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens == 6
        # complex asks on auto go to the mock cloud, past a failing one
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=LONG)
        assert (raw.headers["x-turnout-reason"], raw.headers["x-turnout-model"]) == ("complex", "smart-model")
        assert raw.headers["x-turnout-fallbacks"].startswith("flaky-model: 502")
        assert ready(url)["local"] == "usable"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert not alive(pid), "llama.cpp's server outlived `turnout demo --local`"
    assert "llama.cpp server pid" in log.read_text() and "stopped" in log.read_text()


def test_server_dies_with_a_killed_turnout(gguf, tmp_path):
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(yaml.safe_dump({"server": {"log_level": "info"}, **config()}))
    log = tmp_path / "serve.log"
    proc, url = start_cli(["serve", "--config", str(cfg)], log)
    pid = child_pid(log)
    assert alive(pid)
    proc.kill()  # SIGKILL: no shutdown code runs in Turnout
    proc.wait(10)
    assert wait_until(lambda: not alive(pid), 10, 0.05), "llama.cpp's server was orphaned"
    # nothing could clean up after a SIGKILL: the backend's temp dir (ready file, server log) is left,
    # named with the dead Turnout's pid, and the next Turnout to start a llamacpp backend sweeps it away
    workdir = Path(log.read_text().split("(log: ")[1].split(")")[0]).parent
    assert workdir.name.startswith(f"turnout-llamacpp-local-{proc.pid}-") and workdir.is_dir()
    assert sweep_workdirs() >= 1
    assert not workdir.exists()


def test_requests_beyond_concurrency_wait_then_fall_back(tmp_path):
    """At most `concurrency` requests are open to the server (it keeps HTTP threads free for /health);
    one more waits up to the first-token timeout, then fails over as 503 upstream_busy."""
    import asyncio

    from proxy.call import Call
    from proxy.errors import UpstreamError

    raw = config(concurrency=1, timeout={"first_token": 0.2})
    raw["backends"]["local"]["model_path"] = str(tmp_path / "unused.gguf")
    cfg = parse(raw, {})
    b = create(cfg.backends["local"])
    assert b.concurrency == 1

    async def scenario() -> UpstreamError:
        await b._slots.acquire()  # the one slot is taken by a request in flight
        started = time.monotonic()
        with pytest.raises(UpstreamError) as e:
            await b.complete(cfg.models["local-model"], {"model": "auto", "messages": SIMPLE},
                             Call(request_model="auto"))
        assert 0.15 < time.monotonic() - started < 2
        with pytest.raises(UpstreamError):
            await b.stream(cfg.models["local-model"], {"model": "auto", "messages": SIMPLE},
                           Call(request_model="auto")).__anext__()
        return e.value

    e = asyncio.run(scenario())
    assert e.status == 503 and e.code == "upstream_busy" and e.fallback
