"""Every command the README shows works on the shipped configs (issue 12).

The README is parsed, not copied: each line of its ``sh`` / ``bash`` blocks, its ``python`` blocks
and every inline `turnout …` command (the command table's included, with ``[optional]`` parts
dropped and placeholders filled in) is run as a subprocess, once with the shipped ``proxy.yaml``
and once with ``proxy/demo.yaml`` as ``./proxy.yaml`` of a temporary directory (temporary ledgers;
no API keys; the local Ollama is the emulator). A command added to the README is picked up here;
only the few in SKIP are not run, each with its reason. Commands that serve (``serve``, ``demo``,
``mock-upstream``) are started, probed and stopped; the others must exit 0 (curl with
``--fail-with-body``: an HTTP error fails too).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerThread, free_port
from tests.emulators.ollama import build_ollama_emulator

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SERVING = ("serve", "demo", "mock-upstream")
# (a pattern a command matches, why it is not run)
SKIP = [
    (r"^python3 -m venv ", "creates a venv and installs the package: the suite already runs in one"),
    (r"\bdocker compose\b", "needs Docker and builds images"),
    (r"^docker build\b", "needs Docker and a registry to push to"),
    (r"^\(cd deploy/k8s/base && kustomize edit\b", "edits the checkout's kustomization (needs the kustomize CLI)"),
    (r"^kubectl (?:create namespace|-n turnout)\b|^cp deploy/k8s/secret\.example\.yaml",
     "needs a Kubernetes cluster (tests/test_deploy.py renders and validates the manifests offline)"),
    (r"^turnout models fetch\b", "downloads a model from the internet (the llama.cpp tests in tests/real use it)"),
    (r"^turnout demo --local\b", "needs llama.cpp and the fetched model (tests/real cover it)"),
    (r"^turnout keys (?:revoke|rotate)\b", "acts on the key `turnout keys create` makes, and the commands run at once, "
                                         "in no order (tests/test_keys.py covers both)"),
    (r"\bclaude$", "starts Claude Code, which is not installed here (the Anthropic front door has its own tests)"),
]
# commands that write a file the others read (./proxy.yaml): run after them, one by one
WRITES = re.compile(r"--write\b")
# commands that read no ./proxy.yaml: run once (with the shipped proxy.yaml), not once per config
CONFIG_FREE = re.compile(r"^turnout (?:models|mock-upstream|demo|train)\b|--config proxy/demo\.yaml")
PLACEHOLDERS = {"CONFIG": "proxy.yaml", "FILE": "written.yaml", "N": "2"}  # FILE: only `doctor --write FILE` keeps it
OLLAMA_MODELS = ["llama3.2:3b", "llama3.1:8b", "qwen2.5vl:7b"]  # proxy.yaml's local targets


def _blocks(lang: tuple[str, ...]) -> list[str]:
    return [m.group(2) for m in re.finditer(r"```(\w+)\n(.*?)```", README, re.S) if m.group(1) in lang]


def shell_commands() -> list[str]:
    """Each command of the shell blocks: continuation lines joined, comment lines dropped."""
    out = []
    for block in _blocks(("sh", "bash", "shell")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def inline_commands() -> list[str]:
    """Every inline `turnout …` (and `docker compose …`) span, as a runnable command: `[optional]` parts dropped, placeholders filled."""
    out = []
    for span in re.findall(r"`((?:turnout|docker compose) [^`]+)`", README):
        cmd = re.sub(r"\s*\[[^\]]*\]", "", span.replace("\\|", "|")).strip()
        for word in ([] if cmd.startswith("docker") else re.findall(r"\b[A-Z]+\b", cmd)):
            assert word in PLACEHOLDERS, f"README command {span!r}: unknown placeholder {word} (add it to PLACEHOLDERS)"
            cmd = re.sub(rf"\b{word}\b", PLACEHOLDERS[word], cmd)
        if cmd not in out:
            out.append(cmd)
    return out


def skipped(cmd: str) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, cmd)), None)


def is_serving(cmd: str) -> bool:
    words = cmd.split()
    return words[0] == "turnout" and len(words) > 1 and words[1] in SERVING


def commands() -> list[str]:
    return [c for c in dict.fromkeys(shell_commands() + inline_commands()) if not skipped(c)]


# --- the environment the commands run in -----------------------------------------------------------


@pytest.fixture(scope="module")
def ollama() -> str:
    s = ServerThread(build_ollama_emulator(OLLAMA_MODELS)).start()
    yield s.url
    s.stop()


def workdir(tmp: Path, config: str, ollama_url: str) -> tuple[Path, dict[str, str]]:
    """A directory with `config` as ./proxy.yaml (and proxy.new.yaml), proxy/demo.yaml, the docs'
    traffic.yaml, the shipped labelled prompts as routes.jsonl, and `turnout` on PATH running this checkout."""
    (tmp / "proxy").mkdir()
    shutil.copy(REPO / "proxy" / "demo.yaml", tmp / "proxy" / "demo.yaml")
    for name in ("proxy.yaml", "proxy.new.yaml"):
        shutil.copy(REPO / config, tmp / name)
    usage_doc = (REPO / "docs" / "usage.md").read_text()
    (tmp / "traffic.yaml").write_text(re.search(r"```yaml\n(# traffic\.yaml\n.*?)```", usage_doc, re.S).group(1))
    shutil.copy(REPO / "proxy" / "semantic" / "data" / "routes.jsonl", tmp / "routes.jsonl")  # `turnout train`'s input
    bindir = tmp / "bin"
    bindir.mkdir()
    shim = bindir / "turnout"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m proxy "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k not in ("TURNOUT_CONFIG", "TURNOUT_LEDGER", "OLLAMA_HOST")}
    env.update(PATH=f"{bindir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(REPO), OLLAMA_URL=ollama_url, OLLAMA_HOST=ollama_url,
               TURNOUT_LEDGER=str(tmp / "ledger.sqlite"))
    return tmp, env


def with_port(cmd: str, port: int) -> str:
    return re.sub(r"\s--port\s+\d+", "", cmd) + f" --port {port}"


def start(cmd: str, cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"exec {with_port(cmd, port)}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def wait_up(p: subprocess.Popen, url: str, cmd: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            pytest.fail(f"{cmd!r} exited with {p.returncode}:\n{p.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, f"{cmd!r} did not serve {url} in {timeout} s"
        time.sleep(0.1)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)  # its own session: the workers of --workers N too
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


def runnable(cmd: str, port: int) -> str:
    """The command as shown, aimed at the test's server; curl fails on an HTTP error."""
    cmd = cmd.replace("127.0.0.1:4000", f"127.0.0.1:{port}")
    return re.sub(r"^curl\b", "curl --fail-with-body --max-time 30", cmd)


