"""Local models that configure themselves (issue 21): GPU detection through fake `nvidia-smi`,
`rocm-smi` and `sysctl` executables on PATH (4, 8, 16 and 80 GB, CPU only, broken tools), the
recommendations, `turnout doctor --json` / `--write` against the Ollama emulator, and a written
config serving a planning → execution conversation end to end with the openai SDK.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import ollama
import pytest
import yaml

from proxy import cli
from proxy.config import load
from proxy.local import hardware, recommend
from proxy.local.autoconfig import Survey, survey
from proxy.local.recommend import GB
from tests.conftest import free_port, sdk
from tests.emulators.ollama import build_ollama_emulator, model_entry

FIXTURES = Path(__file__).parent / "fixtures"

# installed models as a real Ollama lists them (sizes of the library's default 4-bit builds)
INSTALLED = [
    model_entry("llama3.1:8b", "8.0B", 4_920_753_328, "llama"),
    model_entry("llama3.2:3b", "3.2B", 2_019_393_189, "llama"),
    {**model_entry("llava:7b", "7B", 4_733_363_377, "llama"),
     "details": {**model_entry("llava:7b")["details"], "family": "llama", "families": ["llama", "clip"],
                 "parameter_size": "7B", "quantization_level": "Q4_0"}},
    model_entry("nomic-embed-text:latest", "137M", 274_302_450, "nomic-bert", "F16"),
]


def nvidia_line(gb: int, name: str = "NVIDIA GeForce RTX") -> str:
    mib = gb * 1024
    return f"0, {name} {gb}GB, {mib}, 312, {mib - 312}"


def tool(bindir: Path, name: str, body: str) -> None:
    bindir.mkdir(exist_ok=True)
    exe = bindir / name
    exe.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + body + "\n")  # detection's PATH is only bindir
    exe.chmod(0o755)


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH of only our fake tools (the real machine has none of them either)."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def names(choice: dict | recommend.Choice | None) -> list[str]:
    if isinstance(choice, recommend.Choice):
        return [m.name for m in choice.models]
    return [m["model"] for m in choice["models"]] if choice else []


# --- detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gb, single, pair, vision, reserve", [
    (4, ["llama3.2:3b"], ["qwen2.5:3b", "gemma2:2b"], ["moondream:1.8b"], 0),
    (8, ["llama3.1:8b"], ["qwen2.5:7b", "qwen2.5:3b"], ["qwen2.5vl:7b"], 0),
    (16, ["qwen2.5:14b"], ["llama3.1:8b", "llama3.2:3b"], ["llama3.2-vision:11b"], 6),
    (80, ["llama3.3:70b"], ["llama3.3:70b", "llama3.2:3b"], ["llama3.2-vision:11b"], 6),
])
def test_nvidia_sizes_and_the_seeds_choices(bindir, gb, single, pair, vision, reserve):
    tool(bindir, "nvidia-smi", f"echo '{nvidia_line(gb)}'")
    hw = hardware.detect()
    assert hw.kind == "nvidia" and hw.gpus[0].total_mib == gb * 1024 and hw.gpus[0].free_mib == gb * 1024 - 312
    assert hw.memory_mib == gb * 1024
    assert recommend.default_reserve(hw.kind, hw.memory_mib * hardware.MIB) == reserve * GB
    s = Survey(hw, recommend.default_reserve(hw.kind, hw.memory_mib * hardware.MIB))
    recs = s.recommendations()
    assert names(recs["single"]) == single and names(recs["pair"]) == pair and names(recs["vision"]) == vision
    p = recs["pair"]
    assert p.need <= s.budget and p.free == s.budget - p.need
    assert p.models[0].cls > p.models[1].cls  # the executor is the smaller model


def test_two_nvidia_gpus_count_the_larger(bindir):
    tool(bindir, "nvidia-smi", "printf '0, Small, 4096, 0, 4096\\n1, Big, 24576, 100, 24476\\n'")
    hw = hardware.detect()
    assert [g.name for g in hw.gpus] == ["Small", "Big"] and hw.memory_mib == 24576


ROCM_16GB = {"card0": {"VRAM Total Memory (B)": "17163091968", "VRAM Total Used Memory (B)": "8757248",
                       "Card series": "Radeon RX 7600 XT"},
             "system": {"Driver version": "6.7.0"}}


def test_amd_rocm_smi_json(bindir):
    tool(bindir, "nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2; exit 9")
    tool(bindir, "rocm-smi", f"echo 'WARNING: some sensor is unreadable'; echo '{json.dumps(ROCM_16GB)}'")
    hw = hardware.detect()
    assert hw.kind == "amd" and hw.gpus[0].name == "Radeon RX 7600 XT"
    assert hw.gpus[0].total_mib == 17163091968 // hardware.MIB and hw.gpus[0].used_mib == 8
    assert any("exited with status 9: NVIDIA-SMI has failed" in n for n in hw.notes)
    assert names(Survey(hw, 6 * GB).recommendations()["pair"]) == ["llama3.1:8b", "llama3.2:3b"]


def test_apple_silicon_unified_memory(bindir):
    tool(bindir, "sysctl", 'case "$2" in hw.memsize) echo 17179869184;; machdep.cpu.brand_string) echo "Apple M2 Pro";; esac')
    hw = hardware.detect(system="Darwin")
    assert hw.kind == "apple" and hw.gpus[0].total_mib == 16384 and hw.memory_mib == 16384 * 2 // 3
    assert hw.to_json()["gpus"][0]["name"] == "Apple M2 Pro (unified memory)"
    tool(bindir, "sysctl", 'case "$2" in hw.memsize) echo 17179869184;; *) echo "Intel(R) Core(TM) i7-9750H";; esac')
    hw = hardware.detect(system="Darwin")
    assert hw.kind == "cpu" and hw.system_total_mib == 16384 and any("not Apple silicon" in n for n in hw.notes)


def test_cpu_only_uses_proc_meminfo(bindir):
    hw = hardware.detect()
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemTotal:"))
    assert hw.kind == "cpu" and hw.gpus == [] and hw.memory_mib == total
    assert hw.notes == ["nvidia-smi is not on PATH", "rocm-smi is not on PATH"]
    s = Survey(hw, recommend.default_reserve("cpu", total * hardware.MIB))
    assert s.reserve == max(2 * GB, total * hardware.MIB // 4)
    for c in s.recommendations().values():
        assert c is None or all(m.cls <= recommend.CPU_PLANNER_MAX_CLASS for m in c.models)
    tiny = Survey(hardware.Hardware("cpu", [], 4096, 4000), recommend.default_reserve("cpu", 4 * GB))
    pair = tiny.recommendations()["pair"]
    assert tiny.budget == 2 * GB and pair.models[0].name == "qwen2.5:1.5b" and 0 <= pair.free < recommend.COMFORT


@pytest.mark.parametrize("script, note", [
    ("echo 'Segmentation fault (core dumped)'", "nvidia-smi printed something unexpected: 'Segmentation fault"),
    ("echo '0, GPU, [N/A], [N/A], [N/A]'", "nvidia-smi printed something unexpected: '0, GPU, [N/A]"),
    ("exit 0", "nvidia-smi reports no GPU"),
    ("echo 'No devices were found'; exit 6", "nvidia-smi exited with status 6: No devices were found"),
])
def test_broken_nvidia_smi_is_a_note_not_a_crash(bindir, script, note):
    tool(bindir, "nvidia-smi", script)
    tool(bindir, "rocm-smi", "echo '{\"card0\": {\"GPU use (%)\": \"3\"}}'")
    hw = hardware.detect()
    assert hw.kind == "cpu" and hw.notes[0].startswith(note), hw.notes
    assert hw.notes[1].startswith("rocm-smi printed something unexpected")


def test_a_hanging_tool_is_killed_with_what_it_started(bindir, tmp_path):
    pidfile = tmp_path / "sleeper.pid"
    tool(bindir, "nvidia-smi", f"sleep 30 & echo $! > {pidfile}; wait")
    hw = hardware.detect(timeout=0.5)
    assert hw.kind == "cpu" and hw.notes[0] == "nvidia-smi did not answer within 0.5 s (killed)"
    pid = int(pidfile.read_text())
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(50):  # the grandchild (its own `sleep`) went with it: gone, or dead awaiting its reaper
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the tool's child {pid} outlived the timeout")


# --- installed models, the Ollama emulator ---------------------------------------------------------


def test_emulator_show_matches_the_official_client(serve):
    app = build_ollama_emulator(models=INSTALLED)
    client = ollama.Client(host=serve(app))
    shown = client.show("llava:7b")
    assert shown.capabilities == ["completion", "vision"] and shown.details.families == ["llama", "clip"]
    assert shown.modelinfo["general.parameter_count"] == 7_000_000_000
    assert client.show("llama3.1:8b").capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert e.value.status_code == 404


def test_installed_models_from_a_real_ollamas_answers():
    rec = json.loads((FIXTURES / "ollama_real_tags_show.json").read_text())
    m = recommend.from_installed(rec["tags"]["models"][0], rec["show_smollm2"].get("capabilities"))
    assert m and m.name == "smollm2:latest" and m.params_b == pytest.approx(0.13452) and m.size == 98363131
    assert m.roles == ("planning", "execution") and m.installed
    assert recommend.for_role([m], 8 * GB, "vision")[0] is None


def ollama_config(tmp_path: Path, url: str) -> str:
    p = tmp_path / "in.yaml"
    p.write_text(yaml.safe_dump({"backends": {"local": {"type": "ollama", "base_url": url}}}))
    return str(p)


def test_doctor_json_with_the_emulator_on_an_8gb_gpu(serve, bindir, tmp_path, capsys):
    app = build_ollama_emulator(models=INSTALLED, loaded=["llama3.2:3b"])
    app.state.capabilities["nomic-embed-text:latest"] = ["embedding"]
    url = serve(app)
    tool(bindir, "nvidia-smi", f"echo '{nvidia_line(8)}'")
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--json", "--config", ollama_config(tmp_path, url)])
    out = json.loads(capsys.readouterr().out)
    assert e.value.code == 0
    assert out["hardware"]["kind"] == "nvidia" and out["hardware"]["gpus"][0]["total_mib"] == 8192
    assert out["memory"] == {"total_gb": 8.0, "reserve_gb": 0.0, "budget_gb": 8.0,
                             "basis": "the largest NVIDIA GPU's total memory"}
    b = out["backends"][0]
    assert b["reachable"] and b["version"] == "0.12.6"
    inst = {m["model"]: m for m in b["installed"]}
    assert inst["llama3.1:8b"]["size_bytes"] == 4_920_753_328 and inst["llama3.1:8b"]["need_gb"] == 5.3
    assert inst["llava:7b"]["roles"] == ["vision"] and inst["llava:7b"]["capabilities"] == ["completion", "vision"]
    assert inst["nomic-embed-text:latest"]["roles"] == []  # an embedding model plays no chat role
    assert b["loaded"][0]["model"] == "llama3.2:3b" and b["loaded"][0]["size_vram_bytes"] == 2_019_393_189
    assert {r: a["model"] for r, a in b["auto"].items()} == {
        "planning": "llama3.1:8b", "execution": "llama3.2:3b", "vision": "llava:7b"}
    assert "llama3.1:8b + llama3.2:3b" in b["auto"]["planning"]["why"]
    assert names(out["recommendations"]["pair"]) == ["qwen2.5:7b", "qwen2.5:3b"]
    assert "ollama pull qwen2.5:7b" in out["pull"] and all("llama3.1" not in p for p in out["pull"][:1])
    assert app.state.paths.count("/api/show") == len(INSTALLED)


def test_doctor_json_with_ollama_down_and_no_gpu(bindir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--json", "--config", ollama_config(tmp_path, f"http://127.0.0.1:{free_port()}")])
    out = json.loads(capsys.readouterr().out)
    assert e.value.code == 0 and out["hardware"]["kind"] == "cpu"
    assert out["backends"][0]["reachable"] is False and out["backends"][0]["error"] == "ConnectError"
    assert out["recommendations"]["pair"] is not None


# --- doctor --write: a ready proxy.yaml ------------------------------------------------------------


def test_written_config_passes_check_config_and_serves_plan(serve, turnout, bindir, tmp_path, capsys, monkeypatch):
    app = build_ollama_emulator(models=INSTALLED)
    url = serve(app)
    tool(bindir, "nvidia-smi", f"echo '{nvidia_line(16)}'")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-never-sent")
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out_file = tmp_path / "proxy.yaml"
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--write", str(out_file), "--config", ollama_config(tmp_path, url)])
    assert e.value.code == 0
    text = out_file.read_text()
    # on 16 GB the installed pair fits with the 6 GB reserve: 8B planner, 3B executor, llava for images
    assert "local-planner: {backend: local, model: \"llama3.1:8b\"}" in text
    assert "local-executor: {backend: local, model: \"llama3.2:3b\"}" in text
    assert "local-vision: {backend: local, model: \"llava:7b\", vision: true}" in text
    assert "api_key: ${GEMINI_API_KEY}" in text and "claude" not in text
    assert "#   ollama pull llama3.2-vision:11b" in text  # recommended for 16 GB, not installed
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--write", str(out_file), "--config", ollama_config(tmp_path, url)])
    assert e.value.code == 2  # no overwrite without --force
    capsys.readouterr()
    cli.main(["check-config", str(out_file)])
    checked = capsys.readouterr().out
    assert "config OK" in checked and "3 of 3 configured models present" in checked
    cfg = load(out_file)
    assert cfg.routes["plan"].rules[0].then == ["local-planner", "gemini-flash"]
    assert cfg.routes["plan"].rules[1].then == ["local-executor", "local-planner", "gemini-flash"]
    assert [(r.name, r.then) for r in cfg.routes["auto"].rules] == [
        ("vision", ["local-vision", "gemini-flash"]), ("complex", ["local-planner", "gemini-flash"]),
        ("simple", ["local-executor", "local-planner", "gemini-flash"])]

    raw = yaml.safe_load(text)
    base = turnout(raw, {})
    client = sdk(base)
    convo = [{"role": "user", "content": "Plan a three-step refactor of the parser"}]
    r = client.chat.completions.with_raw_response.create(model="plan", messages=convo)
    first = r.parse()
    assert r.headers["x-turnout-model"] == "local-planner" and r.headers["x-turnout-reason"] == "planning"
    assert app.state.requests[-1]["model"] == "llama3.1:8b"
    convo += [{"role": "assistant", "content": first.choices[0].message.content},
              {"role": "user", "content": "Do step one"}]
    stream = client.chat.completions.with_raw_response.create(model="plan", messages=convo, stream=True)
    assert stream.headers["x-turnout-model"] == "local-executor" and stream.headers["x-turnout-reason"] == "execution"
    text_out = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text_out == "You said: Do step one" and app.state.requests[-1]["model"] == "llama3.2:3b"


def test_written_config_with_nothing_installed_names_what_to_pull(serve, bindir, tmp_path, capsys, monkeypatch):
    app = build_ollama_emulator(models=[INSTALLED[3]])  # an embedding model only: nothing to chat with
    url = serve(app)
    tool(bindir, "nvidia-smi", f"echo '{nvidia_line(4)}'")
    for var in ("GEMINI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out_file = tmp_path / "proxy.yaml"
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--write", str(out_file), "--config", ollama_config(tmp_path, url)])
    text = out_file.read_text()
    assert "model: \"qwen2.5:3b\"}   # planning: NOT INSTALLED - run `ollama pull qwen2.5:3b`" in text
    assert "model: \"gemma2:2b\"}   # execution: NOT INSTALLED" in text and "local-vision" not in text
    capsys.readouterr()
    cli.main(["check-config", str(out_file)])
    out = capsys.readouterr().out
    assert "config OK" in out and "MISSING qwen2.5:3b" in out and "MISSING gemma2:2b" in out


def test_survey_is_bounded_when_everything_is_slow(bindir, tmp_path):
    tool(bindir, "nvidia-smi", "sleep 30")
    tool(bindir, "rocm-smi", "sleep 30")
    cfg = load(ollama_config(tmp_path, f"http://127.0.0.1:{free_port()}"))
    s = survey(cfg, hw=hardware.detect(timeout=0.3), timeout=0.5)
    assert s.hw.kind == "cpu" and len(s.hw.notes) == 2 and all("did not answer" in n for n in s.hw.notes)
    assert s.installed == {} and s.to_json()["backends"][0]["reachable"] is False


def test_readme_table_is_the_codes():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert recommend.table((4, 8, 16, 24, 80)) in readme


# --- model: auto -----------------------------------------------------------------------------------


def auto_config(url: str) -> dict:
    return {"backends": {"local": {"type": "ollama", "base_url": url},
                         "backup": {"type": "mock", "reply": "Backup: {prompt}"}},
            "models": {"planner": {"backend": "local", "model": "auto", "role": "planning"},
                       "executor": {"backend": "local", "model": "auto", "role": "execution"},
                       "eyes": {"backend": "local", "model": "auto", "role": "vision"},
                       "backup-model": {"backend": "backup", "model": "mock-backup"}},
            "routes": {"plan": {"rules": [
                {"name": "planning", "when": {"turn": "first"}, "then": ["planner", "backup-model"]},
                {"name": "execution", "when": {"turn": "followup"}, "then": ["executor", "backup-model"]}]},
                "look": ["eyes", "backup-model"]}}


def test_model_auto_picks_installed_models_at_start(serve, turnout, bindir, tmp_path, capsys, caplog):
    app = build_ollama_emulator(models=INSTALLED[:2])  # llama3.1:8b and llama3.2:3b; no vision model
    url = serve(app)
    tool(bindir, "nvidia-smi", f"echo '{nvidia_line(8)}'")
    caplog.set_level("INFO", logger="turnout.local")
    base = turnout(auto_config(url))
    assert "planner: auto (planning) -> llama3.1:8b" in caplog.text
    assert "eyes: auto (vision) -> SKIPPED: no installed model does vision" in caplog.text
    models = {m["id"]: m for m in httpx.get(base + "/v1/models").json()["data"]}
    assert models["planner"]["turnout"]["model"] == "llama3.1:8b" and models["planner"]["turnout"]["available"]
    assert "llama3.1:8b + llama3.2:3b" in models["planner"]["turnout"]["auto"]
    assert models["executor"]["turnout"]["model"] == "llama3.2:3b"
    assert models["eyes"]["turnout"]["available"] is False and "no installed model does vision" in models["eyes"]["turnout"]["auto"]
    client = sdk(base)
    r = client.chat.completions.with_raw_response.create(model="plan", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-turnout-model"] == "planner" and app.state.requests[-1]["model"] == "llama3.1:8b"
    r = client.chat.completions.with_raw_response.create(model="look", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-turnout-model"] == "backup-model" and "eyes: skipped: no installed model does vision" in r.headers["x-turnout-fallbacks"]
    p = tmp_path / "auto.yaml"
    p.write_text(yaml.safe_dump(auto_config(url)))
    capsys.readouterr()
    cli.main(["check-config", str(p)])
    out = capsys.readouterr().out
    assert "planner: auto (planning) -> llama3.1:8b" in out and "eyes: auto (vision) -> SKIPPED" in out and "config OK" in out


def test_model_auto_with_ollama_down_skips_never_crashes(turnout, bindir):
    base = turnout(auto_config(f"http://127.0.0.1:{free_port()}"))
    r = sdk(base).chat.completions.with_raw_response.create(model="plan", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-turnout-model"] == "backup-model"
    assert "planner: skipped: backend local not reachable (ConnectError)" in r.headers["x-turnout-fallbacks"]


def test_model_auto_config_errors():
    from proxy.config import ConfigError, parse

    raw = auto_config("http://127.0.0.1:1")
    raw["models"]["planner"].pop("role")
    with pytest.raises(ConfigError, match=r"models.planner.role: required with model: auto"):
        parse(raw, {})
    raw["models"]["planner"]["role"] = "thinking"
    with pytest.raises(ConfigError, match=r"models.planner.role"):
        parse(raw, {})
    raw["models"]["planner"] = {"backend": "backup", "model": "auto", "role": "planning"}
    with pytest.raises(ConfigError, match=r"models.planner.model: auto needs an ollama backend"):
        parse(raw, {})


def test_hardware_endpoint(serve, turnout, bindir):
    app = build_ollama_emulator(models=INSTALLED[:2])
    url = serve(app)
    tool(bindir, "nvidia-smi", f"echo '{nvidia_line(16)}'")
    raw = {"backends": {"local": {"type": "ollama", "base_url": url}},
           "models": {"m": {"backend": "local", "model": "llama3.2:3b"}},
           "keys": [{"key": "sk-admin", "name": "ops", "tier": "admin"}, {"key": "sk-app", "name": "app", "tier": "free"}]}
    base = turnout(raw)
    assert httpx.get(base + "/turnout/hardware").status_code == 401
    r = httpx.get(base + "/turnout/hardware", headers={"authorization": "Bearer sk-app"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_required"
    r = httpx.get(base + "/turnout/hardware?reserve=lots", headers={"authorization": "Bearer sk-admin"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reserve"
    r = httpx.get(base + "/turnout/hardware", headers={"authorization": "Bearer sk-admin"}, timeout=20)
    body = r.json()
    assert r.status_code == 200 and body["hardware"]["gpus"][0]["total_mib"] == 16384
    assert body["memory"]["reserve_gb"] == 6.0 and names(body["recommendations"]["pair"]) == ["llama3.1:8b", "llama3.2:3b"]
    assert [m["model"] for m in body["backends"][0]["installed"]] == ["llama3.1:8b", "llama3.2:3b"]
    r = httpx.get(base + "/turnout/hardware?reserve=0", headers={"authorization": "Bearer sk-admin"}, timeout=20)
    assert r.json()["memory"]["budget_gb"] == 16.0 and names(r.json()["recommendations"]["pair"])[0] == "qwen2.5:14b"


def test_for_role_says_why_nothing_was_chosen():
    big = recommend.from_installed(INSTALLED[0])
    m, why = recommend.for_role([big], 4 * GB, "planning")
    assert m is None and why == "no installed planning model fits 4 GB (installed: llama3.1:8b (5.3 GB))"
    m, why = recommend.for_role([big], 8 * GB, "execution")  # a lone planner does both
    assert m is big and why.startswith("the largest installed planning model that fits 8 GB")