# --- the tests ---------------------------------------------------------------------------------------


def test_the_readme_is_parsed() -> None:
    cmds = commands()
    assert len(cmds) >= 15, cmds
    assert any(c.startswith("curl ") for c in cmds) and any(c.startswith("turnout usage") for c in cmds)
    assert {"turnout serve", "turnout demo", "turnout check-config", "turnout models list"} <= set(cmds)
    every = shell_commands() + inline_commands()
    for pattern, why in SKIP:  # the skip list does not outlive what it skips
        assert any(re.search(pattern, c) for c in every), f"SKIP entry {pattern!r} matches no README command"
    assert _blocks(("python",)), "the README's Python examples"


@pytest.mark.parametrize("config", ["proxy.yaml", "proxy/demo.yaml"])
def test_every_readme_command_works(config: str, tmp_path: Path, ollama: str) -> None:
    cwd, env = workdir(tmp_path, config, ollama)
    cmds = [c for c in commands() if config == "proxy.yaml" or not CONFIG_FREE.search(c)]
    port = free_port()
    server = start("turnout serve", cwd, env, port)  # what the curl lines and the Python example talk to
    others: list[tuple[str, subprocess.Popen, str]] = []
    try:
        wait_up(server, f"http://127.0.0.1:{port}/health", "turnout serve")
        for cmd in (c for c in cmds if is_serving(c) and c != "turnout serve"):
            p_port = free_port()
            probe = "/v1/models" if " mock-upstream" in cmd else "/ready"
            others.append((cmd, start(cmd, cwd, env, p_port), f"http://127.0.0.1:{p_port}{probe}"))
        running = [(c, subprocess.Popen(["bash", "-c", runnable(c, port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT))
                   for c in cmds if not is_serving(c) and not WRITES.search(c)]
        for i, block in enumerate(_blocks(("python",))):
            code = block.replace("127.0.0.1:4000", f"127.0.0.1:{port}")
            running.append((f"Python example {i + 1}", subprocess.Popen(
                [sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
        failures = []

        def check(cmd: str, p: subprocess.Popen) -> None:
            out, _ = p.communicate(timeout=60)
            text = out.decode(errors="replace")
            if p.returncode != 0 or "Traceback" in text:
                failures.append(f"$ {cmd}\n(exit {p.returncode})\n{text[-2000:]}")

        for cmd, p in running:
            check(cmd, p)
        for cmd in (c for c in cmds if WRITES.search(c)):
            check(cmd, subprocess.Popen(["bash", "-c", runnable(cmd, port)], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for cmd, p, url in others:
            wait_up(p, url, cmd)
        assert not failures, "\n\n".join(failures)
    finally:
        for _, p, _ in others:
            stop(p)
        stop(server)
